"""Every Trainer callback of hf_calib, in one place.

* :class:`ReliabilityDiagramCallback` — reliability diagrams of token-level calibration at each evaluation.
* :class:`MultipleChoiceCalibrationCallback` — multiple-choice calibration at each evaluation (plain Trainer).
* :class:`GenerationEvalCallback` — reference metrics and judge scores of generations at each evaluation.
* :class:`CalibratedAdapterCallback` — Trainer's Hub pushes carry the calibrated bundle (:mod:`hf_calib.hub`).

Each is imported on first use, so importing one does not import the others' dependencies.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ReliabilityDiagramCallback": ".reliability",
    "MultipleChoiceCalibrationCallback": ".multiple_choice",
    "GenerationEvalCallback": ".generation",
    "CalibratedAdapterCallback": ".push",
}

__all__ = [
    "CalibratedAdapterCallback",
    "GenerationEvalCallback",
    "MultipleChoiceCalibrationCallback",
    "ReliabilityDiagramCallback",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from .generation import GenerationEvalCallback
    from .multiple_choice import MultipleChoiceCalibrationCallback
    from .push import CalibratedAdapterCallback
    from .reliability import ReliabilityDiagramCallback
