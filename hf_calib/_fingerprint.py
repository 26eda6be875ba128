"""What a saved calibration artefact remembers about the model it was fitted on.

A temperature, a Thermometer or an AdUE head fitted on one model is meaningless on another. Every
artefact stores a small fingerprint of its model's config and refuses, before loading any weight,
to be attached to a model whose fingerprint disagrees.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Keys that decide whether a calibrator fitted on one model applies to another. The name or path
# is recorded for people but not compared: the same weights move between folders and Hub ids.
_COMPARED = ("architectures", "model_type", "hidden_size", "vocab_size", "num_labels")


def _config_of(model_or_config: Any) -> Any:
    config = getattr(model_or_config, "config", model_or_config)
    # PEFT wraps the base model; its config is the base model's config.
    if hasattr(model_or_config, "get_base_model"):
        config = model_or_config.get_base_model().config
    return config


def model_fingerprint(model_or_config: Any) -> dict[str, Any]:
    """Return ``{architectures, model_type, hidden_size, vocab_size, num_labels, name_or_path}``.

    Accepts a ``PreTrainedModel``, a PEFT model or a ``PretrainedConfig``. Missing fields are ``None``.
    """
    config = _config_of(model_or_config)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(
            f"model must be a transformers model, a PEFT model or a PretrainedConfig; got {type(model_or_config)!r}."
        )
    text = getattr(config, "get_text_config", None)
    text_config = text() if callable(text) else config
    archs = getattr(config, "architectures", None)
    base = model_or_config.get_base_model() if hasattr(model_or_config, "get_base_model") else model_or_config
    names = [type(base).__name__, *(archs or [])]
    # Every config carries a default num_labels of 2; it means something only for classifiers.
    classifier = any("SequenceClassification" in name for name in names)
    return {
        "architectures": list(archs) if archs else None,
        "model_type": getattr(config, "model_type", None),
        "hidden_size": getattr(text_config, "hidden_size", None),
        "vocab_size": getattr(text_config, "vocab_size", None),
        "num_labels": getattr(config, "num_labels", None) if classifier else None,
        "name_or_path": getattr(config, "_name_or_path", None) or None,
    }


def check_fingerprint(saved: Mapping[str, Any] | None, model: Any, *, what: str) -> None:
    """Raise ``ValueError`` when ``model`` differs from the fingerprint ``saved`` with ``what``.

    Only fields known on both sides are compared, so artefacts from older files still load.
    """
    if not saved:
        return
    current = model_fingerprint(model)
    mismatches = [
        f"{key}: saved {saved[key]!r}, model {current[key]!r}"
        for key in _COMPARED
        if saved.get(key) is not None and current.get(key) is not None and saved[key] != current[key]
    ]
    if mismatches:
        raise ValueError(
            f"{what} was fitted on a different model ({'; '.join(mismatches)}). "
            "Fit it again on this model, or load the model it was fitted on."
        )
