"""Thermometer (Shen et al., ICML 2024): a small network that predicts a task's temperature from unlabelled inputs.

Network (the official code's architecture): ``num_branches`` (3) parallel branches
``b_k(x) = W2_k relu(W1_k x + c1_k) + c2_k`` with ``W1_k`` [h, d] and ``W2_k`` [1, h]; their outputs are
concatenated and mixed by ``Linear(3, 1)``; ``softplus`` of the result is an *inverse* temperature
``beta_i = softplus(f(x_i)) > 0`` per example ``x_i`` (the LLM's last-layer hidden state at the prompt's
last token, :func:`hf_calib.scaling.extract_features`).

A task's temperature is ``T = 1 / mean_i beta_i`` over its inputs, no labels needed; the task's
calibrated probabilities are ``softmax(z_i / T)`` (accuracy unchanged).

Training loss on a batch of one task (:func:`thermometer_loss`)::

    beta = mean_i softplus(f(x_i));  T = 1 / beta
    loss = CE(z * beta, y) + lambda * (-log Gamma(T; shape k, scale theta))

with ``-log Gamma(T; k, theta) = -(k - 1) log T + T / theta + k log theta + lgamma(k)``; the defaults
``k = 1.25, theta = 4`` put the prior's mode ``(k - 1) theta`` at ``T = 1``. Training itself lives in
:mod:`hf_calib.scaling.training`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .._download import resolve_files
from .._fingerprint import check_fingerprint, model_fingerprint
from .._model_utils import last_attended
from .._safe_files import (
    FLOAT_DTYPES,
    TORCH_DTYPES,
    check_finite_tensors,
    check_header,
    read_json,
    read_safetensors_header,
    write_atomic,
    write_json,
)
from ..calibrators import CALIBRATION_DIR, Calibrator, register_calibrator
from ._checks import check_features, scale_logits

WEIGHTS_FILE = "thermometer.safetensors"
CONFIG_FILE = "thermometer_config.json"
_FORMAT = "hf_calib.thermometer"
# Keeps T = 1 / beta finite when every softplus output underflows to 0 (T is then at most 1e12).
_MIN_INVERSE_TEMPERATURE = 1e-12


@dataclass
class ThermometerConfig:
    """Every knob of Thermometer; the defaults are the paper's (official code) values.

    Attributes:
        input_size: d, the LLM's hidden size (576 for SmolLM2-135M, 4096 for LLaMA-2-7B).
        hidden_size: h, width of each branch (512 for LLaMA-2-7B in the paper, 256 for FLAN-T5).
        num_branches: parallel branches mixed by ``Linear(num_branches, 1)`` (3 in the paper).
        lambda_reg: weight of the Gamma prior term.
        gamma_shape, gamma_scale: the Gamma prior's shape k and scale theta on the batch temperature.
        learning_rate, weight_decay: AdamW settings.
        steps: gradient steps; each uses one batch of one randomly chosen training task.
        batch_size: examples per step (the whole train split when a task has fewer).
        eval_every: steps between validations; the checkpoint with the lowest mean validation NLL over
            the training tasks is kept (the last step is also validated, so short runs keep one).
        val_fraction: share of each training task held out for that validation when no explicit
            validation tasks are given (convention: the paper uses separate validation splits).
        seed: seeds the network's initialisation, the train/validation split, task and batch sampling.
    """

    input_size: int
    hidden_size: int = 512
    num_branches: int = 3
    lambda_reg: float = 1e-2
    gamma_shape: float = 1.25
    gamma_scale: float = 4.0
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    steps: int = 5000
    batch_size: int = 128
    eval_every: int = 50
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("input_size", "hidden_size", "num_branches", "steps", "batch_size", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ThermometerConfig.{name} must be a positive integer; got {value!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"ThermometerConfig.seed must be an integer; got {self.seed!r}.")
        for name in ("gamma_shape", "gamma_scale", "learning_rate"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value > 0)
            ):
                raise ValueError(f"ThermometerConfig.{name} must be a finite number > 0; got {value!r}.")
        for name in ("lambda_reg", "weight_decay"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value >= 0)
            ):
                raise ValueError(f"ThermometerConfig.{name} must be a finite number >= 0; got {value!r}.")
        if not (isinstance(self.val_fraction, int | float) and 0 < self.val_fraction < 1):
            raise ValueError(f"ThermometerConfig.val_fraction must be in (0, 1); got {self.val_fraction!r}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ThermometerConfig:
        """Build from a dict, rejecting unknown keys (a typo would otherwise be ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ThermometerConfig field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**values)


