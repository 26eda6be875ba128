"""The calibrator interface: a calibrator registered from outside the hub round-trips through a bundle and its card.

Two toys: ``LogitShift`` adds an output (``shifted_logits = logits + shift``) and keeps a JSON file;
``NormTemperature`` sets the temperature from the last hidden states (like Thermometer does). Neither touches
``hf_calib.hub``: the bundle, the manifest, the checksums and the card pick them up through the interface.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_hub_bundle import batch, lora_bert, lora_llama, tiny_bert, tiny_llama

import hf_calib.calibrators as calibrators_module
from hf_calib.calibrators import CALIBRATION_DIR, Calibrator, get_calibrator, register_calibrator
from hf_calib.callbacks import CalibratedAdapterCallback
from hf_calib.hub import BundleError, CalibratedAdapter
from hf_calib.hub._files import MANIFEST_FILE
from hf_calib.scaling import TemperatureScaler, Thermometer, ThermometerConfig


class LogitShift(Calibrator):
    name = "toy_shift"
    added_outputs = {"shifted_logits": "logits + a constant"}

    def __init__(self, shift: float) -> None:
        self.shift = float(shift)

    def save(self, folder: Path, model) -> None:
        (folder / CALIBRATION_DIR).mkdir(parents=True, exist_ok=True)
        (folder / CALIBRATION_DIR / "toy_shift.json").write_text(json.dumps({"shift": self.shift}))

    @classmethod
    def load(cls, folder: Path, model, entry) -> LogitShift:
        assert entry == {"shift": json.loads((folder / CALIBRATION_DIR / "toy_shift.json").read_text())["shift"]}
        return cls(entry["shift"])

    def manifest_entry(self) -> dict:
        return {"shift": self.shift}

    def update_outputs(self, outputs, call_kwargs) -> None:
        outputs["shifted_logits"] = outputs["logits"] + self.shift

    def card_files(self):
        return [(f"{CALIBRATION_DIR}/toy_shift.json", "a constant logit shift")]

    def card_notes(self):
        return [f"- **Toy shift**: logits + {self.shift:g}."]


class NormTemperature(Calibrator):
    name = "toy_norm_temperature"
    sets_temperature = True
    wants_hidden_states = True

    def save(self, folder: Path, model) -> None:
        (folder / "toy_norm.json").write_text("{}")

    @classmethod
    def load(cls, folder: Path, model, entry) -> NormTemperature:
        return cls()

    def temperature_for(self, outputs, call_kwargs) -> float:
        return 1.0 + float(outputs["hidden_states"][-1][:, -1].norm(dim=-1).mean())


@pytest.fixture
def toys(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for cls in (LogitShift, NormTemperature):
        register_calibrator(cls)
    yield
    for cls in (LogitShift, NormTemperature):  # leave the registry as the other tests know it
        calibrators_module._REGISTRY.pop(cls.name)


def test_a_toy_calibrator_round_trips_through_a_bundle_and_its_card(toys, tmp_path) -> None:
    bundle = CalibratedAdapter(lora_llama(), temperature=1.5, calibrators=[LogitShift(0.25)])
    folder = bundle.save_pretrained(tmp_path / "b")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["components"]["toy_shift"] == {"shift": 0.25}
    assert manifest["components"]["temperature"]["value"] == 1.5 and manifest["components"]["adue"] is None
    assert "calibration/toy_shift.json" in manifest["checksums"], "the toy's file is covered by the checksums"
    card = (folder / "README.md").read_text()
    assert "| `calibration/toy_shift.json` | a constant logit shift |" in card
    assert "- **Toy shift**: logits + 0.25." in card and "outputs.shifted_logits  # logits + a constant" in card
    assert "and a per-example shifted_logits" in card

    loaded = CalibratedAdapter.from_pretrained(folder, base_model=tiny_llama())
    assert [c.name for c in loaded.calibrators] == ["temperature", "toy_shift"]
    with torch.no_grad():
        out = loaded(**batch())
    torch.testing.assert_close(out.shifted_logits, out.logits + 0.25)
    torch.testing.assert_close(out.calibrated_probs, torch.softmax(out.logits.float() / 1.5, dim=-1))

    (folder / CALIBRATION_DIR / "toy_shift.json").write_text(json.dumps({"shift": 9.0}))
    with pytest.raises(BundleError, match="calibration/toy_shift.json does not match its checksum"):
        CalibratedAdapter.from_pretrained(folder, base_model=tiny_llama())


def test_a_toy_can_set_the_temperature_from_hidden_states(toys, tmp_path) -> None:
    folder = CalibratedAdapter(lora_llama(), calibrators=[NormTemperature()]).save_pretrained(tmp_path / "b")
    assert "No post-hoc scaling" not in (folder / "README.md").read_text()
    loaded = CalibratedAdapter.from_pretrained(folder, base_model=tiny_llama())
    with torch.no_grad():
        out = loaded(**batch())
        hidden = loaded.model(**batch(), output_hidden_states=True).hidden_states[-1][:, -1]
    expected = 1.0 + float(hidden.norm(dim=-1).mean())
    assert float(out.temperature) == pytest.approx(expected, rel=1e-5)
    assert out.hidden_states is None, "hidden states requested for the calibrator are not handed to the caller"
    torch.testing.assert_close(out.calibrated_probs, torch.softmax(out.logits.float() / expected, dim=-1))


def test_the_adue_head_is_found_on_the_model_and_listed_with_the_others(toys, tmp_path) -> None:
    bundle = CalibratedAdapter(lora_bert(), calibrators=[LogitShift(-1.0)])
    assert [c.name for c in bundle.calibrators] == ["toy_shift", "adue"]
    folder = bundle.save_pretrained(tmp_path / "clf")
    loaded = CalibratedAdapter.from_pretrained(folder, base_model=tiny_bert())
    assert {c.name for c in loaded.calibrators} == {"toy_shift", "adue"} and loaded.has_uncertainty
    with torch.no_grad():
        out = loaded(**batch())
    assert out.uncertainty.shape == (3,) and torch.equal(out.shifted_logits, out.logits - 1.0)


def test_the_trainer_callback_carries_registered_calibrators(toys) -> None:
    from transformers import TrainingArguments

    callback = CalibratedAdapterCallback(calibrators=[LogitShift(0.5)])
    bundle = callback.build(lora_llama(), TrainingArguments(output_dir="unused", report_to=[], use_cpu=True))
    assert [c.name for c in bundle.calibrators] == ["toy_shift"]


def test_bad_calibrator_combinations_are_refused(toys, tmp_path) -> None:
    class Unregistered(LogitShift):
        name = "toy_unregistered"

    with pytest.raises(ValueError, match="not registered under its name 'toy_unregistered'"):
        CalibratedAdapter(lora_llama(), calibrators=[Unregistered(1.0)])
    with pytest.raises(ValueError, match="only one calibrator may set the temperature"):
        CalibratedAdapter(lora_llama(), temperature=1.2, calibrators=[NormTemperature()])
    thermometer = Thermometer(ThermometerConfig(input_size=32, hidden_size=4))
    with pytest.raises(ValueError, match="only one calibrator may set the temperature"):
        CalibratedAdapter(lora_llama(), thermometer=thermometer, calibrators=[NormTemperature()])
    with pytest.raises(ValueError, match="each calibrator may appear once"):
        CalibratedAdapter(lora_llama(), calibrators=[LogitShift(1.0), LogitShift(2.0)])
    with pytest.raises(TypeError, match="Calibrator instances"):
        CalibratedAdapter(lora_llama(), calibrators=[object()])
    with pytest.raises(ValueError, match="already registered"):

        class Clash(Calibrator):
            name = "temperature"

        register_calibrator(Clash)
    with pytest.raises(ValueError, match="lowercase"):

        class BadName(Calibrator):
            name = "Bad Name"

        register_calibrator(BadName)


def test_a_bundle_needing_an_unknown_calibrator_is_refused_before_any_weight(toys, tmp_path) -> None:
    folder = CalibratedAdapter(lora_llama(), calibrators=[LogitShift(0.5)]).save_pretrained(tmp_path / "b")
    calibrators_module._REGISTRY.pop("toy_shift")
    try:
        with pytest.raises(BundleError, match="no calibrator named 'toy_shift' is registered"):
            CalibratedAdapter.from_pretrained(folder, base_model=tiny_llama())
    finally:
        register_calibrator(LogitShift)


def test_builtin_calibrators_are_registered() -> None:
    from hf_calib.adue.io import AdUEHeadCalibrator

    assert get_calibrator("temperature") is TemperatureScaler
    assert get_calibrator("thermometer") is Thermometer
    assert get_calibrator("adue") is AdUEHeadCalibrator
    with pytest.raises(KeyError, match="no calibrator named 'nope'"):
        get_calibrator("nope")
