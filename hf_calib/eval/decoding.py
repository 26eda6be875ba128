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

from .._model_utils import eval_mode, greedy_generate, input_device, pad_token_id, unwrap_parallel

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["generate_from_ids"]


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
    model = unwrap_parallel(model, until="generate")  # DDP / DataParallel hide generate() behind .module
    pad_id = pad_token_id(tokenizer, strict=True)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    device = input_device(model)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    with eval_mode(model):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not show_progress):
            batch = order[start : start + batch_size]
            new_tokens = greedy_generate(
                model,
                [prompts[i] for i in batch],
                pad_id=pad_id,
                max_new_tokens=max_new_tokens,
                device=device,
                eos_token_id=eos,
            )
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for row, i in enumerate(batch):
                out[i] = texts[row].strip()
    return out
