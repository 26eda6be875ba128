"""The calibrator interface: what a calibrated adapter bundle needs from each component that calibrates it.

Temperature scaling (:class:`hf_calib.scaling.TemperatureScaler`), Thermometer
(:class:`hf_calib.scaling.Thermometer`) and the AdUE head (:class:`hf_calib.adue.AdUEHead`) implement
:class:`Calibrator` and register themselves with :func:`register_calibrator` when their module is imported. The
bundle (:class:`hf_calib.hub.CalibratedAdapter`), its manifest, its model card and the Trainer callback iterate
over the registered calibrators instead of knowing each one, so a new calibrator needs no change in the hub::

    @register_calibrator
    class Bias(Calibrator):
        name = "bias"                                          # stable key in calibration.json
        added_outputs = {"shifted": "logits + shift"}
        def __init__(self, shift: float) -> None: self.shift = shift
        def save(self, folder, model): (folder / "bias.json").write_text(json.dumps({"shift": self.shift}))
        @classmethod
        def load(cls, folder, model, entry): return cls(json.loads((folder / "bias.json").read_text())["shift"])
        def update_outputs(self, outputs, call_kwargs): outputs["shifted"] = outputs["logits"] + self.shift

    CalibratedAdapter(peft_model, calibrators=[Bias(0.5)]).save_pretrained("bundle")

See ``docs/architecture.md`` for where calibrators sit in the package.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["CALIBRATION_DIR", "Calibrator", "get_calibrator", "register_calibrator", "registered_calibrators"]

#: The bundle subfolder where calibrators keep their files by convention (an attached head sits at the root).
CALIBRATION_DIR = "calibration"

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_REGISTRY: dict[str, type[Calibrator]] = {}


class Calibrator:
    """One component of a calibrated adapter bundle (see the module docstring).

    Class attributes:
        name: stable key of the component in ``calibration.json`` (lowercase letters, digits, ``_``).
        sets_temperature: the component decides the temperature of ``calibrated_probs`` (at most one per bundle).
        wants_hidden_states: :meth:`temperature_for` reads ``outputs["hidden_states"]`` (the bundle requests them).
        added_outputs: what the component adds to the model's outputs, ``{name: description}`` (in the card).
    """

    name: ClassVar[str] = ""
    sets_temperature: ClassVar[bool] = False
    wants_hidden_states: ClassVar[bool] = False
    added_outputs: ClassVar[dict[str, str]] = {}

    # ------------------------------------------------------------------ files
    def save(self, folder: Path, model: Any) -> None:
        """Write this component's files into the bundle folder ``folder`` (``model``: the adapted model)."""
        raise NotImplementedError(f"{type(self).__name__} must implement save(folder, model).")

    @classmethod
    def load(cls, folder: Path, model: Any, entry: dict[str, Any]) -> Calibrator:
        """Read the component back from ``folder`` for ``model``; ``entry`` is its :meth:`manifest_entry`."""
        raise NotImplementedError(f"{cls.__name__} must implement load(folder, model, entry).")

    def manifest_entry(self) -> dict[str, Any]:
        """What ``calibration.json`` records about the component under ``components[name]`` (JSON values)."""
        return {}

    @classmethod
    def from_model(cls, model: Any) -> Calibrator | None:
        """The component when it lives on the adapted model itself (like an attached head), else None."""
        return None

    def tensors(self) -> dict[str, Any]:
        """The component's weights, checked to be finite before a bundle is saved (a module's state dict)."""
        state_dict = getattr(self, "state_dict", None)
        return dict(state_dict()) if callable(state_dict) else {}

    # ------------------------------------------------------------------ inference
    def temperature_for(self, outputs: Any, call_kwargs: dict[str, Any]) -> float:
        """The temperature of this call's ``calibrated_probs`` (only for ``sets_temperature`` components)."""
        raise NotImplementedError(f"{type(self).__name__} sets no temperature.")

    def update_outputs(self, outputs: Any, call_kwargs: dict[str, Any]) -> None:
        """Add what the component computes to the model's ``outputs`` (in place); nothing by default."""

    # ------------------------------------------------------------------ model card
    def card_files(self) -> list[tuple[str | tuple[str, ...], str]]:
        """``(file, pattern or several files, what they hold)`` rows of the card's file table."""
        return []

    def card_notes(self) -> list[str]:
        """Markdown bullet points for the card's "Calibration" section."""
        return []


def register_calibrator(cls: type[Calibrator]) -> type[Calibrator]:
    """Register a :class:`Calibrator` subclass under its ``name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Calibrator)):
        raise TypeError(f"register_calibrator takes a Calibrator subclass; got {cls!r}.")
    if not isinstance(cls.name, str) or not _NAME.fullmatch(cls.name):
        raise ValueError(f"{cls.__name__}.name must be lowercase letters, digits and '_'; got {cls.name!r}.")
    known = _REGISTRY.get(cls.name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"a calibrator named {cls.name!r} is already registered ({known.__qualname__}).")
    _REGISTRY[cls.name] = cls
    return cls


def registered_calibrators() -> dict[str, type[Calibrator]]:
    """The registered calibrator classes by name. The built-in ones register when ``hf_calib.scaling`` and
    ``hf_calib.adue`` are imported, which the hub does before it looks here."""
    return dict(_REGISTRY)


def get_calibrator(name: str) -> type[Calibrator]:
    """The calibrator class registered as ``name``; ``KeyError`` naming the known ones otherwise."""
    if name not in _REGISTRY:
        raise KeyError(
            f"no calibrator named {name!r} is registered (known: {sorted(_REGISTRY)}); import the package that "
            "defines it before loading the bundle."
        )
    return _REGISTRY[name]
