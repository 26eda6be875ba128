"""Calibrated adapter bundles: save, load and push to the Hugging Face Hub (guide: ``docs/hub.md``).

* :class:`CalibratedAdapter` — a PEFT adapter with its temperature or Thermometer, AdUE head, label smoothing,
  calibration report and model card; ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.
* :class:`CalibrationReport` — metrics before and after calibration, and the reliability diagram.
* :class:`CardInfo`, :func:`build_model_card` — the model card (huggingface_hub ``ModelCard``).
* :class:`CalibratedAdapterCallback` — Trainer pushes carry the whole bundle (``CalibratedTrainer`` adds it).
* :func:`push_folder` — upload exactly a saved bundle's files (allow-list; ``dry_run=True`` lists them).
* :class:`BundleError`, :class:`QuantizedModelWarning` — what loading raises and warns (``docs/hub.md``).
"""

from .._fingerprint import QuantizedModelWarning
from ._files import BundleError
from .bundle import CalibratedAdapter
from .callback import CalibratedAdapterCallback
from .card import CardInfo, build_model_card
from .push import push_folder
from .report import CalibrationReport

__all__ = [
    "BundleError",
    "CalibratedAdapter",
    "CalibratedAdapterCallback",
    "CalibrationReport",
    "CardInfo",
    "QuantizedModelWarning",
    "build_model_card",
    "push_folder",
]
