"""Expected-score judging: a judge's 0-10 score read from its next-token probabilities.

Instead of generating a reply and parsing it, the judge's probability of *writing* each valid score
``s = 0..10`` at the start of its turn is computed exactly, so every example gets a score, even from a
judge that never writes the requested format.

**The probability of a score.** With ``context`` the judge prompt (chat-rendered when the tokenizer has a
template) plus the reply prefix, ``p(s)`` is the probability that the judge continues ``context`` with the
digits of ``s`` and then a token that does *not* start with a digit:

``p(s) = P(tokens(str(s)) | context) * (1 - P(next token starts with a digit | context, str(s)))``.

The second factor defines the 1 vs 10 split: "1" followed by "0" is 10, "1" followed by anything but a
digit is 1, and "1" followed by another digit (11, 12, 100, ...) is not a valid score. It works whatever
the tokenizer does with numbers: digits as single tokens ("10" = "1" + "0", as in SmolLM2) or numbers as
one token ("10"); ``str(s)`` is tokenized together with the context (the canonical tokenization of
``context + str(s)``), and the tokens the eleven texts share with the context form the common stem. Only
the canonical token path is counted (as in any likelihood scoring). "7.5" counts as 7: it is "7" followed
by a non-digit.

**Reported per score**: ``mass = sum_s p(s)`` (how much of the judge's probability falls on valid scores
at all: the reliability signal; 1 means the judge certainly writes a valid score), the renormalised
``p(s) / mass``, the expected score ``sum_s s * p(s) / mass`` and its standard deviation (the spread).

**Two scores per example.** The response score is read right after the context; the reference score is
read after ``context + str(m) + separator``, where ``m`` is the most likely response score (the judge's
own first verdict, as if it had written it; cheaper than averaging over all eleven and exact when the
judge is confident).
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from .._model_utils import base_model, eval_mode, input_device, left_pad, pad_token_id

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["SCORES", "ScoreDistribution", "digit_token_mask", "score_candidates", "score_distributions"]

#: The valid scores.
SCORES = tuple(range(11))
_BYTE_DIGIT = re.compile(r"<0x3[0-9]>")  # sentencepiece byte-fallback tokens of "0".."9"


@dataclass(frozen=True)
class ScoreDistribution:
    """One score's distribution: ``probs[s]`` for s = 0..10 (renormalised) and the valid ``mass`` before."""

    probs: tuple[float, ...]
    mass: float

    @property
    def expected(self) -> float:
        """``sum_s s * p(s)`` (``nan`` if the distribution is undefined)."""
        return sum(s * p for s, p in zip(SCORES, self.probs, strict=True))

    @property
    def std(self) -> float:
        """Standard deviation of the score under ``p``: the judge's uncertainty about its own verdict."""
        mean = self.expected
        return math.sqrt(max(sum(p * (s - mean) ** 2 for s, p in zip(SCORES, self.probs, strict=True)), 0.0))

    @property
    def mode(self) -> int:
        """The most likely score (the lowest one on ties)."""
        return max(SCORES, key=lambda s: (self.probs[s], -s))


def digit_token_mask(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> torch.Tensor:
    """Boolean ``[vocab_size]``: the tokens whose text starts with a digit ("7", "10", "3rd"; not " 7").

    Read from the raw token strings, so a byte-level "Ġ7" or a sentencepiece "▁7" (a new word) does not
    count, and sentencepiece byte tokens ``<0x30>``..``<0x39>`` do. Ids beyond the tokenizer are ``False``.
    """
    n = min(len(tokenizer), vocab_size)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i, token in enumerate(tokens):
        if isinstance(token, str) and token and (token[0] in "0123456789" or _BYTE_DIGIT.fullmatch(token)):
            mask[i] = True
    return mask


def _encode(tokenizer: PreTrainedTokenizerBase, prefix_ids: Sequence[int], text: str) -> list[int]:
    return list(prefix_ids) + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def score_candidates(
    tokenizer: PreTrainedTokenizerBase, prefix_ids: Sequence[int], context: str
) -> tuple[list[int], list[list[int]]]:
    """``(stem, candidates)``: ``prefix_ids + ids(context + str(s)) == stem + candidates[s]`` for every s.

    ``stem`` is the longest token prefix shared by the context and all eleven texts (the context's own
    tokens, unless the tokenizer merges its last characters with a digit).
    """
    base = _encode(tokenizer, prefix_ids, context)
    full = [_encode(tokenizer, prefix_ids, context + str(s)) for s in SCORES]
    n = len(base)
    for seq in full:
        n = next((i for i, (a, b) in enumerate(zip(base[:n], seq, strict=False)) if a != b), min(n, len(seq)))
    candidates = [seq[n:] for seq in full]
    if n == 0 or any(not c for c in candidates):
        raise ValueError("the tokenizer does not write the scores 0..10 as tokens after the judge prompt.")
    return base[:n], candidates


def _right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(max(len(s) for s in seqs), 1)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


class _Batch:
    """A batch of contexts fed to the judge so far: ids and mask (CPU; left-padded stem, then right-padded
    blocks), the key/value cache (``None`` without one: blocks are then scored by re-running the rows in
    full), and ``last`` [B, V], the next-token log-probs after each row's last real token."""

    def __init__(self, model: nn.Module, stems: list[list[int]], pad_id: int, use_cache: bool) -> None:
        self.model, self.pad_id, self.use_cache = model, pad_id, use_cache
        # transformers renamed the forward argument ``past_key_values`` to ``cache`` during 5.x.
        forward = inspect.signature(base_model(model).forward).parameters
        self.cache_arg = "cache" if "cache" in forward else "past_key_values"
        self.ids, self.mask = left_pad(stems, pad_id)
        self.cache = None
        logp, cache = self._forward(self.ids, self.mask, None)
        self.cache = cache if use_cache else None
        self.last = logp[:, -1]

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache) -> tuple[torch.Tensor, object]:
        """Log-probs at the positions of ``ids`` (the last ``ids.shape[1]`` of ``mask``)."""
        device = input_device(self.model)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        kwargs = {self.cache_arg: cache} if cache is not None else {}
        out = self.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=self.use_cache,
            **kwargs,
        )
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return torch.log_softmax(out.logits[:, -ids.shape[1] :].float(), -1), cache

    def append(self, blocks: Sequence[Sequence[int]], *, commit: bool) -> torch.Tensor:
        """Log-probs ``[B, K, V]`` after each token of ``blocks`` (one per row); ``commit`` keeps them."""
        new_ids, new_mask = _right_pad(blocks, self.pad_id)
        mask = torch.cat([self.mask, new_mask], 1)
        if self.cache is not None:
            cache = self.cache if commit else copy.deepcopy(self.cache)
            logp, cache = self._forward(new_ids, mask, cache)
        else:
            logp, cache = self._forward(torch.cat([self.ids, new_ids], 1), mask, None)
            logp = logp[:, -new_ids.shape[1] :]
        if commit:
            self.ids, self.mask, self.cache = torch.cat([self.ids, new_ids], 1), mask, cache
            ends = torch.tensor([max(len(b), 1) - 1 for b in blocks])
            self.last = logp[torch.arange(len(blocks)), ends]
        return logp


