"""Attaching an AdUE head to a (PEFT) Hugging Face classifier without changing its predictions.

``attach_adue_head`` copies the classification head into an ``AdUEHead`` registered as ``adue_head`` on the
transformers model (under PEFT: the base model, reachable as ``peft_model.adue_head``), freezes every other
parameter, and installs two forward hooks:

- on the classification head (``classifier``, ``score`` or the LM head): remembers its input and output;
- on the transformers model: pools the remembered input to one row per example, runs the uncertainty head
  on it and adds ``uncertainty`` [B] to the model's output. The logits are never touched, so predictions are
  bit-identical with and without the head.

Pooling (the row the classifier's prediction is read from):

- ``encoder`` (``classifier``): a 2-D input [B, H] (BERT: the pooler output) is used as is; a 3-D input
  [B, T, H] (RoBERTa/ELECTRA heads, which read the first token) is cut to its first position [B, 1, H].
- ``decoder`` (``score``): the rightmost token that is not ``pad_token_id``, transformers' rule for
  ``*ForSequenceClassification`` decoders; the last position without ``input_ids`` or without a pad token.
- ``verbaliser`` (a causal LM read through label tokens): the last position whose ``attention_mask`` is 1
  (the last position without a mask, or when the LM head saw one position only).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._model_utils import base_model
from .head import AdUEHead, HeadKind

ADUE_ATTRIBUTE = "adue_head"
_RUNTIME_ATTRIBUTE = "_adue_runtime"

#: What a PEFT model's patched ``save_pretrained`` calls to write the head: ``hf_calib.adue.io`` registers
#: ``save_adue_head`` here when it is imported (``hf_calib.adue`` imports it), so this module needs no import
#: of ``io``, which builds on it.
HeadSaver = Callable[[nn.Module, str | os.PathLike[str]], None]
_head_saver: HeadSaver | None = None


def register_head_saver(saver: HeadSaver) -> None:
    """Make every PEFT ``save_pretrained`` patched by :func:`attach_adue_head` write the head with ``saver``."""
    global _head_saver
    _head_saver = saver


@dataclass
class _Runtime:
    """Hook handles and what the last forward pass left behind (pooled features and class logits)."""

    handles: list[Any] = field(default_factory=list)
    head_io: tuple[torch.Tensor, torch.Tensor] | None = None
    features: torch.Tensor | None = None
    class_logits: torch.Tensor | None = None
    patched_save: Any = None


def transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model inside ``model`` (a PEFT model's base model, else ``model`` itself)."""
    base = base_model(model)
    if not hasattr(base, "config"):
        raise TypeError(f"model must be a transformers model or a PEFT model; got {type(model).__name__}.")
    return base


def get_adue_head(model: nn.Module) -> AdUEHead:
    """The ``AdUEHead`` attached to ``model``; ``ValueError`` if there is none."""
    head = getattr(transformers_model(model), ADUE_ATTRIBUTE, None)
    if not isinstance(head, AdUEHead):
        raise ValueError("model has no AdUE head; call hf_calib.adue.attach_adue_head(model) first.")
    return head


def _active(module: nn.Module) -> nn.Module:
    """The module a PEFT ``ModulesToSaveWrapper`` currently runs (the module itself when not wrapped)."""
    if hasattr(module, "modules_to_save") and hasattr(module, "original_module"):
        adapters = getattr(module, "active_adapters", [])
        if getattr(module, "disable_adapters", False) or not adapters or adapters[0] not in module.modules_to_save:
            return module.original_module
        return module.modules_to_save[adapters[0]]
    return module


def _reject_adapted(module: nn.Module, name: str) -> None:
    if any(hasattr(m, "lora_A") or hasattr(m, "base_layer") for m in module.modules()):
        raise TypeError(
            f"the classification head {name!r} carries a PEFT adapter layer, which cannot be copied as a plain "
            f"head; put {name!r} in modules_to_save (PEFT does this for task_type='SEQ_CLS') or merge the adapter."
        )


