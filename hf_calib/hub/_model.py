"""What a bundle needs to know about its model: task, PEFT config, AdUE head, Thermometer features, base loading."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .._fingerprint import check_fingerprint

AUTO_CLASSES = {"causal_lm": "AutoModelForCausalLM", "sequence_classification": "AutoModelForSequenceClassification"}


def task_of(model: nn.Module) -> str:
    """``"causal_lm"`` or ``"sequence_classification"`` for a PEFT model; ``ValueError`` otherwise."""
    name = type(model.get_base_model()).__name__
    if name.endswith("ForCausalLM"):
        return "causal_lm"
    if name.endswith("ForSequenceClassification"):
        return "sequence_classification"
    raise ValueError(f"a calibrated adapter needs a *ForCausalLM or *ForSequenceClassification base model; got {name}.")


def adapter_config(model: nn.Module) -> dict[str, Any]:
    """The active adapter's PEFT config as JSON-like values (enums as their values, sets sorted)."""
    from enum import Enum

    config = model.peft_config[model.active_adapter].to_dict()
    return {
        key: value.value if isinstance(value, Enum) else sorted(value) if isinstance(value, set) else value
        for key, value in config.items()
    }


def load_base_model(
    path: str | os.PathLike[str],
    fingerprint: dict[str, Any],
    task: str,
    *,
    token: str | bool | None,
    dtype: torch.dtype | None,
    **checks: Any,
) -> nn.Module:
    """Check the config at ``path`` against ``fingerprint``, then load the weights (safetensors, no remote code).

    ``checks`` go to :func:`check_fingerprint` (``what``, ``require``, ``ignore_mismatch``); the weights sample is
    compared by the caller, once the model is loaded.
    """
    import transformers

    extra: dict[str, Any] = {}
    if task == "sequence_classification" and fingerprint.get("num_labels"):
        extra["num_labels"] = fingerprint["num_labels"]
    config = transformers.AutoConfig.from_pretrained(str(path), token=token, trust_remote_code=False, **extra)
    auto = getattr(transformers, AUTO_CLASSES[task])
    check_fingerprint(fingerprint, config, **checks)
    return auto.from_pretrained(
        str(path), config=config, token=token, trust_remote_code=False, use_safetensors=True, dtype=dtype
    )
