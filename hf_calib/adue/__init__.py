"""AdUE uncertainty heads for frozen (LoRA) classifiers.

Zabolotnyi et al. (2025): a trainable copy of the classification head, read through a SmoothMax of its
softmax, learns to predict where the frozen classifier errs. The classifier's predictions never change.

- ``attach_adue_head`` / ``detach_adue_head`` / ``get_adue_head`` — ``hf_calib.adue.attach``
- ``AdUEHead``, ``adue_uncertainty``, ``smoothmax`` — ``hf_calib.adue.head``
- ``extract_adue_features``, ``AdUEFeatures`` — ``hf_calib.adue.features`` (cache once, train in seconds)
- ``adue_loss`` — ``hf_calib.adue.loss``; ``fit_adue_head``, ``AdUEConfig`` — ``hf_calib.adue.train``
- ``AdUETrainer``, ``AdUETrainingArguments`` — ``hf_calib.adue.trainer`` (live forward passes, no cache)
- ``evaluate_uncertainty`` and the baselines — ``hf_calib.adue.baselines``
- ``save_adue_head`` / ``load_adue_head`` — ``hf_calib.adue.io``

Walkthrough and measured results: ``docs/adue.md``.
"""

from .attach import attach_adue_head, detach_adue_head, get_adue_head
from .baselines import MahalanobisDistance, evaluate_uncertainty, predictive_entropy, softmax_response
from .features import AdUEFeatures, extract_adue_features
from .head import AdUEHead, adue_uncertainty, normalized_softmax_response, smoothmax
from .io import load_adue_head, save_adue_head
from .loss import adue_loss, l2_sp
from .train import AdUEConfig, AdUEFitResult, AdUERun, fit_adue_head, predict_uncertainty
from .trainer import AdUETrainer, AdUETrainingArguments, adue_compute_metrics

__all__ = [
    "AdUEConfig",
    "AdUEFeatures",
    "AdUEFitResult",
    "AdUEHead",
    "AdUERun",
    "AdUETrainer",
    "AdUETrainingArguments",
    "MahalanobisDistance",
    "adue_compute_metrics",
    "adue_loss",
    "adue_uncertainty",
    "attach_adue_head",
    "detach_adue_head",
    "evaluate_uncertainty",
    "extract_adue_features",
    "fit_adue_head",
    "get_adue_head",
    "l2_sp",
    "load_adue_head",
    "normalized_softmax_response",
    "predict_uncertainty",
    "predictive_entropy",
    "save_adue_head",
    "smoothmax",
    "softmax_response",
]
