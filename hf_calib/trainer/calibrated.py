"""``CalibratedTrainer``: transformers' ``Trainer`` with the fused label-smoothing loss.

The loss, the token-level calibration metrics and ``multiple_choice=`` come from
:class:`~hf_calib.trainer.mixin.CalibratedLossMixin`. ``CalibratedTrainer`` adds bundle pushes to the Hub
through its callback, :class:`~hf_calib.callbacks.CalibratedAdapterCallback`: the trainer knows the callback,
never the hub.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from .config import calibration_settings
from .mixin import CalibratedLossMixin

__all__ = ["BundlePushMixin", "CalibratedTrainer"]


class BundlePushMixin:
    """Hub pushes of a PEFT model carry the calibrated bundle, through a
    :class:`~hf_calib.callbacks.CalibratedAdapterCallback` (``self.calibrated_adapter``).

    Put it before :class:`~hf_calib.trainer.mixin.CalibratedLossMixin` in the bases. The callback is the one
    passed as ``calibrated_adapter=``, else one passed in ``callbacks=[...]``, else a new one, unless
    ``args.push_calibrated_bundle`` is False (:class:`~hf_calib.trainer.CalibratedTrainingArguments`), in which
    case pushes are Trainer's own and ``calibrated_adapter`` is None.
    """

    def __init__(self, *args: Any, calibrated_adapter: Any = None, **kwargs: Any) -> None:
        from ..callbacks.push import CalibratedAdapterCallback

        if calibrated_adapter is not None and not isinstance(calibrated_adapter, CalibratedAdapterCallback):
            raise TypeError(
                "calibrated_adapter must be a hf_calib.callbacks.CalibratedAdapterCallback; "
                f"got {type(calibrated_adapter).__name__}."
            )
        super().__init__(*args, **kwargs)
        given = [cb for cb in self.callback_handler.callbacks if isinstance(cb, CalibratedAdapterCallback)]
        settings = calibration_settings(self.args)
        if calibrated_adapter is None and not given and settings is not None and not settings.push_calibrated_bundle:
            self.calibrated_adapter = None
            return
        if calibrated_adapter is None:
            calibrated_adapter = given[0] if given else CalibratedAdapterCallback()
        for callback in given:
            if callback is not calibrated_adapter:
                self.remove_callback(callback)
        if calibrated_adapter.token_calibration is None:
            calibrated_adapter.token_calibration = self.token_calibration
        self.calibrated_adapter = calibrated_adapter
        if calibrated_adapter not in self.callback_handler.callbacks:
            self.add_callback(calibrated_adapter)

    def create_model_card(self, **kwargs: Any) -> None:
        """The calibration card for a PEFT model (see :mod:`hf_calib.hub.card`), else the base trainer's card."""
        if not self.is_world_process_zero():
            return
        if self.calibrated_adapter is None or not self.calibrated_adapter.write_model_card(self, **kwargs):
            super().create_model_card(**kwargs)


class CalibratedTrainer(BundlePushMixin, CalibratedLossMixin, Trainer):
    """``transformers.Trainer`` whose ``label_smoothing_factor`` runs through the fused loss.

    Drop-in: ``CalibratedTrainer(model=..., args=TrainingArguments(label_smoothing_factor=0.1), ...)``, or
    ``args=CalibratedTrainingArguments(...)`` to set hf_calib's options with the run's arguments.
    See :class:`CalibratedLossMixin` for which path each model takes. Evaluations also report
    token-level calibration (``calibration_metrics=False`` switches that off).

    Hub pushes of a PEFT model (``push_to_hub=True``, any ``hub_strategy``, and ``push_to_hub()``) upload the
    whole calibrated bundle through ``self.calibrated_adapter``, a
    :class:`~hf_calib.callbacks.CalibratedAdapterCallback` (pass your own as ``calibrated_adapter=``, or set its
    ``temperature`` / ``report`` / ``card`` before pushing); the model card is the calibration card
    (:class:`BundlePushMixin`).
    """
