"""hf_calib: calibrated fine-tuning for Hugging Face models (39 names here; everything else in its subpackage).

Trainers and callbacks:

* ``CalibratedTrainer`` — Trainer with the fused label-smoothing loss and token calibration in every evaluation.
* ``CalibratedSFTTrainer`` — TRL's SFTTrainer with the same (needs the trl extra).
* ``CalibratedTrainingArguments`` — ``TrainingArguments`` with hf_calib's settings (YAML / CLI friendly).
* ``CalibratedSFTConfig`` — TRL's ``SFTConfig`` with the same settings (needs the trl extra).
* ``CalibratedLossMixin`` — the fused loss for any Trainer subclass.
* ``FusedLossFallbackWarning`` — warned when a model cannot take the fused loss.
* ``ReliabilityDiagramCallback`` — reliability diagrams at each evaluation (PNG; TensorBoard, MLflow, W&B).
* ``MultipleChoiceCalibrationCallback`` — multiple-choice calibration at each evaluation.
* ``GenerationEvalCallback`` — reference metrics and judge scores of generations at each evaluation.
* ``CalibratedAdapterCallback`` — Trainer's Hub pushes carry the calibrated bundle.

Token calibration:

* ``TokenCalibrationConfig`` — settings of CalibratedTrainer's token calibration.
* ``TokenCalibrationMetrics`` — token calibration for a plain Trainer's evaluation.
* ``token_calibration_metrics`` — ``(preprocess_logits_for_metrics, compute_metrics)`` for Trainer.

Loss:

* ``fused_linear_label_smoothing_ce`` — label-smoothing CE from hidden states and the output weight, chunked.
* ``label_smoothing_ce`` — label-smoothing CE from logits.

Metrics:

* ``CalibrationState`` — streaming, mergeable, distributed calibration metrics.
* ``calibration_error`` — ECE / MCE / RMS calibration error of confidences.
* ``brier_score`` — multiclass Brier score.
* ``nll`` — negative log-likelihood of the true class.
* ``misclassification_auroc`` — AUROC of an uncertainty for detecting wrong predictions.
* ``reliability_diagram`` — a matplotlib reliability diagram.

Calibrators:

* ``Calibrator`` — the interface every calibrator of a bundle implements.
* ``register_calibrator`` — register a Calibrator so bundles can save and load it.
* ``TemperatureScaler`` — temperature scaling fitted on labelled logits.
* ``Thermometer`` — a network predicting a task's temperature without labels.
* ``ThermometerConfig`` — Thermometer's architecture and training settings.
* ``train_thermometer`` — train a Thermometer on several labelled tasks.
* ``attach_adue_head`` — attach an AdUE uncertainty head to a (LoRA) classifier.
* ``fit_adue_head`` — train an AdUE head on frozen features.
* ``AdUETrainer`` — train an AdUE head with Trainer.

Hub:

* ``CalibratedAdapter`` — adapter + calibrators + report + card: save, load, push.
* ``CalibrationReport`` — metrics before and after calibration, with the diagram.
* ``CardInfo`` — what the model card says beyond what the bundle knows.

Evaluation and data:

* ``MultipleChoiceCalibration`` — answer-level calibration on multiple-choice benchmarks.
* ``GenerationTask`` — a generation task with references for evaluation.
* ``LLMJudge`` — LLM-as-judge scoring of instruction following.
* ``evaluate_domains`` — in-domain vs out-of-domain report of fine-tuned models.
* ``fticl_dataset`` — fine-tuning data with in-context examples (FTICL).
* ``tokenize_chat_completion`` — tokenize chats with completion-only labels.

Subpackages: ``hf_calib.metrics`` (all metrics), ``hf_calib.scaling``, ``hf_calib.adue``, ``hf_calib.hub``,
``hf_calib.eval``, ``hf_calib.data``, ``hf_calib.assets`` (the offline models and data), ``hf_calib.calibrators``.
Every name is imported from its submodule on first use (PEP 562), so ``import hf_calib`` (and the ``hf-calib``
command's ``--help``) does not import torch, transformers or peft.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Defined in ``_version`` (submodules import it from there, never from this package root).
from ._version import __version__ as __version__

#: Submodule (relative to this package) of each public name.
_EXPORTS: dict[str, str] = {
    "CalibratedTrainer": ".trainer",
    "CalibratedSFTTrainer": ".trainer",
    "CalibratedTrainingArguments": ".trainer",
    "CalibratedSFTConfig": ".trainer",
    "CalibratedLossMixin": ".trainer",
    "FusedLossFallbackWarning": ".trainer",
    "ReliabilityDiagramCallback": ".callbacks",
    "MultipleChoiceCalibrationCallback": ".callbacks",
    "GenerationEvalCallback": ".callbacks",
    "CalibratedAdapterCallback": ".callbacks",
    "TokenCalibrationConfig": ".loss",
    "TokenCalibrationMetrics": ".loss",
    "token_calibration_metrics": ".loss",
    "fused_linear_label_smoothing_ce": ".loss",
    "label_smoothing_ce": ".loss",
    "CalibrationState": ".metrics",
    "calibration_error": ".metrics",
    "brier_score": ".metrics",
    "nll": ".metrics",
    "misclassification_auroc": ".metrics",
    "reliability_diagram": ".metrics",
    "Calibrator": ".calibrators",
    "register_calibrator": ".calibrators",
    "TemperatureScaler": ".scaling",
    "Thermometer": ".scaling",
    "ThermometerConfig": ".scaling",
    "train_thermometer": ".scaling",
    "attach_adue_head": ".adue",
    "fit_adue_head": ".adue",
    "AdUETrainer": ".adue",
    "CalibratedAdapter": ".hub",
    "CalibrationReport": ".hub",
    "CardInfo": ".hub",
    "MultipleChoiceCalibration": ".eval",
    "GenerationTask": ".eval",
    "LLMJudge": ".eval",
    "evaluate_domains": ".eval",
    "fticl_dataset": ".data",
    "tokenize_chat_completion": ".data",
}

#: Subpackages reachable as attributes after ``import hf_calib``.
_SUBMODULES = frozenset("adue assets calibrators callbacks data eval hub loss metrics recipes scaling trainer".split())

__all__ = [
    "CalibratedTrainer",
    "CalibratedSFTTrainer",
    "CalibratedTrainingArguments",
    "CalibratedSFTConfig",
    "CalibratedLossMixin",
    "FusedLossFallbackWarning",
    "ReliabilityDiagramCallback",
    "MultipleChoiceCalibrationCallback",
    "GenerationEvalCallback",
    "CalibratedAdapterCallback",
    "TokenCalibrationConfig",
    "TokenCalibrationMetrics",
    "token_calibration_metrics",
    "fused_linear_label_smoothing_ce",
    "label_smoothing_ce",
    "CalibrationState",
    "calibration_error",
    "brier_score",
    "nll",
    "misclassification_auroc",
    "reliability_diagram",
    "Calibrator",
    "register_calibrator",
    "TemperatureScaler",
    "Thermometer",
    "ThermometerConfig",
    "train_thermometer",
    "attach_adue_head",
    "fit_adue_head",
    "AdUETrainer",
    "CalibratedAdapter",
    "CalibrationReport",
    "CardInfo",
    "MultipleChoiceCalibration",
    "GenerationTask",
    "LLMJudge",
    "evaluate_domains",
    "fticl_dataset",
    "tokenize_chat_completion",
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
    from .adue import AdUETrainer, attach_adue_head, fit_adue_head
    from .calibrators import Calibrator, register_calibrator
    from .callbacks import (
        CalibratedAdapterCallback,
        GenerationEvalCallback,
        MultipleChoiceCalibrationCallback,
        ReliabilityDiagramCallback,
    )
    from .data import fticl_dataset, tokenize_chat_completion
    from .eval import GenerationTask, LLMJudge, MultipleChoiceCalibration, evaluate_domains
    from .hub import CalibratedAdapter, CalibrationReport, CardInfo
    from .loss import (
        TokenCalibrationConfig,
        TokenCalibrationMetrics,
        fused_linear_label_smoothing_ce,
        label_smoothing_ce,
        token_calibration_metrics,
    )
    from .metrics import (
        CalibrationState,
        brier_score,
        calibration_error,
        misclassification_auroc,
        nll,
        reliability_diagram,
    )
    from .scaling import TemperatureScaler, Thermometer, ThermometerConfig, train_thermometer
    from .trainer import (
        CalibratedLossMixin,
        CalibratedSFTConfig,
        CalibratedSFTTrainer,
        CalibratedTrainer,
        CalibratedTrainingArguments,
        FusedLossFallbackWarning,
    )
