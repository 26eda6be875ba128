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
from ._images import IMAGE_INTEGRATIONS, ImageLogger, report_targets
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
    and logs the same image, at ``global_step``, to each ``report_to`` integration that takes images
    (:mod:`hf_calib.callbacks._images`), under the name Trainer gives the key
    ``{metric_key_prefix}_{prefix}reliability_diagram``:

    * TensorBoard and W&B: ``eval/{prefix}reliability_diagram`` (``eval_x`` becomes ``eval/x``);
    * MLflow: ``eval_{prefix}reliability_diagram``, a time-stepped image of the active run.

    The TensorBoard image goes to the ``SummaryWriter`` of the trainer's ``TensorBoardCallback`` when
    ``trainer`` is given (``trainer.add_callback(ReliabilityDiagramCallback(metrics, trainer=trainer))``);
    without it, to a writer of its own on ``$TENSORBOARD_LOGGING_DIR`` or else ``{output_dir}/runs/calibration``.
    ``tensorboard=False`` keeps the image out of TensorBoard. An integration whose package is missing or
    that has no active run is skipped with one warning. ``written`` lists the PNG paths written so far.
    Evaluations with no supervised token draw nothing. Without matplotlib (an optional dependency:
    ``pip install 'hf-calib[plots]'``) it logs one warning and draws nothing; the metrics are unaffected.
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
        integrations = [name for name in IMAGE_INTEGRATIONS if self.tensorboard or name != "tensorboard"]
        self._images = ImageLogger(trainer, integrations=integrations, what="the reliability diagram")
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
        key = f"{metric_prefix}_{self.source.prefix}reliability_diagram"
        if any(name in report_targets(args) for name in self._images.integrations):
            self._images.log(args, state, key, _rgb(figure))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._images.close()


def _rgb(figure: Figure) -> np.ndarray:
    """The figure rendered by the Agg canvas as an ``[H, W, 3]`` uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
