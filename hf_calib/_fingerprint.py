"""What a saved calibration artefact remembers about the model it was fitted on.

A temperature, a Thermometer or an AdUE head fitted on one model is meaningless on another. Every
artefact stores a fingerprint of its model and refuses, before loading any weight, to be attached
to a model whose fingerprint disagrees.

The fingerprint has two parts:

* **config**: architecture, model type and every shape-defining field (layers, hidden size, attention
  and key/value heads, intermediate size, vocabulary, labels of a classifier, tied embeddings);
* **weights** (``model_fingerprint(model, weights=True)``, recorded by calibrated adapter bundles): a
  deterministic sample of :data:`SAMPLES_PER_TENSOR` values of every base-model parameter, stored as
  float32 together with the dtype they were read in, and a SHA-256 digest of the sample. Adapter
  weights (PEFT tuner layers, ``modules_to_save`` copies and the modules they wrap) and the AdUE head
  are left out: they belong to the adapter, not to the base model. Sampling reads a few elements of
  each tensor, so it costs milliseconds whatever the model's size.

Two weight samples agree when every value matches within the rounding of the two dtypes they were read
in (``|a - b| <= (u_a + u_b) max(|a|, |b|)``, with ``u`` the unit roundoff: 2^-24 for float32, 2^-11 for
float16, 2^-8 for bfloat16), so a base loaded in bfloat16 or float16 matches the float32 base it was
recorded from, while a base with other weights does not. Quantized bases (bitsandbytes, GPTQ, ...) store
packed integers that cannot be compared with the original values: their weights are not sampled and the
check falls back to the config, with a warning that says so.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from ._model_utils import base_model

logger = logging.getLogger(__name__)

#: The config fields that decide whether a calibrator fitted on one model applies to another. The name
#: or path is recorded for people but not compared: the same weights move between folders and Hub ids.
CONFIG_FIELDS = (
    "architectures",
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "num_labels",
    "tie_word_embeddings",
)
#: Values sampled from each parameter tensor for the weights digest.
SAMPLES_PER_TENSOR = 16
WEIGHTS_SCHEME = "hf_calib.sampled-weights.v1"
# Unit roundoff of the dtypes a base model may be loaded in (anything else compares as bfloat16).
_UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
# float16 values below 2^-14 are subnormal: their absolute spacing is 2^-24.
_FLOAT16_SUBNORMAL_STEP = 2.0**-24
# Names of modules that hf_calib attaches to a base model (the AdUE head): part of the adapter, not the base.
_ATTACHED_MODULES = ("adue_head",)


class QuantizedModelWarning(UserWarning):
    """The base model is quantized: its weights cannot be compared, only its config is checked."""


def _config_of(model_or_config: Any) -> Any:
    config = getattr(model_or_config, "config", model_or_config)
    # PEFT wraps the base model; its config is the base model's config.
    if hasattr(model_or_config, "get_base_model"):
        config = base_model(model_or_config).config
    return config


def is_quantized(model: Any) -> bool:
    """Whether ``model`` (or a PEFT model's base) holds quantized weights (bitsandbytes, GPTQ, AWQ, ...)."""
    base = base_model(model)
    config = getattr(base, "config", None)
    if getattr(base, "is_quantized", False) or getattr(base, "hf_quantizer", None) is not None:
        return True
    if getattr(config, "quantization_config", None):
        return True
    return any(getattr(base, flag, False) for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"))


def model_fingerprint(model_or_config: Any, *, weights: bool = False) -> dict[str, Any]:
    """The fingerprint of a ``PreTrainedModel``, a PEFT model or a ``PretrainedConfig``.

    Returns the :data:`CONFIG_FIELDS` (``None`` where the config has no such field) and ``name_or_path``;
    with ``weights=True`` and a model (not a config), also ``weights``: the sampled-weights record (see the
    module docstring), or ``None`` for a quantized model.
    """
    config = _config_of(model_or_config)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(
            f"model must be a transformers model, a PEFT model or a PretrainedConfig; got {type(model_or_config)!r}."
        )
    text = getattr(config, "get_text_config", None)
    text_config = text() if callable(text) else config
    archs = getattr(config, "architectures", None)
    base = base_model(model_or_config)
    names = [type(base).__name__, *(archs or [])]
    # Every config carries a default num_labels of 2; it means something only for classifiers.
    classifier = any("SequenceClassification" in name for name in names)

    def field(name: str) -> Any:
        value = getattr(text_config, name, None)
        return getattr(config, name, None) if value is None else value

    fingerprint: dict[str, Any] = {
        "architectures": list(archs) if archs else None,
        "model_type": getattr(config, "model_type", None),
        **{name: field(name) for name in CONFIG_FIELDS[2:-2]},
        "num_labels": getattr(config, "num_labels", None) if classifier else None,
        "tie_word_embeddings": field("tie_word_embeddings"),
        "name_or_path": getattr(config, "_name_or_path", None) or None,
    }
    if weights and hasattr(base, "named_parameters"):
        fingerprint["weights"] = None if is_quantized(model_or_config) else weights_sample(model_or_config)
    return fingerprint


def _base_parameters(model: Any) -> Iterator[tuple[str, Any]]:
    """``(name, tensor)`` for the base model's own parameters, under the names a plain (un-adapted) model has."""
    base = base_model(model)
    prefix = getattr(getattr(model, "base_model", None), "prefix", None) if hasattr(model, "peft_config") else None
    for name, param in base.named_parameters():
        parts = name.split(".")
        if parts[0] in _ATTACHED_MODULES or "modules_to_save" in parts or "original_module" in parts:
            continue  # the adapter's own modules, and the base modules they replace
        if prefix and any(part.startswith(prefix) for part in parts):
            continue  # PEFT tuner weights (lora_A, lora_B, ...)
        yield ".".join(part for part in parts if part != "base_layer"), param


def _sample_positions(numel: int) -> list[int]:
    """Deterministic positions spread over a flattened tensor of ``numel`` elements (golden-ratio sequence)."""
    count = min(SAMPLES_PER_TENSOR, numel)
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    return sorted({int(((i + 0.5) * golden) % 1.0 * numel) for i in range(count)})


def weights_sample(model: Any) -> dict[str, Any]:
    """The sampled-weights record of ``model``'s base parameters (see the module docstring)."""
    import numpy as np
    import torch

    names, pieces, dtypes = [], [], set()
    with torch.no_grad():
        for name, param in _base_parameters(model):
            if param.device.type == "meta" or not param.is_floating_point():
                raise ValueError(
                    f"cannot sample the weights of {name} ({param.dtype} on {param.device}); load the model "
                    "on a real device, without offloading, to fingerprint it."
                )
            flat_positions = torch.tensor(_sample_positions(param.numel()), device=param.device)
            index = torch.unravel_index(flat_positions, param.shape) if param.ndim else ()
            pieces.append(param[index].reshape(-1).float())
            names.append(name)
            dtypes.add(str(param.dtype).removeprefix("torch."))
        # One device-to-host copy for the whole model.
        values = torch.cat(pieces).cpu().numpy().astype("<f4") if pieces else np.zeros(0, "<f4")
    tensors, start = {}, 0
    for name, piece in zip(names, pieces, strict=True):
        chunk = values[start : start + piece.numel()]
        tensors[name] = base64.b64encode(chunk.tobytes()).decode("ascii")
        start += piece.numel()
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + b"\0" + tensors[name].encode() + b"\0")
    coarsest = max(dtypes, key=lambda d: _UNIT_ROUNDOFF.get(d, _UNIT_ROUNDOFF["bfloat16"]), default="float32")
    return {
        "scheme": WEIGHTS_SCHEME,
        "samples_per_tensor": SAMPLES_PER_TENSOR,
        "dtype": coarsest,
        "digest": digest.hexdigest(),
        "tensors": tensors,
    }


def _decode(text: str) -> Any:
    import numpy as np

    return np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype="<f4").astype(np.float64)


