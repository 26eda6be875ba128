"""hf_calib: calibrated fine-tuning for Hugging Face models."""

from .assets import (
    AssetNotFoundError,
    gemma3_270m_path,
    load_mmlu,
    load_movie_reviews,
    load_sharegpt,
    load_sharegpt_turns,
    load_smollm2,
    minilm_path,
    mmlu_subjects,
    sharegpt_to_messages,
    smollm2_path,
)
from .losses import fused_linear_label_smoothing_ce, label_smoothing_ce

__version__ = "0.1.0"

__all__ = [
    "AssetNotFoundError",
    "gemma3_270m_path",
    "load_mmlu",
    "load_movie_reviews",
    "load_sharegpt",
    "load_sharegpt_turns",
    "load_smollm2",
    "minilm_path",
    "mmlu_subjects",
    "sharegpt_to_messages",
    "smollm2_path",
    "fused_linear_label_smoothing_ce",
    "label_smoothing_ce",
]
