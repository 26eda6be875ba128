"""Saving an AdUE head next to its adapter and loading it back onto a model that lacks it.

A folder holds ``adue_head.safetensors`` (the head's state dict) and ``adue_config.json``:

    {"format": "hf_calib.adue", "format_version": 1, "fingerprint": {...}, "head_kind": "encoder",
     "head_class": "Linear", "num_labels": 2, "hidden_size": 384, "verbaliser_token_ids": null,
     "smoothmax_lambda": 100.0, "parameters": {"head.weight": [2, 384], ...}}

PEFT saves only adapter and ``modules_to_save`` weights and silently ignores other modules, so the head is
written separately (``attach_adue_head`` makes a PEFT model's ``save_pretrained`` call ``save_adue_head``).
Loading compares the model fingerprint, hidden size, label count and every tensor name and shape before any
weight is copied, and refuses with ``ValueError`` on a mismatch.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .._fingerprint import check_fingerprint, model_fingerprint
from .attach import (
    ADUE_ATTRIBUTE,
    attach_adue_head,
    detach_adue_head,
    get_adue_head,
    hidden_size_of,
    transformers_model,
)

WEIGHTS_NAME = "adue_head.safetensors"
CONFIG_NAME = "adue_config.json"
FORMAT = "hf_calib.adue"
FORMAT_VERSION = 1


def _replace_atomically(directory: Path, name: str, write: Any) -> None:
    """Write ``directory/name`` through a temporary file in the same folder, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_adue_head(model: nn.Module, directory: str | os.PathLike[str]) -> None:
    """Write ``directory/adue_head.safetensors`` and ``directory/adue_config.json`` for ``model``'s AdUE head."""
    head = get_adue_head(model)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in head.state_dict().items()}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": model_fingerprint(model),
        "head_kind": head.kind,
        "head_class": type(head.head).__name__,
        "num_labels": head.num_labels,
        "hidden_size": head.hidden_size,
        "verbaliser_token_ids": head.verbaliser_token_ids,
        "smoothmax_lambda": head.smoothmax_lambda,
        "parameters": {k: list(v.shape) for k, v in state.items()},
    }
    _replace_atomically(folder, WEIGHTS_NAME, lambda path: save_file(state, path, metadata={"format": "pt"}))
    text = json.dumps(config, indent=2) + "\n"
    _replace_atomically(folder, CONFIG_NAME, lambda path: Path(path).write_text(text, encoding="utf-8"))


def read_adue_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``adue_config.json`` of ``directory``, checked for format; ``FileNotFoundError`` if absent."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file() or not (Path(directory) / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{directory} holds no AdUE head ({CONFIG_NAME} and {WEIGHTS_NAME}); save one with save_adue_head."
        )
    config = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path} is not an AdUE head config (format {FORMAT!r}).")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {config.get('format_version')!r}; this version reads 1.")
    return config


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


def _check_tensors(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str) -> None:
    problems = [f"missing {k}" for k in expected if k not in saved]
    problems += [f"unexpected {k}" for k in saved if k not in expected]
    problems += [
        f"{k}: saved {tuple(saved[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in saved and saved[k].shape != v.shape
    ]
    if problems:
        raise ValueError(f"{where} does not fit this model's head: {'; '.join(problems)}.")


def load_adue_head(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Load the AdUE head saved in ``directory`` onto ``model`` (attaching one first if it has none).

    Raises:
        FileNotFoundError: if ``directory`` holds no head.
        ValueError: if the head was fitted on another model (fingerprint, hidden size, label count, head kind,
            tensor names or shapes); nothing is loaded and a head attached here is removed again.
    """
    where = f"The AdUE head in {directory}"
    config = read_adue_config(directory)
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
        saved = load_file(str(Path(directory) / WEIGHTS_NAME))
        _check_tensors(saved, expected, where)
        head.load_state_dict({k: v.to(expected[k].dtype) for k, v in saved.items()}, strict=True)
        head.smoothmax_lambda = float(config["smoothmax_lambda"])
    except BaseException:
        if attached_here:
            detach_adue_head(model)
        raise
    return model
