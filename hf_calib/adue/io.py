"""Saving an AdUE head next to its adapter and loading it back onto a model that lacks it.

A folder holds ``adue_head.safetensors`` (the head's state dict) and ``adue_config.json``:

    {"format": "hf_calib.adue", "format_version": 1, "fingerprint": {...}, "head_kind": "encoder",
     "head_class": "Linear", "num_labels": 2, "hidden_size": 384, "verbaliser_token_ids": null,
     "smoothmax_lambda": 100.0, "parameters": {"head.weight": [2, 384], ...}, "dtypes": {"head.weight": "F32", ...}}

(``dtypes`` is absent from files written before it was added; their tensors may then have any floating dtype.)

PEFT saves only adapter and ``modules_to_save`` weights and silently ignores other modules, so the head is
written separately (``attach_adue_head`` makes a PEFT model's ``save_pretrained`` call ``save_adue_head``).
Loading first type-checks every config field, then compares every tensor name, shape and dtype in the safetensors
header (no tensor data is read) with ``parameters`` / ``dtypes`` of the config and, for a ``Linear`` head, with the
shapes ``num_labels`` and ``hidden_size`` imply; then the model fingerprint, hidden size and label count, and the
tensor shapes of the head built for the model; the loaded tensors must be finite. Every refusal is a ``ValueError``
naming the file and the field or tensor, raised before any weight is copied. Saving refuses NaN or inf weights.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .._fingerprint import check_fingerprint, model_fingerprint
from .._safe_files import (
    FLOAT_DTYPES,
    TORCH_DTYPES,
    check_finite_tensors,
    check_header,
    read_safetensors_header,
    write_atomic,
)
from ..calibrators import Calibrator, register_calibrator
from .attach import (
    ADUE_ATTRIBUTE,
    attach_adue_head,
    detach_adue_head,
    get_adue_head,
    hidden_size_of,
    register_head_saver,
    transformers_model,
)
from .head import HEAD_KINDS

WEIGHTS_NAME = "adue_head.safetensors"
CONFIG_NAME = "adue_config.json"
FORMAT = "hf_calib.adue"
FORMAT_VERSION = 1


def save_adue_head(model: nn.Module, directory: str | os.PathLike[str]) -> None:
    """Write ``directory/adue_head.safetensors`` and ``directory/adue_config.json`` for ``model``'s AdUE head.

    Refuses (``ValueError``, nothing written) a head whose weights hold NaN or inf, whose tensors are not of a
    floating dtype, or whose ``smoothmax_lambda`` is not a finite number > 0.
    """
    head = get_adue_head(model)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in head.state_dict().items()}
    check_finite_tensors(state, f"save_adue_head({str(directory)!r}) refused the AdUE head")
    odd = sorted(k for k, v in state.items() if v.dtype not in FLOAT_DTYPES)
    if odd:
        raise ValueError(
            f"save_adue_head: tensor(s) {odd} are not of a floating dtype {sorted(map(str, FLOAT_DTYPES))}."
        )
    lam = head.smoothmax_lambda
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"save_adue_head: the head's smoothmax_lambda must be a finite number > 0; got {lam!r}.")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": model_fingerprint(model),
        "head_kind": head.kind,
        "head_class": type(head.head).__name__,
        "num_labels": head.num_labels,
        "hidden_size": head.hidden_size,
        "verbaliser_token_ids": head.verbaliser_token_ids,
        "smoothmax_lambda": float(lam),
        "parameters": {k: list(v.shape) for k, v in state.items()},
        "dtypes": {k: FLOAT_DTYPES[v.dtype] for k, v in state.items()},
    }
    text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    write_atomic(folder / WEIGHTS_NAME, lambda path: save_file(state, path, metadata={"format": "pt"}))
    write_atomic(folder / CONFIG_NAME, lambda path: Path(path).write_text(text, encoding="utf-8"))


# A PEFT model's save_pretrained patched by attach_adue_head writes the head with this function.
register_head_saver(save_adue_head)


def read_adue_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``adue_config.json`` of ``directory``, with every field type-checked; ``FileNotFoundError`` if absent.

    Raises ``ValueError`` naming the file and the field for a wrong format, a missing field or a value of the wrong
    type or range (e.g. a string, bool, float or negative number where a count is expected), and for ``parameters``
    that disagree with ``num_labels`` / ``hidden_size`` (``Linear`` heads) or ``dtypes``.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file() or not (Path(directory) / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{directory} holds no AdUE head ({CONFIG_NAME} and {WEIGHTS_NAME}); save one with save_adue_head."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path} is not an AdUE head config (format {FORMAT!r}).")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {config.get('format_version')!r}; this version reads 1.")
    _validate_config(config, path)
    return config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_config(config: dict[str, Any], path: Path) -> None:
    """Type- and range-check the fields of an ``adue_config.json`` (see :func:`read_adue_config`)."""

    def fail(field: str, expected: str) -> None:
        if field not in config:
            raise ValueError(f"{path}: field {field!r} is missing; expected {expected}.")
        raise ValueError(f"{path}: field {field!r} must be {expected}; found {config[field]!r}.")

    fingerprint = config.get("fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, dict):
        fail("fingerprint", "an object or null")
    if config.get("head_kind") not in HEAD_KINDS:
        fail("head_kind", f"one of {list(HEAD_KINDS)}")
    if not isinstance(config.get("head_class"), str) or not config["head_class"]:
        fail("head_class", "a class name (string)")
    for field, least in (("num_labels", 2), ("hidden_size", 1)):
        if not _is_int(config.get(field)) or config[field] < least:
            fail(field, f"an integer >= {least}")
    lam = config.get("smoothmax_lambda")
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not (math.isfinite(lam) and lam > 0):
        fail("smoothmax_lambda", "a finite number > 0")
    ids = config.get("verbaliser_token_ids")
    if config["head_kind"] == "verbaliser" or ids is not None:
        if (
            not isinstance(ids, list)
            or not all(_is_int(t) and t >= 0 for t in ids)
            or len(set(ids)) != len(ids)
            or len(ids) != config["num_labels"]
        ):
            fail(
                "verbaliser_token_ids",
                f"a list of num_labels={config['num_labels']} distinct token ids >= 0 (head_kind 'verbaliser' only)",
            )
        if config["head_kind"] != "verbaliser":
            fail("verbaliser_token_ids", f"null for head_kind {config['head_kind']!r}")
    parameters = config.get("parameters")
    if (
        not isinstance(parameters, dict)
        or not parameters
        or not all(
            isinstance(shape, list) and all(_is_int(n) and n >= 0 for n in shape) for shape in parameters.values()
        )
    ):
        fail("parameters", "an object {tensor name: shape as a list of integers >= 0}")
    if config["head_class"] == "Linear":
        labels, hidden = config["num_labels"], config["hidden_size"]
        implied = {"head.weight": [labels, hidden], "head.bias": [labels]}
        wrong = sorted(set(parameters) - set(implied)) + (
            ["head.weight (missing)"] if "head.weight" not in parameters else []
        )
        wrong += [f"{k}: {parameters[k]}" for k in implied if k in parameters and parameters[k] != implied[k]]
        if wrong:
            raise ValueError(
                f"{path}: fields 'num_labels' ({labels}) / 'hidden_size' ({hidden}) and 'parameters' disagree: "
                f"expected a Linear head's head.weight {implied['head.weight']} (and optionally head.bias "
                f"{implied['head.bias']}); found {', '.join(wrong)}."
            )
    dtypes = config.get("dtypes")
    if dtypes is not None and (
        not isinstance(dtypes, dict)
        or set(dtypes) != set(parameters)
        or not all(isinstance(d, str) and d in TORCH_DTYPES for d in dtypes.values())
    ):
        fail("dtypes", f"an object {{tensor name: one of {sorted(TORCH_DTYPES)}}} with the names of 'parameters'")


def _check_shape(config: dict[str, Any], model: nn.Module, where: str) -> None:
    base = transformers_model(model)
    hidden = hidden_size_of(base)
    if config["hidden_size"] != hidden:
        raise ValueError(f"{where} has hidden size {config['hidden_size']} but the model has {hidden}.")
    ids = config.get("verbaliser_token_ids")
    if ids is not None:
        return
    labels = int(base.config.num_labels)
    if config["num_labels"] != labels:
        raise ValueError(
            f"{where} was fitted for {config['num_labels']} labels but the model has {labels}; fit a new head."
        )


def _check_tensors(saved: dict[str, tuple[int, ...]], expected: dict[str, torch.Tensor], where: str) -> None:
    problems = [f"missing {k}" for k in expected if k not in saved]
    problems += [f"unexpected {k}" for k in saved if k not in expected]
    problems += [
        f"{k}: saved {tuple(saved[k])}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in saved and tuple(saved[k]) != tuple(v.shape)
    ]
    if problems:
        raise ValueError(f"{where} does not fit this model's head: {'; '.join(problems)}.")


def load_adue_head(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Load the AdUE head saved in ``directory`` onto ``model`` (attaching one first if it has none).

    The config's fields and the weights file's header (tensor names, shapes, dtypes) are checked against each
    other before anything is attached or any tensor read; the loaded tensors must be finite.

    Raises:
        FileNotFoundError: if ``directory`` holds no head.
        ValueError: if the files are inconsistent or damaged (a config field of the wrong type or range, a tensor
            whose name, shape or dtype disagrees with the config, NaN or inf weights; the message names the file
            and the field or tensor), or if the head was fitted on another model (fingerprint, hidden size, label
            count, head kind, tensor names or shapes); nothing is loaded and a head attached here is removed again.
    """
    where = f"The AdUE head in {directory}"
    config = read_adue_config(directory)
    config_path, weights = Path(directory) / CONFIG_NAME, Path(directory) / WEIGHTS_NAME
    header = read_safetensors_header(weights)
    dtypes = config.get("dtypes") or {}
    check_header(
        weights,
        header,
        {k: (tuple(shape), dtypes.get(k, "")) for k, shape in config["parameters"].items()},
        source=str(config_path),
        why={k: f"field 'parameters' of {CONFIG_NAME}" for k in config["parameters"]},
        allowed_dtypes=tuple(TORCH_DTYPES),
        dtype_source=f"field 'dtypes' of {CONFIG_NAME}",
    )
    check_fingerprint(config.get("fingerprint"), model, what=where)
    _check_shape(config, model, where)
    ids = config.get("verbaliser_token_ids")
    attached_here = not hasattr(transformers_model(model), ADUE_ATTRIBUTE)
    if attached_here:
        attach_adue_head(model, verbaliser_token_ids=ids, smoothmax_lambda=float(config["smoothmax_lambda"]))
    try:
        head = get_adue_head(model)
        if head.kind != config["head_kind"] or head.verbaliser_token_ids != ids:
            raise ValueError(
                f"{where} is a {config['head_kind']!r} head (verbaliser ids {ids}) but the model's head is "
                f"{head.kind!r} (verbaliser ids {head.verbaliser_token_ids}); detach it or load another head."
            )
        expected = head.state_dict()
        _check_tensors({k: shape for k, (shape, _) in header.items()}, expected, where)
        saved = load_file(str(weights))
        check_finite_tensors(saved, str(weights))
        head.load_state_dict({k: v.to(expected[k].dtype) for k, v in saved.items()}, strict=True)
        head.smoothmax_lambda = float(config["smoothmax_lambda"])
    except BaseException:
        if attached_here:
            detach_adue_head(model)
        raise
    return model


