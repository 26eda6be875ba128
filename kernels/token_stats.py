"""Forward-only, chunked softmax statistics of the rows of ``[N, V]`` logits (no autograd, no ``[N, V]`` buffer).

For each selected row with logits ``z`` (``V`` classes) and target ``y``, with ``m = max_v z_v``,
``s = sum_v exp(z_v - m)`` and ``lse = m + log(s)``::

    confidence = max_v p_v = 1 / s                 (top-1 probability)
    correct    = argmax_v z_v == y                 (ties: the lowest index, as torch.max)
    nll        = lse - z_y                         (-log p_y)
    brier      = sum_v p_v^2 - 2 p_y + 1           (sum_v (p_v - 1[v = y])^2, clamped at 0)
    finite     = all z_v finite

Rows are processed ``chunk_rows`` at a time: the only ``[rows, V]`` buffers are one chunk of
float32 logits and one of its exponentials. Half-precision inputs run their matmul in the input
dtype; the softmax is float32 (float64 for float64 inputs). The per-row results are float32
(float64 for float64 inputs).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .fused_linear import chunk_rows_for

#: Default size of one chunk of float32 logits for these statistics (smaller than the loss's: forward only).
DEFAULT_STATS_CHUNK_BYTES = 64 * 1024 * 1024


class TokenRowStats(NamedTuple):
    """Per-row statistics, each of shape ``[N]`` (see the module docstring for the formulas)."""

    confidence: torch.Tensor
    correct: torch.Tensor
    nll: torch.Tensor
    brier: torch.Tensor
    finite: torch.Tensor


def _chunk_row_stats(z: torch.Tensor, y: torch.Tensor) -> TokenRowStats:
    """Statistics of one chunk of float logits ``z [n, V]`` against targets ``y [n]``."""
    finite = torch.isfinite(z).all(dim=1)
    m, pred = z.max(dim=1)
    p = torch.exp(z - m[:, None])
    s = p.sum(dim=1)
    p.div_(s[:, None])
    sum_sq = p.square_().sum(dim=1)
    nll = m + torch.log(s) - z.gather(1, y[:, None]).squeeze(1)
    brier = (sum_sq - 2 * torch.exp(-nll) + 1).clamp_(min=0)
    return TokenRowStats(s.reciprocal(), pred == y, nll, brier, finite)


def _empty(device: torch.device, dtype: torch.dtype) -> TokenRowStats:
    zeros = torch.zeros(0, dtype=dtype, device=device)
    flags = torch.zeros(0, dtype=torch.bool, device=device)
    return TokenRowStats(zeros, flags, zeros, zeros, flags)


def _concat(parts: list[TokenRowStats]) -> TokenRowStats:
    return TokenRowStats(*(torch.cat(column) for column in zip(*parts, strict=True)))


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def logits_row_stats(
    logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, *, chunk_bytes: int | None = None
) -> TokenRowStats:
    """Statistics of the rows ``rows`` (int64 ``[N]``) of ``logits [M, V]`` against ``labels [M]``.

    ``labels[rows]`` must lie in ``[0, V)``. Returns :class:`TokenRowStats` of length ``N``.
    """
    dtype = _stats_dtype(logits.dtype)
    if rows.numel() == 0:
        return _empty(logits.device, dtype)
    step = chunk_rows_for(rows.numel(), logits.shape[1], chunk_bytes or DEFAULT_STATS_CHUNK_BYTES)
    parts = []
    for start in range(0, rows.numel(), step):
        idx = rows[start : start + step]
        z = logits.index_select(0, idx).to(dtype)
        parts.append(_chunk_row_stats(z, labels.index_select(0, idx)))
    return _concat(parts)


@torch.no_grad()
def linear_row_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    rows: torch.Tensor,
    *,
    softcap: float | None = None,
    chunk_bytes: int | None = None,
) -> TokenRowStats:
    """Statistics of ``z = softcap(hidden[rows] @ weight.T + bias)`` against ``labels[rows]``, chunk by chunk.

    Shapes: ``hidden [M, H]``, ``weight [V, H]``, ``bias [V]`` or None, ``labels [M]``, ``rows [N]``
    (int64). ``softcap(x) = c * tanh(x / c)`` when ``softcap = c`` is given. Never builds ``[N, V]``.
    """
    dtype = _stats_dtype(hidden.dtype)
    if rows.numel() == 0:
        return _empty(hidden.device, dtype)
    step = chunk_rows_for(rows.numel(), weight.shape[0], chunk_bytes or DEFAULT_STATS_CHUNK_BYTES)
    parts = []
    for start in range(0, rows.numel(), step):
        idx = rows[start : start + step]
        z = F.linear(hidden.index_select(0, idx), weight, bias).to(dtype)
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        parts.append(_chunk_row_stats(z, labels.index_select(0, idx)))
    return _concat(parts)