def _score_logprobs(batch: _Batch, cands: list[list[list[int]]], digit_mask: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` unnormalised ``log p(s)``: candidate tokens' log-probs plus log P(next is no digit)."""
    out = torch.empty(len(cands), len(SCORES), dtype=torch.float64)
    non_digit = ~digit_mask
    for s in SCORES:
        later = batch.append([c[s] for c in cands], commit=False)
        for row, rows_cands in enumerate(cands):
            cand = rows_cands[s]
            logp = batch.last[row, cand[0]].double()
            for k in range(1, len(cand)):
                logp = logp + later[row, k - 1, cand[k]].double()
            end = torch.logsumexp(later[row, len(cand) - 1][non_digit.to(later.device)].double(), -1)
            out[row, s] = (logp + end).cpu()
    return out


def _distributions(logp: torch.Tensor) -> list[ScoreDistribution]:
    log_mass = torch.logsumexp(logp, -1)
    probs = torch.exp(logp - log_mass[:, None])
    return [ScoreDistribution(tuple(p.tolist()), math.exp(m)) for p, m in zip(probs, log_mass.tolist(), strict=True)]


def _score_batch(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[tuple[Sequence[int], str]],
    then: str | None,
    digit_mask: torch.Tensor,
    use_cache: bool,
) -> list[tuple[ScoreDistribution, ScoreDistribution | None]]:
    pad_id = pad_token_id(tokenizer)
    parts = [score_candidates(tokenizer, ids, text) for ids, text in contexts]
    batch = _Batch(model, [stem for stem, _ in parts], pad_id, use_cache)
    first = _distributions(_score_logprobs(batch, [c for _, c in parts], digit_mask))
    if then is None:
        return [(d, None) for d in first]
    second = [
        score_candidates(tokenizer, ids, text + str(d.mode) + then)
        for (ids, text), d in zip(contexts, first, strict=True)
    ]
    extras = [stem2[len(stem) :] for (stem, _), (stem2, _) in zip(parts, second, strict=True)]
    if all(
        stem2[: len(stem)] == stem and extra for (stem, _), (stem2, _), extra in zip(parts, second, extras, strict=True)
    ):
        batch.append(extras, commit=True)
    else:  # the tokenizer merged the context's end with the score: start the rows afresh
        batch = _Batch(model, [stem2 for stem2, _ in second], pad_id, use_cache)
    return list(zip(first, _distributions(_score_logprobs(batch, [c for _, c in second], digit_mask)), strict=True))


@torch.no_grad()
def score_distributions(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[tuple[Sequence[int], str]],
    *,
    then: str | None = None,
    batch_size: int = 8,
    show_progress: bool = True,
    desc: str = "judging",
    use_cache: bool = True,
) -> list[tuple[ScoreDistribution, ScoreDistribution | None]]:
    """The score distribution after each ``(prefix_ids, context_text)`` (see the module docs).

    The context is scored as ``prefix_ids + ids(context_text + ...)``: ``prefix_ids`` are special tokens the
    tokenizer would add (e.g. ``[bos]``). With ``then`` (e.g. ``","``), a second distribution is read after
    ``context_text + str(mode of the first) + then``; else the second item of each pair is ``None``.
    Batched (``batch_size`` contexts, sorted by length), in eval mode, without gradients; the eleven
    candidates of a batch reuse the context's key/value cache (``use_cache=False``: rows re-run in full).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}.")
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else None
    digit_mask = digit_token_mask(tokenizer, vocab or len(tokenizer))
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i][1]))
    out: list = [None] * len(contexts)
    with eval_mode(model):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not show_progress):
            rows = order[start : start + batch_size]
            scored = _score_batch(model, tokenizer, [contexts[i] for i in rows], then, digit_mask, use_cache)
            for i, pair in zip(rows, scored, strict=True):
                out[i] = pair
    return out
