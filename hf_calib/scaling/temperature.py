"""Temperature scaling (Guo et al., 2017): one temperature ``T > 0`` for all logits of a model.

Calibrated probabilities are ``p = softmax(z / T)``; ``T`` minimises the mean negative log-likelihood of
labelled logits, ``NLL(T) = (1/N) sum_i [logsumexp(z_i / T) - z_iy / T]``. The search runs over
``log T`` (so ``T`` stays positive) with ``torch.optim.LBFGS`` in float64, and ``T`` is confined to
``[min_temperature, max_temperature]`` so that perfectly separable data (where ``NLL`` keeps falling as
``T -> 0``) gives a finite answer. Accuracy never changes: dividing by ``T > 0`` keeps the argmax.

Works for any classifier's logits [N, C] and for multiple-choice option scores, where ``-inf`` marks an
absent option (it stays ``-inf`` after scaling).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from .._fingerprint import check_fingerprint, model_fingerprint
from ._checks import check_logits, check_logits_labels, check_temperature, scale_logits
from ._io import read_json, write_json

TEMPERATURE_FILE = "temperature.json"
_FORMAT = "hf_calib.temperature_scaler"


def temperature_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """``(1/N) sum_i CE(z_i / T, y_i)`` for validated logits [N, C] and labels [N] (differentiable in ``T``)."""
    inverse = 1.0 / temperature if isinstance(temperature, float) else temperature.reciprocal()
    return torch.nn.functional.cross_entropy(scale_logits(logits, inverse), labels)


def fit_temperature(
    logits: Any,
    labels: Any,
    *,
    init: float = 1.0,
    min_temperature: float = 1e-2,
    max_temperature: float = 1e2,
    max_iter: int = 200,
) -> float:
    """The temperature minimising the NLL of ``logits`` [N, C] against ``labels`` [N] (N >= 2).

    LBFGS (strong-Wolfe line search) on ``u = log T`` from ``log(init)``, with ``T = exp(clamp(u))``;
    the result is clamped to ``[min_temperature, max_temperature]``.
    """
    z, y = check_logits_labels(logits, labels)
    init = check_temperature(init, "init")
    low, high = (
        check_temperature(min_temperature, "min_temperature"),
        check_temperature(max_temperature, "max_temperature"),
    )
    if not low < high:
        raise ValueError(f"min_temperature ({low}) must be below max_temperature ({high}).")
    z, y = z.to(torch.float64), y
    log_t = torch.tensor(math.log(min(max(init, low), high)), dtype=torch.float64, requires_grad=True)
    bounds = (math.log(low), math.log(high))
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = temperature_nll(z, y, log_t.clamp(*bounds).exp())
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(min(max(math.exp(float(log_t.detach().clamp(*bounds))), low), high))


class TemperatureScaler:
    """One temperature for a model's logits: fit on labelled logits, apply, save next to an adapter.

    Example::

        scaler = TemperatureScaler().fit(val_logits, val_labels)
        probs = scaler.predict_proba(test_logits)  # softmax(test_logits / scaler.temperature)
        scaler.save_pretrained("my-adapter", model=model)  # my-adapter/temperature.json

    Args:
        temperature: the initial (or known) temperature, a finite float > 0.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature
        self.model_fingerprint: dict[str, Any] | None = None

    @property
    def temperature(self) -> float:
        """The temperature ``T > 0``; probabilities are ``softmax(logits / T)``."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_temperature(value)

    def __repr__(self) -> str:
        return f"TemperatureScaler(temperature={self.temperature:.6g})"

    def fit(self, logits: Any, labels: Any, **kwargs: Any) -> TemperatureScaler:
        """Set ``temperature`` to the NLL-minimising value on ``logits`` [N, C] / ``labels`` [N]; returns self.

        Keyword arguments go to :func:`fit_temperature` (``min_temperature``, ``max_temperature``, ...).
        """
        self.temperature = fit_temperature(logits, labels, init=kwargs.pop("init", self.temperature), **kwargs)
        return self

    def scale(self, logits: Any) -> torch.Tensor:
        """``logits / T`` with the input's shape [..., C] and float dtype; ``-inf`` stays ``-inf``."""
        z = torch.as_tensor(logits)
        if not z.is_floating_point():
            z = z.float()
        if z.ndim == 2:
            check_logits(z)
        elif bool(torch.isnan(z).any()):
            raise ValueError("logits contain NaN; recompute them.")
        return scale_logits(z, 1.0 / self.temperature)

    def predict_proba(self, logits: Any) -> torch.Tensor:
        """``softmax(logits / T)`` over the last dimension."""
        return torch.softmax(self.scale(logits), dim=-1)

    def save_pretrained(self, directory: str | os.PathLike[str], model: Any = None) -> Path:
        """Write ``directory/temperature.json`` (atomically); with ``model``, record its fingerprint."""
        if model is not None:
            self.model_fingerprint = model_fingerprint(model)
        path = Path(directory) / TEMPERATURE_FILE
        write_json(
            path,
            {"format": _FORMAT, "temperature": self.temperature, "model_fingerprint": self.model_fingerprint},
        )
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], model: Any = None) -> TemperatureScaler:
        """Load ``directory/temperature.json``; with ``model``, refuse a file fitted on another model."""
        path = Path(directory) / TEMPERATURE_FILE
        content = read_json(path, "TemperatureScaler.from_pretrained")
        if content.get("format") != _FORMAT or "temperature" not in content:
            raise ValueError(f"{path} is not a TemperatureScaler file (no format {_FORMAT!r} with a temperature).")
        fingerprint = content.get("model_fingerprint")
        if model is not None:
            check_fingerprint(fingerprint, model, what=f"The temperature in {path}")
        try:
            scaler = cls(content["temperature"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err
        scaler.model_fingerprint = fingerprint
        return scaler
