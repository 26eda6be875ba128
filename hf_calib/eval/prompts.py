"""Questions, prompt text and token ids for multiple-choice scoring (no model code here).

:func:`read_questions` turns a ``Dataset`` or a list of dicts into validated :class:`MCQuestion` items.

Plain prompt of one question (letter scoring lists the options; cloze scoring does not)::

    {header}                      <- optional, e.g. "The following are ... about {task}."
                                  <- blank line
    {shot question}               <- ``num_fewshot`` solved demonstrations, each followed by its answer
    A. {option}                   (" B" for letters, " {option text}" for cloze), blank-line separated
    ...
    Answer: B
                                  <- blank line
    {question}
    A. {option 0}
    B. {option 1}
    ...
    Answer:

The prompt always ends with ``"\\nAnswer:"`` (Thermometer's format, Shen et al., ICML 2024; see
``docs/scaling.md``, section "Thermometer", and ``docs/multiple_choice.md``, section "Scoring"). With a chat
template, everything above ``"Answer:"`` is the user message and ``"Answer:"`` starts the assistant
turn, so the scored position is again right after ``"Answer:"``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

ANSWER_CUE = "Answer:"
DEFAULT_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MMLU_HEADER = "The following are multiple choice questions (with answers) about {task}."
LETTER_TOKENS = ("auto", "space", "no_space")
SINGLE_TASK = "all"


@dataclass(frozen=True)
class MCQuestion:
    """One multiple-choice item: ``answer`` indexes ``choices``; ``task`` groups items for per-task metrics."""

    question: str
    choices: tuple[str, ...]
    answer: int
    task: str


def question_block(item: MCQuestion, *, list_choices: bool, letters: Sequence[str]) -> str:
    """``"{question}\\nA. {option}\\n...\\nAnswer:"`` (options listed only when ``list_choices``).

    Question and options are stripped of surrounding whitespace.
    """
    lines = [item.question.strip()]
    if list_choices:
        lines += [f"{letters[j]}. {choice.strip()}" for j, choice in enumerate(item.choices)]
    lines.append(ANSWER_CUE)
    return "\n".join(lines)


def answer_text(item: MCQuestion, *, scoring: str, letters: Sequence[str], letter_space: bool = True) -> str:
    """What follows ``"Answer:"``: the letter (``" B"``, or ``"B"`` without the space) or ``" {option}"``."""
    if scoring == "letter":
        return (" " if letter_space else "") + letters[item.answer]
    return " " + item.choices[item.answer].strip()


def prompt_body(
    item: MCQuestion,
    shots: Sequence[MCQuestion],
    *,
    scoring: str,
    letters: Sequence[str],
    header: str | None,
    letter_space: bool = True,
) -> str:
    """The prompt of ``item`` without its final ``"Answer:"`` (what goes in a chat template's user message)."""
    list_choices = scoring == "letter"
    blocks = [header.format(task=item.task)] if header else []
    for shot in shots:
        solved = question_block(shot, list_choices=list_choices, letters=letters)
        blocks.append(solved + answer_text(shot, scoring=scoring, letters=letters, letter_space=letter_space))
    blocks.append(question_block(item, list_choices=list_choices, letters=letters))
    return "\n\n".join(blocks)[: -len(ANSWER_CUE)]


def build_prompt(
    item: MCQuestion,
    shots: Sequence[MCQuestion],
    *,
    scoring: str,
    letters: Sequence[str],
    header: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    use_chat_template: bool = False,
    letter_space: bool = True,
) -> str:
    """The full prompt text of ``item``, ending with ``"Answer:"`` (see the module docstring).

    With ``use_chat_template`` the body is the single user message, rendered by
    ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``, and ``"Answer:"`` is appended
    after the generation prompt.
    """
    body = prompt_body(item, shots, scoring=scoring, letters=letters, header=header, letter_space=letter_space)
    if not use_chat_template:
        return body + ANSWER_CUE
    messages = [{"role": "user", "content": body.rstrip("\n")}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return rendered + ANSWER_CUE


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], *, special: bool = False) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]


