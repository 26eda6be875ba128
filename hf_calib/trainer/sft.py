"""``CalibratedSFTTrainer``: TRL's ``SFTTrainer`` with the fused label-smoothing loss; ``CalibratedSFTConfig``.

Imported lazily (``hf_calib.CalibratedSFTTrainer``) so that hf_calib itself does not need TRL.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..loss import TokenStats
from .calibrated import BundlePushMixin
from .config import CalibrationArguments
from .mixin import CalibratedLossMixin

try:
    from trl import SFTConfig, SFTTrainer
except ImportError as exc:  # pragma: no cover - exercised only without trl
    raise ImportError("hf_calib.CalibratedSFTTrainer needs TRL: pip install trl") from exc

__all__ = ["CalibratedSFTConfig", "CalibratedSFTTrainer"]


@dataclass
class CalibratedSFTConfig(SFTConfig, CalibrationArguments):
    """TRL's ``SFTConfig`` plus hf_calib's settings (:class:`~hf_calib.trainer.config.CalibrationArguments`):
    the twin of :class:`~hf_calib.trainer.CalibratedTrainingArguments` for :class:`CalibratedSFTTrainer`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_calibration_arguments()


class CalibratedSFTTrainer(BundlePushMixin, CalibratedLossMixin, SFTTrainer):
    """TRL ``SFTTrainer`` whose ``label_smoothing_factor`` runs through the fused loss.

    TRL computes label smoothing from full logits with an extra forward pass; here the loss is
    fused into the single forward (see :class:`hf_calib.CalibratedLossMixin`). TRL's per-token
    metrics are kept: ``entropy`` and ``mean_token_accuracy`` of the non-ignored tokens come from
    the fused loss's own softmax (the row statistics its kernels return with the loss: no second pass
    over the output layer), and ``num_tokens`` as TRL counts it. The training-token calibration
    (``token_ece``, ...) of :class:`~hf_calib.trainer.mixin.CalibratedLossMixin` is logged too.

    Hub pushes of a PEFT model carry the calibrated bundle and card, as with ``CalibratedTrainer``
    (``calibrated_adapter=``, ``args.push_calibrated_bundle``; see
    :class:`~hf_calib.trainer.calibrated.BundlePushMixin`).

    Set-ups the fused loss does not express fall back to ``SFTTrainer``'s own loss with one
    warning: ``loss_type="dft"``, MoE router auxiliary loss (``aux_loss_enabled``), a
    ``compute_loss_func``, and the parallel layouts listed in ``CalibratedLossMixin``.
    """

    _calib_wants_token_stats = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():
            # TRL warns that label smoothing costs an extra full-logits forward; not here.
            warnings.filterwarnings("ignore", message="`label_smoothing_factor` is deprecated in `SFTTrainer`")
            super().__init__(*args, **kwargs)

    def _calib_defer_reason(self) -> str | None:
        reason = super()._calib_defer_reason()
        if reason is None and getattr(self.args, "loss_type", "nll") != "nll":
            reason = f"SFTConfig.loss_type={self.args.loss_type!r} is not the label-smoothing cross-entropy"
        if reason is None and getattr(self, "aux_loss_enabled", False):
            reason = "the MoE router auxiliary loss (aux_loss_enabled) is added by SFTTrainer's own loss"
        return reason

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs["use_cache"] = False  # as SFTTrainer: no KV cache in training forwards
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _calib_after_loss(self, inputs: dict[str, Any], stats: TokenStats | None) -> None:
        """Record TRL's ``entropy``, ``mean_token_accuracy`` and ``num_tokens`` metrics, as device tensors: they
        become numbers once per logging step (:meth:`log`), not once per step."""
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        if stats is not None:
            gather = self.accelerator.gather_for_metrics
            n_valid = gather(stats.n_valid).sum()
            entropy_sum = gather(stats.entropy_sum).sum()
            n_correct = gather(stats.n_correct).sum()
            safe = n_valid.clamp(min=1)
            zero = torch.zeros((), dtype=torch.float32, device=n_valid.device)
            metrics["entropy"].append(torch.where(n_valid > 0, entropy_sum / safe, zero).detach())
            metrics["mean_token_accuracy"].append(torch.where(n_valid > 0, n_correct / safe, zero).detach())
        if mode == "train":
            if inputs.get("attention_mask") is not None:
                local = inputs["attention_mask"].sum()
            elif inputs.get("position_ids") is not None:
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            else:
                raise ValueError("Expected 'attention_mask' or 'position_ids' in inputs.")
            tokens = self.accelerator.gather_for_metrics(local).sum()
            pending = getattr(self, "_calib_pending_tokens", None)
            self._calib_pending_tokens = tokens if pending is None else pending + tokens

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's ``log`` after turning this interval's tensor metrics into numbers (one host sync per log)."""
        pending = getattr(self, "_calib_pending_tokens", None)
        if pending is not None:
            self._total_train_tokens += int(pending.item()) // getattr(self, "_tp_size", 1)
            self._calib_pending_tokens = None
        for mode in ("train", "eval"):
            metrics = self._metrics[mode]
            for key in ("entropy", "mean_token_accuracy"):
                values = metrics.get(key)
                if values and isinstance(values[0], torch.Tensor):
                    metrics[key] = torch.stack(values).float().cpu().tolist()
            if mode == "train" or metrics:
                metrics["num_tokens"] = [self._total_train_tokens]
        super().log(logs, start_time)
