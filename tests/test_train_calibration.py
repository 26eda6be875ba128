"""Calibration of the training tokens, logged by the trainers from the loss kernels' own statistics."""

from __future__ import annotations

import pytest
import torch
from test_trainer import ListDataset, collate, make_examples, tiny_llama

from hf_calib.loss import TrainTokenCalibration, fused_linear_label_smoothing_ce
from hf_calib.trainer import CalibratedTrainer, CalibratedTrainingArguments

KEYS = ("ece", "rms_ce", "mce", "brier", "nll", "accuracy", "mean_confidence", "entropy")


def _reference(model, rows, n_bins: int = 15) -> dict[str, float]:
    """Calibration of ``rows``' shifted targets from full float64 logits, written out by hand (no hf_calib code)."""
    model.eval()
    with torch.no_grad():
        batch = collate(rows)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    targets = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:]
    keep = targets != -100
    z, y = logits[keep], targets[keep]
    p = z.softmax(-1)
    confidence, prediction = p.max(-1)
    correct = (prediction == y).double()
    bins = (confidence * n_bins).ceil().long().clamp(1, n_bins) - 1  # (b/B, (b+1)/B]
    gaps = []
    for b in range(n_bins):
        members = bins == b
        if members.any():
            gaps.append((members.double().mean(), (confidence[members].mean() - correct[members].mean()).abs()))
    onehot = torch.nn.functional.one_hot(y, z.shape[-1]).double()
    return {
        "count": int(keep.sum()),
        "ece": float(sum(w * g for w, g in gaps)),
        "mce": float(max(g for _, g in gaps)),
        "rms_ce": float(sum(w * g * g for w, g in gaps) ** 0.5),
        "nll": float(-p.log().gather(1, y[:, None]).mean()),
        "brier": float((p - onehot).square().sum(-1).mean()),
        "accuracy": float(correct.mean()),
        "mean_confidence": float(confidence.mean()),
        "entropy": float(-(p * p.log()).sum(-1).mean()),
    }


def _train(tmp_path, **overrides):
    rows = make_examples(16)
    model = tiny_llama()
    args = CalibratedTrainingArguments(
        **{
            "output_dir": str(tmp_path), "report_to": [], "use_cpu": True, "save_strategy": "no",
            "logging_steps": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
            "train_sampling_strategy": "sequential", "label_smoothing_factor": 0.1, "disable_tqdm": True,
            "max_steps": 4,
        }
        | overrides
    )  # fmt: skip
    trainer = CalibratedTrainer(model=model, args=args, train_dataset=ListDataset(rows), data_collator=collate)
    return trainer, rows


def test_logged_training_calibration_equals_a_full_logits_reference(tmp_path):
    """With a zero learning rate the weights never move, so each logged value must equal the calibration of exactly
    that step's tokens (2 micro-batches of 2 rows, gradient accumulation) computed from full float64 logits."""
    trainer, rows = _train(tmp_path, learning_rate=0.0)
    reference_model = tiny_llama()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4
    for step, log in enumerate(logs):
        want = _reference(reference_model, rows[4 * step : 4 * step + 4])
        assert log["token_count"] == want.pop("count")
        for key, value in want.items():
            assert log[f"token_{key}"] == pytest.approx(value, rel=1e-4, abs=1e-5), (step, key)


def test_training_calibration_is_on_by_default_and_can_be_switched_off(tmp_path):
    trainer, _ = _train(tmp_path / "on", learning_rate=1e-3, logging_steps=2, report_to=["tensorboard"])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all({f"token_{k}" for k in KEYS} <= log.keys() for log in logs)
    assert all(log["token_count"] > 0 for log in logs)
    # TensorBoard gets them under train/, next to the evaluation's eval/token_*.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tmp_path / "on").rglob("events.out.tfevents.*"))
    tags = set()
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/token_ece", "train/token_entropy", "train/token_nll"} <= tags

    off, _ = _train(tmp_path / "off", learning_rate=1e-3, train_token_calibration=False)
    off.train()
    assert off.train_token_calibration is None
    assert not any(k.startswith("token_") for h in off.state.log_history for k in h)
    # The keyword argument wins over the arguments' field.
    kw = CalibratedTrainer(
        model=tiny_llama(), args=off.args, train_dataset=ListDataset(make_examples(4)), data_collator=collate,
        train_token_calibration=True,
    )  # fmt: skip
    assert kw.train_token_calibration is not None
    with pytest.raises(ValueError, match="train_token_calibration"):
        CalibratedTrainingArguments(output_dir=str(tmp_path), train_token_calibration="yes")


def test_statistics_do_not_change_the_loss_or_the_gradients():
    """Asking the fused loss for its statistics changes neither the loss nor the gradients by a bit."""
    torch.manual_seed(0)
    hidden, weight = torch.randn(2, 7, 16), torch.randn(1001, 16) / 4
    labels = torch.randint(0, 1001, (2, 7))
    labels[0, :3] = -100
    results = []
    for stats in (False, True):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        loss = fused_linear_label_smoothing_ce(h, w, labels, label_smoothing=0.1, softcap=3.0, return_stats=stats)
        loss = loss[0] if stats else loss
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad))
    for without, with_stats in zip(*results, strict=True):
        assert torch.equal(without, with_stats)


def test_accumulator_nan_and_empty_cases():
    calib = TrainTokenCalibration(n_bins=10, prefix="tok_")
    assert calib.compute("cpu") == {"tok_count": 0}  # nothing seen (e.g. every label ignored)
    torch.manual_seed(0)
    hidden, weight = torch.randn(5, 8), torch.randn(50, 8)
    labels = torch.tensor([1, 2, -100, 3, 4])
    _, stats = fused_linear_label_smoothing_ce(hidden, weight, labels, return_stats=True)
    calib.add(stats, labels != -100)
    calib.add(stats, labels != -100)
    out = calib.compute("cpu")
    assert out["tok_count"] == 8 and 0 <= out["tok_ece"] <= 1 and not calib.pending
    hidden[0, 0] = float("nan")
    _, bad = fused_linear_label_smoothing_ce(hidden, weight, labels, return_stats=True)
    calib.add(bad, labels != -100)
    with pytest.warns(RuntimeWarning, match="NaN"):
        out = calib.compute("cpu")
    assert out["tok_count"] == 4 and all(out[f"tok_{k}"] != out[f"tok_{k}"] for k in KEYS)
