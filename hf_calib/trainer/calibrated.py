"""``CalibratedTrainer``: transformers' ``Trainer`` with the fused label-smoothing loss.

The loss, the token-level calibration metrics and ``multiple_choice=`` come from
:class:`~hf_calib.trainer.mixin.CalibratedLossMixin`. ``CalibratedTrainer`` adds bundle pushes to the Hub
through its callback, :class:`~hf_calib.callbacks.CalibratedAdapterCallback`: the trainer knows the callback,
never the hub.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from .mixin import CalibratedLossMixin

__all__ = ["CalibratedTrainer"]


class CalibratedTrainer(CalibratedLossMixin, Trainer):
    """``transformers.Trainer`` whose ``label_smoothing_factor`` runs through the fused loss.

    Drop-in: ``CalibratedTrainer(model=..., args=TrainingArguments(label_smoothing_factor=0.1), ...)``.
    See :class:`CalibratedLossMixin` for which path each model takes. Evaluations also report
    token-level calibration (``calibration_metrics=False`` switches that off).

    Hub pushes of a PEFT model (``push_to_hub=True``, any ``hub_strategy``, and ``push_to_hub()``) upload the
    whole calibrated bundle through ``self.calibrated_adapter``, a
    :class:`~hf_calib.callbacks.CalibratedAdapterCallback` (pass your own as ``calibrated_adapter=``, or set its
    ``temperature`` / ``report`` / ``card`` before pushing); the model card is the calibration card.
    """

    def __init__(self, *args: Any, calibrated_adapter: Any = None, **kwargs: Any) -> None:
        from ..callbacks.push import CalibratedAdapterCallback

        if calibrated_adapter is not None and not isinstance(calibrated_adapter, CalibratedAdapterCallback):
            raise TypeError(
                "calibrated_adapter must be a hf_calib.callbacks.CalibratedAdapterCallback; "
                f"got {type(calibrated_adapter).__name__}."
            )
        super().__init__(*args, **kwargs)
        # One bundle writer per trainer: the one given, else one passed in callbacks=[...], else a new one.
        given = [cb for cb in self.callback_handler.callbacks if isinstance(cb, CalibratedAdapterCallback)]
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
        """The calibration card for a PEFT model (see :mod:`hf_calib.hub.card`), else Trainer's own card."""
        if self.is_world_process_zero() and not self.calibrated_adapter.write_model_card(self, **kwargs):
            super().create_model_card(**kwargs)
