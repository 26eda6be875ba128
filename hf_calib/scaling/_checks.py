"""Input validation shared by the temperature scaler and Thermometer (errors name the argument and the fix)."""

from __future__ import annotations

import math
from typing import Any

import torch


def as_float_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, str | bytes) or value is None:
        raise TypeError(f"{name} must be a tensor or array of numbers; got {type(value).__name__}.")
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a tensor or array of numbers; got {type(value).__name__}.") from err
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers; got dtype {tensor.dtype}.")
    tensor = tensor.detach()
    return tensor if tensor.is_floating_point() else tensor.float()


def check_logits(logits: Any, name: str = "logits") -> torch.Tensor:
    """``logits`` as a float tensor [N, C], C >= 2: finite, or ``-inf`` for an absent option.

    ``-inf`` marks options a row does not have (as in :class:`hf_calib.eval.MultipleChoiceDetails`);
    every row needs at least two finite scores. NaN and ``+inf`` are errors.
    """
    z = as_float_tensor(logits, name)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"{name} must have shape [N, C] with C >= 2 classes; got {tuple(z.shape)}.")
    if bool(torch.isnan(z).any()):
        rows = torch.isnan(z).any(dim=1).nonzero().flatten()
        raise ValueError(f"{name} contains NaN (first in row {int(rows[0])}); remove or recompute those rows.")
    if bool((z == torch.inf).any()):
        raise ValueError(f"{name} contains +inf; only -inf (an absent option) is allowed.")
    if z.shape[0] and bool((torch.isfinite(z).sum(dim=1) < 2).any()):
        raise ValueError(f"every row of {name} needs at least 2 finite scores (-inf marks absent options).")
    return z


def check_logits_labels(logits: Any, labels: Any, *, min_examples: int = 2, name: str = "logits") -> tuple:
    """Validated ``(logits float [N, C], labels int64 [N])`` with N >= ``min_examples``."""
    z = check_logits(logits, name)
    if isinstance(labels, str | bytes) or labels is None:
        raise TypeError(f"labels must be a tensor or list of class indices; got {type(labels).__name__}.")
    y = torch.as_tensor(labels).detach()
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        if not (y.is_floating_point() and bool((y == y.round()).all())):
            raise TypeError(f"labels must be integer class indices; got dtype {y.dtype}.")
    y = y.long().cpu()
    if y.ndim != 1 or y.shape[0] != z.shape[0]:
        raise ValueError(f"labels must have shape [N] = [{z.shape[0]}] to match {name}; got {tuple(y.shape)}.")
    if z.shape[0] < min_examples:
        raise ValueError(
            f"{name} has {z.shape[0]} example(s); a temperature needs at least {min_examples} labelled examples."
        )
    if bool(((y < 0) | (y >= z.shape[1])).any()):
        raise ValueError(f"labels must be class indices in [0, {z.shape[1]}).")
    if not bool(torch.isfinite(z.gather(1, y[:, None].to(z.device))).all()):
        raise ValueError(f"a label points at an absent option (-inf in {name}); check labels against the options.")
    return z, y.to(z.device)


def check_features(features: Any, input_size: int | None = None, name: str = "features") -> torch.Tensor:
    """``features`` as a float tensor [N, d] (N >= 1), finite, with d == ``input_size`` when given."""
    x = as_float_tensor(features, name)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape [N, d] with N >= 1; got {tuple(x.shape)}.")
    if input_size is not None and x.shape[1] != input_size:
        raise ValueError(
            f"{name} have dimension {x.shape[1]} but this Thermometer was built for input_size={input_size}; "
            "extract the features with the model the Thermometer was trained on."
        )
    if not bool(torch.isfinite(x).all()):
        rows = (~torch.isfinite(x)).any(dim=1).nonzero().flatten()
        raise ValueError(f"{name} contain NaN or inf (first in row {int(rows[0])}); recompute those features.")
    return x


def check_temperature(value: Any, name: str = "temperature") -> float:
    """A finite float > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a positive float; got {type(value).__name__}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite float > 0; got {value!r}.")
    return float(value)


def scale_logits(logits: torch.Tensor, inverse_temperature: torch.Tensor | float) -> torch.Tensor:
    """``logits * beta`` that keeps ``-inf`` entries at ``-inf`` and gives them no gradient.

    A plain product would send ``0 * -inf = NaN`` into the gradient of ``beta``.
    """
    absent = torch.isneginf(logits)
    if not bool(absent.any()):
        return logits * inverse_temperature
    return (logits.masked_fill(absent, 0.0) * inverse_temperature).masked_fill(absent, -torch.inf)
