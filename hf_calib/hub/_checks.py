"""Checks a bundle makes before it is loaded or saved: its manifest and files, its calibrators, its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..calibrators import Calibrator, get_calibrator, registered_calibrators
from ._files import MANIFEST_FILE, BundleError, check_bundle_files, check_finite_tensors, read_manifest
from ._model import AUTO_CLASSES


def verified_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of ``folder`` once every file, tensor and field a load relies on has been checked."""
    manifest = read_manifest(folder)
    check_bundle_files(folder, manifest)
    check_finite_tensors(folder, manifest["files"])
    if manifest.get("task") not in AUTO_CLASSES:
        raise BundleError(
            f"{folder / MANIFEST_FILE} has an unknown task {manifest.get('task')!r}; expected one of "
            f"{list(AUTO_CLASSES)}."
        )
    fingerprint = manifest.get("base_model")
    if fingerprint is not None and not isinstance(fingerprint, dict):
        raise BundleError(f"{folder / MANIFEST_FILE} is corrupted: 'base_model' must be a JSON object.")
    components = manifest.get("components")
    if components is not None and not (
        isinstance(components, dict) and all(v is None or isinstance(v, dict) for v in components.values())
    ):
        raise BundleError(f"{folder / MANIFEST_FILE} is corrupted: 'components' must map names to objects or null.")
    for name, entry in (components or {}).items():
        if entry is not None:
            calibrator_class(name, folder)
    return manifest


def calibrator_class(name: str, folder: Path) -> type[Calibrator]:
    """The registered calibrator ``name`` a bundle needs (the built-in ones are imported first)."""
    # The built-in calibrators register themselves when their modules are imported.
    from ..adue import io as _adue  # noqa: F401
    from ..scaling import temperature as _temperature  # noqa: F401

    try:
        return get_calibrator(name)
    except KeyError as err:
        raise BundleError(f"{folder / MANIFEST_FILE}: {err.args[0]}") from None


def check_calibrators(calibrators: list[Any]) -> None:
    """Each is a registered :class:`Calibrator`, names are unique, and at most one sets the temperature."""
    for calibrator in calibrators:
        if not isinstance(calibrator, Calibrator):
            raise TypeError(
                f"calibrators must be hf_calib.calibrators.Calibrator instances; got {type(calibrator).__name__}."
            )
        if registered_calibrators().get(calibrator.name) is not type(calibrator):
            raise ValueError(
                f"{type(calibrator).__name__} is not registered under its name {calibrator.name!r}; decorate it "
                "with @hf_calib.calibrators.register_calibrator so the bundle can load it back."
            )
    names = [c.name for c in calibrators]
    if len(set(names)) != len(names):
        raise ValueError(f"each calibrator may appear once in a bundle; got {names}.")
    setters = [c.name for c in calibrators if c.sets_temperature]
    if len(setters) > 1:
        raise ValueError(f"only one calibrator may set the temperature; got {setters}.")


def check_finite_weights(model: nn.Module, calibrators: list[Calibrator]) -> None:
    """Refuse to save adapter, head or Thermometer weights holding NaN or inf (a diverged run)."""
    from peft import get_peft_model_state_dict

    tensors = [(f"adapter tensor {k}", v) for k, v in get_peft_model_state_dict(model).items()]
    for calibrator in calibrators:
        tensors += [(f"{calibrator.name} tensor {k}", v) for k, v in calibrator.tensors().items()]
    for what, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"the {what} holds NaN or inf values (the training diverged); nothing was saved. "
                "Lower the learning rate or check the data, then train again."
            )
