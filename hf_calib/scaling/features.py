"""Thermometer's input features: the last layer's hidden state at the last prompt token, cached on disk.

For prompt ``i`` with tokens ``x_1..x_L`` the feature is ``h_i = H^{(last)}_L`` in R^d, the final
(normed) hidden state at the prompt's last token (``"Answer:"`` in the multiple-choice prompts),
exactly what Thermometer's official code feeds its network (Shen et al., ICML 2024; ``docs/scaling.md``,
section "Thermometer"). Prompts are left-padded so that position -1 of every row is a real token; position
ids count real tokens only (``cumsum(attention_mask) - 1``), so a padded row gives the same features as the
prompt alone.

A feature matrix costs one forward per prompt, so :func:`extract_features` can store it in
``cache_dir/{model_cache_key(model)}/{cache_key}.safetensors``. The file also records a digest of the
prompts' token ids: a cache written for other prompts is recomputed (with a warning), never reused.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .._fingerprint import model_fingerprint
from .._model_utils import base_model, eval_mode, input_device, left_pad, pad_token_id
from .._safe_files import write_atomic
from ..eval.prompts import special_prefix_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_SAFE_KEY = re.compile(r"[A-Za-z0-9_.\-]+")


def model_cache_key(model: nn.Module) -> str:
    """A short name for ``model``'s weights: ``{name}-{digest}``.

    The digest covers the config fingerprint and, per parameter, its name, shape, dtype, sum and sum of
    squares (float64), so a fine-tuned copy or another LoRA adapter on the same base model gets another
    key, while costing one pass over the weights (no hashing of gigabytes of bytes).
    """
    fingerprint = model_fingerprint(model)
    summary: list[Any] = [{k: v for k, v in fingerprint.items() if k != "name_or_path"}]
    with torch.no_grad():
        for name, param in model.named_parameters():
            values = param.detach().to(torch.float64)
            summary.append(
                [name, list(param.shape), str(param.dtype), float(values.sum()), float(values.square().sum())]
            )
    digest = hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:16]
    name = Path(str(fingerprint.get("name_or_path") or fingerprint.get("model_type") or "model")).name
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name) or 'model'}-{digest}"


def _ids_digest(prompts: Sequence[Sequence[int]]) -> str:
    hasher = hashlib.sha256()
    for ids in prompts:
        hasher.update(json.dumps(list(ids)).encode())
        hasher.update(b"\n")
    return hasher.hexdigest()


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str] | Sequence[Sequence[int]]
) -> list[list[int]]:
    """Token ids of the prompts: text gets the tokenizer's leading special tokens (e.g. BOS) but no EOS.

    This matches :class:`hf_calib.eval.MultipleChoiceCalibration`, so features and option scores see the
    same tokens. Lists of ints are taken as already-encoded prompts.
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of strings or of token-id lists.")
    if all(isinstance(p, str) for p in prompts):
        prefix = special_prefix_ids(tokenizer)
        encoded = [prefix + list(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    elif all(isinstance(p, Sequence) and not isinstance(p, str) for p in prompts):
        encoded = [[int(t) for t in p] for p in prompts]
    else:
        raise ValueError("prompts must be all strings or all token-id lists, not a mix.")
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompts[{empty[0]}] encodes to no token; every prompt needs at least one token.")
    return encoded


def _last_position_outputs(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    pad_id: int,
    batch_size: int,
    show_progress: bool,
    token_ids: Sequence[int] | None,
) -> dict[str, torch.Tensor]:
    params = inspect.signature(base_model(model).forward).parameters
    device = input_device(model)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # little padding per batch
    out: dict[str, torch.Tensor] = {}
    columns = None if token_ids is None else torch.tensor(list(token_ids), dtype=torch.long, device=device)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.no_grad(), eval_mode(model):
        for batch in tqdm(batches, desc="Thermometer features", disable=not show_progress):
            ids, mask = left_pad([prompts[i] for i in batch], pad_id)
            kwargs: dict[str, Any] = {
                "input_ids": ids.to(device),
                "attention_mask": mask.to(device),
                "output_hidden_states": True,
                "use_cache": False,
            }
            if "position_ids" in params:
                kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
            if "logits_to_keep" in params:
                kwargs["logits_to_keep"] = 1  # the LM head is not needed beyond one position
            outputs = model(**kwargs)
            values = {"features": outputs.hidden_states[-1][:, -1]}
            if columns is not None:
                values["logits"] = outputs.logits[:, -1].index_select(-1, columns)
            for key, value in values.items():
                if key not in out:
                    out[key] = torch.empty((len(prompts), value.shape[-1]), dtype=torch.float32)
                out[key][batch] = value.float().cpu()
    return out


def cached_tensors(
    path: str | os.PathLike[str], digest: str, compute: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Load ``path`` (safetensors) when its ``digest`` metadata matches, else ``compute()`` and store it.

    The file is written under a temporary name and renamed, so an interrupted run never leaves a
    truncated cache behind.
    """
    path = Path(path)
    if path.is_file():
        with safe_open(str(path), framework="pt") as handle:
            saved = (handle.metadata() or {}).get("digest")
        if saved == digest:
            return load_file(str(path))
        warnings.warn(f"{path} was computed for other inputs; recomputing it.", stacklevel=3)
    tensors = {k: v.contiguous() for k, v in compute().items()}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"digest": digest}))
    return tensors


def extract_features_and_logits(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    token_ids: Sequence[int] | None,
    *,
    batch_size: int = 8,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_key: str | None = None,
    show_progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Features [N, d] and, from the same forward, the next-token logits of ``token_ids`` [N, K].

    Thermometer's official code reads both at the prompt's last position: the option letters' logits
    are the answer logits to calibrate. Returns ``{"features": ..., "logits": ...}`` (no ``"logits"``
    when ``token_ids`` is None), float32 on the CPU. Arguments as in :func:`extract_features`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    if (cache_dir is None) != (cache_key is None):
        raise ValueError("cache_dir and cache_key go together: pass both to cache the features, or neither.")
    if cache_key is not None and not (isinstance(cache_key, str) and _SAFE_KEY.fullmatch(cache_key)):
        raise ValueError(f"cache_key must use only letters, digits, '_', '.', '-'; got {cache_key!r}.")
    if token_ids is not None:
        token_ids = [int(t) for t in token_ids]
        if not token_ids:
            raise ValueError("token_ids must be None or a non-empty list of token ids.")
    encoded = encode_prompts(tokenizer, prompts)
    pad_id = pad_token_id(tokenizer)

    def compute() -> dict[str, torch.Tensor]:
        return _last_position_outputs(
            model, encoded, pad_id=pad_id, batch_size=batch_size, show_progress=show_progress, token_ids=token_ids
        )

    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / model_cache_key(model) / f"{cache_key}.safetensors"
    return cached_tensors(path, _ids_digest([*encoded, token_ids or []]), compute)


def extract_features(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_key: str | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """Last-layer hidden state at each prompt's last token, float32 [N, d] on the CPU.

    Works with any transformers causal LM (plain or PEFT-wrapped) that returns ``hidden_states``. The
    model runs in eval mode under ``torch.no_grad()`` (its train/eval flags are restored afterwards).

    Args:
        model: the frozen LM whose confidence is calibrated.
        tokenizer: its tokenizer (used for text prompts and for the pad id).
        prompts: N prompt strings (usually ending with ``"\\nAnswer:"``) or N token-id lists.
        batch_size: prompts per forward pass.
        cache_dir: if given with ``cache_key``, the features are stored in
            ``cache_dir/{model_cache_key(model)}/{cache_key}.safetensors`` and reused on the next call
            with the same model weights and prompts.
        cache_key: the task's name in the cache, e.g. ``"mmlu-letter-anatomy"`` (letters, digits, ``_.-``).
        show_progress: show a tqdm progress bar.
    """
    out = extract_features_and_logits(
        model,
        tokenizer,
        prompts,
        None,
        batch_size=batch_size,
        cache_dir=cache_dir,
        cache_key=cache_key,
        show_progress=show_progress,
    )
    return out["features"]
