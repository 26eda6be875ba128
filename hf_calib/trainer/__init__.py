"""The trainers: the fused loss and calibration metrics wired into transformers' and TRL's trainers.

* :class:`CalibratedTrainer` (``calibrated``) — ``transformers.Trainer`` with the fused label-smoothing loss,
  token calibration in every evaluation and calibrated-bundle pushes (through its callback).
* :class:`CalibratedSFTTrainer` (``sft``) — TRL's ``SFTTrainer`` with the same; imported only when asked for,
  since TRL is optional.
* :class:`CalibratedTrainingArguments` (``config``) — ``TrainingArguments`` with hf_calib's settings
  (:class:`CalibrationArguments`), from YAML / JSON / the command line via ``HfArgumentParser``;
  ``CalibratedSFTConfig`` (``sft``) is TRL's twin.
* :class:`CalibratedLossMixin`, :class:`FusedLossFallbackWarning` (``mixin``) — the fused loss for any Trainer
  subclass, and the warning when a model cannot take it.

Data flows one way: ``hf_calib.loss`` (over ``kernels/``) ← this package ← ``hf_calib.recipes`` / the CLI; the
hub is reached only through :class:`hf_calib.callbacks.CalibratedAdapterCallback`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .calibrated import BundlePushMixin, CalibratedTrainer
from .config import CalibratedTrainingArguments, CalibrationArguments, MultipleChoiceSpec
from .mixin import CalibratedLossMixin, FusedLossFallbackWarning

__all__ = [
    "BundlePushMixin",
    "CalibratedLossMixin",
    "CalibratedSFTConfig",
    "CalibratedSFTTrainer",
    "CalibratedTrainer",
    "CalibratedTrainingArguments",
    "CalibrationArguments",
    "FusedLossFallbackWarning",
    "MultipleChoiceSpec",
]
_NEEDS_TRL = ("CalibratedSFTTrainer", "CalibratedSFTConfig")


def __getattr__(name: str) -> Any:
    if name in _NEEDS_TRL:
        sft = import_module(".sft", __name__)  # through sys.modules, so a missing TRL is always reported

        globals()[name] = value = getattr(sft, name)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .sft import CalibratedSFTConfig, CalibratedSFTTrainer
