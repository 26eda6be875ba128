"""Prompt + completion tokenization with completion-only labels, with or without a chat template.

Two renderings of one (prompt, completion) pair:

- **chat** (the tokenizer has a chat template): the prompt is the user message, the completion the
  assistant message; everything up to and including the template's generation prompt is masked.
- **plain**: ``[special prefix] + ids(prompt) + ids(completion) [+ eos]``; prompt and completion are
  tokenized separately, so the completion's first token is the same token an evaluator scores right
  after the prompt (:func:`encode_prompt` gives those prompt ids).

Masked positions get the label :data:`IGNORE_INDEX` (``-100``), which every transformers loss skips.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._model_utils import IGNORE_INDEX as IGNORE_INDEX  # re-exported: hf_calib.data.IGNORE_INDEX

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


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


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, use_chat_template: bool | None = None) -> bool:
    """Whether to render with the chat template: ``None`` means "if the tokenizer has one".

    Raises:
        ValueError: ``use_chat_template=True`` but the tokenizer has no chat template.
    """
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if use_chat_template is None:
        return has_template
    if use_chat_template and not has_template:
        raise ValueError("use_chat_template=True but the tokenizer has no chat template; pass use_chat_template=False.")
    return bool(use_chat_template)


def _special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    # Imported here: hf_calib.eval imports this package, and the helper lives with the other prompt code.
    from hf_calib.eval.prompts import special_prefix_ids

    return special_prefix_ids(tokenizer)


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat: bool) -> str:
    """The text a model continues: the chat-rendered user turn plus generation prompt, or ``prompt`` itself.

    In chat mode the prompt is stripped of surrounding whitespace (it is a whole user message).
    """
    if not chat:
        return prompt
    messages = [{"role": "user", "content": prompt.strip()}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat: bool) -> list[int]:
    """Token ids of the prompt exactly as they start a training sequence of :func:`tokenize_prompt_completion`.

    Chat: ``ids(render_prompt(...))`` (the template writes its own special tokens). Plain: the tokenizer's
    special prefix (e.g. ``[bos]``, never a trailing ``eos``) followed by ``ids(prompt)``.
    """
    if chat:
        return list(tokenizer(render_prompt(tokenizer, prompt, chat=True), add_special_tokens=False)["input_ids"])
    return _special_prefix(tokenizer) + list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def tokenize_prompt_completion(
    prompt: str,
    completion: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    chat: bool,
    max_length: int | None = None,
    add_eos: bool = True,
) -> dict[str, list[int]]:
    """Tokenize ``prompt + completion`` with labels on the completion only.

    Chat: :func:`tokenize_chat_completion` of ``[user: prompt.strip(), assistant: completion.strip()]``
    (the assistant turn starts on its own line, so surrounding spaces are dropped; the template closes the
    turn itself, so ``add_eos`` does not apply). Plain:
    ``encode_prompt(prompt) + ids(completion)`` plus ``eos`` when ``add_eos`` (so that generation learns
    to stop). Labels: ``-100`` on the ``P`` prompt positions, the token id elsewhere; the sequence is cut
    to ``max_length`` tokens, which may leave no supervised token.

    Returns ``{"input_ids", "attention_mask", "labels"}`` lists of equal length.
    """
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens or None; got {max_length}.")
    if not completion.strip():
        raise ValueError("completion is empty; every training example needs a target to supervise.")
    if chat:
        messages = [{"role": "user", "content": prompt.strip()}, {"role": "assistant", "content": completion.strip()}]
        return tokenize_chat_completion(messages, tokenizer, max_length)
    prompt_ids = encode_prompt(tokenizer, prompt, chat=False)
    target = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("add_eos=True but the tokenizer has no eos_token; set one or pass add_eos=False.")
        target.append(tokenizer.eos_token_id)
    ids = (prompt_ids + target)[:max_length]
    n_prompt = min(len(prompt_ids), len(ids))
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:],
    }
