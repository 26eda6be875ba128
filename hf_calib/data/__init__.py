"""Training data for causal LMs: task templates, completion-only labels, FTICL.

- :func:`tokenize_chat_completion` / :func:`tokenize_prompt_completion`: one example, prompt masked with
  :data:`IGNORE_INDEX` (``-100``), with or without the tokenizer's chat template.
- :class:`TaskTemplate`, :func:`instruction_template`, :class:`MultipleChoiceTemplate`: a row as
  ``(prompt, completion)`` text.
- :func:`task_dataset` (plain fine-tuning) and :func:`fticl_dataset` (the same ``k`` demonstrations in
  front of every row; Yang et al., NAACL 2024). Specification and details: ``docs/data_and_eval.md``,
  section "FTICL: the same demonstrations in front of every example".
"""

from .chat import (
    IGNORE_INDEX,
    encode_prompt,
    render_prompt,
    tokenize_chat_completion,
    tokenize_prompt_completion,
    uses_chat_template,
)
from .fticl import DEMONSTRATION_SEPARATOR, demonstration_context, fticl_dataset, task_dataset, with_context
from .templates import MultipleChoiceTemplate, TaskTemplate, Template, check_template, instruction_template

__all__ = [
    "DEMONSTRATION_SEPARATOR",
    "IGNORE_INDEX",
    "MultipleChoiceTemplate",
    "TaskTemplate",
    "Template",
    "check_template",
    "demonstration_context",
    "encode_prompt",
    "fticl_dataset",
    "instruction_template",
    "render_prompt",
    "task_dataset",
    "tokenize_chat_completion",
    "tokenize_prompt_completion",
    "uses_chat_template",
    "with_context",
]
