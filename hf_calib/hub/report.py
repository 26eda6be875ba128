"""The calibration report stored in a bundle: metrics before and after calibration, and its reliability diagram.

Metrics come from :class:`hf_calib.metrics.CalibrationState` (the conventions of ``docs/metrics.md``): top-1
confidence against correctness, ECE / MCE / RMS-CE on ``n_bins`` equal-width bins, multiclass Brier
``mean_i sum_c (p_ic - onehot_ic)^2``, NLL ``mean_i -log p_iy`` and the misclassification AUROC of an
uncertainty score (the AdUE head's when there is one, else the softmax response ``1 - max_c p_ic``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..metrics import CalibrationState, headline_metrics, reliability_diagram_from_state, save_reliability_diagram

Level = Literal["answer", "token"]
UncertaintySource = Literal["adue", "softmax_response"]

_LEVELS = ("answer", "token")
_SOURCES = ("adue", "softmax_response")


def _clean_metrics(values: dict[str, Any], what: str) -> dict[str, float]:
    if not isinstance(values, dict):
        raise TypeError(f"{what} must be a dict of metric name to number; got {type(values).__name__}.")
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{what}[{key!r}] must be a finite number; got {value!r}.")
        out[str(key)] = int(value) if key == "n_samples" else float(value)
    return out


@dataclass
class CalibrationReport:
    """How well a bundle's probabilities are calibrated, measured on held-out labelled data.

    Attributes:
        metrics: metrics of the probabilities the bundle outputs (after temperature scaling, if any), keyed as
            :meth:`CalibrationState.compute` (``ece``, ``brier``, ``nll``, ``accuracy``,
            ``misclassification_auroc`` when there are both right and wrong predictions, ...).
        uncalibrated: the same metrics at ``T = 1`` (the raw model), or None when no scaling was measured.
        n_bins: equal-width bins of ECE and of the diagram.
        level: ``"answer"`` (one prediction per example) or ``"token"`` (every supervised next token).
        dataset, split: where the metrics were measured (shown in the model card).
        temperature: the temperature applied for ``metrics`` (None: no scaling).
        uncertainty: what the AUROC ranks by: ``"adue"`` (the AdUE head's U) or ``"softmax_response"``.
        state: the calibrated predictions' state, kept only to draw the diagram; not saved (the PNG is).
    """

    metrics: dict[str, float]
    uncalibrated: dict[str, float] | None = None
    n_bins: int = 15
    level: Level = "answer"
    dataset: str | None = None
    split: str | None = None
    temperature: float | None = None
    uncertainty: UncertaintySource = "softmax_response"
    state: CalibrationState | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.metrics = _clean_metrics(self.metrics, "metrics")
        if self.uncalibrated is not None:
            self.uncalibrated = _clean_metrics(self.uncalibrated, "uncalibrated")
        if isinstance(self.n_bins, bool) or not isinstance(self.n_bins, int) or self.n_bins < 1:
            raise ValueError(f"n_bins must be an integer >= 1; got {self.n_bins!r}.")
        if self.level not in _LEVELS:
            raise ValueError(f"level must be one of {_LEVELS}; got {self.level!r}.")
        if self.uncertainty not in _SOURCES:
            raise ValueError(f"uncertainty must be one of {_SOURCES}; got {self.uncertainty!r}.")
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0 or None; got {self.temperature!r}.")
        if self.state is not None and not isinstance(self.state, CalibrationState):
            raise TypeError(f"state must be a CalibrationState or None; got {type(self.state).__name__}.")

    @classmethod
    def from_logits(
        cls,
        logits: Any,
        labels: Any,
        *,
        temperature: float | None = None,
        uncertainty: Any = None,
        n_bins: int = 15,
        dataset: str | None = None,
        split: str | None = None,
        ignore_index: int | None = None,
    ) -> CalibrationReport:
        """Report on class logits ``[..., C]`` and labels ``[...]`` (``ignore_index`` positions dropped).

        ``metrics`` use ``softmax(logits / temperature)`` and ``uncalibrated`` ``softmax(logits)`` (only when a
        temperature is given). ``uncertainty`` ``[...]`` (e.g. the AdUE head's U) is what the AUROC ranks by;
        without it, ``1 - max_c p_c``.
        """
        z = torch.as_tensor(logits)
        if not z.is_floating_point():
            raise TypeError(f"logits must be floating point; got {z.dtype}.")
        z = z.detach().cpu()
        kwargs = {"uncertainty": None if uncertainty is None else torch.as_tensor(uncertainty).detach().cpu()}
        raw = None
        if temperature is not None:
            if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
                raise ValueError(f"temperature must be a number > 0 or None; got {temperature!r}.")
            temperature = float(temperature)
            raw = CalibrationState(n_bins)
            raw.update_from_logits(z, labels, ignore_index=ignore_index, **kwargs)
        state = CalibrationState(n_bins)
        state.update_from_logits(
            z if temperature is None else z / temperature, labels, ignore_index=ignore_index, **kwargs
        )
        level: Level = "token" if z.ndim > 2 else "answer"
        return cls(
            metrics=state.compute(),
            uncalibrated=None if raw is None else raw.compute(),
            n_bins=n_bins,
            level=level,
            dataset=dataset,
            split=split,
            temperature=temperature,
            uncertainty="softmax_response" if uncertainty is None else "adue",
            state=state,
        )

    @classmethod
    def from_state(
        cls,
        state: CalibrationState,
        *,
        level: Level = "answer",
        dataset: str | None = None,
        split: str | None = None,
        temperature: float | None = None,
        uncalibrated: dict[str, float] | None = None,
    ) -> CalibrationReport:
        """Report on an accumulated :class:`CalibrationState`.

        For example ``CalibratedTrainer.token_calibration.last_state`` (token level, ``level="token"``).
        """
        if not isinstance(state, CalibrationState):
            raise TypeError(f"state must be a hf_calib.metrics.CalibrationState; got {type(state).__name__}.")
        return cls(
            metrics=state.compute(),
            uncalibrated=uncalibrated,
            n_bins=state.n_bins,
            level=level,
            dataset=dataset,
            split=split,
            temperature=temperature,
            state=state,
        )

    def headline(self) -> dict[str, float]:
        """The card's metrics (the headline metrics of :mod:`hf_calib.metrics.catalog` present), in display order."""
        return {key: self.metrics[key] for key in headline_metrics() if key in self.metrics}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content (without ``state``)."""
        return {
            "metrics": dict(self.metrics),
            "uncalibrated": None if self.uncalibrated is None else dict(self.uncalibrated),
            "n_bins": self.n_bins,
            "level": self.level,
            "dataset": self.dataset,
            "split": self.split,
            "temperature": self.temperature,
            "uncertainty": self.uncertainty,
        }

    @classmethod
    def from_dict(cls, content: dict[str, Any]) -> CalibrationReport:
        """Inverse of :meth:`to_dict`; ``ValueError`` names the bad field."""
        if not isinstance(content, dict) or not isinstance(content.get("metrics"), dict):
            raise ValueError("a calibration report must be a JSON object with a 'metrics' object.")
        known = {"metrics", "uncalibrated", "n_bins", "level", "dataset", "split", "temperature", "uncertainty"}
        return cls(**{key: value for key, value in content.items() if key in known})

    def save_diagram(self, path: str | os.PathLike[str]) -> Path:
        """Write the reliability diagram of the calibrated predictions to ``path`` (PNG, atomically)."""
        if self.state is None or self.state.n_samples == 0:
            raise ValueError(
                "this report has no CalibrationState to draw (reports loaded from disk keep the PNG only)."
            )
        title = (
            "Reliability diagram" if self.temperature is None else f"Reliability diagram (T = {self.temperature:.3g})"
        )
        figure = reliability_diagram_from_state(self.state, title=title)
        return save_reliability_diagram(figure, path=path)