def gamma_prior_nll(temperature: torch.Tensor, shape: float, scale: float) -> torch.Tensor:
    """``-log Gamma(T; shape k, scale theta) = -(k-1) log T + T/theta + k log theta + lgamma(k)``, elementwise."""
    k = torch.as_tensor(shape, dtype=temperature.dtype, device=temperature.device)
    theta = torch.as_tensor(scale, dtype=temperature.dtype, device=temperature.device)
    return -(k - 1) * torch.log(temperature) + temperature / theta + k * torch.log(theta) + torch.lgamma(k)


def thermometer_loss(
    logits: torch.Tensor, labels: torch.Tensor, inverse_temperatures: torch.Tensor, config: ThermometerConfig
) -> torch.Tensor:
    """``CE(z * beta, y) + lambda * gamma_prior_nll(1 / beta)`` with ``beta = mean(inverse_temperatures)``.

    Args:
        logits: [B, C] frozen answer logits of one task's batch (``-inf`` = absent option).
        labels: [B] correct options.
        inverse_temperatures: [B] the network's outputs ``softplus(f(x_i))`` on the same batch.
    """
    beta = inverse_temperatures.mean()
    ce = nn.functional.cross_entropy(scale_logits(logits, beta), labels)
    return ce + config.lambda_reg * gamma_prior_nll(1.0 / beta, config.gamma_shape, config.gamma_scale)


