"""Batched option scores of a causal LM: letter logits and cloze log-likelihoods.

Every sequence is left-padded, so its last real token sits at position -1 of the batch and a
continuation of ``T`` tokens occupies the last ``T`` positions ("right-aligned"). Position ids
count real tokens only (``cumsum(attention_mask) - 1``), so padding does not shift absolute
position embeddings. Sequences are sorted by length (longest first) to waste little padding;
results come back in the input order.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .._model_utils import base_model, input_device, left_pad
from .._model_utils import eval_mode as eval_mode  # re-exported: hf_calib.eval.scoring.eval_mode


class _Forward:
    """Calls ``model`` on a left-padded batch and returns the float32 logits of its last ``keep`` positions."""

    def __init__(self, model: nn.Module, pad_id: int) -> None:
        # A PEFT model's forward passes **kwargs through: its base model's signature tells what it takes.
        params = inspect.signature(base_model(model).forward).parameters
        self.model = model
        self.pad_id = pad_id
        self.device = input_device(model)
        self.position_ids = "position_ids" in params
        self.logits_to_keep = "logits_to_keep" in params

    def __call__(self, seqs: Sequence[Sequence[int]], keep: int) -> torch.Tensor:
        ids, mask = left_pad(seqs, self.pad_id)
        kwargs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device), "use_cache": False}
        if self.position_ids:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(self.device)
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = keep
        logits = self.model(**kwargs).logits
        return logits[:, -keep:].float()


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def truncate_left(seqs: list[list[int]], max_length: int | None, min_keep: Sequence[int]) -> list[list[int]]:
    """Keep the last ``max_length`` tokens of each sequence; warn once with the count of truncated ones.

    Raises:
        ValueError: if a sequence would lose some of its last ``min_keep[i]`` tokens.
    """
    if max_length is None:
        return seqs
    out, cut = [], 0
    for seq, need in zip(seqs, min_keep, strict=True):
        if need > max_length:
            raise ValueError(
                f"max_length={max_length} is too short: a scored continuation needs {need} tokens (with one token "
                "of context); raise max_length."
            )
        cut += len(seq) > max_length
        out.append(seq[-max_length:])
    if cut:
        warnings.warn(
            f"{cut} of {len(seqs)} sequences exceed max_length={max_length} and lost their first tokens.", stacklevel=3
        )
    return out


def score_letters(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    letter_ids: Sequence[int],
    *,
    pad_id: int,
    batch_size: int,
    max_length: int | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """Next-token logits of the letter tokens after each prompt.

    ``scores[i, j] = z_i[letter_ids[j]]`` where ``z_i`` is the model's logit vector at the last position
    of prompt ``i`` (its ``"Answer:"``).

    Args:
        prompts: N token-id lists (special tokens included).
        letter_ids: C token ids, one per option letter.
        max_length: if given, prompts are cut from the left to this many tokens.

    Returns:
        float32 CPU tensor [N, C].
    """
    forward = _Forward(model, pad_id)
    prompts = truncate_left([list(p) for p in prompts], max_length, [1] * len(prompts))
    columns = torch.tensor(list(letter_ids), dtype=torch.long, device=forward.device)
    out = torch.empty((len(prompts), len(letter_ids)), dtype=torch.float32)
    for batch in tqdm(_batches([len(p) for p in prompts], batch_size), desc="MC letters", disable=not show_progress):
        logits = forward([prompts[i] for i in batch], keep=1)
        out[batch] = logits[:, -1].index_select(-1, columns).cpu()
    return out


def score_continuations(
    model: nn.Module,
    contexts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int,
    length_normalize: bool = True,
    max_length: int | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """Log-likelihood of each continuation given its context (cloze scoring).

    For context ``x`` and continuation tokens ``y_1..y_T`` the score is
    ``s = sum_t log p(y_t | x, y_<t)``, divided by ``T`` when ``length_normalize`` (mean log-prob per
    token). Context and continuation ids are concatenated as given (no re-tokenization at the seam).

    Args:
        contexts: M context token-id lists (at least one token each).
        continuations: M continuation token-id lists (at least one token each).
        max_length: if given, contexts are cut from the left so that ``context + continuation`` fits.

    Returns:
        float32 CPU tensor [M].
    """
    forward = _Forward(model, pad_id)
    cont_lengths = [len(c) for c in continuations]
    seqs = truncate_left(
        [list(x) + list(y) for x, y in zip(contexts, continuations, strict=True)],
        max_length,
        [n + 1 for n in cont_lengths],
    )
    out = torch.empty(len(seqs), dtype=torch.float32)
    for batch in tqdm(_batches([len(s) for s in seqs], batch_size), desc="MC cloze", disable=not show_progress):
        keep = max(cont_lengths[i] for i in batch) + 1
        log_probs = torch.log_softmax(forward([seqs[i] for i in batch], keep=keep), dim=-1)
        for row, i in enumerate(batch):
            n = cont_lengths[i]
            # The logits at position p predict token p + 1: the continuation's last n tokens are
            # predicted by kept positions keep-n-1 .. keep-2.
            target = torch.tensor(continuations[i], dtype=torch.long, device=log_probs.device)
            token_lp = log_probs[row, keep - n - 1 : keep - 1].gather(-1, target[:, None])
            total = token_lp.sum()
            out[i] = (total / n if length_normalize else total).cpu()
    return out