@register_calibrator
class AdUEHeadCalibrator(Calibrator):
    """The AdUE head of an adapted model as a bundle component (:class:`hf_calib.calibrators.Calibrator`).

    The head lives on the model (``attach_adue_head``), so a bundle finds it with :meth:`from_model`; its files,
    ``adue_head.safetensors`` and ``adue_config.json``, sit at the bundle's root, where PEFT's ``save_pretrained``
    of a model with a head also writes them.
    """

    name = "adue"
    added_outputs = {"uncertainty": "[batch], in (0, 1)"}

    def __init__(self, head: nn.Module) -> None:
        self.head = head

    @classmethod
    def from_model(cls, model: Any) -> AdUEHeadCalibrator | None:
        try:
            return cls(get_adue_head(model))
        except (ValueError, TypeError):
            return None

    def save(self, folder: Path, model: Any) -> None:
        save_adue_head(model, folder)

    @classmethod
    def load(cls, folder: Path, model: Any, entry: dict[str, Any]) -> AdUEHeadCalibrator:
        load_adue_head(model, folder)
        return cls(get_adue_head(model))

    def manifest_entry(self) -> dict[str, Any]:
        return {"folder": "."}

    def tensors(self) -> dict[str, Any]:
        return dict(self.head.state_dict())

    def card_files(self) -> list[tuple[str | tuple[str, ...], str]]:
        return [((WEIGHTS_NAME, CONFIG_NAME), "AdUE uncertainty head")]

    def card_notes(self) -> list[str]:
        return [
            "- **AdUE head**: a copy of the classification head fine-tuned to score misclassification risk; "
            "`uncertainty = (1 - SmoothMax(p)) / (1 - 1/C)`. It never changes the predictions."
        ]
