"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def _reference_label_smoothing_ce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Label-smoothing CE of ``logits [..., V]`` with ``F.cross_entropy`` in the logits' dtype.

    ``"mean"`` divides the summed per-token losses by ``num_items_in_batch`` when given, else by
    the number of non-ignored labels (at least 1), so an all-ignored batch gives 0. Differentiable:
    callers pass float64 leaves (``hidden @ weight.T + bias`` or logits) and call backward.
    """
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
        reduction="none",
    )
    if reduction == "none":
        return per_token.reshape(labels.shape)
    total = per_token.sum()
    if reduction == "sum":
        return total
    if num_items_in_batch is None:
        return total / max(int((labels != ignore_index).sum()), 1)
    return total / float(num_items_in_batch)


@pytest.fixture
def reference_ce():
    """The plain ``F.cross_entropy`` reference the fused losses are tested against."""
    return _reference_label_smoothing_ce
