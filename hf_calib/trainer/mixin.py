"""``CalibratedLossMixin``: the fused label-smoothing loss and calibration metrics for any ``Trainer``.

Used by ``CalibratedTrainer`` and TRL's ``CalibratedSFTTrainer``. The loss, the output-layer arming and the
token statistics are :mod:`hf_calib.loss`'s; this module wires them into ``Trainer.compute_loss``,
``prediction_step`` and ``evaluation_loop``. ``label_smoothing_factor`` (``eps``, 0 included) is applied
inside the model's forward, so a causal LM never materializes its ``[B, T, V]`` logits in training or
loss-only evaluation; the loss is Trainer's ``LabelSmoother`` definition with Trainer's gradient-accumulation
and ``average_tokens_across_devices`` scaling (formula and paths: ``docs/trainer.md``). Every evaluation of a
causal LM also reports token-level calibration (``eval_token_ece``, ...), reduced per batch to per-sample
statistics, gathered like predictions and merged before Trainer logs them; ``multiple_choice=`` adds
answer-level calibration on multiple-choice questions (``eval_mc/macro/ece``, ...).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._model_utils import IGNORE_INDEX
from ..loss import (
    FusedLossPlan,
    FusedLossRequest,
    TokenCalibrationConfig,
    TokenCalibrationMetrics,
    TokenStats,
    TrainTokenCalibration,
    armed,
    is_causal_lm,
    label_smoothing_ce,
    pack_sample_stats,
    plan_fused_loss,
    shift_causal_labels,
    stats_width,
    token_calibration_stats,
)
from ._multiple_choice import MultipleChoiceEvalMixin
from .config import calibration_settings

if TYPE_CHECKING:
    from ..eval import MultipleChoiceCalibration

#: Default of keyword arguments read from the trainer's ``args`` when not given (:class:`CalibrationArguments`).
FROM_ARGS: Any = type("FromArgs", (), {"__repr__": lambda self: "<from args>"})()

# The logger keeps the name it had when this code lived in hf_calib.trainer.
logger = logging.getLogger("hf_calib.trainer")

__all__ = ["CalibratedLossMixin", "FusedLossFallbackWarning"]


class FusedLossFallbackWarning(UserWarning):
    """A causal LM trains on the logits path (full ``[B, T, V]`` logits) instead of the fused loss."""


class CalibratedLossMixin(MultipleChoiceEvalMixin):
    """Mixin that gives any ``transformers.Trainer`` subclass the fused label-smoothing loss.

    Put it first in the bases: ``class MyTrainer(CalibratedLossMixin, MyBaseTrainer)``. It reads
    ``label_smoothing_factor`` from the trainer's ``TrainingArguments`` and overrides
    ``compute_loss`` and ``prediction_step``; everything else is the base trainer's.

    Paths, decided once per model (at init, and again for each ``model_init`` model):

    - ``"fused"``: causal LM with a plain ``nn.Linear`` head and no logit transform after it (a
      Gemma-style ``final_logit_softcapping`` is supported). Used in training and in evaluation with
      ``prediction_loss_only``; no ``[B, T, V]`` tensor is built.
    - ``"logits"``: a causal LM the fused path cannot serve (reason in the one warning), or when the
      caller needs the logits (``compute_loss(return_outputs=True)`` outside loss-only evaluation):
      full logits, loss from :func:`hf_calib.label_smoothing_ce`, same definition.
    - base trainer: non-causal models (sequence classification keeps Trainer's ``LabelSmoother``),
      a user ``compute_loss_func``, batches without ``labels``.

    Evaluation of a causal LM reports token-level calibration metrics (``calibration_metrics``:
    ``True`` for the defaults of :class:`~hf_calib.loss.TokenCalibrationConfig`, a
    config, or ``False`` to switch them off); ``token_calibration.last_state`` holds the latest
    evaluation's :class:`~hf_calib.metrics.CalibrationState`.

    ``multiple_choice`` (a :class:`~hf_calib.eval.MultipleChoiceCalibration` or a list of them, any
    model type) adds ``{metric_key_prefix}_{key}`` for every key of ``evaluate(self.model, tokenizer)``
    (e.g. ``eval_mc/macro/ece``) once per ``evaluate()`` call, before Trainer logs the metrics; the
    tokenizer is the evaluator's own, else ``processing_class``. Its time is part of ``eval_runtime``.

    Either keyword argument, when not given, comes from the trainer's ``args`` if they are
    :class:`~hf_calib.trainer.CalibratedTrainingArguments` (or ``CalibratedSFTConfig``): ``calibration_metrics``,
    ``calibration_n_bins``, ``calibration_prefix``, ``reliability_diagrams``, ``multiple_choice`` specs.
    """

    #: Also measure per-token entropy and top-1 accuracy (used by the TRL SFT subclass's metrics).
    _calib_wants_token_stats: bool = False

    def __init__(
        self,
        *args: Any,
        calibration_metrics: bool | TokenCalibrationConfig | Any = FROM_ARGS,
        multiple_choice: MultipleChoiceCalibration | Sequence[MultipleChoiceCalibration] | None | Any = FROM_ARGS,
        train_token_calibration: bool | Any = FROM_ARGS,
        **kwargs: Any,
    ) -> None:
        from ..callbacks.multiple_choice import check_tokenizers, resolve_multiple_choice

        # Keyword arguments win; when one is not given, the run's arguments decide (CalibrationArguments).
        config = None if calibration_metrics is FROM_ARGS else TokenCalibrationConfig.resolve(calibration_metrics)
        evaluators = [] if multiple_choice is FROM_ARGS else resolve_multiple_choice(multiple_choice)
        super().__init__(*args, **kwargs)
        settings = calibration_settings(self.args)
        if calibration_metrics is FROM_ARGS:
            config = settings.token_calibration_config() if settings is not None else TokenCalibrationConfig()
        if multiple_choice is FROM_ARGS and settings is not None:
            evaluators = resolve_multiple_choice(settings.multiple_choice_evaluators(), "args.multiple_choice")
        check_tokenizers(evaluators, self.processing_class)
        self.multiple_choice = evaluators
        self._mc_depth = 0  # nesting of evaluate() calls (a dict of eval datasets recurses)
        self._mc_prefix: str | None = None  # set by the outermost evaluate(), consumed by one evaluation_loop
        self._calib_loss_only = False
        self._calib_warned: set[str] = set()
        self._calib_plan: FusedLossPlan | None = None
        self._calib_is_causal = False
        self.calibration_config = config
        self.token_calibration = (
            None if config is None else TokenCalibrationMetrics(config.n_bins, prefix=config.prefix)
        )
        if train_token_calibration is FROM_ARGS:
            train_token_calibration = True if settings is None else settings.train_token_calibration
        if not isinstance(train_token_calibration, bool):
            raise ValueError(f"train_token_calibration must be True or False; got {train_token_calibration!r}.")
        bins_prefix = (config.n_bins, config.prefix) if config is not None else (15, "token_")
        if settings is not None and config is None:
            bins_prefix = (settings.calibration_n_bins, settings.calibration_prefix)
        #: Calibration of the training tokens since the last logging step (None when switched off).
        self.train_token_calibration = TrainTokenCalibration(*bins_prefix) if train_token_calibration else None
        # During evaluation_loop: the running [1, width] sum of the gathered per-sample statistics (or None).
        self._calib_eval_stats: torch.Tensor | None = None
        self._calib_eval_batches = 0
        self._calib_pending: torch.Tensor | None = None  # this batch's per-sample statistics
        self._calib_setup(self.model)
        if config is not None and config.reliability_diagram:
            from ..callbacks.reliability import ReliabilityDiagramCallback

            self.add_callback(ReliabilityDiagramCallback(self.token_calibration, trainer=self))

    # ---- setup -----------------------------------------------------------------------------
    def call_model_init(self, trial: Any = None) -> nn.Module:
        model = super().call_model_init(trial)
        if "_calib_plan" in self.__dict__:  # Trainer.__init__ calls this before our own setup
            self._calib_setup(model)
        return model

    def _calib_defer_reason(self) -> str | None:
        """Why this trainer's set-up rules out the fused path, in which case the base trainer's own
        loss is used unchanged (``None`` if nothing does). Subclasses extend it."""
        if self.compute_loss_func is not None:
            return "a compute_loss_func was given; it replaces the fused label-smoothing loss"
        if self.args.n_gpu > 1:
            return "torch.nn.DataParallel (several GPUs in one process) is not supported; launch with torchrun (DDP)"
        pc = getattr(self.accelerator, "parallelism_config", None)
        if pc is not None and (getattr(pc, "sp_enabled", False) or getattr(pc, "cp_enabled", False)):
            return "sequence/context parallelism shards the sequence, and the labels with it"
        if self.get_tp_size() > 1:
            return "tensor parallelism shards the output layer over the vocabulary"
        return None

    def _calib_setup(self, model: nn.Module) -> None:
        self._calib_plan = None
        self._calib_is_causal = is_causal_lm(model)
        if not self._calib_is_causal:
            logger.info("hf_calib: %s has no causal-LM loss; using the trainer's own loss.", type(model).__name__)
            return
        reason = self._calib_defer_reason()
        if reason is not None:
            self._calib_warn(f"{reason}; using the trainer's own loss")
            return
        plan = plan_fused_loss(model)
        self._calib_plan = plan
        if plan.head is None:
            self._calib_warn(f"{plan.reason}; training on full logits (same loss, more memory)")
        else:
            logger.info(
                "hf_calib: fused label-smoothing loss active (eps=%s, softcap=%s)%s.",
                self.args.label_smoothing_factor,
                plan.softcap,
                "; use_liger_kernel: Liger's other kernels stay, the loss is hf_calib's"
                if self.args.use_liger_kernel
                else "",
            )

    def _calib_warn(self, message: str) -> None:
        if message not in self._calib_warned:
            self._calib_warned.add(message)
            warnings.warn(f"hf_calib: {message}", FusedLossFallbackWarning, stacklevel=3)

    @property
    def fused_loss_active(self) -> bool:
        """Whether training uses the fused loss (no ``[B, T, V]`` logits)."""
        return self._calib_plan is not None and self._calib_plan.head is not None

    # ---- loss ------------------------------------------------------------------------------
    def _calib_path(self, inputs: dict[str, Any], return_outputs: bool) -> str | None:
        if self._calib_plan is None or inputs.get("labels") is None:
            return None
        if self._calib_plan.head is not None and (not return_outputs or self._calib_loss_only):
            return "fused"
        return "logits"

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Label-smoothing loss of a causal LM without full logits when possible (see the class docs).

        ``inputs["labels"]`` is ``[B, T]``; targets are ``inputs["shift_labels"]`` if present, else
        ``labels`` shifted left by one with ``-100`` appended (as ``ForCausalLMLoss`` does). Returns
        a float32 scalar, normalized by ``num_items_in_batch`` when given (then already scaled for
        gradient accumulation, as Trainer expects), times the number of processes when
        ``average_tokens_across_devices`` is on.
        """
        path = self._calib_path(inputs, return_outputs)
        collect = self._calib_eval_stats is not None
        if path is None:
            return self._calib_base_loss(model, inputs, return_outputs, num_items_in_batch, collect)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        shift_labels = inputs.pop("shift_labels", None)
        # Trainer asks a Liger-patched model to skip its logits when only the loss is needed; hf_calib serves the
        # loss (the fused path never builds the logits either), so the model runs without labels and without it.
        inputs.pop("skip_logits", None)
        if shift_labels is None:
            shift_labels = shift_causal_labels(labels, IGNORE_INDEX)
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            inputs["num_items_in_batch"] = num_items_in_batch
        eps = float(self.args.label_smoothing_factor)
        training = self._calib_train_stats_wanted(model)
        want_stats = collect or training or self._calib_wants_token_stats
        loss, row_stats = None, None
        if path == "fused":
            request = FusedLossRequest(
                labels=shift_labels,
                label_smoothing=eps,
                num_items_in_batch=num_items_in_batch,
                softcap=self._calib_plan.softcap,
                row_stats=want_stats,
            )
            with armed(self._calib_plan.head, request):
                outputs = model(**inputs)
            if request.calls > 1:
                raise RuntimeError(f"hf_calib: {request.skipped}; the fused loss cannot serve this model.")
            loss, row_stats = request.loss, request.stats
            if loss is None:  # the head returned full logits (or never ran): use them
                self._calib_warn(f"{request.skipped or 'the output layer did not run'}; such batches use full logits")
        else:
            outputs = model(**inputs)
        if loss is None:
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            shift_labels = shift_labels.to(logits.device)
            loss = label_smoothing_ce(
                logits,
                shift_labels,
                label_smoothing=eps,
                num_items_in_batch=num_items_in_batch,
                return_stats=want_stats,
            )
            if want_stats:
                loss, row_stats = loss
        stats = None if row_stats is None else self._calib_use_row_stats(row_stats, shift_labels, collect, training)
        # As Trainer.compute_loss: num_items_in_batch counts every rank's tokens and DDP averages gradients.
        if (
            self.args.average_tokens_across_devices
            and self.model_accepts_loss_kwargs
            and num_items_in_batch is not None
        ):
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        if isinstance(outputs, dict):
            outputs["loss"] = loss
        self._calib_after_loss(inputs, stats)
        return (loss, outputs) if return_outputs else loss

    def _calib_after_loss(self, inputs: dict[str, Any], stats: TokenStats | None) -> None:
        """Hook for subclasses that log per-token statistics (no-op here)."""

    def _calib_use_row_stats(
        self, row_stats: Any, shift_labels: torch.Tensor, collect: bool, training: bool
    ) -> TokenStats | None:
        """Route the loss's per-token statistics: this evaluation batch's per-sample rows, the running
        training-token calibration, and TRL's entropy / accuracy (returned). One softmax served the loss and all of
        them: no second pass over the output layer."""
        valid = shift_labels.to(row_stats.nll.device) != IGNORE_INDEX
        if collect:
            self._calib_pending = pack_sample_stats(row_stats, valid, n_bins=self.token_calibration.n_bins)
        if training:
            self.train_token_calibration.add(row_stats, valid)
        return TokenStats.from_row_stats(row_stats, valid) if self._calib_wants_token_stats else None

    def _calib_train_stats_wanted(self, model: nn.Module) -> bool:
        return self.train_token_calibration is not None and model.training and torch.is_grad_enabled()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The base trainer's ``log``; a training log (the one with ``loss``) also gets the calibration of the
        tokens trained on since the previous one (``token_ece``, ``token_nll``, ...; summed over processes)."""
        calib, distributed = self.train_token_calibration, self.accelerator.num_processes > 1
        if calib is not None and "loss" in logs and (calib.pending or distributed):
            reduce = (lambda t: self.accelerator.reduce(t, reduction="sum")) if distributed else None
            logs = {**logs, **calib.compute(self.args.device, reduce)}
        super().log(logs, start_time)

    def _calib_base_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool,
        num_items_in_batch: torch.Tensor | int | None,
        collect: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The base trainer's loss; while evaluating a causal LM, token statistics from its logits if it
        returns them (Trainer's own loss may pop ``labels``, so they are kept first)."""
        labels, shift_labels = inputs.get("labels"), inputs.get("shift_labels")
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if collect and self._calib_is_causal and labels is not None and return_outputs:
            outputs = result[1]
            logits = outputs.get("logits") if isinstance(outputs, dict) else None
            if isinstance(logits, torch.Tensor) and logits.ndim == 3 and logits.shape[-1] > 0:
                targets = shift_labels if shift_labels is not None else shift_causal_labels(labels, IGNORE_INDEX)
                self._calib_pending = self._calib_stats_from_logits(logits, targets.to(logits.device))
        return result

    def _calib_stats_from_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return token_calibration_stats(
            logits.detach(), targets, n_bins=self.token_calibration.n_bins, shift_labels=False
        )

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The base trainer's step; with ``prediction_loss_only`` the loss takes the fused path.

        While :meth:`evaluation_loop` collects token calibration, the batch's per-sample statistics
        are gathered across processes here, with ``gather_for_metrics`` (which drops the samples that
        pad the last batch), exactly like Trainer gathers predictions.
        """
        previous = self._calib_loss_only
        self._calib_loss_only = bool(prediction_loss_only)
        self._calib_pending = None
        try:
            result = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        finally:
            self._calib_loss_only = previous
        stats, self._calib_pending = self._calib_pending, None
        if self._calib_eval_stats is not None and stats is not None:
            gathered = self.accelerator.gather_for_metrics(stats).cpu().to(torch.float64)
            self._calib_eval_stats += gathered.sum(dim=0, keepdim=True)  # sums of sums: O(n_bins) memory
            self._calib_eval_batches += 1
        return result

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        """The base trainer's loop, plus the token calibration metrics ``{metric_key_prefix}_{prefix}*``.

        They are added to the loop's metrics, so ``evaluate()`` returns them, logs them (``log_history``
        and every ``report_to`` integration) and can select the best model by them. Reported for causal
        LMs on batches with labels: ``{prefix}count`` always (0 for an empty evaluation set or when every
        label is ignored), the other keys when there is at least one token.
        """
        if self.token_calibration is None or not self._calib_is_causal:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            return self._mc_merge(output)
        self._calib_eval_stats = torch.zeros(1, stats_width(self.token_calibration.n_bins), dtype=torch.float64)
        self._calib_eval_batches = 0
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            total = self._calib_eval_stats
        finally:
            self._calib_eval_stats = None
        if self._calib_eval_batches or output.num_samples == 0:
            metrics = self.token_calibration.metrics_from_stats(total)
            output.metrics.update({f"{metric_key_prefix}_{key}": value for key, value in metrics.items()})
        return self._mc_merge(output)
