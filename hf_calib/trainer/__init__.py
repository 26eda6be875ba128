"""The trainers: the fused loss and calibration metrics wired into transformers' and TRL's trainers.

* :class:`CalibratedTrainer` (``calibrated``) — ``transformers.Trainer`` with the fused label-smoothing loss,
  token calibration in every evaluation and calibrated-bundle pushes (through its callback).
* :class:`CalibratedSFTTrainer` (``sft``) — TRL's ``SFTTrainer`` with the same; imported only when asked for,
  since TRL is optional.
* :class:`CalibratedLossMixin`, :class:`FusedLossFallbackWarning` (``mixin``) — the fused loss for any Trainer
  subclass, and the warning when a model cannot take it.

Data flows one way: ``hf_calib.loss`` (over ``kernels/``) ← this package ← ``hf_calib.recipes`` / the CLI; the
hub is reached only through :class:`hf_calib.callbacks.CalibratedAdapterCallback`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .calibrated import CalibratedTrainer
from .mixin import CalibratedLossMixin, FusedLossFallbackWarning

__all__ = ["CalibratedLossMixin", "CalibratedSFTTrainer", "CalibratedTrainer", "FusedLossFallbackWarning"]


def __getattr__(name: str) -> Any:
    if name == "CalibratedSFTTrainer":
        from .sft import CalibratedSFTTrainer

        globals()[name] = CalibratedSFTTrainer
        return CalibratedSFTTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .sft import CalibratedSFTTrainer
