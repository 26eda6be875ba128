"""Calibration metrics: pure functions and a mergeable streaming state (torch/numpy only).

Conventions and formulas: ``docs/metrics.md``. Every function accepts tensors, numpy arrays or lists,
raises ``ValueError`` on malformed input and returns a Python float.
"""

from .calibration import (
    calibration_error,
    classwise_calibration_error,
    top_label_calibration_error,
    top_label_confidence,
)
from .ranking import aurc, misclassification_auprc, misclassification_auroc, risk_coverage_curve
from .scores import accuracy, brier_score, nll, nll_from_logits
from .state import CalibrationState

__all__ = [
    "CalibrationState",
    "accuracy",
    "aurc",
    "brier_score",
    "calibration_error",
    "classwise_calibration_error",
    "misclassification_auprc",
    "misclassification_auroc",
    "nll",
    "nll_from_logits",
    "risk_coverage_curve",
    "top_label_calibration_error",
    "top_label_confidence",
]
