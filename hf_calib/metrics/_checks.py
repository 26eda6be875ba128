"""Input validation shared by the metric functions and the streaming state.

Every check raises ``ValueError`` naming the offending argument and how to fix it. Accepted inputs are
torch tensors, numpy arrays or Python sequences; they are converted with ``torch.as_tensor`` and never
modified in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

ROW_SUM_TOLERANCE = 1e-2

ArrayLike = torch.Tensor | np.ndarray | Sequence[float] | Sequence[int] | Sequence[bool]


def as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """Convert ``x`` to a tensor (no copy for tensors), rejecting complex and object data."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{name} must be a tensor, numpy array or list of numbers; got {type(x).__name__}."
            ) from err
    if x.is_complex():
        raise ValueError(f"{name} must be real-valued; got dtype {x.dtype}.")
    return x.detach()


def check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1 (15 is the usual default); got {n_bins!r}.")
    return int(n_bins)


def _check_1d(x: torch.Tensor, name: str, *, allow_empty: bool) -> None:
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape [N]; got shape {tuple(x.shape)} (flatten it first).")
    if not allow_empty and x.numel() == 0:
        raise ValueError(f"{name} is empty; the metric needs at least one sample.")


def check_finite_float(x: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``x`` as float64 after checking it is real-valued, non-boolean and finite."""
    if x.dtype == torch.bool:
        raise ValueError(f"{name} must hold real numbers, not booleans.")
    x = x.to(torch.float64)
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf; drop or fix those samples first.")
    return x


def confidences_1d(x: ArrayLike, name: str = "confidences", *, allow_empty: bool = False) -> torch.Tensor:
    """Validate probabilities in [0, 1] of shape [N]; return them as float64."""
    t = as_tensor(x, name)
    _check_1d(t, name, allow_empty=allow_empty)
    t = check_finite_float(t, name)
    if t.numel() and bool(((t < 0) | (t > 1)).any()):
        raise ValueError(
            f"{name} must lie in [0, 1] (probabilities); got values in [{t.min().item():.6g}, {t.max().item():.6g}]. "
            "Pass softmax probabilities, not logits."
        )
    return t


def scores_1d(x: ArrayLike, name: str, *, allow_empty: bool = False) -> torch.Tensor:
    """Validate finite real scores of shape [N] (any range); return them as float64."""
    t = as_tensor(x, name)
    _check_1d(t, name, allow_empty=allow_empty)
    return check_finite_float(t, name)


def binary_1d(x: ArrayLike, name: str, *, allow_empty: bool = False) -> torch.Tensor:
    """Validate a 0/1 indicator of shape [N] (bool, integer or float holding only 0 and 1); return bool."""
    t = as_tensor(x, name)
    _check_1d(t, name, allow_empty=allow_empty)
    if t.dtype == torch.bool:
        return t
    if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf; it must hold only 0/1 (or booleans).")
    if t.numel() and not bool(((t == 0) | (t == 1)).all()):
        raise ValueError(f"{name} must hold only 0/1 (or booleans); found other values.")
    return t != 0


def same_length(*named: tuple[str, torch.Tensor]) -> None:
    (first_name, first), *rest = named
    for name, t in rest:
        if t.shape[0] != first.shape[0]:
            raise ValueError(f"{name} has {t.shape[0]} entries but {first_name} has {first.shape[0]}; they must match.")


def probs_2d(x: ArrayLike, name: str = "probs", *, allow_empty: bool = False) -> torch.Tensor:
    """Validate probability rows of shape [N, C]: finite, in [0, 1], each row summing to 1.

    The row-sum tolerance is 1e-2: loose enough for softmax outputs rounded to bf16/fp16 (and upcast again),
    tight enough to catch logits, sigmoid outputs and unnormalised scores. Returned as float64.
    """
    t = as_tensor(x, name)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape [N, C]; got shape {tuple(t.shape)}.")
    if not allow_empty and t.shape[0] == 0:
        raise ValueError(f"{name} is empty; the metric needs at least one sample.")
    if t.shape[1] < 1:
        raise ValueError(f"{name} must have at least one class column; got shape {tuple(t.shape)}.")
    t = check_finite_float(t, name)
    if t.numel() and bool(((t < 0) | (t > 1)).any()):
        raise ValueError(f"{name} must lie in [0, 1]; pass softmax probabilities (or use the *_from_logits variant).")
    if t.numel():
        worst = (t.sum(dim=1) - 1).abs().max().item()
        if worst > ROW_SUM_TOLERANCE:
            raise ValueError(f"each row of {name} must sum to 1 (softmax output); the worst row is off by {worst:.3g}.")
    return t


def logits_2d(x: ArrayLike, name: str = "logits", *, allow_empty: bool = False) -> torch.Tensor:
    """Validate finite logits of shape [N, C]; keep float64 inputs, compute everything else in float32."""
    t = as_tensor(x, name)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape [N, C]; got shape {tuple(t.shape)}.")
    if not allow_empty and t.shape[0] == 0:
        raise ValueError(f"{name} is empty; the metric needs at least one sample.")
    if t.shape[1] < 1:
        raise ValueError(f"{name} must have at least one class column; got shape {tuple(t.shape)}.")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {t.dtype}.")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf; drop or fix those rows first.")
    return t if t.dtype == torch.float64 else t.float()


def labels_1d(x: ArrayLike, num_classes: int, name: str = "labels") -> torch.Tensor:
    """Validate integer class labels of shape [N] in ``[0, num_classes)``; return int64."""
    t = as_tensor(x, name)
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape [N]; got shape {tuple(t.shape)}.")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of class indices; got dtype {t.dtype}.")
    t = t.long()
    if t.numel() and bool(((t < 0) | (t >= num_classes)).any()):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) (the number of probability columns); got values in "
            f"[{t.min().item()}, {t.max().item()}]. Drop ignored positions (e.g. -100) first."
        )
    return t
