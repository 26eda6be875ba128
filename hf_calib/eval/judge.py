"""LLM-as-judge scoring of instruction following (Faysse et al., EMNLP 2023).

One judge prompt per example shows the instruction, the model's response and the gold reference; the
judge scores both from 0 to 10 and answers ``"<response score>,<reference score>"``. Two ways to read the
scores (``LLMJudge(..., scoring=...)``):

- ``"text"`` (default; the only way for a callable judge): generate a reply and parse it. A reply that
  does not parse into two numbers, or whose numbers fall outside ``[0, 10]``, is *missing* for that
  example (both scores): counted, reported, and left out of the means.
- ``"probability"`` (local causal LMs): the judge's probability of writing each score 0..10
  (:mod:`hf_calib.eval.judge_probability`); the score is the expected value, every example gets one,
  and the probability mass on valid scores says how much to trust it. ``"both"`` does both in one call.

Reported (:meth:`JudgeResult.metrics`): ``judge_response`` / ``judge_reference`` = mean response /
reference score over the scored examples (the same examples for both); ``judge_ratio`` = their ratio
(how close the model comes to the reference); ``judge_missing`` (count) and, for text scoring,
``judge_malformed``, ``judge_out_of_range`` and ``judge_parse_failure_rate``; for probability scoring the
mean per-example spread (``judge_response_std``, ``judge_reference_std``) and the mean valid mass
(``judge_valid_mass``). Protocol and differences from the paper: ``docs/data_and_eval.md``, section
"LLM judge" ("Specification (Faysse et al., EMNLP 2023)").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from .judge_probability import ScoreDistribution, score_distributions

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["JUDGE_PROMPT", "JudgeResult", "JudgeVerdict", "LLMJudge", "ScoreDistribution", "parse_judge_reply"]

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


def _means(response: Sequence[float | None], reference: Sequence[float | None]) -> tuple[float, float, float]:
    """Mean response and reference score over the examples with both, and their ratio (``nan`` if undefined)."""
    pairs = [(a, b) for a, b in zip(response, reference, strict=True) if a is not None and b is not None]
    if not pairs:
        return math.nan, math.nan, math.nan
    mean_response = sum(a for a, _ in pairs) / len(pairs)
    mean_reference = sum(b for _, b in pairs) / len(pairs)
    return mean_response, mean_reference, mean_response / mean_reference if mean_reference else math.nan


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class JudgeResult:
    """All verdicts of one scoring run.

    ``verdicts`` and ``replies``: the parsed text replies (text and "both" scoring; empty for probability
    scoring). ``distributions``: one ``(response, reference)`` pair of
    :class:`~hf_calib.eval.judge_probability.ScoreDistribution` per example (probability and "both"
    scoring; ``None`` for text scoring). The headline scores (:attr:`response_scores`, :meth:`metrics`) are
    the expected scores when there are distributions, else the parsed ones.
    """

    verdicts: tuple[JudgeVerdict, ...] = ()
    replies: tuple[str, ...] = ()
    distributions: tuple[tuple[ScoreDistribution, ScoreDistribution], ...] | None = None

    @property
    def scoring(self) -> str:
        """``"text"``, ``"probability"`` or ``"both"``."""
        if self.distributions is None:
            return "text"
        return "both" if self.verdicts else "probability"

    @property
    def scored(self) -> list[JudgeVerdict]:
        """The text verdicts that parsed."""
        return [v for v in self.verdicts if v.failure is None]

    def _count(self, failure: str) -> int:
        return sum(v.failure == failure for v in self.verdicts)

    @property
    def response_scores(self) -> list[float | None]:
        """One score per example (expected score, else the parsed one; ``None`` if missing), e.g. for
        :func:`hf_calib.eval.agreement`."""
        if self.distributions is not None:
            return [_finite(r.expected) for r, _ in self.distributions]
        return [v.response for v in self.verdicts]

    @property
    def reference_scores(self) -> list[float | None]:
        """The reference answer's score per example (as :attr:`response_scores`)."""
        if self.distributions is not None:
            return [_finite(g.expected) for _, g in self.distributions]
        return [v.reference for v in self.verdicts]

    @property
    def n_missing(self) -> int:
        """Examples without a headline score (unparsable replies; for probability scoring in practice 0)."""
        return sum(a is None or b is None for a, b in zip(self.response_scores, self.reference_scores, strict=True))

    @property
    def mean_response(self) -> float:
        """Mean response score over the scored examples (``nan`` if none)."""
        return _means(self.response_scores, self.reference_scores)[0]

    @property
    def mean_reference(self) -> float:
        """Mean reference score over the same examples (``nan`` if none)."""
        return _means(self.response_scores, self.reference_scores)[1]

    @property
    def ratio(self) -> float:
        """``mean_response / mean_reference`` (``nan`` if nothing was scored or the reference mean is 0)."""
        return _means(self.response_scores, self.reference_scores)[2]

    def _text_metrics(self, prefix: str) -> dict[str, float]:
        response, reference, ratio = _means([v.response for v in self.verdicts], [v.reference for v in self.verdicts])
        missing = len(self.verdicts) - len(self.scored)
        return {
            f"{prefix}_response": response,
            f"{prefix}_reference": reference,
            f"{prefix}_ratio": ratio,
            f"{prefix}_missing": float(missing),
            f"{prefix}_malformed": float(self._count("malformed")),
            f"{prefix}_out_of_range": float(self._count("out_of_range")),
            f"{prefix}_parse_failure_rate": missing / len(self.verdicts) if self.verdicts else math.nan,
            f"{prefix}_n": float(len(self.verdicts)),
        }

    def metrics(self, prefix: str = "judge") -> dict[str, float]:
        """``{prefix}_{key}``: the scores, their ratio and the missing count, with reliability signals.

        Text scoring: response, reference, ratio, missing, malformed, out_of_range, parse_failure_rate (=
        missing / n), n. Probability scoring: response, reference, ratio (of the expected scores),
        response_std and reference_std (mean per-example spread), valid_mass (mean over examples and both
        scores of the mass on valid score tokens) with valid_mass_response / valid_mass_reference, missing
        (0 unless a distribution is undefined), n. "both": the probability keys plus the text keys as
        ``{prefix}_text_{key}`` (e.g. ``judge_text_parse_failure_rate``).
        """
        if self.distributions is None:
            return self._text_metrics(prefix)
        n = len(self.distributions)
        mean = (lambda values: sum(values) / n) if n else (lambda values: math.nan)
        mass_response = mean([r.mass for r, _ in self.distributions])
        mass_reference = mean([g.mass for _, g in self.distributions])
        out = {
            f"{prefix}_response": self.mean_response,
            f"{prefix}_reference": self.mean_reference,
            f"{prefix}_ratio": self.ratio,
            f"{prefix}_response_std": mean([r.std for r, _ in self.distributions]),
            f"{prefix}_reference_std": mean([g.std for _, g in self.distributions]),
            f"{prefix}_valid_mass": (mass_response + mass_reference) / 2,
            f"{prefix}_valid_mass_response": mass_response,
            f"{prefix}_valid_mass_reference": mass_reference,
            f"{prefix}_missing": float(self.n_missing),
            f"{prefix}_n": float(n),
        }
        if self.verdicts:
            out.update(self._text_metrics(f"{prefix}_text"))
        return out


