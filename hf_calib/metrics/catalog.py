"""Which metrics are reported where: one entry per metric, read by the Trainer logs and the model card.

Adding a metric: its function (next to the others in this package), its value in
:meth:`CalibrationState.compute`, and one :class:`MetricInfo` here. Token calibration in Trainer logs
(``eval_token_<key>``) takes every ``logged`` key; the model card shows every ``headline`` key present
in a report, in this order, under its ``label``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METRICS", "MetricInfo", "headline_metrics", "logged_metrics"]


@dataclass(frozen=True)
class MetricInfo:
    """One metric of :meth:`CalibrationState.compute`.

    Args:
        key: the key in ``CalibrationState.compute()``.
        label: its name for readers (model card).
        logged: reported by token calibration in Trainer logs as ``{metric_key_prefix}_{prefix}{key}``
            (needs a value from the streaming sums alone, i.e. no ``keep_samples``).
        headline: shown on the model card when a report has it.
    """

    key: str
    label: str
    logged: bool = False
    headline: bool = False


#: Every reported metric, in display order.
METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("ece", "ECE", logged=True, headline=True),
    MetricInfo("rms_ce", "RMS calibration error", logged=True),
    MetricInfo("mce", "MCE", logged=True),
    MetricInfo("brier", "Brier score", logged=True, headline=True),
    MetricInfo("nll", "NLL", logged=True, headline=True),
    MetricInfo("misclassification_auroc", "Misclassification AUROC", headline=True),
    MetricInfo("accuracy", "Accuracy", logged=True, headline=True),
    MetricInfo("mean_confidence", "Mean confidence", logged=True),
)


def logged_metrics() -> tuple[str, ...]:
    """Keys token calibration reports in Trainer logs, in order."""
    return tuple(info.key for info in METRICS if info.logged)


def headline_metrics() -> dict[str, str]:
    """``{key: label}`` of the metrics a model card shows, in order."""
    return {info.key: info.label for info in METRICS if info.headline}