@register_calibrator
class Thermometer(nn.Module, Calibrator):
    """The Thermometer network (see the module docstring); ``forward(features [N, d]) -> beta [N]``."""

    def __init__(self, config: ThermometerConfig) -> None:
        super().__init__()
        if not isinstance(config, ThermometerConfig):
            raise TypeError(f"config must be a ThermometerConfig; got {type(config).__name__}.")
        self.config = config
        d, h = config.input_size, config.hidden_size
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, 1)) for _ in range(config.num_branches)
        )
        self.mix = nn.Linear(config.num_branches, 1)
        self.model_fingerprint: dict[str, Any] | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Inverse temperature ``softplus(mix([b_1(x), ..., b_K(x)]))`` per row, shape [N] (> 0)."""
        x = check_features(features, self.config.input_size).to(self.mix.weight)
        branch_outputs = torch.cat([branch(x) for branch in self.branches], dim=1)
        return nn.functional.softplus(self.mix(branch_outputs)).squeeze(1)

    def inverse_temperature(self, features: torch.Tensor) -> torch.Tensor:
        """Per-example inverse temperatures ``beta_i`` [N] (same as calling the module)."""
        return self(features)

    @torch.no_grad()
    def predict_temperature(self, features: torch.Tensor) -> float:
        """The task temperature ``T = 1 / mean_i beta_i`` of a task's unlabelled features [N, d].

        Always a finite float > 0: the mean inverse temperature is clamped below at ``1e-12`` (so ``T`` is at
        most ``1e12`` when every softplus output underflows to 0). Raises ``ValueError`` instead of returning
        NaN or inf: for features holding NaN or inf, and when the network's output is not finite (NaN or inf
        weights, or an overflow).
        """
        training = self.training
        self.eval()
        try:
            beta = self(features)  # check_features refuses non-finite features, naming the first bad row
        finally:
            self.train(training)
        if not bool(torch.isfinite(beta).all()):
            rows = (~torch.isfinite(beta)).nonzero().flatten()
            bad = [name for name, p in self.state_dict().items() if not bool(torch.isfinite(p).all())]
            cause = f"its tensor(s) {bad} hold NaN or inf" if bad else "the network overflowed on these features"
            raise ValueError(
                f"the Thermometer's inverse temperature is not finite for {len(rows)} of {beta.shape[0]} "
                f"example(s) (first in row {int(rows[0])}): {cause}; no temperature can be predicted."
            )
        mean = float(beta.double().mean())
        temperature = 1.0 / max(mean, _MIN_INVERSE_TEMPERATURE)
        if not (math.isfinite(temperature) and temperature > 0):  # unreachable for finite beta >= 0; kept as a guard
            raise ValueError(f"the Thermometer predicted a temperature of {temperature!r}, not a finite float > 0.")
        return temperature

    # ------------------------------------------------------------------------------------------ saving
    # ------------------------------------------------------------------ as a bundle component
    name = "thermometer"
    sets_temperature = True
    wants_hidden_states = True

    def save(self, folder: Path, model: Any) -> None:
        """Write ``calibration/thermometer*`` into a bundle folder (:class:`hf_calib.calibrators.Calibrator`)."""
        self.save_pretrained(Path(folder) / CALIBRATION_DIR, model=model)

    @classmethod
    def load(cls, folder: Path, model: Any, entry: dict[str, Any]) -> Thermometer:
        return cls.from_pretrained(Path(folder) / CALIBRATION_DIR, model=model)

    def manifest_entry(self) -> dict[str, Any]:
        return {"folder": CALIBRATION_DIR}

    def temperature_for(self, outputs: Any, call_kwargs: dict[str, Any]) -> float:
        """``1 / mean_i beta(h_i)`` over the call's inputs, ``h_i`` the last hidden state at input i's last
        attended token."""
        features = last_attended(outputs["hidden_states"][-1], call_kwargs.get("attention_mask"))
        return self.predict_temperature(features.float())

    def card_files(self) -> list[tuple[str, str]]:
        return [
            (
                f"{CALIBRATION_DIR}/thermometer*",
                "Thermometer: predicts a temperature from the inputs' last hidden states",
            )
        ]

    def card_notes(self) -> list[str]:
        return [
            "- **Thermometer**: a small network maps the last hidden state at each input's last token to an inverse "
            "temperature; one temperature per call, `1 / mean(beta)`, rescales the logits. Predictions are unchanged."
        ]

    def save_pretrained(self, directory: str | os.PathLike[str], model: Any = None) -> Path:
        """Write ``thermometer.safetensors`` and ``thermometer_config.json`` into ``directory``.

        With ``model`` (the LLM whose features it reads) its fingerprint is recorded, and
        :meth:`from_pretrained` then refuses another model. Each file is written atomically. Weights holding
        NaN or inf are refused (``ValueError``) before anything is written.
        """
        directory = Path(directory)
        tensors = {name: p.detach().cpu().contiguous() for name, p in self.state_dict().items()}
        check_finite_tensors(tensors, f"Thermometer.save_pretrained({str(directory)!r}) refused")
        dtypes = {FLOAT_DTYPES.get(t.dtype) for t in tensors.values()}
        if len(dtypes) != 1 or None in dtypes:
            found = sorted({str(t.dtype) for t in tensors.values()})
            raise ValueError(
                f"Thermometer.save_pretrained: all weights must share one floating dtype of "
                f"{sorted(map(str, FLOAT_DTYPES))}; found {found}."
            )
        if model is not None:
            self.model_fingerprint = model_fingerprint(model)
        content = {
            "format": _FORMAT,
            "config": self.config.to_dict(),
            "dtype": dtypes.pop(),
            "model_fingerprint": self.model_fingerprint,
        }
        write_atomic(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": _FORMAT}))
        write_json(directory / CONFIG_FILE, content)
        return directory

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
    ) -> Thermometer:
        """Rebuild a saved Thermometer; with ``model``, refuse one trained on another model's features.

        ``directory`` is a local folder or a Hub repository id; from the Hub only ``[subfolder/]`` +
        ``thermometer_config.json`` and ``thermometer.safetensors`` are downloaded (``snapshot_download`` with
        ``revision``, ``token``, ``cache_dir``; a bundle's: ``subfolder="calibration"``). A local folder (a
        ``pathlib.Path`` always) is never looked up on the Hub.

        Before any module is built or tensor read, the config's fields are type-checked and every tensor name,
        shape and dtype in the safetensors header is compared with what the config implies (a tampered size
        fails at once instead of being allocated); the loaded tensors must then be finite. Every refusal is a
        ``ValueError`` naming the file and the field or tensor (``FileNotFoundError`` for a missing file).
        """
        directory = resolve_files(
            directory,
            [CONFIG_FILE, WEIGHTS_FILE],
            argument="directory",
            subfolder=subfolder,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
        )
        config_path, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        content = read_json(config_path, "Thermometer.from_pretrained")
        if content.get("format") != _FORMAT or not isinstance(content.get("config"), dict):
            raise ValueError(f"{config_path} is not a Thermometer config (format {_FORMAT!r}).")
        fingerprint = content.get("model_fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, dict):
            raise ValueError(
                f"{config_path}: field 'model_fingerprint' must be an object or null; got {fingerprint!r}."
            )
        dtype = content.get("dtype")
        if dtype is not None and dtype not in TORCH_DTYPES:
            raise ValueError(f"{config_path}: field 'dtype' must be one of {sorted(TORCH_DTYPES)}; got {dtype!r}.")
        values = content["config"]
        missing = [name for name in _ARCHITECTURE_FIELDS if name not in values]
        if missing:
            raise ValueError(f"{config_path}: field(s) {['config.' + name for name in missing]} missing.")
        try:
            config = ThermometerConfig.from_dict(values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{config_path}: {err}") from err
        if model is not None:
            check_fingerprint(fingerprint, model, what=f"The Thermometer in {directory}")
        if not weights.is_file():
            raise FileNotFoundError(f"Thermometer.from_pretrained: {weights} does not exist.")
        header = read_safetensors_header(weights)
        _check_architecture(config, header, config_path, weights)
        expected, why = expected_tensor_shapes(config)
        check_header(
            weights,
            header,
            {name: (shape, dtype or "") for name, shape in expected.items()},
            source=f"the network described by {config_path}",
            why=why,
            allowed_dtypes=tuple(TORCH_DTYPES),
            dtype_source=f"field 'dtype' of {CONFIG_FILE}",
        )
        state = load_file(str(weights))
        check_finite_tensors(state, f"{weights}")
        thermometer = cls(config)
        thermometer.to(next(iter(state.values())).dtype)
        thermometer.load_state_dict(state)
        thermometer.model_fingerprint = fingerprint
        return thermometer.eval()


# The config fields that decide the tensor shapes: a file must state them (the others have defaults).
_ARCHITECTURE_FIELDS = ("input_size", "hidden_size", "num_branches")


def _check_architecture(
    config: ThermometerConfig, header: dict[str, tuple[tuple[int, ...], str]], config_path: Path, weights: Path
) -> None:
    """Name the config field that disagrees with the weights (branch count, input and hidden size), if one does."""
    branch_ids = {name.split(".")[1] for name in header if name.startswith("branches.")}
    found: dict[str, int] = {}
    if branch_ids and all(b.isdigit() for b in branch_ids):
        found["num_branches"] = len(branch_ids)
    first = header.get("branches.0.0.weight")
    if first is not None and len(first[0]) == 2:
        found["hidden_size"], found["input_size"] = first[0]
    wrong = [
        f"config.{name} is {getattr(config, name)!r} but the weights have {value}"
        for name, value in found.items()
        if getattr(config, name) != value
    ]
    if wrong:
        raise ValueError(
            f"{config_path} does not match {weights}: {'; '.join(wrong)}. Save the weights and the config together "
            "(save_pretrained) and do not edit either."
        )


def expected_tensor_shapes(config: ThermometerConfig) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The state dict ``{name: shape}`` of ``Thermometer(config)``, computed without building it.

    Also returns, per tensor, the config fields its shape comes from (for error messages).
    """
    d, h, k = config.input_size, config.hidden_size, config.num_branches
    shapes: dict[str, tuple[int, ...]] = {}
    why: dict[str, str] = {}
    for b in range(k):
        first, second = f"branches.{b}.0", f"branches.{b}.2"
        shapes[f"{first}.weight"], why[f"{first}.weight"] = (h, d), f"config hidden_size={h}, input_size={d}"
        shapes[f"{first}.bias"], why[f"{first}.bias"] = (h,), f"config hidden_size={h}"
        shapes[f"{second}.weight"], why[f"{second}.weight"] = (1, h), f"config hidden_size={h}"
        shapes[f"{second}.bias"], why[f"{second}.bias"] = (1,), f"config num_branches={k}"
    shapes["mix.weight"], why["mix.weight"] = (1, k), f"config num_branches={k}"
    shapes["mix.bias"], why["mix.bias"] = (1,), "the mixing layer"
    return shapes, why
