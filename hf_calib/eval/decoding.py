"""Batched greedy decoding of token-id prompts: what generation metrics and the LLM judge both run.

:func:`generate_from_ids` left-pads a batch of prompts (so every prompt ends at the same position and new
tokens are appended right after it), generates at most ``max_new_tokens`` greedily and decodes only the new
tokens. It lives apart from :mod:`hf_calib.eval.generation` so that :mod:`hf_calib.eval.judge` can use it
without importing the generation callback (which refers to the judge).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from .scoring import eval_mode, input_device

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["generate_from_ids"]


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP / DataParallel hide generate() behind .module.
    while hasattr(model, "module") and not hasattr(model, "generate"):
        model = model.module
    return model


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    raise ValueError("the tokenizer has neither a pad_token nor an eos_token; set tokenizer.pad_token.")


@torch.no_grad()
def generate_from_ids(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    show_progress: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Greedy continuations of token-id prompts, decoded without special tokens, in the input order.

    Prompts are sorted by length (little padding) and left-padded: row ``i`` of a batch of width ``L`` holds
    ``[pad] * (L - len_i) + prompt_i`` with attention mask 0 on the pads. Generation stops at the model's
    (or tokenizer's) EOS or after ``max_new_tokens`` tokens. The model's train/eval flags are restored.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive number of tokens; got {max_new_tokens}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}.")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token.")
    model = _unwrap(model)
    pad_id = _pad_id(tokenizer)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    device = input_device(model)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    with eval_mode(model):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not show_progress):
            batch = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(prompts[i]) :] = torch.tensor(list(prompts[i]), dtype=torch.long)
                mask[row, width - len(prompts[i]) :] = 1
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=eos,
            )
            texts = tokenizer.batch_decode(generated[:, width:].cpu(), skip_special_tokens=True)
            for row, i in enumerate(batch):
                out[i] = texts[row].strip()
    return out
