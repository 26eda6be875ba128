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
import warnings
from pathlib import Path
from typing import Any

import torch

from .._download import resolve_files
from .._fingerprint import check_fingerprint, model_fingerprint
from .._safe_files import read_json, write_json
from ..calibrators import CALIBRATION_DIR, Calibrator, register_calibrator
from ._checks import check_logits, check_logits_labels, check_temperature, scale_logits

TEMPERATURE_FILE = "temperature.json"
_FORMAT = "hf_calib.temperature_scaler"


def temperature_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """``(1/N) sum_i CE(z_i / T, y_i)`` for validated logits [N, C] and labels [N] (differentiable in ``T``)."""
    inverse = 1.0 / temperature if isinstance(temperature, float) else temperature.reciprocal()
    return torch.nn.functional.cross_entropy(scale_logits(logits, inverse), labels)


class TemperatureAtBoundWarning(UserWarning):
    """The fitted temperature ended at ``min_temperature`` or ``max_temperature`` (see :func:`fit_temperature`)."""


_BOUND_RTOL = 1e-6
_DEFAULTS = {"min_temperature": 1e-2, "max_temperature": 1e2, "max_iter": 200}
_BOUND_MEANING = {
    "min": (
        "the NLL keeps falling as T -> 0: the labelled logits are (nearly) perfectly separated (the label is the top "
        "logit of almost every row) or too few, so the calibrated probabilities are as sharp as allowed. Use more or "
        "harder labelled data, or lower min_temperature if an even smaller T is really wanted."
    ),
    "max": (
        "the NLL keeps falling as T grows: the logits carry little or no information about the labels (accuracy at "
        "or below chance; check that labels and logits belong together), so the calibrated probabilities are nearly "
        "uniform. Raise max_temperature if an even larger T is really wanted."
    ),
}


