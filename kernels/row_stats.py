"""Per-row softmax statistics that the row kernels return next to the loss.

For a row with (soft-capped) logits ``z`` over ``V`` classes and target ``y``, with ``m = max_v z_v``,
``e_v = exp(z_v - m)``, ``s = sum_v e_v`` and ``lse = m + log(s)``::

    confidence = max_v p_v = 1 / s                          (top-1 probability)
    correct    = 1[argmax_v z_v == y]                       (ties: the lowest index, as torch.argmax)
    nll        = lse - z_y                                  (-log p_y, never smoothed)
    entropy    = -sum_v p_v log p_v = log(s) - sum_v e_v (z_v - m) / s
    brier      = sum_v (p_v - 1[v = y])^2 = sum_v e_v^2 / s^2 - 2 p_y + 1     (clamped at 0)

All five come from the sums ``s``, ``sum_v e_v (z_v - m)`` and ``sum_v e_v^2`` that a kernel gathers in the
same pass over the row as its loss, so they cost no extra matmul. Kernels write them as one float32
``[C, 5]`` buffer, columns in :data:`STAT_NAMES` order (``correct`` as 0.0 / 1.0).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

#: Columns of a ``[C, N_STATS]`` row-statistics buffer.
STAT_NAMES = ("confidence", "correct", "nll", "entropy", "brier")
N_STATS = len(STAT_NAMES)


class RowStats(NamedTuple):
    """Per-row statistics, each of shape ``[N]``: float ``confidence``, ``nll``, ``entropy``, ``brier`` and bool
    ``correct`` (formulas in the module docstring)."""

    confidence: torch.Tensor
    correct: torch.Tensor
    nll: torch.Tensor
    entropy: torch.Tensor
    brier: torch.Tensor

    def finite(self) -> torch.Tensor:
        """``[N]`` bool: every statistic of the row is finite (its logits were)."""
        return (
            torch.isfinite(self.confidence) & torch.isfinite(self.nll) & torch.isfinite(self.entropy)
        ) & torch.isfinite(self.brier)


def split_row_stats(buffer: torch.Tensor) -> RowStats:
    """The :class:`RowStats` views of a ``[N, N_STATS]`` buffer (``correct`` becomes bool)."""
    confidence, correct, nll, entropy, brier = buffer.unbind(dim=1)
    return RowStats(confidence, correct > 0.5, nll, entropy, brier)


def stats_from_sums(
    sum_exp: torch.Tensor,
    sum_e_shifted: torch.Tensor,
    sum_e_squared: torch.Tensor,
    nll: torch.Tensor,
    correct: torch.Tensor,
) -> torch.Tensor:
    """``[C, N_STATS]`` float32 buffer from the per-row sums ``s``, ``sum_v e_v (z_v - m)``, ``sum_v e_v^2`` (all
    ``[C]``), ``nll = lse - z_y`` and ``correct`` (bool or 0/1)."""
    inv = sum_exp.reciprocal()
    entropy = torch.log(sum_exp) - sum_e_shifted * inv
    brier = (sum_e_squared * inv.square() - 2.0 * torch.exp(-nll) + 1.0).clamp_(min=0.0)
    return torch.stack((inv, correct.to(inv.dtype), nll, entropy, brier), dim=1).to(torch.float32)
