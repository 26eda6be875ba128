"""The fused label-smoothing loss, in one place over the math in ``hf_calib_kernels`` (the ``kernels/`` folder).

Public functions (``functions``):

* :func:`fused_linear_label_smoothing_ce` — label-smoothing CE from hidden states and the output weight, chunked,
  without materializing ``[tokens, vocab]`` logits; backend dispatch (torch / Triton).
* :func:`label_smoothing_ce` — the same loss from logits.

The output layer that returns the loss (``head``), used by the trainers:

* :func:`is_causal_lm` — whether transformers trains a model with the shifted causal-LM loss.
* :func:`plan_fused_loss` — decide once per model whether its output layer can take the fused loss
  (:class:`FusedLossPlan`, with the reason when not), and arm it (:class:`FusedLossLinear`).
* :func:`armed` with a :class:`FusedLossRequest` — one forward that returns the loss (and statistics) instead
  of logits. :func:`shift_causal_labels`, :class:`TokenStats`.

Per-token calibration statistics (``token_calibration``):

* :class:`TokenCalibrationConfig`, :class:`TokenCalibrationMetrics`, :func:`token_calibration_metrics` (for a
  plain Trainer), and the packed per-sample rows the trainers gather (:func:`token_calibration_stats`,
  :func:`pack_token_stats`, :func:`pack_sample_stats`, :func:`stats_width`).
* :class:`TrainTokenCalibration` (``train_calibration``) — the calibration of the training tokens, summed
  between logging steps from the statistics the loss kernels return with the loss.
"""

from .functions import fused_linear_label_smoothing_ce, label_smoothing_ce, resolve_backend
from .head import (
    FusedLossLinear,
    FusedLossPlan,
    FusedLossRequest,
    TokenStats,
    armed,
    is_causal_lm,
    plan_fused_loss,
    shift_causal_labels,
)
from .token_calibration import (
    TokenCalibrationConfig,
    TokenCalibrationMetrics,
    pack_token_stats,
    stats_width,
    token_calibration_metrics,
    token_calibration_state,
    token_calibration_stats,
)
from .train_calibration import TrainTokenCalibration, pack_sample_stats

__all__ = [
    "FusedLossLinear",
    "FusedLossPlan",
    "FusedLossRequest",
    "TokenCalibrationConfig",
    "TokenCalibrationMetrics",
    "TokenStats",
    "TrainTokenCalibration",
    "armed",
    "fused_linear_label_smoothing_ce",
    "is_causal_lm",
    "label_smoothing_ce",
    "pack_sample_stats",
    "pack_token_stats",
    "plan_fused_loss",
    "resolve_backend",
    "shift_causal_labels",
    "stats_width",
    "token_calibration_metrics",
    "token_calibration_state",
    "token_calibration_stats",
]
