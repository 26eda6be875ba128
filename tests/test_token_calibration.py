"""Token-level calibration in Trainer.evaluate: the reduction, the factory, CalibratedTrainer and its reporting.

References are computed independently from full softmax probabilities: torchmetrics' calibration errors,
``F.cross_entropy`` and an explicit one-hot Brier score.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_calibration_error
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, Trainer, TrainingArguments

from hf_calib.callbacks import ReliabilityDiagramCallback
from hf_calib.loss import (
    TokenCalibrationConfig,
    stats_width,
    token_calibration_metrics,
    token_calibration_state,
    token_calibration_stats,
)
from hf_calib.metrics import calibration_error
from hf_calib.trainer import CalibratedTrainer
from hf_calib_kernels.token_stats import linear_row_stats, logits_row_stats

VOCAB = 211
SEQ = 10
METRICS = ("ece", "rms_ce", "mce", "nll", "brier", "accuracy", "mean_confidence")


# ---- references -----------------------------------------------------------------------------
def reference_metrics(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """Metrics of causal-LM ``logits [B, T, V]`` against unshifted ``labels [B, T]`` from full float64 softmax."""
    z = logits[:, :-1].reshape(-1, logits.shape[-1]).double()
    y = labels[:, 1:].reshape(-1)
    keep = y != -100
    z, y = z[keep], y[keep]
    p = z.softmax(-1)
    conf, pred = p.max(-1)
    correct = (pred == y).double()
    onehot = F.one_hot(y, p.shape[-1]).double()
    return {
        "count": int(y.numel()),
        "ece": float(binary_calibration_error(conf, correct.long(), n_bins=n_bins, norm="l1")),
        "rms_ce": float(binary_calibration_error(conf, correct.long(), n_bins=n_bins, norm="l2")),
        "mce": float(binary_calibration_error(conf, correct.long(), n_bins=n_bins, norm="max")),
        "nll": float(F.cross_entropy(z, y)),
        "brier": float((p - onehot).square().sum(-1).mean()),
        "accuracy": float(correct.mean()),
        "mean_confidence": float(conf.mean()),
    }


def assert_metrics(got: dict, want: dict, prefix: str = "eval_token_", rel: float = 1e-5) -> None:
    assert got[f"{prefix}count"] == want["count"]
    for key in METRICS:
        assert got[f"{prefix}{key}"] == pytest.approx(want[key], rel=rel, abs=1e-7), key


# ---- tiny models and data -------------------------------------------------------------------
def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # confident predictions, spread over the bins
    return model.eval()


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def make_rows(model, n: int = 7, seed: int = 1, ignore_all: bool = False) -> list[dict[str, torch.Tensor]]:
    """Rows with a masked prompt and right padding; about half the targets are the model's own argmax,
    so accuracy and confidence are both far from 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
    with torch.no_grad():
        pred = model(input_ids=ids).logits.argmax(-1)
    labels = torch.randint(1, VOCAB, (n, SEQ), generator=g)
    take = torch.rand(n, SEQ, generator=g) < 0.5
    labels[:, 1:] = torch.where(take[:, 1:], pred[:, :-1], labels[:, 1:])
    rows = []
    for i in range(n):
        mask = torch.ones(SEQ, dtype=torch.long)
        lab = labels[i].clone()
        lab[: 1 + i % 4] = -100
        pad = (i * 3) % 4
        if pad:
            ids[i, -pad:], lab[-pad:], mask[-pad:] = 0, -100, 0
        if ignore_all:
            lab[:] = -100
        rows.append({"input_ids": ids[i].clone(), "attention_mask": mask, "labels": lab})
    return rows


def model_reference(model, rows, n_bins: int = 15) -> dict[str, float]:
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return reference_metrics(logits, batch["labels"], n_bins)


def make_args(tmp_path, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        per_device_train_batch_size=4,
        per_device_eval_batch_size=3,
        label_smoothing_factor=0.1,
        disable_tqdm=True,
    )
    return TrainingArguments(**(kwargs | overrides))


