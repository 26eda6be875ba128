"""LLM-as-judge scoring of instruction following (Faysse et al., EMNLP 2023).

One judge prompt per example shows the instruction, the model's response and the gold reference; the
judge scores both from 0 to 10 and answers ``"<response score>,<reference score>"``. A reply that does not
parse into two numbers, or whose numbers fall outside ``[0, 10]``, is *missing* for that example (both
scores): counted, reported, and left out of the means. Reported:

- ``judge_response`` = mean response score, ``judge_reference`` = mean reference score, over the scored
  examples (the same examples for both);
- ``judge_ratio`` = ``judge_response / judge_reference`` (how close the model comes to the reference);
- ``judge_missing`` (count), ``judge_malformed`` and ``judge_out_of_range`` (its two causes).

The judge is any local Hugging Face causal LM (greedy, batched, chat template when it has one) or any
callable ``str -> str`` (e.g. an API client). Protocol and differences from the paper: ``docs/data_and_eval.md``,
section "LLM judge" ("Specification (Faysse et al., EMNLP 2023)").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["JUDGE_PROMPT", "JudgeResult", "JudgeVerdict", "LLMJudge", "parse_judge_reply"]

JUDGE_PROMPT = """You are grading answers to an instruction. Score the response and the reference answer below, each \
as a whole number from 0 to 10, judging grammar, semantic correctness, coherence and relevance to the \
instruction. An acceptable answer never gets less than 6.

Instruction:
{instruction}

Response:
{response}

Reference answer:
{reference}

