"""Trainer integration: every Hub push of a PEFT model carries the whole calibrated bundle, not only the adapter.

transformers' Trainer pushes in two places, both announced by the ``on_push_begin`` event:

- ``_push_from_checkpoint`` after each save when ``hub_strategy`` is ``"every_save"``, ``"checkpoint"`` or
  ``"all_checkpoints"`` (never for ``"end"``): it copies the adapter files from the new checkpoint into
  ``output_dir`` and uploads ``output_dir`` (plus the checkpoint folder as ``last-checkpoint/`` or
  ``checkpoint-N/`` for the two checkpoint strategies);
- ``push_to_hub()``: saves the model into ``output_dir``, writes the model card (``create_model_card``) and
  uploads ``output_dir``.

:class:`CalibratedAdapterCallback` writes the bundle's own files (``calibration.json``, ``calibration/``, the
AdUE head, ``reliability_diagram.png`` and the model card) into ``output_dir`` and into the new checkpoint folder
at ``on_push_begin``, so they ride along with Trainer's own uploads and the Hub strategy is honoured as it is.
The adapter files are Trainer's. ``push_to_hub()`` overwrites ``README.md`` with Trainer's card after the event;
``CalibratedTrainer`` overrides ``create_model_card`` to write the calibration card instead, and plain Trainer
users call :meth:`CalibratedAdapterCallback.push_to_hub` (``callback.push_to_hub(trainer)``) for the same effect.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .._model_utils import is_peft, unwrap_ddp
from ..calibrators import Calibrator
from ..hub import CalibratedAdapter, CalibrationReport, CardInfo, write_alongside_adapter

if TYPE_CHECKING:
    from transformers import Trainer

    from ..loss import TokenCalibrationMetrics

logger = logging.getLogger(__name__)

__all__ = ["CalibratedAdapterCallback"]


def _training_settings(args: TrainingArguments) -> dict[str, Any]:
    """The TrainingArguments a reader of the card wants to see (defaults that mean "unset" are left out)."""
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    settings: dict[str, Any] = {
        "Learning rate": args.learning_rate,
        "Epochs": args.num_train_epochs if args.max_steps <= 0 else None,
        "Max steps": args.max_steps if args.max_steps > 0 else None,
        "Batch size per device": args.per_device_train_batch_size,
        "Gradient accumulation steps": args.gradient_accumulation_steps,
        "LR scheduler": scheduler,
        "Weight decay": args.weight_decay or None,
        "Precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "Seed": args.seed,
    }
    return {key: value for key, value in settings.items() if value is not None}


class CalibratedAdapterCallback(TrainerCallback):
    """Make Trainer's Hub pushes upload the complete :class:`CalibratedAdapter` bundle of a PEFT model.

    Set the calibrators when you have them (typically after training, before ``push_to_hub()``)::

        callback = CalibratedAdapterCallback(card=CardInfo(datasets=["imdb"]))
        trainer = Trainer(model=peft_model, args=TrainingArguments(..., push_to_hub=True), callbacks=[callback])
        trainer.train()
        callback.temperature = TemperatureScaler().fit(val_logits, val_labels)
        t = callback.temperature.temperature
        callback.report = CalibrationReport.from_logits(test_logits, test_labels, temperature=t)
        callback.push_to_hub(trainer)  # plain Trainer; CalibratedTrainer: trainer.push_to_hub()

    Args:
        temperature, thermometer, calibrators, report, card: as in :class:`CalibratedAdapter` (attributes,
            settable later).
        label_smoothing: the epsilon recorded in the bundle; None takes ``args.label_smoothing_factor``.
        token_calibration: when no ``report`` is set, report the token-level calibration of the latest
            evaluation (``CalibratedTrainer.token_calibration.last_state``) instead.

    Models that are not PEFT models (full fine-tuning) are pushed as Trainer does, without a bundle.
    """

    def __init__(
        self,
        *,
        temperature: Any = None,
        thermometer: nn.Module | None = None,
        calibrators: Sequence[Calibrator] = (),
        report: CalibrationReport | None = None,
        card: CardInfo | None = None,
        label_smoothing: float | None = None,
        token_calibration: TokenCalibrationMetrics | None = None,
    ) -> None:
        self.temperature = temperature
        self.thermometer = thermometer
        self.calibrators = list(calibrators)
        self.report = report
        self.card = card or CardInfo()
        self.label_smoothing = label_smoothing
        self.token_calibration = token_calibration
        #: Folders the bundle files were last written to (for inspection and tests).
        self.written: list[Path] = []
        self._files: list[str] = []  # the bundle's files (adapter included) at the last write

    # ------------------------------------------------------------------ building
    def _report(self) -> CalibrationReport | None:
        if self.report is not None:
            return self.report
        state = getattr(self.token_calibration, "last_state", None)
        if state is None or state.n_samples == 0:
            return None
        return CalibrationReport.from_state(state, level="token", split="eval")

    def build(
        self, model: nn.Module | None, args: TrainingArguments, **card_overrides: Any
    ) -> CalibratedAdapter | None:
        """The bundle of ``model`` under ``args``, or None when ``model`` is not a PEFT model."""
        if model is not None:
            model = unwrap_ddp(model)
        if model is None or not is_peft(model):
            logger.info("hf_calib: %s is not a PEFT model; pushing without a calibrated bundle.", type(model).__name__)
            return None
        card = CardInfo.from_dict(self.card.to_dict())
        card.training = {**_training_settings(args), **card.training}
        # Card fields of CalibratedTrainingArguments fill what this callback's CardInfo leaves empty.
        from_args = {
            "datasets": getattr(args, "card_datasets", None),
            "base_model": getattr(args, "card_base_model", None),
            "license": getattr(args, "card_license", None),
            "language": getattr(args, "card_language", None),
        }
        for key, value in from_args.items():
            if value and not getattr(card, key):
                setattr(card, key, list(value) if key == "datasets" else value)
        for key, value in card_overrides.items():
            if value is not None:
                setattr(card, key, value)
        card.__post_init__()
        smoothing = self.label_smoothing if self.label_smoothing is not None else args.label_smoothing_factor
        return CalibratedAdapter(
            model,
            temperature=self.temperature,
            thermometer=self.thermometer,
            calibrators=self.calibrators,
            label_smoothing=smoothing,
            report=self._report(),
            card=card,
        )

    def write_bundle_files(
        self,
        model: nn.Module | None,
        args: TrainingArguments,
        folders: list[Path],
        repo_id: str | None = None,
        adapter_source: Path | None = None,
    ) -> list[str]:
        """Write the bundle's files except the adapter's into each of ``folders``; returns their names.

        The manifest records the checksums of the adapter files in ``adapter_source`` (the checkpoint Trainer
        copies them from) when it holds them, else of the adapter as PEFT saves it now (what Trainer's
        ``save_model`` writes next). It is copied last, after the files it describes.
        """
        bundle = self.build(model, args)
        if bundle is None or not folders:
            return []
        own, self._files = write_alongside_adapter(bundle, folders, repo_id=repo_id, adapter_source=adapter_source)
        self.written = list(folders)
        return own

    # ------------------------------------------------------------------ Trainer events
    def on_push_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        folders = [output_dir]
        checkpoint = output_dir / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if checkpoint.is_dir():  # the checkpoint Trainer just saved (uploaded too by the checkpoint strategies)
            folders.append(checkpoint)
        source = checkpoint if checkpoint.is_dir() else None
        self.write_bundle_files(
            kwargs.get("model"), args, folders, repo_id=args.hub_model_id or output_dir.name, adapter_source=source
        )

    # ------------------------------------------------------------------ the final push
    def write_model_card(self, trainer: Trainer, **card_kwargs: Any) -> bool:
        """Write the calibration card to ``{output_dir}/README.md`` (Trainer's ``create_model_card`` arguments
        ``model_name``, ``language``, ``license``, ``tags``, ``finetuned_from``, ``dataset`` and TRL's
        ``dataset_name`` are honoured).

        Returns False (and writes nothing) when the model is not a PEFT model.
        """
        overrides = {
            "model_name": card_kwargs.get("model_name"),
            "language": card_kwargs.get("language"),
            "license": card_kwargs.get("license"),
            "base_model": card_kwargs.get("finetuned_from"),
        }
        dataset = card_kwargs.get("dataset") or card_kwargs.get("dataset_name")  # Trainer's / TRL's name
        if dataset:
            overrides["datasets"] = dataset
        if card_kwargs.get("tags"):
            tags = card_kwargs["tags"]
            overrides["tags"] = [*self.card.tags, *([tags] if isinstance(tags, str) else tags)]
        bundle = self.build(trainer.model, trainer.args, **overrides)
        if bundle is None:
            return False
        repo_id = (
            getattr(trainer, "hub_model_id", None) or trainer.args.hub_model_id or Path(trainer.args.output_dir).name
        )
        output_dir = Path(trainer.args.output_dir)
        files = [name for name in self._files if (output_dir / name).is_file()]
        if self._files and len(files) == len(self._files):
            # Trainer has just saved the adapter: record the checksums of the files it uploads, and the card.
            bundle.write_manifest(output_dir, files, repo_id=repo_id)
        else:
            diagram = (output_dir / "reliability_diagram.png").is_file()
            bundle.model_card(repo_id, diagram=diagram).save(os.path.join(output_dir, "README.md"))
        return True

    def push_to_hub(self, trainer: Trainer, **kwargs: Any) -> Any:
        """``trainer.push_to_hub(**kwargs)`` with the calibration card as ``README.md`` (for a plain Trainer).

        Trainer writes its own card between ``on_push_begin`` and the upload; for the duration of this call the
        trainer's ``create_model_card`` writes the calibration card instead (``CalibratedTrainer`` always does).
        """
        if self not in trainer.callback_handler.callbacks:
            raise ValueError("add this callback to the trainer first: Trainer(..., callbacks=[callback]).")

        def create_model_card(**card_kwargs: Any) -> None:
            if trainer.is_world_process_zero() and not self.write_model_card(trainer, **card_kwargs):
                type(trainer).create_model_card(trainer, **card_kwargs)

        trainer.create_model_card = create_model_card
        try:
            return trainer.push_to_hub(**kwargs)
        finally:
            del trainer.create_model_card