SCORINGS = ("text", "probability", "both")


class LLMJudge:
    """Scores responses against references with a judge LLM (see the module docs).

    ``LLMJudge(model, tokenizer)`` uses a local causal LM; ``LLMJudge("path/or/hub-id")`` loads one with
    ``AutoModelForCausalLM`` / ``AutoTokenizer`` (``load_kwargs`` go to the model's ``from_pretrained``;
    ``trust_remote_code`` stays off unless you pass it there). Judge prompts are rendered with the
    tokenizer's chat template when it has one. ``LLMJudge(fn)`` calls ``fn(prompt) -> reply`` once per
    example instead (text scoring only). ``prompt_template`` must contain ``{instruction}``, ``{response}``
    and ``{reference}``.

    ``scoring``: ``"text"`` (generate greedily in batches, at most ``max_new_tokens``, and parse with
    :func:`parse_judge_reply`), ``"probability"`` (expected scores from the next-token probabilities;
    :mod:`hf_calib.eval.judge_probability`) or ``"both"``. ``reply_prefix`` (model judges only) is written
    at the start of the judge's turn so that a small judge continues with the numbers instead of
    answering the instruction itself; a text reply is the prefix plus the generated text. Default:
    ``""`` for text scoring, ``"Scores: "`` otherwise. ``separator`` sits between the two scores (the
    reference score is read after ``<most likely response score><separator>``).
    """

    def __init__(
        self,
        judge: nn.Module | Callable[[str], str] | str,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        scoring: str = "text",
        prompt_template: str = JUDGE_PROMPT,
        reply_prefix: str | None = None,
        separator: str = ",",
        max_new_tokens: int = 12,
        batch_size: int = 8,
        show_progress: bool = True,
        load_kwargs: dict | None = None,
    ) -> None:
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}; got {scoring!r}.")
        if isinstance(judge, str):
            judge, tokenizer = _load_judge(judge, tokenizer, load_kwargs or {})
        if isinstance(judge, nn.Module):
            if tokenizer is None:
                raise ValueError("a model judge needs its tokenizer: LLMJudge(model, tokenizer).")
        elif not callable(judge):
            raise TypeError(
                "judge must be a causal LM, a model path or Hub id, or a callable str -> str; "
                f"got {type(judge).__name__}."
            )
        elif scoring != "text":
            raise ValueError(
                f"scoring={scoring!r} reads the judge's token probabilities, which a callable str -> str does not "
                "expose; pass a local causal LM (model and tokenizer, or a path / Hub id), or use scoring='text'."
            )
        for placeholder in ("{instruction}", "{response}", "{reference}"):
            if placeholder not in prompt_template:
                raise ValueError(f"prompt_template must contain {placeholder}.")
        self.judge = judge
        self.tokenizer = tokenizer
        self.scoring = scoring
        self.prompt_template = prompt_template
        self.reply_prefix = reply_prefix if reply_prefix is not None else ("" if scoring == "text" else "Scores: ")
        self.separator = separator
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

    def _contexts(self, prompts: Sequence[str]) -> list[tuple[list[int], str]]:
        """``(special prefix ids, text)`` of each judge turn up to and including the reply prefix."""
        from hf_calib.data.chat import render_prompt, uses_chat_template

        from .prompts import special_prefix_ids

        chat = uses_chat_template(self.tokenizer)
        prefix = [] if chat else special_prefix_ids(self.tokenizer)
        return [(prefix, render_prompt(self.tokenizer, p, chat=chat) + self.reply_prefix) for p in prompts]

    def replies(self, prompts: Sequence[str]) -> list[str]:
        """The judge's raw (generated) replies to ``prompts``."""
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

    def distributions(self, prompts: Sequence[str]) -> list[tuple[ScoreDistribution, ScoreDistribution]]:
        """``(response, reference)`` score distributions per prompt (model judges; see the module docs)."""
        if not isinstance(self.judge, nn.Module):
            raise ValueError("probability scoring needs a local causal LM judge, not a callable.")
        return score_distributions(
            self.judge,
            self.tokenizer,
            self._contexts(prompts),
            then=self.separator,
            batch_size=self.batch_size,
            show_progress=self.show_progress,
            desc="judging (probabilities)",
        )

    def score(self, instructions: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> JudgeResult:
        """Judge every (instruction, response, reference) triple; see :class:`JudgeResult` for the summary."""
        prompts = self.prompts(instructions, responses, references)
        verdicts: tuple[JudgeVerdict, ...] = ()
        replies: tuple[str, ...] = ()
        if self.scoring in ("text", "both"):
            replies = tuple(self.replies(prompts))
            verdicts = tuple(parse_judge_reply(r) for r in replies)
        distributions = tuple(self.distributions(prompts)) if self.scoring != "text" else None
        return JudgeResult(verdicts, replies, distributions)


def _load_judge(
    name: str, tokenizer: PreTrainedTokenizerBase | None, load_kwargs: dict
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a local folder or a Hub id (safetensors only, no remote code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"use_safetensors": True, **load_kwargs}
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=kwargs.get("trust_remote_code", False))
    return model.eval(), tokenizer