def special_prefix_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts *before* a text (e.g. ``[bos]``; ``[]`` for SmolLM2).

    Found by locating the plain encoding of a probe inside its encoding with special tokens; tokens
    added *after* the text (an EOS) are dropped, since the prompt must end with ``"Answer:"``.
    """
    plain = _encode(tokenizer, [ANSWER_CUE])[0]
    full = _encode(tokenizer, [ANSWER_CUE], special=True)[0]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def continuation_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as it is tokenized right after ``"Answer:"``.

    ``ids(ANSWER_CUE + text)`` minus the leading ``ids(ANSWER_CUE)``. This is independent of the
    question, never merges with the context, and handles SentencePiece tokenizers that add a dummy
    prefix space to a text encoded alone. When a token merges across the boundary (the anchor's ids
    are not a prefix), the text is encoded alone instead. For byte-level BPE (GPT-2, Llama-3, SmolLM2)
    the result equals ``tokenizer.encode(text, add_special_tokens=False)``.
    """
    anchor = _encode(tokenizer, [ANSWER_CUE])[0]
    out = []
    for text, ids in zip(texts, _encode(tokenizer, [ANSWER_CUE + t for t in texts]), strict=True):
        if len(ids) > len(anchor) and ids[: len(anchor)] == anchor:
            out.append(ids[len(anchor) :])
        else:
            out.append(_encode(tokenizer, [text])[0])
    return out


def letter_token_ids(tokenizer: PreTrainedTokenizerBase, letters: Sequence[str], mode: str) -> tuple[list[int], bool]:
    """One token id per letter and whether it is the spaced variant (``" A"``) or not (``"A"``).

    ``mode="space"`` / ``"no_space"`` force a variant; ``"auto"`` takes ``" A"`` when every letter is a
    single token with its leading space (what a model writes after ``"Answer:"``), else ``"A"``.

    Raises:
        ValueError: if the requested variant is not one distinct token per letter.
    """
    if mode not in LETTER_TOKENS:
        raise ValueError(f"letter_token must be one of {LETTER_TOKENS}; got {mode!r}.")
    variants = {True: continuation_ids(tokenizer, [" " + c for c in letters])}
    variants[False] = continuation_ids(tokenizer, list(letters))

    def usable(space: bool) -> bool:
        ids = variants[space]
        return all(len(t) == 1 for t in ids) and len({t[0] for t in ids}) == len(ids)

    order = {"auto": (True, False), "space": (True,), "no_space": (False,)}[mode]
    for space in order:
        if usable(space):
            return [t[0] for t in variants[space]], space
    raise ValueError(
        f"letter_token={mode!r}: the tokenizer does not encode each of the letters {list(letters)} as one distinct "
        "token (tried " + " and ".join("' A'" if s else "'A'" for s in order) + "); use scoring='cloze' or other "
        "letters."
    )


def has_column(data: Any, column: str) -> bool:
    """Whether a ``Dataset`` (or the first dict of a list) has ``column``."""
    if hasattr(data, "column_names"):
        return column in data.column_names
    return bool(len(data)) and isinstance(data[0], Mapping) and column in data[0]


