"""Generation metrics of :class:`hf_calib.eval.GenerationTask` at each Trainer evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..eval.generation import GenerationTask, evaluate_generation
from ._keys import metric_key_prefix, tokenizer_of

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Trainer

__all__ = ["GenerationEvalCallback"]


class GenerationEvalCallback(TrainerCallback):
    """Generation metrics of one or more :class:`GenerationTask` at each ``trainer.evaluate()``.

    ``trainer.add_callback(GenerationEvalCallback([target, general], trainer=trainer))``. As with
    :class:`hf_calib.callbacks.MultipleChoiceCalibrationCallback`, the keys ``{metric_key_prefix}_gen/{task}/{metric}``
    (e.g. ``eval_gen/sentiment/rougeL``, ``eval_gen/general/judge_ratio``) are added to the evaluation's
    ``metrics`` in place and logged with ``trainer.log(...)``, so they reach ``trainer.state.log_history``
    and every ``report_to`` integration as a separate entry at the same step. Generation uses
    ``trainer.model`` with the trainer's tokenizer (or ``tokenizer``), at most ``max_new_tokens`` new tokens
    per prompt, in batches of ``batch_size``, with a progress bar (``show_progress``) on the main process
    only, and none with ``args.disable_tqdm``; this covers a model judge's bar too.

    Distributed: every process generates on every prompt with its own replica (as the multiple-choice
    callback), so all processes log the same values and stay in step.
    """

    def __init__(
        self,
        tasks: GenerationTask | Sequence[GenerationTask],
        *,
        trainer: Trainer,
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_new_tokens: int = 64,
        batch_size: int = 8,
        show_progress: bool = True,
    ) -> None:
        tasks = [tasks] if isinstance(tasks, GenerationTask) else list(tasks)
        if not tasks or not all(isinstance(t, GenerationTask) for t in tasks):
            raise ValueError("tasks must be a GenerationTask or a non-empty list of them.")
        if len({t.name for t in tasks}) != len(tasks):
            raise ValueError("two tasks share a name, so their metrics would collide; name each task uniquely.")
        if trainer is None or not callable(getattr(trainer, "log", None)):
            raise ValueError("trainer must be the Trainer this callback is added to (its model and log() are used).")
        tokenizer = tokenizer if tokenizer is not None else tokenizer_of(getattr(trainer, "processing_class", None))
        if tokenizer is None:
            raise ValueError("the trainer has no processing_class; pass tokenizer=... to GenerationEvalCallback.")
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError(f"max_new_tokens and batch_size must be positive; got {max_new_tokens}, {batch_size}.")
        self.tasks = tasks
        self.trainer = trainer
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.show_progress = show_progress
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
        prefix = metric_key_prefix(metrics or {})
        progress = self.show_progress and state.is_world_process_zero and not args.disable_tqdm
        computed: dict[str, float] = {}
        for task in self.tasks:
            scores = evaluate_generation(
                self.trainer.model,
                self.tokenizer,
                task,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
                show_progress=progress,
            )
            computed.update({f"{prefix}_{key}": value for key, value in scores.items()})
        self.last_metrics = computed
        if metrics is not None:
            metrics.update(computed)
        self.trainer.log(dict(computed))
