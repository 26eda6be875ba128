"""Validation and flattening of the batches fed to ``CalibrationState``'s update methods, as plain functions.

They take and return tensors only (never a state), so this module does not import ``state.py``.
"""

from __future__ import annotations

import torch

from ._checks import ArrayLike, as_tensor, binary_1d, confidences_1d, same_length, scores_1d
from ._state_io import sum_keys
from .calibration import classwise_bin_sums, top_label_bin_sums


def check_batch(
    confidences: ArrayLike,
    correct: ArrayLike,
    uncertainty: ArrayLike | None,
    nll: ArrayLike | None,
    brier: ArrayLike | None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``(confidences [N], correct [N], {name: value [N]} of the optional values given)`` of one
    ``CalibrationState.update`` batch, validated (empty batches allowed)."""
    conf = confidences_1d(confidences, allow_empty=True)
    hit = binary_1d(correct, "correct", allow_empty=True)
    named = [("confidences", conf), ("correct", hit)]
    extra = {}
    for name, value in (("uncertainty", uncertainty), ("nll", nll), ("brier", brier)):
        if value is not None:
            extra[name] = scores_1d(value, name, allow_empty=True)
            named.append((name, extra[name]))
    same_length(*named)
    if "nll" in extra and bool((extra["nll"] < 0).any()):
        raise ValueError("nll must be >= 0 (a negative log-probability of the true class).")
    if "brier" in extra and bool(((extra["brier"] < 0) | (extra["brier"] > 2)).any()):
        raise ValueError("brier must lie in [0, 2] (per-sample sum over classes of squared errors).")
    return conf, hit, extra


def flatten_rows(
    rows: ArrayLike,
    labels: ArrayLike,
    uncertainty: ArrayLike | None,
    ignore_index: int | None,
    name: str,
    num_classes: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Flatten [..., C] / [...] to [N, C] / [N] and drop ``ignore_index`` positions."""
    x, y = as_tensor(rows, name), as_tensor(labels, "labels")
    if x.ndim < 1 or tuple(x.shape[:-1]) != tuple(y.shape):
        raise ValueError(f"labels must have shape {name}.shape[:-1] = {tuple(x.shape[:-1])}; got {tuple(y.shape)}.")
    if num_classes is not None and x.shape[-1] != num_classes:
        raise ValueError(f"{name} has {x.shape[-1]} classes but the state has num_classes={num_classes}.")
    u = None if uncertainty is None else as_tensor(uncertainty, "uncertainty")
    if u is not None and tuple(u.shape) != tuple(y.shape):
        raise ValueError(f"uncertainty must have the shape of labels {tuple(y.shape)}; got {tuple(u.shape)}.")
    x, y, u = x.reshape(-1, x.shape[-1]), y.reshape(-1), (None if u is None else u.reshape(-1))
    if ignore_index is not None:
        keep = y != ignore_index
        x, y, u = x[keep], y[keep], (None if u is None else u[keep])
    return x, y, u


def class_sums(
    p: torch.Tensor,
    y: torch.Tensor,
    conf: torch.Tensor,
    pred: torch.Tensor,
    hit: torch.Tensor,
    num_classes: int,
    n_bins: int,
) -> dict[str, torch.Tensor]:
    """The ``top_label_*`` and ``classwise_*`` per-(class, bin) sums of probability rows ``p`` [N, C]."""
    sums: dict[str, torch.Tensor] = {}
    for prefix, values in (
        ("top_label", top_label_bin_sums(conf, pred, hit, num_classes, n_bins)),
        ("classwise", classwise_bin_sums(p, y, n_bins)),
    ):
        sums.update(zip(sum_keys(prefix), values, strict=True))
    return sums
