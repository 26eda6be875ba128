"""hf_calib: calibrated fine-tuning for Hugging Face models.

Every name of ``__all__`` is imported from its submodule on first use (PEP 562), so ``import hf_calib``
(and the ``hf-calib`` command's ``--help``) does not import torch, transformers or peft.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Defined in ``_version`` (submodules import it from there, never from this package root).
from ._version import __version__ as __version__

#: Submodule (relative to this package) of each public name.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "AdUEConfig",
            "AdUEFeatures",
            "AdUEHead",
            "AdUETrainer",
            "attach_adue_head",
            "evaluate_uncertainty",
            "extract_adue_features",
            "fit_adue_head",
            "load_adue_head",
            "save_adue_head",
        ),
        ".adue",
    ),
    **dict.fromkeys(
        (
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
        ),
        ".assets",
    ),
    "ReliabilityDiagramCallback": ".callbacks",
    **dict.fromkeys(
        ("TaskTemplate", "fticl_dataset", "task_dataset", "tokenize_chat_completion", "tokenize_prompt_completion"),
        ".data",
    ),
    **dict.fromkeys(
        ("GenerationEvalCallback", "GenerationTask", "LLMJudge", "MultipleChoiceCalibration", "evaluate_domains"),
        ".eval",
    ),
    "MultipleChoiceCalibrationCallback": ".eval.callback",
    **dict.fromkeys(("CalibratedAdapter", "CalibratedAdapterCallback", "CalibrationReport", "CardInfo"), ".hub"),
    **dict.fromkeys(("fused_linear_label_smoothing_ce", "label_smoothing_ce"), ".losses"),
    **dict.fromkeys(
        (
            "TemperatureLogitsProcessor",
            "TemperatureScaledLM",
            "TemperatureScaler",
            "Thermometer",
            "ThermometerConfig",
            "ThermometerTask",
            "extract_features",
            "leave_one_task_out",
            "train_thermometer",
        ),
        ".scaling",
    ),
    **dict.fromkeys(
        ("TokenCalibrationConfig", "TokenCalibrationMetrics", "token_calibration_metrics"), ".token_calibration"
    ),
    # CalibratedSFTTrainer needs TRL, an optional dependency: it is imported only when asked for.
    "CalibratedSFTTrainer": "._sft_trainer",
    **dict.fromkeys(("CalibratedLossMixin", "CalibratedTrainer", "FusedLossFallbackWarning"), ".trainer"),
}

#: Subpackages the eager ``__init__`` used to import: ``hf_calib.scaling`` etc. keep working after ``import hf_calib``.
_SUBMODULES = frozenset("adue assets callbacks data eval hub losses metrics scaling token_calibration trainer".split())

__all__ = [
    "GenerationEvalCallback",
    "GenerationTask",
    "LLMJudge",
    "TaskTemplate",
    "evaluate_domains",
    "fticl_dataset",
    "task_dataset",
    "tokenize_chat_completion",
    "tokenize_prompt_completion",
    "AdUEConfig",
    "AdUEFeatures",
    "AdUEHead",
    "AdUETrainer",
    "CalibratedAdapter",
    "CalibratedAdapterCallback",
    "CalibrationReport",
    "CardInfo",
    "TemperatureLogitsProcessor",
    "TemperatureScaledLM",
    "TemperatureScaler",
    "Thermometer",
    "ThermometerConfig",
    "ThermometerTask",
    "attach_adue_head",
    "evaluate_uncertainty",
    "extract_adue_features",
    "extract_features",
    "fit_adue_head",
    "leave_one_task_out",
    "load_adue_head",
    "save_adue_head",
    "train_thermometer",
    "AssetNotFoundError",
    "CalibratedLossMixin",
    "CalibratedSFTTrainer",
    "CalibratedTrainer",
    "FusedLossFallbackWarning",
    "MultipleChoiceCalibration",
    "MultipleChoiceCalibrationCallback",
    "ReliabilityDiagramCallback",
    "TokenCalibrationConfig",
    "TokenCalibrationMetrics",
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
    "token_calibration_metrics",
    "fused_linear_label_smoothing_ce",
    "label_smoothing_ce",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # static analysers and IDEs see the names eagerly
    from ._sft_trainer import CalibratedSFTTrainer
    from .adue import (
        AdUEConfig,
        AdUEFeatures,
        AdUEHead,
        AdUETrainer,
        attach_adue_head,
        evaluate_uncertainty,
        extract_adue_features,
        fit_adue_head,
        load_adue_head,
        save_adue_head,
    )
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
    from .callbacks import ReliabilityDiagramCallback
    from .data import TaskTemplate, fticl_dataset, task_dataset, tokenize_chat_completion, tokenize_prompt_completion
    from .eval import GenerationEvalCallback, GenerationTask, LLMJudge, MultipleChoiceCalibration, evaluate_domains
    from .eval.callback import MultipleChoiceCalibrationCallback
    from .hub import CalibratedAdapter, CalibratedAdapterCallback, CalibrationReport, CardInfo
    from .losses import fused_linear_label_smoothing_ce, label_smoothing_ce
    from .scaling import (
        TemperatureLogitsProcessor,
        TemperatureScaledLM,
        TemperatureScaler,
        Thermometer,
        ThermometerConfig,
        ThermometerTask,
        extract_features,
        leave_one_task_out,
        train_thermometer,
    )
    from .token_calibration import TokenCalibrationConfig, TokenCalibrationMetrics, token_calibration_metrics
    from .trainer import CalibratedLossMixin, CalibratedTrainer, FusedLossFallbackWarning