def head_widths(model) -> list[int]:
    widths: list[int] = []
    model.lm_head.register_forward_hook(lambda _m, _i, out: widths.append(out.shape[-1]))
    return widths


# ---- the reduction --------------------------------------------------------------------------
def random_logits(b=5, t=9, v=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g) * torch.linspace(0.5, 6.0, b * t).reshape(b, t, 1)
    labels = torch.randint(0, v, (b, t), generator=g)
    argmax = logits.argmax(-1)
    hit = torch.rand(b, t, generator=g) < 0.5
    labels[:, 1:] = torch.where(hit[:, 1:], argmax[:, :-1], labels[:, 1:])
    labels[0, :3] = -100
    labels[2, :] = -100  # a sample without any target
    labels[3, 5:] = -100
    return logits, labels


@pytest.mark.parametrize("chunk_bytes", [None, 97 * 4 * 3])  # one chunk / chunks of 3 rows
def test_stats_match_full_softmax_reference(chunk_bytes):
    logits, labels = random_logits()
    stats = token_calibration_stats(logits, labels, n_bins=10, chunk_bytes=chunk_bytes)
    assert stats.shape == (5, stats_width(10)) and stats.dtype == torch.float64
    metrics = token_calibration_metrics(n_bins=10, prefix="t_").metrics_from_stats(stats)
    assert_metrics(metrics, reference_metrics(logits, labels, 10), prefix="t_", rel=1e-6)
    # Per-sample rows: token counts and NLL sums of each sample.
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
    valid = labels[:, 1:] != -100
    torch.testing.assert_close(stats[:, -1], valid.sum(1).double())
    torch.testing.assert_close(stats[:, 30], (per_token * valid).sum(1).double(), rtol=1e-5, atol=1e-5)
    assert float(stats[2].abs().sum()) == 0.0
    # The same ECE from hf_calib.metrics on the confidences themselves.
    z = logits[:, :-1][valid]
    conf, pred = z.softmax(-1).max(-1)
    want = calibration_error(conf, pred == labels[:, 1:][valid], n_bins=10)
    assert metrics["t_ece"] == pytest.approx(want, rel=1e-6)


def test_bf16_logits_use_float32_softmax():
    logits, labels = random_logits(seed=3)
    half = logits.bfloat16()
    got = token_calibration_metrics(prefix="").metrics_from_stats(token_calibration_stats(half, labels))
    assert_metrics(got, reference_metrics(half.float(), labels), prefix="", rel=1e-5)