def _nll_slope(z: torch.Tensor, y: torch.Tensor, inverse_temperature: float) -> float:
    """``d NLL / d beta`` at ``beta = 1 / T``: ``mean_i [E_softmax(beta z_i)[z_i] - z_iy]`` (float64)."""
    beta = torch.tensor(inverse_temperature, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.cross_entropy(scale_logits(z, beta), y).backward()
    return float(beta.grad)


def _fit(
    logits: Any, labels: Any, init: float, min_temperature: float, max_temperature: float, max_iter: int
) -> tuple[float, str | None]:
    """``(temperature, at_bound)``; see :func:`fit_temperature`."""
    z, y = check_logits_labels(logits, labels)
    init = check_temperature(init, "init")
    low, high = (
        check_temperature(min_temperature, "min_temperature"),
        check_temperature(max_temperature, "max_temperature"),
    )
    if not low < high:
        raise ValueError(f"min_temperature ({low}) must be below max_temperature ({high}).")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer; got {max_iter!r}.")
    z, y = z.to(torch.float64), y
    # NLL is convex in beta = 1 / T, so the sign of its slope at a bound tells whether the constrained minimum is
    # that bound: still falling at T = min (beta = 1 / min) means the minimum is T = min, rising at T = max means
    # T = max. LBFGS alone stops wherever the NLL becomes flat in float64 (T ~ 0.05 on separable data). When every
    # label is the strict top logit of its row, the slope is negative for every T (even where it underflows to 0).
    others = z.scatter(1, y[:, None], -math.inf)
    separable = bool((z.gather(1, y[:, None]).squeeze(1) > others.max(dim=1).values).all())
    if separable or _nll_slope(z, y, 1.0 / low) < 0:
        temperature = low
    elif _nll_slope(z, y, 1.0 / high) > 0:
        temperature = high
    else:
        log_t = torch.tensor(math.log(min(max(init, low), high)), dtype=torch.float64, requires_grad=True)
        bounds = (math.log(low), math.log(high))
        optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = temperature_nll(z, y, log_t.clamp(*bounds).exp())
            loss.backward()
            return loss

        optimizer.step(closure)
        temperature = float(min(max(math.exp(float(log_t.detach().clamp(*bounds))), low), high))
    at_bound = None
    if temperature <= low * (1 + _BOUND_RTOL):
        at_bound = "min"
    elif temperature >= high * (1 - _BOUND_RTOL):
        at_bound = "max"
    return temperature, at_bound


def _warn_at_bound(temperature: float, at_bound: str | None, stacklevel: int) -> None:
    if at_bound is not None:
        warnings.warn(
            f"The fitted temperature T = {temperature:.6g} is at its bound {at_bound}_temperature "
            f"({temperature:g}): {_BOUND_MEANING[at_bound]}",
            TemperatureAtBoundWarning,
            stacklevel=stacklevel + 1,
        )


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
    the result is clamped to ``[min_temperature, max_temperature]``. The NLL is convex in ``1 / T``, so when
    its slope at a bound shows that the constrained minimum is that bound, the bound is returned directly.

    Warns (:class:`TemperatureAtBoundWarning`) when the result is at (within a relative ``1e-6`` of)
    ``min_temperature`` -- separable or too few data, the NLL keeps falling as ``T -> 0`` -- or at
    ``max_temperature`` -- logits that carry no information about the labels. :meth:`TemperatureScaler.fit`
    also records this as ``TemperatureScaler.at_bound``.
    """
    temperature, at_bound = _fit(logits, labels, init, min_temperature, max_temperature, max_iter)
    _warn_at_bound(temperature, at_bound, stacklevel=2)
    return temperature


@register_calibrator
class TemperatureScaler(Calibrator):
    """One temperature for a model's logits: fit on labelled logits, apply, save next to an adapter.

    Example::

        scaler = TemperatureScaler().fit(val_logits, val_labels)
        probs = scaler.predict_proba(test_logits)  # softmax(test_logits / scaler.temperature)
        scaler.save_pretrained("my-adapter", model=model)  # my-adapter/temperature.json

    Args:
        temperature: the initial (or known) temperature, a finite float > 0.

    Attributes:
        temperature: ``T``, a finite float > 0.
        at_bound: ``"min"`` or ``"max"`` when the last :meth:`fit` ended at ``min_temperature`` /
            ``max_temperature`` (a :class:`TemperatureAtBoundWarning` was issued: ``"min"`` means (nearly)
            separable or too few labelled data, ``"max"`` logits uninformative about the labels), else ``None``.
            Setting ``temperature`` by hand resets it to ``None``. Saved in ``temperature.json`` (``"at_bound"``)
            and restored by :meth:`from_pretrained` (``None`` for files written before the field existed).
        model_fingerprint: the fingerprint of the model recorded by :meth:`save_pretrained`, or ``None``.
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
        self.at_bound: str | None = None

    def __repr__(self) -> str:
        bound = f", at_bound={self.at_bound!r}" if self.at_bound else ""
        return f"TemperatureScaler(temperature={self.temperature:.6g}{bound})"

    def fit(self, logits: Any, labels: Any, **kwargs: Any) -> TemperatureScaler:
        """Set ``temperature`` to the NLL-minimising value on ``logits`` [N, C] / ``labels`` [N]; returns self.

        Keyword arguments go to :func:`fit_temperature` (``min_temperature``, ``max_temperature``, ...). A result
        at a bound issues a :class:`TemperatureAtBoundWarning` and sets :attr:`at_bound` (else it is ``None``).
        """
        options = {"init": self.temperature, **_DEFAULTS}
        unknown = sorted(set(kwargs) - set(options))
        if unknown:
            raise TypeError(f"TemperatureScaler.fit got unexpected keyword argument(s) {unknown}.")
        options.update(kwargs)
        temperature, at_bound = _fit(logits, labels, **options)
        self.temperature = temperature
        self.at_bound = at_bound
        _warn_at_bound(temperature, at_bound, stacklevel=2)
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

    # ------------------------------------------------------------------ as a bundle component
    name = "temperature"
    sets_temperature = True

    def save(self, folder: Path, model: Any) -> None:
        """Write ``calibration/temperature.json`` into a bundle folder (:class:`hf_calib.calibrators.Calibrator`)."""
        self.save_pretrained(Path(folder) / CALIBRATION_DIR, model=model)

    @classmethod
    def load(cls, folder: Path, model: Any, entry: dict[str, Any]) -> TemperatureScaler:
        return cls.from_pretrained(Path(folder) / CALIBRATION_DIR, model=model)

    def manifest_entry(self) -> dict[str, Any]:
        return {"file": f"{CALIBRATION_DIR}/{TEMPERATURE_FILE}", "value": self.temperature, "at_bound": self.at_bound}

    def temperature_for(self, outputs: Any, call_kwargs: dict[str, Any]) -> float:
        return self.temperature

    def card_files(self) -> list[tuple[str, str]]:
        return [(f"{CALIBRATION_DIR}/{TEMPERATURE_FILE}", f"temperature scaling, T = {self.temperature:.4g}")]

    def card_notes(self) -> list[str]:
        notes = [
            f"- **Temperature scaling**: probabilities are `softmax(logits / T)` with T = {self.temperature:.4g}, "
            "fitted by minimising the NLL on held-out labelled data; predictions (the argmax) are unchanged."
        ]
        if self.at_bound:
            notes.append(
                f"  **Caution:** the fit stopped at the {'lowest' if self.at_bound == 'min' else 'highest'} "
                "temperature it allows, so T is a bound, not an optimum (typically perfectly separable or "
                "degenerate held-out data); treat the calibrated probabilities with care."
            )
        return notes

    def save_pretrained(self, directory: str | os.PathLike[str], model: Any = None) -> Path:
        """Write ``directory/temperature.json`` (atomically); with ``model``, record its fingerprint.

        The file holds ``format``, ``temperature`` (a finite float > 0, checked again here), ``at_bound`` and
        ``model_fingerprint``.
        """
        temperature = check_temperature(self.temperature)
        at_bound = _check_at_bound(self.at_bound, "TemperatureScaler.at_bound")
        if model is not None:
            self.model_fingerprint = model_fingerprint(model)
        path = Path(directory) / TEMPERATURE_FILE
        write_json(
            path,
            {
                "format": _FORMAT,
                "temperature": temperature,
                "at_bound": at_bound,
                "model_fingerprint": self.model_fingerprint,
            },
        )
        return path

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        model: Any = None,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> TemperatureScaler:
        """Load ``directory/temperature.json``; with ``model``, refuse a file fitted on another model.

        ``directory`` is a local folder or a Hub repository id; from the Hub only ``[subfolder/]temperature.json``
        is downloaded (``huggingface_hub.snapshot_download`` with ``revision``, ``token``, ``cache_dir``). A
        bundle's temperature: ``from_pretrained("me/bundle", subfolder="calibration")``. A local folder (a
        ``pathlib.Path`` always) is never looked up on the Hub.

        Every field is checked before use (``ValueError`` naming the file and the field): ``temperature`` a finite
        number > 0 (not a bool or a string), ``at_bound`` ``"min"``, ``"max"`` or null (absent in older files:
        ``None``), ``model_fingerprint`` an object or null.
        """
        folder = resolve_files(
            directory,
            [TEMPERATURE_FILE],
            argument="directory",
            subfolder=subfolder,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
        )
        path = folder / TEMPERATURE_FILE
        content = read_json(path, "TemperatureScaler.from_pretrained")
        if content.get("format") != _FORMAT or "temperature" not in content:
            raise ValueError(f"{path} is not a TemperatureScaler file (no format {_FORMAT!r} with a temperature).")
        try:
            temperature = check_temperature(content["temperature"])
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{path}: field 'temperature' must be a finite number > 0; found {content['temperature']!r}."
            ) from err
        try:
            at_bound = _check_at_bound(content.get("at_bound"), "field 'at_bound'")
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        fingerprint = content.get("model_fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, dict):
            raise ValueError(f"{path}: field 'model_fingerprint' must be an object or null; found {fingerprint!r}.")
        if model is not None:
            check_fingerprint(fingerprint, model, what=f"The temperature in {path}")
        scaler = cls(temperature)
        scaler.at_bound = at_bound
        scaler.model_fingerprint = fingerprint
        return scaler


def _check_at_bound(value: Any, name: str) -> str | None:
    if value is not None and (not isinstance(value, str) or value not in _BOUND_MEANING):
        raise ValueError(f"{name} must be 'min', 'max' or null; found {value!r}.")
    return value