Reply with the two scores only, response first, in the form <score1>,<score2> (for example 7,9)."""

SCORE_MIN, SCORE_MAX = 0.0, 10.0

# Two numbers separated by a comma or semicolon, each optionally written "n/10"; a label such as
# "reference:" may sit between them. Signs are captured and the look-behind forbids a digit before the
# first number, so "-1,5" and "123,4" are read as out of range, never as "1,5" or "23,4".
# A third number in the list ("7,8,9") makes the reply ambiguous, hence malformed.
_NUMBER = r"(-?\d+(?:\.\d+)?)(?:\s*/\s*10(?!\d|\.\d))?"
_PAIR = re.compile(rf"(?<![\d.]){_NUMBER}\s*[,;]\s*(?:[A-Za-z ]{{0,20}}:\s*)?{_NUMBER}(?!\d|\.\d)")
_LIST_BEFORE = re.compile(r"\d\s*[,;]\s*$")
_LIST_AFTER = re.compile(r"\s*[,;]\s*-?\d")


@dataclass(frozen=True)
class JudgeVerdict:
    """One parsed judge reply: both scores, or ``None`` for both with the ``failure`` cause."""

    response: float | None
    reference: float | None
    failure: str | None  # None, "malformed" or "out_of_range"


def parse_judge_reply(reply: str) -> JudgeVerdict:
    """Read ``"<score1>,<score2>"`` from a judge reply.

    Accepted: the first such pair anywhere in the reply, with optional spaces (``"7, 8"``), a semicolon
    (``"7;8"``), decimals (``"7.5,8"``), ``"/10"`` suffixes (``"7/10, 8/10"``), surrounding text
    (``"Scores: 7,8."``) and a short label before the second score (``"7, reference: 8"``). Malformed:
    anything else (``""``, ``"seven, eight"``, ``"7"``, ``"7 8"``, three numbers ``"7,8,9"``). Out of
    range: a score below 0 or above 10 (``"11,8"``, ``"7,-1"``).
    """
    if not isinstance(reply, str):
        raise TypeError(f"reply must be the judge's text; got {type(reply).__name__}.")
    match = _PAIR.search(reply)
    if match is None or _LIST_BEFORE.search(reply, 0, match.start()) or _LIST_AFTER.match(reply, match.end()):
        return JudgeVerdict(None, None, "malformed")
    first, second = float(match.group(1)), float(match.group(2))
    if not all(SCORE_MIN <= s <= SCORE_MAX for s in (first, second)):
        return JudgeVerdict(None, None, "out_of_range")
    return JudgeVerdict(first, second, None)


@dataclass(frozen=True)
class JudgeResult:
    """All verdicts of one scoring run, with the raw replies (for inspection)."""

    verdicts: tuple[JudgeVerdict, ...]
    replies: tuple[str, ...]

    @property
    def scored(self) -> list[JudgeVerdict]:
        return [v for v in self.verdicts if v.failure is None]

    def _count(self, failure: str) -> int:
        return sum(v.failure == failure for v in self.verdicts)

    @property
    def n_missing(self) -> int:
        return len(self.verdicts) - len(self.scored)

    @property
    def mean_response(self) -> float:
        """Mean response score over the scored examples (``nan`` if none)."""
        scored = self.scored
        return sum(v.response for v in scored) / len(scored) if scored else math.nan

    @property
    def mean_reference(self) -> float:
        """Mean reference score over the same examples (``nan`` if none)."""
        scored = self.scored
        return sum(v.reference for v in scored) / len(scored) if scored else math.nan

    @property
    def ratio(self) -> float:
        """``mean_response / mean_reference`` (``nan`` if nothing was scored or the reference mean is 0)."""
        reference = self.mean_reference
        return self.mean_response / reference if reference and not math.isnan(reference) else math.nan

    def metrics(self, prefix: str = "judge") -> dict[str, float]:
        """``{prefix}_{key}`` for key in response, reference, ratio, missing, malformed, out_of_range, n."""
        return {
            f"{prefix}_response": self.mean_response,
            f"{prefix}_reference": self.mean_reference,
            f"{prefix}_ratio": self.ratio,
            f"{prefix}_missing": float(self.n_missing),
            f"{prefix}_malformed": float(self._count("malformed")),
            f"{prefix}_out_of_range": float(self._count("out_of_range")),
            f"{prefix}_n": float(len(self.verdicts)),
        }


class LLMJudge:
    """Scores responses against references with a judge LLM (see the module docs).

    ``LLMJudge(model, tokenizer)`` uses a local causal LM: judge prompts are rendered with the tokenizer's
    chat template when it has one, generated greedily in batches (``max_new_tokens``), and parsed by
    :func:`parse_judge_reply`. ``LLMJudge(fn)`` calls ``fn(prompt) -> reply`` once per example instead.
    ``prompt_template`` must contain ``{instruction}``, ``{response}`` and ``{reference}``.

    ``reply_prefix`` (model judges only) is written at the start of the judge's turn, e.g. ``"Scores: "``,
    so that a small judge continues with the numbers instead of answering the instruction itself; the
    parsed reply is the prefix plus the generated text.
    """

    def __init__(
        self,
        judge: nn.Module | Callable[[str], str],
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        prompt_template: str = JUDGE_PROMPT,
        reply_prefix: str = "",
        max_new_tokens: int = 12,
        batch_size: int = 8,
        show_progress: bool = True,
    ) -> None:
        if isinstance(judge, nn.Module):
            if tokenizer is None:
                raise ValueError("a model judge needs its tokenizer: LLMJudge(model, tokenizer).")
        elif not callable(judge):
            raise TypeError(f"judge must be a causal LM or a callable str -> str; got {type(judge).__name__}.")
        for placeholder in ("{instruction}", "{response}", "{reference}"):
            if placeholder not in prompt_template:
                raise ValueError(f"prompt_template must contain {placeholder}.")
        self.judge = judge
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.reply_prefix = reply_prefix
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.show_progress = show_progress

    def prompts(self, instructions: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> list[str]:
        """The judge prompts (before any chat template)."""
        lengths = {len(instructions), len(responses), len(references)}
        if len(lengths) != 1:
            raise ValueError(
                "instructions, responses and references must pair up one to one; got lengths "
                f"{len(instructions)}, {len(responses)} and {len(references)}."
            )
        for name, texts in (("instructions", instructions), ("responses", responses), ("references", references)):
            if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
                raise TypeError(f"{name} must be a list of strings.")
        template = self.prompt_template
        # str.replace, not str.format: the texts may contain braces.
        return [
            template.replace("{instruction}", i.strip())
            .replace("{response}", r.strip())
            .replace("{reference}", g.strip())
            for i, r, g in zip(instructions, responses, references, strict=True)
        ]

    def replies(self, prompts: Sequence[str]) -> list[str]:
        """The judge's raw replies to ``prompts``."""
        if isinstance(self.judge, nn.Module):
            from hf_calib.data.chat import encode_prompt, uses_chat_template

            from .decoding import generate_from_ids

            chat = uses_chat_template(self.tokenizer)
            prefix = list(self.tokenizer(self.reply_prefix, add_special_tokens=False)["input_ids"])
            ids = [encode_prompt(self.tokenizer, p, chat=chat) + prefix for p in prompts]
            replies = generate_from_ids(
                self.judge,
                self.tokenizer,
                ids,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
                show_progress=self.show_progress,
                desc="judging",
            )
            return [self.reply_prefix + r for r in replies]
        replies = []
        for prompt in prompts:
            reply = self.judge(prompt)
            if not isinstance(reply, str):
                raise TypeError(f"the judge callable must return a str; got {type(reply).__name__}.")
            replies.append(reply)
        return replies

    def score(self, instructions: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> JudgeResult:
        """Judge every (instruction, response, reference) triple; see :class:`JudgeResult` for the summary."""
        replies = self.replies(self.prompts(instructions, responses, references))
        return JudgeResult(tuple(parse_judge_reply(r) for r in replies), tuple(replies))