def _locate_head(base: nn.Module, verbaliser_token_ids: Sequence[int] | None) -> tuple[str, nn.Module, HeadKind]:
    if verbaliser_token_ids is not None:
        lm_head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        if lm_head is None:
            raise TypeError(f"verbaliser_token_ids needs a causal LM with an LM head; got {type(base).__name__}.")
        return "lm_head", lm_head, "verbaliser"
    for name, kind in (("classifier", "encoder"), ("score", "decoder")):
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return name, module, kind  # type: ignore[return-value]
    raise TypeError(
        f"{type(base).__name__} has neither a `classifier` (encoder) nor a `score` (decoder) head; for a causal "
        "LM used as a classifier pass verbaliser_token_ids (the label tokens' ids, in label order)."
    )


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    """Per row, the rightmost position where ``mask`` is non-zero (0 for an all-zero row)."""
    positions = torch.arange(mask.shape[-1], device=mask.device, dtype=torch.int32)
    return (positions * (mask != 0).to(torch.int32)).argmax(-1)


def pooling_index(
    kind: HeadKind,
    seq_len: int,
    *,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    pad_token_id: int | None,
) -> torch.Tensor | int:
    """Per example, the position of a [B, T, ...] head input the prediction is read from (see module docstring)."""
    if kind == "decoder":
        if input_ids is not None and pad_token_id is not None and input_ids.shape[-1] == seq_len:
            return _last_index(input_ids != pad_token_id)
        return -1
    if attention_mask is not None and attention_mask.shape[-1] == seq_len and seq_len > 1:
        return _last_index(attention_mask)
    return -1


def _pool(kind: HeadKind, x: torch.Tensor, index: torch.Tensor | int) -> torch.Tensor:
    if kind == "encoder":
        return x if x.ndim == 2 else x[:, :1]
    return x[torch.arange(x.shape[0], device=x.device), index]


def _pad_token_id(base: nn.Module) -> int | None:
    config = base.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "pad_token_id", None)


def hidden_size_of(base: nn.Module) -> int:
    """The hidden size of the (text) config of transformers model ``base``."""
    config = base.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


