"""Multiple-choice calibration at each Trainer evaluation.

Two ways, same numbers (``docs/multiple_choice.md``, "At each evaluation"):

- ``CalibratedTrainer(..., multiple_choice=mc)`` merges ``{metric_key_prefix}_{mc key}`` (e.g.
  ``eval_mc/macro/ece``) into the evaluation's metrics before Trainer logs them, exactly like the
  token-level metrics.
- a plain ``Trainer`` takes :class:`MultipleChoiceCalibrationCallback`, which adds the same keys to the
  metrics in ``on_evaluate`` and logs them itself (one extra ``log_history`` entry per evaluation).

Distributed: every process scores every question with its own replica (DDP keeps them identical), so each
process holds the same metrics as a single process, with no communication. That also keeps the processes
in lock-step when the model's forward is itself collective (FSDP, DeepSpeed ZeRO-3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..eval.multiple_choice import MultipleChoiceCalibration
from ._keys import metric_key_prefix, tokenizer_of

if TYPE_CHECKING:
    from transformers import Trainer

__all__ = ["MultipleChoiceCalibrationCallback", "resolve_multiple_choice", "run_multiple_choice"]


def resolve_multiple_choice(
    evaluators: MultipleChoiceCalibration | Sequence[MultipleChoiceCalibration] | None,
    name: str = "multiple_choice",
) -> list[MultipleChoiceCalibration]:
    """``evaluators`` as a list (``None`` -> ``[]``); ``ValueError`` if one is not a
    :class:`MultipleChoiceCalibration` or two share a ``prefix`` (their keys would overwrite each other)."""
    if evaluators is None:
        return []
    items = [evaluators] if isinstance(evaluators, MultipleChoiceCalibration) else list(evaluators)
    prefixes: set[str] = set()
    for item in items:
        if not isinstance(item, MultipleChoiceCalibration):
            raise ValueError(
                f"{name} must be a hf_calib.eval.MultipleChoiceCalibration or a list of them; "
                f"got {type(item).__name__}."
            )
        if item.prefix in prefixes:
            raise ValueError(
                f"{name}: two evaluators share prefix={item.prefix!r}, so their metrics would collide; "
                "give each MultipleChoiceCalibration its own prefix (e.g. prefix='mmlu')."
            )
        prefixes.add(item.prefix)
    return items


def check_tokenizers(evaluators: Sequence[MultipleChoiceCalibration], processing_class: Any) -> None:
    """``ValueError`` if an evaluator has no tokenizer and the trainer has none to lend it."""
    if tokenizer_of(processing_class) is None and any(e.tokenizer is None for e in evaluators):
        raise ValueError(
            "multiple_choice: the trainer has no processing_class, so pass the model's tokenizer to "
            "MultipleChoiceCalibration(..., tokenizer=tok) or processing_class=tok to the trainer."
        )


def run_multiple_choice(
    evaluators: Sequence[MultipleChoiceCalibration],
    model: nn.Module,
    processing_class: Any,
    metric_key_prefix: str = "eval",
    *,
    progress: bool = True,
) -> dict[str, float]:
    """Run each evaluator on ``model`` and return its metrics as ``{metric_key_prefix}_{key}``.

    Each evaluator uses its own ``tokenizer`` if it has one, else the trainer's ``processing_class`` (or
    that processor's ``tokenizer``). ``model`` is evaluated as given; DDP/DataParallel wrappers are removed
    by :meth:`MultipleChoiceCalibration.evaluate`. ``progress=False`` hides every evaluator's progress bar
    (Trainer's ``disable_tqdm``, processes other than the main one); ``True`` keeps each evaluator's
    ``show_progress``.
    """
    tokenizer = tokenizer_of(processing_class)
    out: dict[str, float] = {}
    for evaluator in evaluators:
        metrics = evaluator.evaluate(
            model,
            evaluator.tokenizer if evaluator.tokenizer is not None else tokenizer,
            show_progress=None if progress else False,
        )
        out.update({f"{metric_key_prefix}_{key}": value for key, value in metrics.items()})
    return out


class MultipleChoiceCalibrationCallback(TrainerCallback):
    """Multiple-choice calibration at each evaluation of a plain ``transformers.Trainer``.

    ``trainer.add_callback(MultipleChoiceCalibrationCallback(mc, trainer=trainer))``: after every
    ``evaluate()``, each evaluator scores its questions with ``trainer.model`` (tokenizer: the evaluator's
    own, else the trainer's ``processing_class``). The keys ``{metric_key_prefix}_{mc key}`` (e.g.
    ``eval_mc/macro/ece``) are

    - added to the ``metrics`` dict in place, so ``evaluate()`` returns them and
      ``metric_for_best_model="mc/macro/ece"`` can select the best checkpoint;
    - logged with ``trainer.log(...)``, so they reach ``trainer.state.log_history`` and every
      ``report_to`` integration (TensorBoard: ``eval/mc/macro/ece``).

    The one difference from ``CalibratedTrainer(multiple_choice=...)``: Trainer has already logged its
    own evaluation metrics when callbacks run, so the multiple-choice keys form a separate log entry (same
    step) instead of joining Trainer's, and ``eval_runtime`` does not include their time. With a dict of
    eval datasets they are computed once per dataset (``eval_<name>_mc/...``).

    Distributed: computed on every process (see the module docs), so every process returns and logs the
    same values; integrations write from the main process only, as usual. Progress bars (each evaluator's
    ``show_progress``) are drawn on the main process only, and never with ``args.disable_tqdm``.
    """

    def __init__(
        self,
        evaluators: MultipleChoiceCalibration | Sequence[MultipleChoiceCalibration],
        *,
        trainer: Trainer,
    ) -> None:
        self.evaluators = resolve_multiple_choice(evaluators, name="evaluators")
        if not self.evaluators:
            raise ValueError("evaluators must hold at least one MultipleChoiceCalibration.")
        if trainer is None or not callable(getattr(trainer, "log", None)):
            raise ValueError("trainer must be the Trainer this callback is added to (its model and log() are used).")
        check_tokenizers(self.evaluators, getattr(trainer, "processing_class", None))
        self.trainer = trainer
        #: The keys and values of the latest evaluation.
        self.last_metrics: dict[str, float] = {}

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        trainer = self.trainer
        prefix = metric_key_prefix(metrics or {})
        progress = state.is_world_process_zero and not args.disable_tqdm
        computed = run_multiple_choice(
            self.evaluators, trainer.model, trainer.processing_class, prefix, progress=progress
        )
        self.last_metrics = computed
        if metrics is not None:
            metrics.update(computed)
        trainer.log(dict(computed))
