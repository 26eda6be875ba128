"""hf_calib: calibrated fine-tuning for Hugging Face models."""

from .losses import fused_linear_label_smoothing_ce, label_smoothing_ce

__version__ = "0.1.0"

__all__ = [
    "fused_linear_label_smoothing_ce",
    "label_smoothing_ce",
]
