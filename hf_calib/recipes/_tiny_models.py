"""Random tiny models over a real tokenizer, for the demo's smoke-test plan (``hf-calib demo --tiny``)."""

from __future__ import annotations

from typing import Any

import torch


def tiny_causal_lm(tokenizer: Any) -> torch.nn.Module:
    """A 2-layer, 32-wide random Llama over ``tokenizer``'s vocabulary (smoke tests of the demo)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def tiny_encoder(vocab_size: int) -> torch.nn.Module:
    """A 2-layer, 32-wide random BERT classifier with 2 labels (smoke tests of the demo)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=2,
    )
    return BertForSequenceClassification(config)
