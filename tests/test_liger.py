"""``use_liger_kernel=True`` with hf_calib: Liger's kernels stay on the model, the loss is hf_calib's fused loss.

liger-kernel's Triton kernels (RMSNorm, RoPE, SwiGLU) need a GPU, so they are switched off with Liger's own
``liger_kernel_config``; what remains is Liger's real patched ``forward`` of the model (its ``skip_logits``
contract included), which is exactly the part hf_calib has to get along with.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_trainer import ListDataset, collate, make_args, make_examples, tiny_llama

from hf_calib.trainer import CalibratedTrainer

pytest.importorskip("liger_kernel", reason="liger-kernel is not installed")

CPU_SAFE = {"rope": False, "rms_norm": False, "swiglu": False}  # Liger's GPU-only kernels off


def _trainer(tmp_path, liger: bool, **overrides) -> CalibratedTrainer:
    rows = make_examples(8)
    args = make_args(tmp_path, max_steps=2, **overrides)
    if liger:
        args = make_args(tmp_path, max_steps=2, use_liger_kernel=True, liger_kernel_config=CPU_SAFE, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return CalibratedTrainer(
            model=tiny_llama(),
            args=args,
            train_dataset=ListDataset(rows),
            eval_dataset=ListDataset(rows),
            data_collator=collate,
        )


def _liger_patched(model) -> bool:
    forward = getattr(model.forward, "__func__", model.forward)  # Liger patches the instance's forward
    return forward.__module__.startswith("liger_kernel")


def test_liger_evaluate_and_train_match_the_plain_trainer(tmp_path):
    plain = _trainer(tmp_path / "plain", liger=False)
    liger = _trainer(tmp_path / "liger", liger=True)
    plain.train()
    liger.train()  # Trainer applies Liger here
    assert _liger_patched(liger.model) and not _liger_patched(plain.model)
    assert liger.fused_loss_active
    losses = [[e["loss"] for e in t.state.log_history if "loss" in e] for t in (plain, liger)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for p, q in zip(plain.model.parameters(), liger.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    after_plain, after_liger = plain.evaluate(), liger.evaluate()  # used to raise "skip_logits is True ..."
    for key in ("eval_loss", "eval_token_ece", "eval_token_nll", "eval_token_count"):
        assert after_liger[key] == pytest.approx(after_plain[key], rel=1e-5), key


def test_liger_prediction_loss_only_and_predict(tmp_path):
    trainer = _trainer(tmp_path, liger=True, prediction_loss_only=True)
    trainer.train()
    assert _liger_patched(trainer.model)
    metrics = trainer.evaluate()
    assert metrics["eval_token_count"] > 0 and metrics["eval_loss"] > 0
    out = trainer.predict(trainer.eval_dataset)  # needs the logits: Liger's forward must return them
    assert out.metrics["test_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)
