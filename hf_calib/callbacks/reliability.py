"""Trainer callbacks for calibration reporting: reliability diagrams at each evaluation.

``CalibratedTrainer`` installs :class:`ReliabilityDiagramCallback` itself; plain ``Trainer`` users add it
next to :func:`hf_calib.token_calibration.token_calibration_metrics`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..loss import TokenCalibrationMetrics
from ..metrics import reliability_diagram_from_state, save_reliability_diagram
from ._keys import metric_key_prefix

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from transformers import Trainer

logger = logging.getLogger(__name__)

__all__ = ["ReliabilityDiagramCallback"]


class ReliabilityDiagramCallback(TrainerCallback):
    """Draw the token-level reliability diagram of each evaluation (main process only).

    After every ``evaluate()`` whose metrics came from ``source`` (a :class:`TokenCalibrationMetrics`,
    i.e. the pair returned by ``token_calibration_metrics``, or ``CalibratedTrainer.token_calibration``),
    it writes ``{args.output_dir}/{folder}/{metric_key_prefix}_{prefix}step{global_step}.png`` atomically
    and, when ``"tensorboard"`` is a ``report_to`` target, logs the same image under the tag
    ``eval/{prefix}reliability_diagram`` (Trainer's scalar naming: ``eval_x`` becomes ``eval/x``).

    The image goes to the ``SummaryWriter`` of the trainer's ``TensorBoardCallback`` when ``trainer`` is
    given (``trainer.add_callback(ReliabilityDiagramCallback(metrics, trainer=trainer))``); without it, to
    a writer of its own on ``$TENSORBOARD_LOGGING_DIR`` or else ``{output_dir}/runs/calibration``.
    ``written`` lists the PNG paths written so far. Evaluations with no supervised token draw nothing.
    Without matplotlib (an optional dependency: ``pip install 'hf-calib[plots]'``) it logs one warning
    and draws nothing; the metrics are unaffected.
    """

    def __init__(
        self,
        source: TokenCalibrationMetrics,
        *,
        trainer: Trainer | None = None,
        folder: str = "calibration",
        tensorboard: bool = True,
    ) -> None:
        if not isinstance(source, TokenCalibrationMetrics):
            raise ValueError(
                "source must be the TokenCalibrationMetrics returned by hf_calib.token_calibration_metrics() "
                f"(or CalibratedTrainer.token_calibration); got {type(source).__name__}."
            )
        if not isinstance(folder, str) or not folder or os.path.isabs(folder):
            raise ValueError(f"folder must be a relative folder name inside output_dir; got {folder!r}.")
        self.source = source
        self.trainer = trainer
        self.folder = folder
        self.tensorboard = bool(tensorboard)
        self.written: list[Path] = []
        self._seen = source.evaluations
        self._own_writer: Any = None
        self._no_matplotlib = False

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        fresh = self.source.evaluations != self._seen
        self._seen = self.source.evaluations
        calibration = self.source.last_state
        if not (state.is_world_process_zero and fresh and calibration is not None and calibration.n_samples):
            return
        if self._no_matplotlib:
            return
        metric_prefix = metric_key_prefix(metrics or {}, f"_{self.source.prefix}count")
        step = state.global_step
        try:
            figure = reliability_diagram_from_state(
                calibration, title=f"Token-level reliability ({metric_prefix}, step {step})"
            )
        except ImportError as err:  # matplotlib is optional: keep training, say so once
            logger.warning("hf_calib: no reliability diagrams (%s); the metrics are still reported.", err)
            self._no_matplotlib = True
            return
        folder = Path(args.output_dir) / self.folder
        folder.mkdir(parents=True, exist_ok=True)
        path = save_reliability_diagram(figure, path=folder / f"{metric_prefix}_{self.source.prefix}step{step}.png")
        self.written.append(path)
        if self.tensorboard and "tensorboard" in (args.report_to or []):
            writer = self._writer(args)
            if writer is not None:
                tag = _tensorboard_tag(f"{metric_prefix}_{self.source.prefix}reliability_diagram")
                writer.add_image(tag, _rgb(figure), step, dataformats="HWC")
                writer.flush()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._own_writer is not None:
            self._own_writer.close()
            self._own_writer = None

    def _writer(self, args: TrainingArguments) -> Any:
        """The trainer's TensorBoard writer, else one of our own (see the class docs)."""
        if self.trainer is not None:
            from transformers.integrations import TensorBoardCallback

            for callback in self.trainer.callback_handler.callbacks:
                if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                    return callback.tb_writer
        if self._own_writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning("hf_calib: tensorboard is not installed; the reliability diagram is not logged to it.")
                self.tensorboard = False
                return None
            logdir = os.getenv("TENSORBOARD_LOGGING_DIR") or os.path.join(args.output_dir, "runs", "calibration")
            self._own_writer = SummaryWriter(log_dir=logdir)
        return self._own_writer


def _tensorboard_tag(key: str) -> str:
    """The tag Trainer's TensorBoardCallback gives a logged key (``eval_x`` -> ``eval/x``)."""
    from transformers.integrations.integration_utils import rewrite_logs

    return next(iter(rewrite_logs({key: 0.0})))


def _rgb(figure: Figure) -> np.ndarray:
    """The figure rendered by the Agg canvas as an ``[H, W, 3]`` uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
