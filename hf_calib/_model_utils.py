"""Model and tokenizer helpers shared across hf_calib: wrappers, eval mode, devices, padding, greedy decoding.

Torch is imported inside the functions that need it, so torch-free modules (e.g. :mod:`hf_calib._fingerprint`)
can import this one without loading torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IGNORE_INDEX",
    "base_model",
    "eval_mode",
    "greedy_generate",
    "input_device",
    "left_pad",
    "pad_token_id",
    "unwrap_ddp",
    "unwrap_parallel",
]

#: The label of positions no loss is computed on (what every transformers loss skips).
IGNORE_INDEX = -100


def is_peft(model: Any) -> bool:
    """Whether ``model`` is a PEFT model (has adapters and a base model)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def base_model(model: Any) -> Any:
    """The wrapped transformers model of a PEFT model (``model.get_base_model()``), else ``model`` itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def unwrap_parallel(model: nn.Module, *, until: str = "config") -> nn.Module:
    """Peel DDP / DataParallel-style ``.module`` wrappers off ``model`` until one has the attribute ``until``."""
    from torch import nn

    while hasattr(model, "module") and isinstance(model.module, nn.Module) and not hasattr(model, until):
        model = model.module
    return model


def unwrap_ddp(model: nn.Module) -> nn.Module:
    """The local replica inside a ``DataParallel`` / ``DistributedDataParallel`` wrapper, else ``model``."""
    from torch import nn

    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        return model.module
    return model


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode, then restore every submodule's own ``training`` flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def input_device(model: nn.Module) -> torch.device:
    """Where the input ids must go: the device of the input embeddings (also right under ``device_map``)."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def pad_token_id(tokenizer: PreTrainedTokenizerBase, *, strict: bool = False) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (or a ``ValueError`` when ``strict``)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    if strict:
        raise ValueError("the tokenizer has neither a pad_token nor an eos_token; set tokenizer.pad_token.")
    return 0


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` [B, L] of left-padded token-id sequences (mask 0 on the pads), on the CPU."""
    import torch

    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, length - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, length - len(seq) :] = 1
    return ids, mask


def greedy_generate(
    model: nn.Module,
    seqs: Sequence[Sequence[int]],
    *,
    pad_id: int,
    max_new_tokens: int,
    device: torch.device,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """The new token ids [B, n] (CPU) of greedy ``model.generate`` on the left-padded ``seqs``."""
    ids, mask = left_pad(seqs, pad_id)
    generated = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
        **generate_kwargs,
    )
    return generated[:, ids.shape[1] :].cpu()


def last_attended(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Rows of ``hidden`` [B, T, d] at each sequence's last position with ``attention_mask`` 1 (else -1)."""
    import torch

    if attention_mask is None or attention_mask.shape[-1] != hidden.shape[1]:
        return hidden[:, -1]
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    index = (positions * (attention_mask.to(hidden.device) != 0)).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
