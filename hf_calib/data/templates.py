"""Task templates: how one dataset row becomes a (prompt, completion) pair of text.

:class:`TaskTemplate` fills ``str.format`` fields with the row's columns, e.g. for sentiment::

    TaskTemplate("Review: {text}\\nSentiment:", " {label}", verbalizers={"label": ["negative", "positive"]})

turns ``{"text": "Great film.", "label": 1}`` into ``("Review: Great film.\\nSentiment:", " positive")``.
:func:`instruction_template` and :class:`MultipleChoiceTemplate` (the multiple-choice prompt format of
:mod:`hf_calib.eval.prompts`) cover instruction and multiple-choice data. Every template validates the
columns it needs against a dataset before anything is tokenized.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "MultipleChoiceTemplate",
    "TaskTemplate",
    "Template",
    "instruction_template",
]


@runtime_checkable
class Template(Protocol):
    """Anything that renders a row as ``(prompt, completion)`` and names the columns it reads."""

    def columns(self) -> set[str]: ...

    def render(self, row: Mapping[str, Any]) -> tuple[str, str]: ...


def _fields(text: str, name: str) -> list[str]:
    """The named fields of a ``str.format`` template; ``ValueError`` for bad braces or positional fields."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"{name} is not a valid str.format template ({exc}); write literal braces as '{{{{'.") from exc
    names = []
    for _, field_name, _, _ in parsed:
        if field_name is None:
            continue
        if field_name == "" or field_name.isdigit():
            raise ValueError(f"{name} has a positional field '{{{field_name}}}'; name the column, e.g. '{{text}}'.")
        names.append(field_name.split(".")[0].split("[")[0])
    return names


@dataclass(frozen=True)
class TaskTemplate:
    """A prompt and a completion ``str.format`` template over a row's columns.

    ``verbalizers`` maps a column holding integer class ids to their words: in both templates the field
    ``{label}`` of a row with ``label == j`` becomes ``verbalizers["label"][j]``. A classification
    template's completion is usually a single verbalized field with a leading space (``" {label}"``).
    """

    prompt: str
    completion: str
    verbalizers: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("prompt must be a non-empty str.format template, e.g. 'Review: {text}\\nSentiment:'.")
        if not isinstance(self.completion, str) or not self.completion.strip():
            raise ValueError("completion must be a non-empty str.format template, e.g. ' {label}'.")
        prompt_fields = _fields(self.prompt, "prompt")
        completion_fields = _fields(self.completion, "completion")
        if not prompt_fields:
            raise ValueError("prompt has no {column} field, so every example would get the same prompt.")
        for column, words in self.verbalizers.items():
            if isinstance(words, str) or not words or not all(isinstance(w, str) and w.strip() for w in words):
                raise ValueError(f"verbalizers[{column!r}] must be a list of non-empty words, one per class id.")
            if column not in prompt_fields + completion_fields:
                raise ValueError(f"verbalizers[{column!r}] names a column that neither template uses.")
        object.__setattr__(self, "verbalizers", {c: tuple(w) for c, w in self.verbalizers.items()})

    def columns(self) -> set[str]:
        """The columns the two templates read."""
        return set(_fields(self.prompt, "prompt")) | set(_fields(self.completion, "completion"))

    def label_words(self) -> tuple[str, ...]:
        """The words of the one verbalized column of the completion (the classes of a classification task)."""
        used = [c for c in _fields(self.completion, "completion") if c in self.verbalizers]
        if len(set(used)) != 1:
            raise ValueError(
                "label_words needs a completion with exactly one verbalized column (e.g. completion=' {label}', "
                f"verbalizers={{'label': [...]}}); this completion verbalizes {sorted(set(used))}."
            )
        return tuple(self.verbalizers[used[0]])

    def label_column(self) -> str:
        """The verbalized column of the completion (see :meth:`label_words`)."""
        self.label_words()
        return next(c for c in _fields(self.completion, "completion") if c in self.verbalizers)

    def _values(self, row: Mapping[str, Any]) -> dict[str, Any]:
        values = {}
        for column in self.columns():
            if column not in row:
                raise ValueError(f"the row has no column {column!r} used by the template; columns: {sorted(row)}.")
            value = row[column]
            if column in self.verbalizers:
                words = self.verbalizers[column]
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(words):
                    raise ValueError(
                        f"column {column!r} must hold class ids in [0, {len(words)}) for verbalizers[{column!r}]; "
                        f"got {value!r}."
                    )
                value = words[value]
            values[column] = value
        return values

    def render(self, row: Mapping[str, Any]) -> tuple[str, str]:
        """``(prompt, completion)`` text of ``row``."""
        values = self._values(row)
        return self.prompt.format(**values), self.completion.format(**values)


def instruction_template(
    instruction_column: str = "instruction", input_column: str | None = None, output_column: str = "output"
) -> TaskTemplate:
    """Instruction data: the prompt is the instruction (then a blank line and the input, if any).

    With a chat template the prompt becomes the user message and the output the assistant message; without
    one, ``"{instruction}\\n\\n{input}\\n\\n"`` is followed by the output.
    """
    prompt = f"{{{instruction_column}}}" + (f"\n\n{{{input_column}}}" if input_column else "") + "\n\n"
    return TaskTemplate(prompt=prompt, completion=f"{{{output_column}}}")


@dataclass(frozen=True)
class MultipleChoiceTemplate:
    """Multiple-choice rows in the evaluation format of :mod:`hf_calib.eval.prompts`.

    Prompt ``"{question}\\nA. {option}\\n...\\nAnswer:"``, completion ``" B"`` (``scoring="letter"``) or
    ``" {correct option}"`` (``scoring="cloze"``, options not listed) -- the same text
    :class:`hf_calib.eval.MultipleChoiceCalibration` scores, so a model trained on it is evaluated in its
    training format.
    """

    question_column: str = "question"
    choices_column: str = "choices"
    answer_column: str = "answer"
    scoring: str = "letter"
    letters: str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

    def __post_init__(self) -> None:
        if self.scoring not in ("letter", "cloze"):
            raise ValueError(f"scoring must be 'letter' or 'cloze'; got {self.scoring!r}.")

    def columns(self) -> set[str]:
        return {self.question_column, self.choices_column, self.answer_column}

    def render(self, row: Mapping[str, Any]) -> tuple[str, str]:
        from hf_calib.eval.prompts import answer_text, question_block, read_questions

        item = read_questions(
            [row],
            question_column=self.question_column,
            choices_column=self.choices_column,
            answer_column=self.answer_column,
            task_column=None,
            name="row",
        )[0]
        if len(item.choices) > len(self.letters):
            raise ValueError(f"a question has {len(item.choices)} options but only {len(self.letters)} letters.")
        listed = self.scoring == "letter"
        prompt = question_block(item, list_choices=listed, letters=self.letters)
        return prompt, answer_text(item, scoring=self.scoring, letters=self.letters)


def check_template(template: Template, column_names: Sequence[str], name: str = "dataset") -> None:
    """``ValueError`` naming the missing columns if ``template`` reads a column ``column_names`` lacks."""
    if not isinstance(template, Template):
        raise TypeError(
            f"template must be a TaskTemplate, MultipleChoiceTemplate or an object with columns() and render(); "
            f"got {type(template).__name__}."
        )
    missing = sorted(template.columns() - set(column_names))
    if missing:
        raise ValueError(f"the template reads columns {missing} that {name} lacks; its columns: {list(column_names)}.")
