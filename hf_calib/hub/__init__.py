"""Calibrated adapter bundles: save, load and push to the Hugging Face Hub (guide: ``docs/hub.md``).

* :class:`CalibratedAdapter` — a PEFT adapter with its temperature or Thermometer, AdUE head, label smoothing,
  calibration report and model card; ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.
* :class:`CalibrationReport` — metrics before and after calibration, and the reliability diagram.
* :class:`CardInfo`, :func:`build_model_card` — the model card (huggingface_hub ``ModelCard``).
* :func:`write_alongside_adapter` — the bundle's files next to an adapter Trainer saves (used by
  :class:`hf_calib.callbacks.CalibratedAdapterCallback`, which makes Trainer's pushes carry the whole bundle).
* :func:`push_folder` — upload exactly a saved bundle's files (allow-list; ``dry_run=True`` lists them).
* :class:`BundleError`, :class:`QuantizedModelWarning` — what loading raises and warns (``docs/hub.md``).
"""

from .._fingerprint import QuantizedModelWarning
from ._files import BundleError
from .alongside import write_alongside_adapter
from .bundle import CalibratedAdapter
from .card import CardInfo, build_model_card
from .push import push_folder
from .report import CalibrationReport

__all__ = [
    "BundleError",
    "CalibratedAdapter",
    "CalibrationReport",
    "CardInfo",
    "QuantizedModelWarning",
    "build_model_card",
    "push_folder",
    "write_alongside_adapter",
]
