"""Evaluation of fine-tuned LMs: answer-level calibration on multiple-choice benchmarks.

``MultipleChoiceCalibration(data).evaluate(model, tokenizer)`` returns a flat ``dict[str, float]``
(``mc/{task}/{metric}``, ``mc/macro/{metric}``, ``mc/micro/{metric}``). Details: ``docs/multiple_choice.md``.
"""

from .multiple_choice import (
    MultipleChoiceCalibration,
    MultipleChoiceDetails,
    multiple_choice_metrics,
    read_questions,
    task_key,
)
from .prompts import MMLU_HEADER, MCQuestion

__all__ = [
    "MMLU_HEADER",
    "MCQuestion",
    "MultipleChoiceCalibration",
    "MultipleChoiceDetails",
    "multiple_choice_metrics",
    "read_questions",
    "task_key",
]
