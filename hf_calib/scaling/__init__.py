"""Post-hoc calibration: temperature scaling and Thermometer (specification and guide: ``docs/scaling.md``).

Temperature scaling follows Guo et al. (ICML 2017), Thermometer Shen et al. (ICML 2024) and its official code;
where hf_calib departs from them is listed in ``docs/scaling.md`` ("Conventions (differences from the official
code)", "Free-form answers", "Leave-one-task-out evaluation").

* :class:`TemperatureScaler` — one temperature fitted on labelled logits (NLL, LBFGS on ``log T``).
* :class:`Thermometer` + :class:`ThermometerConfig` — predicts a new task's temperature from the LLM's
  features of its *unlabelled* prompts; trained by :func:`train_thermometer` on labelled tasks.
* :func:`extract_features` — last-layer hidden state at the last prompt token, cached as safetensors.
* :func:`leave_one_task_out` — Thermometer vs no calibration, pooled and oracle temperature scaling.
* :class:`TemperatureScaledLM`, :class:`TemperatureLogitsProcessor` — use a temperature at inference.
"""

from .features import extract_features, extract_features_and_logits, model_cache_key
from .inference import (
    TemperatureLogitsProcessor,
    TemperatureScaledLM,
    generate_answers,
    rouge_l_correct,
    score_yes_no,
    thermometer_temperature,
    verification_prompt,
)
from .loo import LeaveOneOutResult, calibration_report, leave_one_task_out
from .temperature import TemperatureAtBoundWarning, TemperatureScaler, fit_temperature
from .thermometer import Thermometer, ThermometerConfig, gamma_prior_nll, thermometer_loss
from .training import ThermometerTask, TrainingHistory, train_thermometer

__all__ = [
    "LeaveOneOutResult",
    "TemperatureLogitsProcessor",
    "TemperatureScaledLM",
    "TemperatureAtBoundWarning",
    "TemperatureScaler",
    "Thermometer",
    "ThermometerConfig",
    "ThermometerTask",
    "TrainingHistory",
    "calibration_report",
    "extract_features",
    "extract_features_and_logits",
    "fit_temperature",
    "gamma_prior_nll",
    "generate_answers",
    "leave_one_task_out",
    "model_cache_key",
    "rouge_l_correct",
    "score_yes_no",
    "thermometer_loss",
    "thermometer_temperature",
    "train_thermometer",
    "verification_prompt",
]