def _install_hooks(base: nn.Module, hooked: nn.Module, head: AdUEHead) -> _Runtime:
    runtime = _Runtime()
    signature = inspect.signature(base.forward)
    pad_token_id = _pad_token_id(base)

    def reset(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        runtime.head_io = None

    def remember(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        runtime.head_io = (args[0], output)

    def add_uncertainty(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if runtime.head_io is None:  # the classification head did not run (e.g. a backbone-only call)
            return output
        x, y = runtime.head_io
        runtime.head_io = None
        inputs = signature.bind_partial(*args, **kwargs).arguments
        index = 0
        if head.kind != "encoder":
            index = pooling_index(
                head.kind,
                x.shape[1],
                input_ids=inputs.get("input_ids"),
                attention_mask=inputs.get("attention_mask"),
                pad_token_id=pad_token_id,
            )
        features = _pool(head.kind, x, index)
        class_logits = y if head.kind == "encoder" else _pool(head.kind, y, index)
        if head.verbaliser_token_ids is not None:
            class_logits = class_logits[:, head.verbaliser_token_ids]
        runtime.features, runtime.class_logits = features, class_logits
        uncertainty = head(features)
        if isinstance(output, tuple):
            return (*output, uncertainty)
        output["uncertainty"] = uncertainty
        return output

    runtime.handles = [
        base.register_forward_pre_hook(reset, with_kwargs=True),
        hooked.register_forward_hook(remember),
        base.register_forward_hook(add_uncertainty, with_kwargs=True),
    ]
    return runtime


def _runtime(model: nn.Module) -> _Runtime:
    runtime = getattr(transformers_model(model), _RUNTIME_ATTRIBUTE, None)
    if runtime is None:
        raise ValueError("model has no AdUE head; call hf_calib.adue.attach_adue_head(model) first.")
    return runtime


def last_forward(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, class_logits)`` pooled in the last forward pass of a model with an AdUE head."""
    runtime = _runtime(model)
    if runtime.features is None or runtime.class_logits is None:
        raise ValueError("the model has not run a forward pass since the AdUE head was attached.")
    return runtime.features, runtime.class_logits


def attach_adue_head(
    model: nn.Module,
    *,
    verbaliser_token_ids: Sequence[int] | None = None,
    smoothmax_lambda: float = 100.0,
    freeze: bool = True,
) -> nn.Module:
    """Attach an AdUE uncertainty head to ``model`` and return ``model``; its outputs gain ``uncertainty`` [B].

    Args:
        model: a transformers ``*ForSequenceClassification`` model (``classifier`` or ``score`` head) or a
            causal LM used as a classifier, bare or inside a PEFT model (LoRA; the head in ``modules_to_save``).
        verbaliser_token_ids: for a causal LM, the label tokens' ids in label order; the head is then a Linear
            built from those rows of the output embeddings.
        smoothmax_lambda: lambda of SmoothMax in U.
        freeze: freeze every parameter of ``model`` except the new head's (backbone, adapter, classifier).

    Under PEFT, ``model.save_pretrained(folder)`` afterwards also writes the head (``save_adue_head``).
    """
    base = transformers_model(model)
    if getattr(base, _RUNTIME_ATTRIBUTE, None) is not None:
        raise ValueError("model already has an AdUE head; call detach_adue_head(model) before attaching another.")
    name, hooked, kind = _locate_head(base, verbaliser_token_ids)
    classifier = _active(hooked)
    _reject_adapted(classifier, name)
    if kind == "verbaliser":
        head = AdUEHead.from_output_embeddings(
            classifier,
            verbaliser_token_ids,  # type: ignore[arg-type]
            kind=kind,
            hidden_size=hidden_size_of(base),
            smoothmax_lambda=smoothmax_lambda,
        )
    else:
        head = AdUEHead.from_classifier(
            classifier,
            kind=kind,
            num_labels=int(base.config.num_labels),
            hidden_size=hidden_size_of(base),
            smoothmax_lambda=smoothmax_lambda,
        )
    if freeze:
        model.requires_grad_(False)
    head.requires_grad_(True)
    head.train(base.training)
    base.add_module(ADUE_ATTRIBUTE, head)
    runtime = _install_hooks(base, hooked, head)
    setattr(base, _RUNTIME_ATTRIBUTE, runtime)
    if hasattr(model, "peft_config") and model is not base:
        _patch_save_pretrained(model, runtime)
    return model


def detach_adue_head(model: nn.Module) -> nn.Module:
    """Remove the AdUE head, its hooks and the ``save_pretrained`` extension; parameters stay frozen."""
    base = transformers_model(model)
    runtime = _runtime(model)
    for handle in runtime.handles:
        handle.remove()
    if runtime.patched_save is not None and "save_pretrained" in vars(model):
        del model.save_pretrained
    delattr(base, ADUE_ATTRIBUTE)
    delattr(base, _RUNTIME_ATTRIBUTE)
    return model


def _patch_save_pretrained(model: nn.Module, runtime: _Runtime) -> None:
    """Make this PEFT model's ``save_pretrained`` also write the AdUE head next to the adapter.

    PEFT saves only adapter and ``modules_to_save`` weights, so without this the head would be silently dropped.
    """
    original = model.save_pretrained

    def save_pretrained(save_directory: str, *args: Any, **kwargs: Any) -> Any:
        result = original(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            if _head_saver is None:  # only if hf_calib.adue.io was never imported: import hf_calib.adue
                raise RuntimeError("no AdUE head saver is registered; import hf_calib.adue before saving.")
            _head_saver(model, save_directory)
        return result

    save_pretrained.__doc__ = original.__doc__
    model.save_pretrained = save_pretrained
    runtime.patched_save = save_pretrained