def read_questions(
    data: Dataset | Sequence[Mapping[str, Any]],
    *,
    question_column: str = "question",
    choices_column: str = "choices",
    answer_column: str = "answer",
    task_column: str | None = "subject",
    name: str = "data",
) -> list[MCQuestion]:
    """Validated :class:`MCQuestion` items from a ``datasets.Dataset`` or a list of dicts.

    ``task_column=None`` puts every question in one task named ``"all"``. Errors name the row and the
    column argument, never the row's text.

    Raises:
        ValueError: empty data, a missing column, a non-string question, fewer than 2 options, or an
            answer that is not an integer index of the options.
    """
    if isinstance(data, str | bytes | Mapping) or not hasattr(data, "__len__"):
        raise ValueError(f"{name} must be a datasets.Dataset or a list of dicts; got {type(data).__name__}.")
    if len(data) == 0:
        raise ValueError(f"{name} is empty; pass at least one question.")
    columns = {"question_column": question_column, "choices_column": choices_column, "answer_column": answer_column}
    if task_column is not None:
        columns["task_column"] = task_column
    if hasattr(data, "column_names"):
        for arg, column in columns.items():
            if column not in data.column_names:
                hint = " (or task_column=None for a single task)" if arg == "task_column" else ""
                raise ValueError(f"{arg}={column!r} is not a column of {name}; columns: {data.column_names}{hint}.")
        table = {column: list(data[column]) for column in columns.values()}
        rows: Iterable[Mapping[str, Any]] = ({c: table[c][i] for c in table} for i in range(len(data)))
    else:
        rows = data
    items = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"{name}[{i}] must be a dict; got {type(row).__name__}.")
        for arg, column in columns.items():
            if column not in row:
                hint = " (or task_column=None for a single task)" if arg == "task_column" else ""
                raise ValueError(f"{name}[{i}] has no {arg}={column!r} key{hint}.")
        question, choices, answer = row[question_column], row[choices_column], row[answer_column]
        if not isinstance(question, str):
            raise ValueError(f"{name}[{i}]: {question_column!r} must be a string; got {type(question).__name__}.")
        if isinstance(choices, str) or not isinstance(choices, Sequence):
            raise ValueError(f"{name}[{i}]: {choices_column!r} (choices_column) must be a list of option strings.")
        if len(choices) < 2:
            raise ValueError(
                f"{name}[{i}]: {choices_column!r} (choices_column) has {len(choices)} option(s); a multiple-choice "
                "question needs at least 2."
            )
        if not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{name}[{i}]: every option in {choices_column!r} must be a string.")
        try:
            index = operator.index(answer) if not isinstance(answer, bool) else None
        except TypeError:
            index = None
        if index is None or not 0 <= index < len(choices):
            raise ValueError(
                f"{name}[{i}]: {answer_column!r} (answer_column) must be an integer index in [0, {len(choices)}) of "
                f"the options; got {answer if index is not None else type(answer).__name__!r}."
            )
        task = SINGLE_TASK if task_column is None else row[task_column]
        if not isinstance(task, str):
            raise ValueError(f"{name}[{i}]: {task_column!r} (task_column) must be a string; got {type(task).__name__}.")
        items.append(MCQuestion(question, tuple(choices), index, task))
    return items


def split_fewshot(
    questions: list[MCQuestion], k: int
) -> tuple[list[MCQuestion], list[int], dict[str, list[MCQuestion]]]:
    """Use the first ``k`` questions of each task as its demonstrations; evaluate the others."""
    shots: dict[str, list[MCQuestion]] = {}
    kept, indices = [], []
    for i, q in enumerate(questions):
        taken = shots.setdefault(q.task, [])
        if len(taken) < k:
            taken.append(q)
        else:
            kept.append(q)
            indices.append(i)
    for task in shots:
        if not any(q.task == task for q in kept):
            raise ValueError(
                f"num_fewshot={k} uses every question of task {task!r} as a demonstration; lower num_fewshot, "
                "add questions or pass fewshot_data."
            )
    return kept, indices, shots


def shots_from_pool(
    pool: Sequence[MCQuestion], tasks: Iterable[str], k: int, *, by_task: bool
) -> dict[str, list[MCQuestion]]:
    """The first ``k`` questions of ``pool`` for each task (of that task when ``by_task``, else of all)."""
    shots = {}
    for task in dict.fromkeys(tasks):
        chosen = [q for q in pool if not by_task or q.task == task][:k]
        if len(chosen) < k:
            raise ValueError(f"fewshot_data has {len(chosen)} examples of task {task!r}; num_fewshot={k} needs {k}.")
        shots[task] = chosen
    return shots
