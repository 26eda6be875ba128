"""CalibratedTrainer against transformers' own Trainer (LabelSmoother / model loss) on tiny models."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from safetensors import safe_open
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from hf_calib import label_smoothing_ce
from hf_calib.loss import FusedLossLinear
from hf_calib.trainer import CalibratedTrainer, FusedLossFallbackWarning

VOCAB = 1001  # odd on purpose: no power-of-two chunking luck
SEQ = 10


def llama_config(**overrides) -> LlamaConfig:
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    return LlamaConfig(**(kwargs | overrides))


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(**overrides))


def make_examples(n: int = 8, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Equal-length rows whose number of supervised tokens differs (prompt masked with -100,
    some right padding), so per-batch token counts matter for the loss normalization."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(1, VOCAB, (SEQ,), generator=g)
        labels = ids.clone()
        labels[: 1 + i % 4] = -100  # prompt
        pad = (i * 3) % 4
        mask = torch.ones(SEQ, dtype=torch.long)
        if pad:
            ids[-pad:], labels[-pad:], mask[-pad:] = 0, -100, 0
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return rows


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def make_args(tmp_path, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        train_sampling_strategy="sequential",
        label_smoothing_factor=0.1,
        disable_tqdm=True,
    )
    return TrainingArguments(**(kwargs | overrides))


def collate(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def fallback_warnings(record) -> list:
    return [w for w in record if issubclass(w.category, FusedLossFallbackWarning)]


def loss_and_grads(trainer, model, batch, num_items_in_batch=None):
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items_in_batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_grads_close(got: dict, want: dict, rtol=1e-5, atol=1e-7):
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("num_items", [None, 23])
def test_loss_and_grads_equal_label_smoother(tmp_path, num_items):
    model = tiny_llama()
    reference = Trainer(model=copy.deepcopy(model), args=make_args(tmp_path))
    calibrated = CalibratedTrainer(model=model, args=make_args(tmp_path))
    assert calibrated.fused_loss_active and isinstance(model.lm_head, FusedLossLinear)
    batch = collate(make_examples(4))
    n = None if num_items is None else torch.tensor(num_items)
    want, want_grads = loss_and_grads(reference, reference.model, batch, n)
    got, got_grads = loss_and_grads(calibrated, model, batch, n)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert_grads_close(got_grads, want_grads)


def test_shift_labels_input_is_used_as_given(tmp_path):
    model = tiny_llama()
    trainer = CalibratedTrainer(model=model, args=make_args(tmp_path))
    batch = collate(make_examples(4))
    want, want_grads = loss_and_grads(trainer, model, batch)
    shifted = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:]
    got, got_grads = loss_and_grads(trainer, model, batch | {"shift_labels": shifted})
    torch.testing.assert_close(got, want)
    assert_grads_close(got_grads, want_grads)
    # Given shift_labels win over labels: dropping targets changes the loss.
    fewer = shifted.clone()
    fewer[:, :5] = -100
    other, _ = loss_and_grads(trainer, model, batch | {"shift_labels": fewer})
    assert abs(float(other) - float(want)) > 1e-3


def test_eps_zero_equals_model_loss(tmp_path):
    model = tiny_llama()
    reference = Trainer(model=copy.deepcopy(model), args=make_args(tmp_path, label_smoothing_factor=0.0))
    assert reference.label_smoother is None  # the model's own ForCausalLMLoss
    calibrated = CalibratedTrainer(model=model, args=make_args(tmp_path, label_smoothing_factor=0.0))
    assert calibrated.fused_loss_active
    batch = collate(make_examples(4))
    want, want_grads = loss_and_grads(reference, reference.model, batch, torch.tensor(17))
    got, got_grads = loss_and_grads(calibrated, model, batch, torch.tensor(17))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert_grads_close(got_grads, want_grads)


def test_training_never_builds_full_logits_and_head_stays_transparent(tmp_path):
    data = ListDataset(make_examples(8))
    # Default (random) sampling: the one-off probe at init must not disturb the seeded RNG either.
    args = make_args(tmp_path, max_steps=2, train_sampling_strategy="random")
    reference = Trainer(model=tiny_llama(), args=args, train_dataset=data, eval_dataset=data)
    reference.train()
    want_eval = reference.evaluate()["eval_loss"]
    model = tiny_llama()
    widths = []
    model.lm_head.register_forward_hook(lambda _m, _i, out: widths.append(out.shape[-1]))
    trainer = CalibratedTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    widths.clear()  # the one-off probe at init ran the head normally
    trainer.train()
    metrics = trainer.evaluate()  # no compute_metrics: prediction_loss_only, fused path too
    assert widths and set(widths) == {0}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    want = [h["loss"] for h in reference.state.log_history if "loss" in h]
    assert losses == pytest.approx(want, rel=1e-5) and len(losses) == 2
    assert metrics["eval_loss"] == pytest.approx(want_eval, rel=1e-5)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert logits.shape == (1, 3, VOCAB)
    assert widths[-1] == VOCAB


def test_model_init_models_get_the_fused_head(tmp_path):
    made = []

    def model_init():
        made.append(tiny_llama())
        return made[-1]

    trainer = CalibratedTrainer(
        model_init=model_init, args=make_args(tmp_path, max_steps=1), train_dataset=ListDataset(make_examples(4))
    )
    trainer.train()  # calls model_init again
    assert len(made) == 2 and trainer.model is made[-1]
    assert trainer.fused_loss_active and trainer._calib_plan.head is made[-1].lm_head
    assert isinstance(made[-1].lm_head, FusedLossLinear)


def _train_one_step(trainer_cls, tmp_path, batch_size, accumulation):
    model = tiny_llama()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = make_args(
        tmp_path,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
    )
    trainer = trainer_cls(model=model, args=args, train_dataset=ListDataset(make_examples(4)))
    trainer.train()
    loss = trainer.state.log_history[0]["loss"]
    return loss, {n: (p.detach() - start[n]) for n, p in model.named_parameters()}


def test_gradient_accumulation_is_exact(tmp_path):
    want_loss, want_step = _train_one_step(Trainer, tmp_path, 4, 1)  # LabelSmoother, one batch of 4
    for batch_size, accumulation in ((4, 1), (1, 4), (2, 2)):
        loss, step = _train_one_step(CalibratedTrainer, tmp_path, batch_size, accumulation)
        assert loss == pytest.approx(want_loss, rel=1e-5)
        assert_grads_close(step, want_step, rtol=1e-4, atol=1e-7)
    # Trainer's own loss with accumulation 1 x 4 agrees too, so the scaling matches Trainer's.
    ref_loss, ref_step = _train_one_step(Trainer, tmp_path, 1, 4)
    assert ref_loss == pytest.approx(want_loss, rel=1e-5)
    assert_grads_close(ref_step, want_step, rtol=1e-4, atol=1e-7)


def test_bf16_autocast_matches_trainer(tmp_path):
    data = ListDataset(make_examples(8))
    runs = []
    for cls in (Trainer, CalibratedTrainer):
        trainer = cls(model=tiny_llama(), args=make_args(tmp_path, max_steps=2, bf16=True), train_dataset=data)
        trainer.train()
        runs.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert runs[1] == pytest.approx(runs[0], rel=1e-4) and len(runs[1]) == 2


def test_eval_loss_matches_trainer_with_and_without_logits(tmp_path):
    model = tiny_llama()
    data = ListDataset(make_examples(8))
    reference = Trainer(model=copy.deepcopy(model), args=make_args(tmp_path), eval_dataset=data)
    want = reference.evaluate()["eval_loss"]
    calibrated = CalibratedTrainer(model=model, args=make_args(tmp_path), eval_dataset=data)
    assert calibrated.evaluate()["eval_loss"] == pytest.approx(want, rel=1e-5)
    # With compute_metrics the logits are needed: logits path, same loss definition.
    seen = {}

    def metrics(pred):
        seen["shape"] = pred.predictions.shape
        return {"n": float(pred.predictions.shape[0])}

    calibrated.compute_metrics = metrics
    assert calibrated.evaluate()["eval_loss"] == pytest.approx(want, rel=1e-5)
    assert seen["shape"] == (8, SEQ, VOCAB)


def test_save_model_keys_unchanged(tmp_path):
    model = tiny_llama()
    plain = copy.deepcopy(model)
    trainer = CalibratedTrainer(model=model, args=make_args(tmp_path / "run"))
    assert trainer.fused_loss_active
    assert list(model.state_dict()) == list(plain.state_dict())
    trainer.save_model(str(tmp_path / "calibrated"))
    plain.save_pretrained(str(tmp_path / "plain"))

    def keys(folder):
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return sorted(f.keys())

    assert keys(tmp_path / "calibrated") == keys(tmp_path / "plain")
    reloaded = LlamaForCausalLM.from_pretrained(str(tmp_path / "calibrated"))
    assert type(reloaded.lm_head) is torch.nn.Linear
    torch.testing.assert_close(reloaded.lm_head.weight, plain.lm_head.weight)


def _lora(model, targets):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))


def test_peft_lora_uses_fused_path(tmp_path):
    model = _lora(tiny_llama(), ["q_proj", "v_proj"])
    plain = copy.deepcopy(model)
    batch = collate(make_examples(4))
    reference = Trainer(model=copy.deepcopy(model), args=make_args(tmp_path))
    want, want_grads = loss_and_grads(reference, reference.model, batch, torch.tensor(21))
    widths = []
    head = model.get_base_model().lm_head
    head.register_forward_hook(lambda _m, _i, out: widths.append(out.shape[-1]))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = CalibratedTrainer(
            model=model, args=make_args(tmp_path, max_steps=2), train_dataset=ListDataset(make_examples(8))
        )
    assert not fallback_warnings(record)
    assert trainer.fused_loss_active and isinstance(head, FusedLossLinear)
    widths.clear()
    got, got_grads = loss_and_grads(trainer, model, batch, torch.tensor(21))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert_grads_close(got_grads, want_grads)
    assert all("lora_" in n for n in got_grads) and len(got_grads) == 8  # 2 layers x q,v x A,B
    assert head.weight.grad is None
    trainer.train()
    assert widths and set(widths) == {0}
    assert head.weight.grad is None
    model.save_pretrained(str(tmp_path / "calibrated"))
    plain.save_pretrained(str(tmp_path / "plain"))

    def keys(folder):
        with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
            return sorted(f.keys())

    assert keys(tmp_path / "calibrated") == keys(tmp_path / "plain")
    assert json.loads((tmp_path / "calibrated" / "adapter_config.json").read_text())["target_modules"]


def test_lora_on_lm_head_falls_back_with_one_warning(tmp_path):
    model = _lora(tiny_llama(), ["q_proj", "v_proj", "lm_head"])
    batch = collate(make_examples(4))
    reference = Trainer(model=copy.deepcopy(model), args=make_args(tmp_path))
    want, want_grads = loss_and_grads(reference, reference.model, batch, torch.tensor(21))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = CalibratedTrainer(
            model=model, args=make_args(tmp_path, max_steps=2), train_dataset=ListDataset(make_examples(8))
        )
        got, got_grads = loss_and_grads(trainer, model, batch, torch.tensor(21))
        trainer.train()
    found = fallback_warnings(record)
    assert len(found) == 1 and "LoRA" in str(found[0].message)
    assert not trainer.fused_loss_active
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert_grads_close(got_grads, want_grads)
    assert any("lm_head" in n for n in got_grads)


@pytest.mark.parametrize("scaling", [8.0, 1.0])
def test_logit_rescaling_model_falls_back(tmp_path, scaling):
    """Granite divides its logits by config.logits_scaling after the head: fused would be wrong."""
    torch.manual_seed(0)
    config = GraniteConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        logits_scaling=scaling,
    )
    model = GraniteForCausalLM(config)
    batch = collate(make_examples(4))
    reference = Trainer(model=copy.deepcopy(model), args=make_args(tmp_path))
    want, _ = loss_and_grads(reference, reference.model, batch)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = CalibratedTrainer(model=model, args=make_args(tmp_path))
        got, _ = loss_and_grads(trainer, model, batch)
    found = fallback_warnings(record)
    if scaling == 1.0:  # a no-op scale passes the probe: fused, no warning
        assert trainer.fused_loss_active and not found
    else:
        assert not trainer.fused_loss_active and len(found) == 1
        assert "logits_scaling" in str(found[0].message)
        assert type(model.lm_head) is torch.nn.Linear  # nothing left installed
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_softcap_model_matches_reference(tmp_path):
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=1.0,  # small, and large weights below, so the cap really bends the logits
        initializer_range=0.5,
        pad_token_id=0,
    )
    model = Gemma2ForCausalLM(config)
    batch = collate(make_examples(4))
    reference = Trainer(model=copy.deepcopy(model), args=make_args(tmp_path))
    want, want_grads = loss_and_grads(reference, reference.model, batch, torch.tensor(19))
    trainer = CalibratedTrainer(model=model, args=make_args(tmp_path))
    assert trainer.fused_loss_active and trainer._calib_plan.softcap == 1.0
    got, got_grads = loss_and_grads(trainer, model, batch, torch.tensor(19))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert_grads_close(got_grads, want_grads, rtol=1e-4, atol=1e-6)
    # The cap bends these logits: without it the loss would differ, so this test can fail.
    with torch.no_grad():
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        raw = torch.nn.functional.linear(hidden, model.lm_head.weight)
    uncapped = label_smoothing_ce(raw[:, :-1], batch["labels"][:, 1:], label_smoothing=0.1, num_items_in_batch=19)
    assert abs(float(uncapped) - float(want)) > 1e-3


def test_sequence_classification_keeps_trainer_loss(tmp_path):
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(llama_config(num_labels=3))
    rows = [
        {"input_ids": r["input_ids"], "attention_mask": r["attention_mask"], "labels": torch.tensor(i % 3)}
        for i, r in enumerate(make_examples(8))
    ]
    batch = collate(rows[:4])
    reference = Trainer(model=copy.deepcopy(model), args=make_args(tmp_path))
    want, want_grads = loss_and_grads(reference, reference.model, batch)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = CalibratedTrainer(model=model, args=make_args(tmp_path, max_steps=2), train_dataset=ListDataset(rows))
        got, got_grads = loss_and_grads(trainer, model, batch)
        trainer.train()
    assert not fallback_warnings(record) and not trainer.fused_loss_active
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert_grads_close(got_grads, want_grads)
    assert trainer.state.log_history[0]["loss"] > 0


def test_compute_loss_func_is_respected(tmp_path):
    calls = []

    def my_loss(outputs, labels, num_items_in_batch=None):
        calls.append(outputs["logits"].shape)
        return outputs["logits"].float().pow(2).mean()

    model = tiny_llama()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = CalibratedTrainer(model=model, args=make_args(tmp_path), compute_loss_func=my_loss)
    assert len(fallback_warnings(record)) == 1 and not trainer.fused_loss_active
    loss, _ = loss_and_grads(trainer, model, collate(make_examples(4)))
    assert calls and calls[0][-1] == VOCAB and loss > 0


# ---- TRL ------------------------------------------------------------------------------------


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {"<pad>": 0, "<unk>": 1, "<eos>": 2, "<bos>": 3}
    vocab = specials | {f"w{i}": i + len(specials) for i in range(VOCAB - len(specials))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", bos_token="<bos>"
    )


def _text_dataset():
    from datasets import Dataset

    # Short, repetitive word sequences: a few steps at a high learning rate make some tokens predictable.
    texts = [" ".join(f"w{(s * 7 + k) % 40 + 4}" for k in range(4 + (s * 5) % 9)) for s in range(16)]
    return Dataset.from_dict({"text": texts})


def _sft_run(cls, tmp_path, eps, model, steps=4):
    from trl import SFTConfig

    args = SFTConfig(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_steps=steps,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        learning_rate=2e-2,
        label_smoothing_factor=eps,
        train_sampling_strategy="sequential",
    )
    data = _text_dataset()
    trainer = cls(model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=_word_tokenizer())
    trainer.train()
    keys = ("loss", "entropy", "mean_token_accuracy", "num_tokens")
    logs = [{k: h[k] for k in keys} for h in trainer.state.log_history if "loss" in h]
    evaluation = trainer.evaluate()
    return trainer, logs + [{k: evaluation[f"eval_{k}"] for k in keys}]


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_calibrated_sft_trainer_matches_sft_trainer(tmp_path, eps):
    pytest.importorskip("trl")
    from trl import SFTTrainer

    from hf_calib.trainer import CalibratedSFTTrainer

    model = tiny_llama(eos_token_id=2, bos_token_id=3)
    _, want = _sft_run(SFTTrainer, tmp_path / "ref", eps, copy.deepcopy(model))  # 4 steps, then evaluate
    widths = []
    model.lm_head.register_forward_hook(lambda _m, _i, out: widths.append(out.shape[-1]))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer, got = _sft_run(CalibratedSFTTrainer, tmp_path / "cal", eps, model)
    assert trainer.fused_loss_active and not fallback_warnings(record)
    assert not [w for w in record if "label_smoothing_factor` is deprecated" in str(w.message)]
    assert widths[0] == VOCAB and set(widths[1:]) == {0}  # only the one-off probe at init built logits
    assert len(got) == len(want) == 5
    for g, w in zip(got, want, strict=True):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5)
        assert g["entropy"] == pytest.approx(w["entropy"], rel=1e-4)
        assert g["mean_token_accuracy"] == pytest.approx(w["mean_token_accuracy"], abs=1e-6)
        assert g["num_tokens"] == w["num_tokens"]
    assert got[3]["loss"] < got[0]["loss"]
    assert got[3]["mean_token_accuracy"] > 0  # so the accuracy comparison above can fail


def test_sft_trainer_is_lazy_and_explains_missing_trl(monkeypatch):
    import sys

    import hf_calib.trainer as trainer_module

    monkeypatch.setitem(sys.modules, "trl", None)  # as if TRL were not installed
    monkeypatch.delitem(sys.modules, "hf_calib.trainer.sft", raising=False)
    monkeypatch.delitem(vars(trainer_module), "CalibratedSFTTrainer", raising=False)
    with pytest.raises(ImportError, match="pip install trl"):
        _ = trainer_module.CalibratedSFTTrainer
    with pytest.raises(AttributeError):
        _ = trainer_module.NoSuchTrainer