def test_already_shifted_labels():
    logits, labels = random_logits(seed=4)
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
    torch.testing.assert_close(
        token_calibration_stats(logits, shifted, shift_labels=False), token_calibration_stats(logits, labels)
    )


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_linear_row_stats_match_logits_row_stats(softcap):
    g = torch.Generator().manual_seed(0)
    hidden, weight, bias = (
        torch.randn(20, 8, generator=g),
        torch.randn(31, 8, generator=g),
        torch.randn(31, generator=g),
    )
    labels = torch.randint(0, 31, (20,), generator=g)
    rows = torch.tensor([0, 3, 4, 7, 8, 9, 15, 19])
    logits = F.linear(hidden, weight, bias)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    want = logits_row_stats(logits, labels, rows)
    got = linear_row_stats(hidden, weight, bias, labels, rows, softcap=softcap, chunk_bytes=31 * 4 * 3)
    for name, a, b in zip(want._fields, got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    p = logits[rows].softmax(-1)
    torch.testing.assert_close(got.confidence, p.max(-1).values, rtol=1e-5, atol=1e-7)
    onehot = F.one_hot(labels[rows], 31).float()
    torch.testing.assert_close(got.brier, (p - onehot).square().sum(-1), rtol=1e-5, atol=1e-6)


# ---- bad input ------------------------------------------------------------------------------
def test_bad_inputs_raise_value_error():
    logits, labels = random_logits()
    bad = logits.clone()
    bad[1, 4, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        token_calibration_stats(bad, labels)
    bad[1, 4, 7] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        token_calibration_stats(bad, labels)
    # A -inf logit is a class with probability 0 (a masked vocabulary entry), as in the loss kernels.
    masked = logits.clone()
    masked[1, 4, 7] = float("-inf")
    assert torch.isfinite(token_calibration_stats(masked, labels)).all()
    # Non-finite logits where the target is ignored are not looked at.
    ignored = logits.clone()
    ignored[2, 3, :] = float("nan")
    torch.testing.assert_close(token_calibration_stats(ignored, labels), token_calibration_stats(logits, labels))
    with pytest.raises(ValueError, match="shape"):
        token_calibration_stats(logits, labels[:, :-1])
    with pytest.raises(ValueError, match="batch, seq, vocab"):
        token_calibration_stats(logits[0], labels[0])
    with pytest.raises(ValueError, match="integer"):
        token_calibration_stats(logits, labels.float())
    out_of_range = labels.clone()
    out_of_range[1, 2] = 97
    with pytest.raises(ValueError, match=r"\[0, 97\)"):
        token_calibration_stats(logits, out_of_range)
    with pytest.raises(ValueError, match="n_bins"):
        token_calibration_metrics(n_bins=0)
    with pytest.raises(ValueError, match="calibration_metrics"):
        TokenCalibrationConfig.resolve("yes")
    pre, compute = token_calibration_metrics()
    with pytest.raises(ValueError, match="preprocess_logits_for_metrics"):
        compute(type("P", (), {"predictions": logits.numpy(), "label_ids": labels.numpy()})())
    with pytest.raises(ValueError, match="inconsistent"):
        token_calibration_state(torch.rand(3, stats_width(15)).double())
    with pytest.raises(ValueError, match="labels"):
        pre(logits, None)


def test_no_supervised_token_reports_count_zero_only():
    logits, labels = random_logits()
    metrics = token_calibration_metrics()
    result = metrics.metrics_from_stats(token_calibration_stats(logits, torch.full_like(labels, -100)))
    assert result == {"token_count": 0}
    assert metrics.metrics_from_stats(torch.zeros(0, stats_width(15))) == {"token_count": 0}
    assert metrics.last_state.n_samples == 0


# ---- plain Trainer + factory ----------------------------------------------------------------
def test_plain_trainer_factory_matches_reference(tmp_path):
    model = tiny_llama()
    rows = make_rows(model)
    preprocess, compute = pair = token_calibration_metrics()
    trainer = Trainer(
        model=model,
        args=make_args(tmp_path),
        eval_dataset=ListDataset(rows),
        preprocess_logits_for_metrics=preprocess,
        compute_metrics=compute,
    )
    callback = ReliabilityDiagramCallback(pair, trainer=trainer)
    trainer.add_callback(callback)
    metrics = trainer.evaluate()
    want = model_reference(model, rows)
    assert 0.2 < want["accuracy"] < 0.8 and want["ece"] > 0.01
    assert_metrics(metrics, want)
    logged = trainer.state.log_history[-1]
    assert_metrics(logged, want)
    assert pair.last_state.n_samples == want["count"]
    assert [p.name for p in callback.written] == ["eval_token_step0.png"]
    assert callback.written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_factory_combines_with_user_metrics_and_batch_mode(tmp_path):
    model = tiny_llama()
    rows = make_rows(model, n=8)
    want = model_reference(model, rows)
    seen = {}

    def user_preprocess(logits, labels):
        return logits.argmax(-1)

    def user_compute(pred, compute_result=None):
        seen.setdefault("shapes", []).append(tuple(pred.predictions.shape))
        return {"n_rows": float(pred.predictions.shape[0])}

    preprocess, compute = token_calibration_metrics(
        compute_metrics=user_compute, preprocess_logits_for_metrics=user_preprocess
    )
    trainer = Trainer(
        model=model,
        args=make_args(tmp_path),
        eval_dataset=ListDataset(rows),
        preprocess_logits_for_metrics=preprocess,
        compute_metrics=compute,
    )
    metrics = trainer.evaluate()
    assert metrics["eval_n_rows"] == 8.0 and seen["shapes"] == [(8, SEQ)]
    assert_metrics(metrics, want)
    # batch_eval_metrics: Trainer calls compute once per batch; the result comes with the last one.
    preprocess, compute = token_calibration_metrics()
    trainer = Trainer(
        model=model,
        args=make_args(tmp_path, batch_eval_metrics=True),
        eval_dataset=ListDataset(rows),
        preprocess_logits_for_metrics=preprocess,
        compute_metrics=compute,
    )
    assert_metrics(trainer.evaluate(), want)


def test_plain_trainer_all_labels_ignored(tmp_path):
    model = tiny_llama()
    preprocess, compute = token_calibration_metrics()
    trainer = Trainer(
        model=model,
        args=make_args(tmp_path),
        eval_dataset=ListDataset(make_rows(model, ignore_all=True)),
        preprocess_logits_for_metrics=preprocess,
        compute_metrics=compute,
    )
    metrics = trainer.evaluate()
    assert metrics["eval_token_count"] == 0
    assert not [k for k in metrics if k.startswith("eval_token_") and k != "eval_token_count"]


# ---- CalibratedTrainer ----------------------------------------------------------------------
def test_calibrated_trainer_fused_eval_matches_reference_without_full_logits(tmp_path):
    model = tiny_llama()
    rows = make_rows(model)
    want = model_reference(model, rows)
    plain = Trainer(model=copy.deepcopy(model), args=make_args(tmp_path / "p"), eval_dataset=ListDataset(rows))
    want_loss = plain.evaluate()["eval_loss"]
    widths = head_widths(model)
    trainer = CalibratedTrainer(model=model, args=make_args(tmp_path / "c"), eval_dataset=ListDataset(rows))
    assert trainer.fused_loss_active
    widths.clear()  # the one-off probe at init ran the head normally
    metrics = trainer.evaluate()
    assert widths and set(widths) == {0}  # never a [B, T, V] tensor
    assert_metrics(metrics, want)
    assert metrics["eval_loss"] == pytest.approx(want_loss, rel=1e-5)
    assert_metrics(trainer.state.log_history[-1], want)
    png = tmp_path / "c" / "calibration" / "eval_token_step0.png"
    assert png.is_file() and trainer.token_calibration.last_state.n_samples == want["count"]


def test_calibrated_trainer_logits_path_with_user_compute_metrics(tmp_path):
    model = tiny_llama()
    rows = make_rows(model)
    want = model_reference(model, rows)
    config = TokenCalibrationConfig(n_bins=10, prefix="tok_", reliability_diagram=False)
    trainer = CalibratedTrainer(
        model=model,
        args=make_args(tmp_path),
        eval_dataset=ListDataset(rows),
        compute_metrics=lambda pred: {"vocab": float(pred.predictions.shape[-1])},
        calibration_metrics=config,
    )
    metrics = trainer.evaluate()
    assert metrics["eval_vocab"] == VOCAB
    assert_metrics(metrics, model_reference(model, rows, n_bins=10), prefix="eval_tok_")
    assert metrics["eval_tok_nll"] == pytest.approx(want["nll"], rel=1e-5)
    assert not (tmp_path / "calibration").exists()


def test_calibration_metrics_can_be_switched_off(tmp_path):
    model = tiny_llama()
    trainer = CalibratedTrainer(
        model=model, args=make_args(tmp_path), eval_dataset=ListDataset(make_rows(model)), calibration_metrics=False
    )
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and not [k for k in metrics if "token" in k]
    assert trainer.token_calibration is None
    assert not any(isinstance(cb, ReliabilityDiagramCallback) for cb in trainer.callback_handler.callbacks)


def test_calibrated_trainer_empty_and_all_ignored_eval_sets(tmp_path):
    model = tiny_llama()
    trainer = CalibratedTrainer(model=model, args=make_args(tmp_path), eval_dataset=ListDataset([]))
    metrics = trainer.evaluate()
    assert metrics["eval_token_count"] == 0 and "eval_token_ece" not in metrics
    metrics = trainer.evaluate(ListDataset(make_rows(model, ignore_all=True)))
    assert metrics["eval_token_count"] == 0 and "eval_token_ece" not in metrics
    assert not (tmp_path / "calibration").exists()  # nothing to draw


def test_non_causal_models_report_no_token_metrics(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, num_labels=3,
    )  # fmt: skip
    rows = [
        {"input_ids": r["input_ids"], "attention_mask": r["attention_mask"], "labels": torch.tensor(i % 3)}
        for i, r in enumerate(make_rows(tiny_llama(), n=4))
    ]
    trainer = CalibratedTrainer(
        model=LlamaForSequenceClassification(config), args=make_args(tmp_path), eval_dataset=ListDataset(rows)
    )
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and not [k for k in metrics if "token" in k]


def test_tensorboard_scalars_and_image(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logdir))
    model = tiny_llama()
    rows = make_rows(model, n=8)
    args = make_args(
        tmp_path / "out", report_to=["tensorboard"], max_steps=2, eval_strategy="steps", eval_steps=1, logging_steps=1
    )
    trainer = CalibratedTrainer(model=model, args=args, train_dataset=ListDataset(rows), eval_dataset=ListDataset(rows))
    trainer.train()
    events = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for key in ("count", *METRICS):
        assert f"eval/token_{key}" in tags["scalars"], key
    assert [e.step for e in events.Scalars("eval/token_ece")] == [1, 2]
    logged = [h["eval_token_ece"] for h in trainer.state.log_history if "eval_token_ece" in h]
    assert [e.value for e in events.Scalars("eval/token_ece")] == pytest.approx(logged, rel=1e-6)
    assert "eval/token_reliability_diagram" in tags["images"]
    images = events.Images("eval/token_reliability_diagram")
    assert [i.step for i in images] == [1, 2] and images[0].width > 100
    pngs = sorted(p.name for p in (tmp_path / "out" / "calibration").iterdir())
    assert pngs == ["eval_token_step1.png", "eval_token_step2.png"]


def test_metric_for_best_model_is_token_ece(tmp_path):
    model = tiny_llama()
    rows = make_rows(model, n=8)
    args = make_args(
        tmp_path,
        max_steps=3,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="eval_token_ece",
        greater_is_better=False,
        learning_rate=5e-3,
        logging_steps=1,
    )
    trainer = CalibratedTrainer(model=model, args=args, train_dataset=ListDataset(rows), eval_dataset=ListDataset(rows))
    trainer.train()
    history = [(h["step"], h["eval_token_ece"]) for h in trainer.state.log_history if "eval_token_ece" in h]
    assert len(history) == 3 and len({round(v, 12) for _, v in history}) == 3  # training moved the ECE
    best_step, best = min(history, key=lambda item: item[1])
    assert trainer.state.best_metric == pytest.approx(best)
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}")
    # The loaded model is the best checkpoint's: evaluating it again gives the best ECE.
    assert trainer.evaluate()["eval_token_ece"] == pytest.approx(best, rel=1e-6)
    assert math.isfinite(best)


def test_missing_matplotlib_skips_diagrams_but_keeps_metrics(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    model = tiny_llama()
    rows = make_rows(model)
    trainer = CalibratedTrainer(model=model, args=make_args(tmp_path), eval_dataset=ListDataset(rows))
    assert_metrics(trainer.evaluate(), model_reference(model, rows))
    assert not (tmp_path / "calibration").exists()
