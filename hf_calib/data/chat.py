"""Prompt formatting and completion-only label masking for chat data."""

from __future__ import annotations

from collections.abc import Sequence

IGNORE_INDEX = -100


def tokenize_chat_completion(
    messages: Sequence[dict[str, str]], tokenizer, max_length: int | None = None
) -> dict[str, list[int]]:
    """Tokenize a chat with the tokenizer's chat template; only the last message is supervised.

    ``messages`` is ``[..., {"role": "assistant", "content": ...}]``. The prompt (every message
    before the last, plus the template's generation prompt) gets label ``-100``; the final
    assistant message and the template's closing tokens keep their ids. The sequence is cut to
    ``max_length`` tokens, so a long prompt may leave no supervised token (callers filter those).

    Returns ``{"input_ids", "attention_mask", "labels"}`` lists of equal length.
    """
    if len(messages) < 2 or messages[-1].get("role") != "assistant":
        raise ValueError("messages must hold at least a prompt and end with an assistant message to supervise.")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens or None; got {max_length}.")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; set tokenizer.chat_template or format prompts yourself.")
    prompt = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(list(messages), tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently inside the full chat; cannot mask it.")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
    n_prompt = min(len(prompt_ids), len(full_ids))
    return {
        "input_ids": full_ids,
        "attention_mask": [1] * len(full_ids),
        "labels": [IGNORE_INDEX] * n_prompt + full_ids[n_prompt:],
    }
