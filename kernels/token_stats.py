"""Forward-only, chunked softmax statistics of the rows of ``[N, V]`` logits (no autograd, no ``[N, V]`` buffer).

For each selected row with logits ``z`` (``V`` classes) and target ``y``, with ``m = max_v z_v``,
``s = sum_v exp(z_v - m)`` and ``lse = m + log(s)``::

    confidence = max_v p_v = 1 / s                 (top-1 probability)
    correct    = argmax_v z_v == y                 (ties: the lowest index, as torch.max)
    nll        = lse - z_y                         (-log p_y)
    entropy    = -sum_v p_v log p_v
    brier      = sum_v p_v^2 - 2 p_y + 1           (sum_v (p_v - 1[v = y])^2, clamped at 0)

(the :class:`~hf_calib_kernels.row_stats.RowStats` that the loss kernels also return).

Rows are processed ``chunk_rows`` at a time: the only ``[rows, V]`` buffers are one chunk of
float32 logits and one of its exponentials. Half-precision inputs run their matmul in the input
dtype; the softmax is float32 (float64 for float64 inputs). The per-row results are float32
(float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fused_linear import chunk_rows_for
from .row_stats import RowStats

#: Default size of one chunk of float32 logits for these statistics (smaller than the loss's: forward only).
DEFAULT_STATS_CHUNK_BYTES = 64 * 1024 * 1024


def _chunk_row_stats(z: torch.Tensor, y: torch.Tensor) -> RowStats:
    """Statistics of one chunk of float logits ``z [n, V]`` against targets ``y [n]``."""
    m, pred = z.max(dim=1)
    p = torch.exp(z - m[:, None])
    s = p.sum(dim=1)
    p.div_(s[:, None])
    entropy = -torch.special.xlogy(p, p).sum(dim=1)
    sum_sq = p.square_().sum(dim=1)
    nll = m + torch.log(s) - z.gather(1, y[:, None]).squeeze(1)
    brier = (sum_sq - 2 * torch.exp(-nll) + 1).clamp_(min=0)
    # NaN or +inf logits give NaN statistics (RowStats.finite() is then False); a -inf logit is a class with p = 0.
    return RowStats(s.reciprocal(), pred == y, nll, entropy, brier)


def _empty(device: torch.device, dtype: torch.dtype) -> RowStats:
    zeros = torch.zeros(0, dtype=dtype, device=device)
    return RowStats(zeros, torch.zeros(0, dtype=torch.bool, device=device), zeros, zeros, zeros)


def _concat(parts: list[RowStats]) -> RowStats:
    return RowStats(*(torch.cat(column) for column in zip(*parts, strict=True)))


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def logits_row_stats(
    logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, *, chunk_bytes: int | None = None
) -> RowStats:
    """Statistics of the rows ``rows`` (int64 ``[N]``) of ``logits [M, V]`` against ``labels [M]``.

    ``labels[rows]`` must lie in ``[0, V)``. Returns :class:`RowStats` of length ``N``.
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
) -> RowStats:
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
