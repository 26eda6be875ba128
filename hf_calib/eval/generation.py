"""Batched greedy generation and generation metrics at each Trainer evaluation.

:func:`generate_texts` left-pads a batch of prompts (so every prompt ends at the same position and new
tokens are appended right after it), generates at most ``max_new_tokens`` greedily and decodes only the new
tokens. :class:`GenerationTask` is a set of held-out prompts with references, scored by reference metrics
(ROUGE-L, BLEU, exact match) and optionally an LLM judge. :class:`hf_calib.callbacks.GenerationEvalCallback` runs
tasks at every ``trainer.evaluate()`` -- e.g. the target task and a general instruction set, so that specialization
and forgetting form two curves in ``trainer.state.log_history`` and TensorBoard.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import nn

from hf_calib.data.chat import encode_prompt, uses_chat_template

from .decoding import generate_from_ids
from .reference import REFERENCE_METRICS, reference_scores

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .judge import LLMJudge

__all__ = ["GenerationTask", "evaluate_generation", "generate_texts", "generate_from_ids"]


def generate_texts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    use_chat_template: bool | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    show_progress: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Greedy replies to text prompts (see :func:`generate_from_ids`).

    Each prompt is encoded as in training (:func:`hf_calib.data.encode_prompt`): the user message of the
    chat template when the tokenizer has one (``use_chat_template=None``), else the plain text after the
    tokenizer's special prefix.
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a list of strings.")
    chat = uses_chat_template(tokenizer, use_chat_template)
    ids = [encode_prompt(tokenizer, p, chat=chat) for p in prompts]
    return generate_from_ids(
        model,
        tokenizer,
        ids,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        show_progress=show_progress,
        desc=desc,
    )


@dataclass
class GenerationTask:
    """Held-out prompts with references, scored after greedy generation.

    ``metrics`` are reference metrics (names in :data:`hf_calib.eval.reference.REFERENCE_METRICS`); a
    ``judge`` (:class:`hf_calib.eval.LLMJudge`) adds ``judge_response``, ``judge_reference``, ``judge_ratio``
    and ``judge_missing``. Only the first ``max_samples`` prompts are used (``None``: all). ``max_new_tokens``
    overrides the caller's budget for this task (e.g. a few tokens for a label, more for free text).
    """

    name: str
    prompts: Sequence[str]
    references: Sequence[str]
    metrics: Sequence[str] = ("rougeL",)
    judge: LLMJudge | None = None
    max_samples: int | None = None
    max_new_tokens: int | None = None
    use_chat_template: bool | None = None
    #: The replies of the latest :func:`evaluate_generation` (for inspection).
    last_generations: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(
                f"name must be a non-empty string without '/' (it becomes a metric key); got {self.name!r}."
            )
        if isinstance(self.prompts, str) or isinstance(self.references, str):
            raise TypeError("prompts and references must be lists of strings, not a single string.")
        if len(self.prompts) != len(self.references) or not self.prompts:
            raise ValueError(
                f"task {self.name!r}: prompts and references must be non-empty and of equal length; got "
                f"{len(self.prompts)} and {len(self.references)}."
            )
        unknown = [m for m in self.metrics if m not in REFERENCE_METRICS]
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown metrics {unknown}; choose from {list(REFERENCE_METRICS)}.")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"task {self.name!r}: max_samples must be positive or None; got {self.max_samples}.")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"task {self.name!r}: max_new_tokens must be positive or None; got {self.max_new_tokens}.")

    def selected(self) -> tuple[list[str], list[str]]:
        """The prompts and references actually scored (the first ``max_samples``)."""
        n = len(self.prompts) if self.max_samples is None else min(self.max_samples, len(self.prompts))
        return list(self.prompts[:n]), list(self.references[:n])


def evaluate_generation(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: GenerationTask,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    show_progress: bool = True,
) -> dict[str, float]:
    """``{"gen/{task.name}/{metric}": value}``: generate on the task's prompts, then score (see the class).

    ``max_new_tokens`` applies unless the task sets its own. ``show_progress=False`` also hides the bar of
    the task's model judge (whatever its own ``show_progress``).
    """
    prompts, references = task.selected()
    replies = generate_texts(
        model,
        tokenizer,
        prompts,
        use_chat_template=task.use_chat_template,
        max_new_tokens=task.max_new_tokens or max_new_tokens,
        batch_size=batch_size,
        show_progress=show_progress,
        desc=f"generating ({task.name})",
    )
    task.last_generations = replies
    out = {f"gen/{task.name}/{k}": v for k, v in reference_scores(replies, references, task.metrics).items()}
    if task.judge is not None:
        judge = task.judge
        if not show_progress and getattr(judge, "show_progress", False):
            judge = copy.copy(judge)  # the caller's judge keeps its setting; this call draws no bar
            judge.show_progress = False
        result = judge.score(prompts, replies, references)
        out.update({f"gen/{task.name}/{k}": v for k, v in result.metrics().items()})
    return out
