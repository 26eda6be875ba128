"""Fused label-smoothing cross-entropy kernels (installed as ``hf_calib_kernels``).

Imports torch (and triton, lazily) only. The public, validated API is
``hf_calib.fused_linear_label_smoothing_ce`` / ``hf_calib.label_smoothing_ce``.
"""

from .ce_torch import label_smoothing_ce_rows as label_smoothing_ce_rows_torch
from .fused_linear import (
    DEFAULT_CHUNK_BYTES,
    CESettings,
    FusedLinearLabelSmoothingCE,
    chunk_rows_for,
    default_chunk_rows,
    fused_linear_ce,
)
from .logits_ce import LabelSmoothingCE, label_smoothing_ce_from_logits
from .row_stats import N_STATS, STAT_NAMES, RowStats, split_row_stats

__all__ = [
    "CESettings",
    "DEFAULT_CHUNK_BYTES",
    "FusedLinearLabelSmoothingCE",
    "LabelSmoothingCE",
    "N_STATS",
    "RowStats",
    "STAT_NAMES",
    "chunk_rows_for",
    "default_chunk_rows",
    "fused_linear_ce",
    "split_row_stats",
    "label_smoothing_ce_from_logits",
    "label_smoothing_ce_rows_torch",
]
