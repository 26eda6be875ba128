"""Send a callback's image (e.g. a reliability diagram) to every ``report_to`` integration that takes images.

:class:`ImageLogger` is what the diagram-drawing callbacks share. Each integration gets the image under the
name Trainer gives a scalar logged with the same key, at ``state.global_step``:

* ``"tensorboard"``: ``SummaryWriter.add_image`` under ``eval/x`` (for the key ``eval_x``), on the writer of
  the trainer's ``TensorBoardCallback``, else on a writer of its own (``$TENSORBOARD_LOGGING_DIR`` or
  ``{output_dir}/runs/calibration``).
* ``"mlflow"``: ``mlflow.log_image(image, key="eval_x", step=step)`` on the active run (the one
  transformers' ``MLflowCallback`` started or reused), i.e. the artifacts
  ``images/eval_x+step+{step}+...png`` shown by the MLflow UI's image charts.
* ``"wandb"``: ``wandb.run.log({"eval/x": wandb.Image(image), "train/global_step": step})`` on the active
  run. Like ``WandbCallback``, it passes no ``step=``: W&B drops a row whose ``step`` is below its own
  counter, which Trainer's logging keeps ahead of ``global_step``; ``train/global_step`` is the x-axis
  that ``WandbCallback`` declares.

An integration in ``report_to`` whose package is missing, which has no active run, or which fails is skipped
with one warning; training goes on.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from transformers import Trainer, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

#: The ``report_to`` names that receive images, in the order they are served.
IMAGE_INTEGRATIONS = ("tensorboard", "mlflow", "wandb")


def report_targets(args: TrainingArguments) -> list[str]:
    """``args.report_to`` as a list (``TrainingArguments`` normalises it; a later assignment may not)."""
    report_to = args.report_to or []
    return [report_to] if isinstance(report_to, str) else list(report_to)


def trainer_key(key: str) -> str:
    """The name Trainer's TensorBoard and W&B callbacks give a logged key (``eval_x`` -> ``eval/x``)."""
    from transformers.integrations.integration_utils import rewrite_logs

    return next(iter(rewrite_logs({key: 0.0})))


class ImageLogger:
    """Log ``[H, W, 3]`` uint8 images to the image-taking integrations of ``args.report_to`` (module docs).

    ``trainer``: the trainer the callback belongs to (its ``TensorBoardCallback`` writer is reused);
    ``integrations``: the integrations this logger may serve (default: all of :data:`IMAGE_INTEGRATIONS`);
    ``what``: how warnings name the image.
    """

    def __init__(
        self,
        trainer: Trainer | None = None,
        *,
        integrations: Iterable[str] = IMAGE_INTEGRATIONS,
        what: str = "the image",
    ) -> None:
        self.trainer = trainer
        self.integrations = tuple(name for name in IMAGE_INTEGRATIONS if name in set(integrations))
        self.what = what
        self._own_writer: Any = None
        self._disabled: set[str] = set()  # package missing: never tried again
        self._warned: set[str] = set()

    def log(self, args: TrainingArguments, state: TrainerState, key: str, image: np.ndarray) -> list[str]:
        """Send ``image`` under ``key`` (a Trainer log key, e.g. ``eval_token_reliability_diagram``) at
        ``state.global_step``; return the integrations that took it. Other processes than the main one send
        nothing."""
        if not state.is_world_process_zero:
            return []
        targets = report_targets(args)
        sent = []
        for name in self.integrations:
            if name not in targets or name in self._disabled:
                continue
            try:
                reason = getattr(self, f"_{name}")(args, key, image, state.global_step)
            except ImportError as err:
                self._disabled.add(name)
                reason = f"its package is not installed ({err})"
            except Exception as err:  # a logging back end must never stop training
                reason = f"it failed: {type(err).__name__}: {err}"
            if reason is None:
                sent.append(name)
            elif name not in self._warned:
                self._warned.add(name)
                logger.warning("hf_calib: %s is not logged to %s: %s.", self.what, name, reason)
        return sent

    def close(self) -> None:
        """Close the TensorBoard writer this logger opened itself (not the trainer's)."""
        if self._own_writer is not None:
            self._own_writer.close()
            self._own_writer = None

    # ---------------------------------------------------------------------------- one per integration
    # Each returns None when the image was sent, else why not (an ImportError: the package is missing).
    def _tensorboard(self, args: TrainingArguments, key: str, image: np.ndarray, step: int) -> str | None:
        writer = self._writer(args)
        writer.add_image(trainer_key(key), image, step, dataformats="HWC")
        writer.flush()
        return None

    def _writer(self, args: TrainingArguments) -> Any:
        """The trainer's TensorBoard writer, else one of our own."""
        if self.trainer is not None:
            from transformers.integrations import TensorBoardCallback

            for callback in self.trainer.callback_handler.callbacks:
                if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                    return callback.tb_writer
        if self._own_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            logdir = os.getenv("TENSORBOARD_LOGGING_DIR") or os.path.join(args.output_dir, "runs", "calibration")
            self._own_writer = SummaryWriter(log_dir=logdir)
        return self._own_writer

    def _mlflow(self, args: TrainingArguments, key: str, image: np.ndarray, step: int) -> str | None:
        import mlflow

        if mlflow.active_run() is None:
            return "there is no active MLflow run (transformers' MLflowCallback starts one at the first log)"
        name = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", key)  # the characters MLflow allows in an image key
        try:
            mlflow.log_image(image, key=name, step=step)
        except TypeError:  # mlflow < 2.12: no time-stepped images, a plain artifact instead
            mlflow.log_image(image, f"images/{name}_step{step}.png")
        return None

    def _wandb(self, args: TrainingArguments, key: str, image: np.ndarray, step: int) -> str | None:
        import wandb

        if wandb.run is None:
            return "there is no active W&B run (transformers' WandbCallback starts one at the first log)"
        wandb.run.log({trainer_key(key): wandb.Image(image), "train/global_step": step})
        return None
