"""Helpers shared by the callbacks: the evaluation's metric key prefix, the trainer's tokenizer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def metric_key_prefix(metrics: dict[str, float], marker: str = "_runtime") -> str:
    """``eval`` (or ``eval_<dataset>``, ``test``): the ``metric_key_prefix`` of an evaluation, read off the
    shortest key of ``metrics`` that ends with ``marker`` (Trainer's ``{prefix}_runtime`` by default)."""
    found = [key[: -len(marker)] for key in metrics if key.endswith(marker) and len(key) > len(marker)]
    return min(found, key=len) if found else "eval"


def tokenizer_of(processing_class: Any) -> PreTrainedTokenizerBase | None:
    """The tokenizer inside a trainer's ``processing_class`` (itself, or a processor's ``.tokenizer``)."""
    from transformers import PreTrainedTokenizerBase

    if processing_class is None or isinstance(processing_class, PreTrainedTokenizerBase):
        return processing_class
    return getattr(processing_class, "tokenizer", None)
