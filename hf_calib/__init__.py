"""hf_calib: calibrated fine-tuning for Hugging Face models."""

# Defined before the imports: submodules record it in the files they save.
__version__ = "0.1.0"

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


def __getattr__(name: str):
    # TRL is optional: CalibratedSFTTrainer imports it only when asked for.
    if name == "CalibratedSFTTrainer":
        from .trainer import CalibratedSFTTrainer

        return CalibratedSFTTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
