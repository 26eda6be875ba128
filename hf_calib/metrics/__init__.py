"""Calibration metrics: pure functions and a mergeable streaming state (torch/numpy only).

Conventions and formulas: ``docs/metrics.md``. Every function accepts tensors, numpy arrays or lists,
raises ``ValueError`` on malformed input and returns a Python float. Which metric is reported where
(Trainer logs, model card): :mod:`hf_calib.metrics.catalog`.
"""

from .calibration import (
    calibration_error,
    classwise_calibration_error,
    top_label_calibration_error,
    top_label_confidence,
)
from .catalog import METRICS, MetricInfo, headline_metrics, logged_metrics
from .evaluate_support import evaluate_module
from .plots import reliability_diagram, reliability_diagram_from_state, save_reliability_diagram
from .ranking import aurc, misclassification_auprc, misclassification_auroc, risk_coverage_curve
from .scores import accuracy, brier_score, nll, nll_from_logits
from .state import CalibrationState

__all__ = [
    "METRICS",
    "CalibrationState",
    "MetricInfo",
    "accuracy",
    "aurc",
    "brier_score",
    "calibration_error",
    "classwise_calibration_error",
    "evaluate_module",
    "headline_metrics",
    "logged_metrics",
    "misclassification_auprc",
    "misclassification_auroc",
    "nll",
    "nll_from_logits",
    "reliability_diagram",
    "reliability_diagram_from_state",
    "risk_coverage_curve",
    "save_reliability_diagram",
    "top_label_calibration_error",
    "top_label_confidence",
]