def compare_weights(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Differences between two sampled-weights records (empty when they describe the same weights)."""
    import numpy as np

    if saved.get("scheme") != WEIGHTS_SCHEME or not isinstance(saved.get("tensors"), Mapping):
        return [f"weights: unknown sampling scheme {saved.get('scheme')!r} (this hf_calib writes {WEIGHTS_SCHEME})"]
    if saved.get("digest") == current["digest"]:
        return []
    roundoff = sum(_UNIT_ROUNDOFF.get(str(r.get("dtype")), _UNIT_ROUNDOFF["bfloat16"]) for r in (saved, current))
    floor = _FLOAT16_SUBNORMAL_STEP if "float16" in (saved.get("dtype"), current["dtype"]) else 0.0
    missing, differing = [], []
    for name, text in saved["tensors"].items():
        if name not in current["tensors"]:
            missing.append(name)
            continue
        try:
            a = _decode(text)
        except (ValueError, TypeError):
            differing.append(name)
            continue
        b = _decode(current["tensors"][name])
        tolerance = roundoff * np.maximum(np.abs(a), np.abs(b)) + floor
        if a.shape != b.shape or not bool(np.all(np.abs(a - b) <= tolerance * (1 + 1e-6))):
            differing.append(name)
    problems = []
    if missing:
        problems.append(f"weights: {len(missing)} tensor(s) of the saved base are missing ({_first(missing)})")
    if differing:
        total = len(saved["tensors"])
        problems.append(f"weights: {len(differing)} of {total} tensors hold other values ({_first(differing)})")
    return problems


def _first(names: list[str], count: int = 3) -> str:
    shown = ", ".join(names[:count])
    return shown + (f", ... ({len(names) - count} more)" if len(names) > count else "")


def check_fingerprint(
    saved: Mapping[str, Any] | None,
    model: Any,
    *,
    what: str,
    require: bool = False,
    ignore_mismatch: bool = False,
) -> None:
    """Raise ``ValueError`` when ``model`` differs from the fingerprint ``saved`` with ``what``.

    Config fields are compared where known on both sides (files from older versions record fewer). When
    ``saved`` holds a weights sample and ``model`` is a model (not a config), the weights are compared
    too; a quantized ``model`` is checked on its config only, with a :class:`QuantizedModelWarning`.

    Args:
        require: refuse a missing or empty ``saved`` fingerprint (else nothing is checked).
        ignore_mismatch: warn instead of raising (the user's explicit opt-out).
    """
    problems: list[str] = []
    if not saved:
        if require:
            problems.append("no base-model fingerprint was recorded, so the base model cannot be verified")
    else:
        current = model_fingerprint(model)
        problems = [
            f"{key}: saved {saved[key]!r}, model {current[key]!r}"
            for key in CONFIG_FIELDS
            if saved.get(key) is not None and current.get(key) is not None and saved[key] != current[key]
        ]
        sample = saved.get("weights")
        if not problems and hasattr(base_model(model), "named_parameters") and "weights" in saved:
            if sample is None or is_quantized(model):
                side = "the saved base model was" if sample is None else "this base model is"
                warnings.warn(
                    f"{what}: {side} quantized, so its weights cannot be compared; only the config was checked "
                    "(architecture and shapes). Make sure it is the model the calibration was fitted on.",
                    QuantizedModelWarning,
                    stacklevel=3,
                )
            elif not isinstance(sample, Mapping):
                problems.append("weights: the saved sample is not a JSON object")
            else:
                problems += compare_weights(sample, weights_sample(model))
    if not problems:
        return
    message = (
        f"{what} was fitted on a different base model ({'; '.join(problems)}). "
        "Load the base model it was fitted on, or fit the calibration again on this one."
    )
    if ignore_mismatch:
        warnings.warn(f"{message} Loading anyway because the check was switched off.", UserWarning, stacklevel=3)
        return
    raise ValueError(message)
