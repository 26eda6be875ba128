"""CalibratedAdapter bundles: save -> load round trips, base-model checks, broken bundles, atomic saves.

Tiny random models only: a 2-layer Llama causal LM and a 2-layer BERT classifier, each with a LoRA adapter whose
B matrices are random (``init_lora_weights=False``) so the adapter changes the logits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from hf_calib.adue import attach_adue_head, get_adue_head
from hf_calib.hub import BundleError, CalibratedAdapter, CalibrationReport, CardInfo
from hf_calib.hub._files import MANIFEST_FILE
from hf_calib.scaling import TemperatureScaler, Thermometer, ThermometerConfig

VOCAB = 300


@pytest.fixture(autouse=True)
def _no_hub_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    # PEFT's save_pretrained asks the Hub whether the base model's vocabulary changed unless offline.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny_llama(seed: int = 0, hidden: int = 32, vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    config._name_or_path = "tiny/llama"
    return LlamaForCausalLM(config).eval()


def tiny_bert(seed: int = 0, num_labels: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    config._name_or_path = "tiny/bert"
    return BertForSequenceClassification(config).eval()


def lora_llama(seed: int = 0) -> PeftModel:
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False
    )
    return get_peft_model(tiny_llama(seed), config).eval()


def lora_bert(seed: int = 0, adue: bool = True) -> PeftModel:
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS", init_lora_weights=False
    )
    model = get_peft_model(tiny_bert(seed), config).eval()
    if adue:
        attach_adue_head(model)
        with torch.no_grad():  # a "trained" head, so it differs from a fresh copy of the classifier
            for p in get_adue_head(model).parameters():
                p.add_(0.3 * torch.randn_like(p))
        model.eval()
    return model


def batch(n: int = 3, length: int = 7, seed: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, :2] = 0  # left padding on the first row
    ids[0, :2] = 0
    return {"input_ids": ids, "attention_mask": mask}


def class_report(model: PeftModel, temperature: float | None, n: int = 40) -> CalibrationReport:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (n, 6), generator=g)
    with torch.no_grad():
        out = model(input_ids=ids)
    labels = torch.randint(0, out.logits.shape[-1], (n,), generator=g)
    return CalibrationReport.from_logits(
        out.logits, labels, temperature=temperature, uncertainty=out.get("uncertainty"), dataset="toy", split="test"
    )


def token_report(model: PeftModel, temperature: float) -> CalibrationReport:
    inputs = batch(4, 9, seed=11)
    with torch.no_grad():
        logits = model(**inputs).logits[:, :-1]
    labels = inputs["input_ids"][:, 1:].masked_fill(inputs["attention_mask"][:, 1:] == 0, -100)
    return CalibrationReport.from_logits(logits, labels, temperature=temperature, ignore_index=-100, dataset="toy")


def no_weight_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every way of reading weights fail loudly."""

    def forbidden(*args, **kwargs):
        raise AssertionError("weights were loaded although the bundle does not fit")

    import peft
    import safetensors.torch

    monkeypatch.setattr(PeftModel, "from_pretrained", forbidden)
    monkeypatch.setattr(safetensors.torch, "load_file", forbidden)
    monkeypatch.setattr(peft.utils.save_and_load, "safe_load_file", forbidden)
    monkeypatch.setattr(LlamaForCausalLM, "from_pretrained", forbidden)
    monkeypatch.setattr(BertForSequenceClassification, "from_pretrained", forbidden)


@pytest.fixture(scope="module")
def saved_llama_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[CalibratedAdapter, Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        model = lora_llama()
        bundle = CalibratedAdapter(
            model,
            temperature=TemperatureScaler(1.7),
            label_smoothing=0.1,
            report=token_report(model, 1.7),
            card=CardInfo(base_model="tiny/llama", datasets=["toy/sft"], training={"Learning rate": 1e-4}),
        )
        return bundle, bundle.save_pretrained(tmp_path_factory.mktemp("saved") / "bundle")


@pytest.fixture
def llama_bundle(saved_llama_bundle, tmp_path: Path) -> tuple[CalibratedAdapter, Path]:
    """The saved bundle (shared, do not mutate) and a private copy of its folder."""
    bundle, folder = saved_llama_bundle
    return bundle, Path(shutil.copytree(folder, tmp_path / "bundle"))


def test_round_trip_causal_lm_temperature(llama_bundle: tuple[CalibratedAdapter, Path], monkeypatch) -> None:
    bundle, folder = llama_bundle
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "calibration.json",
        "calibration/temperature.json",
        "reliability_diagram.png",
    ]
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["label_smoothing"] == 0.1
    assert manifest["components"]["temperature"]["value"] == 1.7
    assert manifest["base_model"]["hidden_size"] == 32 and manifest["base_model"]["vocab_size"] == VOCAB
    assert not any(folder.parent.glob(".bundle*")), "no temporary folder is left next to the bundle"

    # Loading reads no pickle: torch.load is never called.
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    loaded = CalibratedAdapter.from_pretrained(folder, base_model=tiny_llama())
    inputs = batch()
    with torch.no_grad():
        before, after = bundle(**inputs), loaded(**inputs)
    assert torch.equal(before.logits, after.logits)
    assert torch.equal(before.calibrated_probs, after.calibrated_probs)
    reference = torch.softmax(after.logits.float() / 1.7, dim=-1)
    torch.testing.assert_close(after.calibrated_probs, reference, rtol=0, atol=1e-7)
    assert float(after.temperature) == pytest.approx(1.7)
    assert loaded.label_smoothing == 0.1 and not loaded.has_uncertainty
    assert loaded.report.metrics == pytest.approx(bundle.report.metrics)
    assert loaded.report.uncalibrated == pytest.approx(bundle.report.uncalibrated)
    assert loaded.card.datasets == ["toy/sft"]
    # The adapter matters: without it the logits differ.
    with torch.no_grad(), loaded.model.disable_adapter():
        assert not torch.allclose(loaded.model(**inputs).logits, after.logits)
    # A per-call temperature overrides the bundle's.
    with torch.no_grad():
        hot = loaded(**inputs, temperature=3.0)
    torch.testing.assert_close(hot.calibrated_probs, torch.softmax(hot.logits.float() / 3.0, dim=-1))


def test_round_trip_classifier_with_adue_head_and_base_path(tmp_path: Path) -> None:
    model = lora_bert()
    scaler = TemperatureScaler(0.8)
    bundle = CalibratedAdapter(model, temperature=scaler, label_smoothing=0.0, report=class_report(model, 0.8))
    folder = bundle.save_pretrained(tmp_path / "clf")
    assert (folder / "adue_head.safetensors").is_file() and (folder / "adue_config.json").is_file()
    base_dir = tmp_path / "base"
    tiny_bert().save_pretrained(base_dir)  # safetensors

    loaded = CalibratedAdapter.from_pretrained(folder, base_model=str(base_dir))
    assert loaded.has_uncertainty and loaded.task == "sequence_classification"
    inputs = batch()
    with torch.no_grad():
        before, after = bundle(**inputs), loaded(**inputs)
    assert torch.equal(before.logits, after.logits)
    assert torch.equal(before.calibrated_probs, after.calibrated_probs)
    assert torch.equal(before.uncertainty, after.uncertainty)
    assert after.uncertainty.shape == (3,) and bool(((after.uncertainty > 0) & (after.uncertainty < 1)).all())
    torch.testing.assert_close(after.calibrated_probs, torch.softmax(after.logits / 0.8, dim=-1))
    assert loaded.report.uncertainty == "adue"


def test_round_trip_thermometer(tmp_path: Path) -> None:
    model = lora_llama()
    torch.manual_seed(7)
    thermometer = Thermometer(ThermometerConfig(input_size=32, hidden_size=8)).eval()
    bundle = CalibratedAdapter(model, thermometer=thermometer)
    folder = bundle.save_pretrained(tmp_path / "thermo")
    assert {"calibration/thermometer.safetensors", "calibration/thermometer_config.json"} <= set(
        json.loads((folder / MANIFEST_FILE).read_text())["files"]
    )
    loaded = CalibratedAdapter.from_pretrained(folder, base_model=tiny_llama())
    inputs = batch()
    with torch.no_grad():
        before, after = bundle(**inputs), loaded(**inputs)
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
    # Independent reference: features at each row's last attended token (all rows end with a real token).
    expected_t = thermometer.predict_temperature(hidden[:, -1])
    assert float(after.temperature) == pytest.approx(expected_t, rel=1e-6)
    assert torch.equal(before.calibrated_probs, after.calibrated_probs)
    torch.testing.assert_close(after.calibrated_probs, torch.softmax(after.logits / expected_t, dim=-1))
    assert after.hidden_states is None  # not requested by the caller


@pytest.mark.parametrize(
    ("other", "field"),
    [(lambda: tiny_llama(hidden=48), "hidden_size"), (lambda: tiny_llama(vocab=VOCAB + 10), "vocab_size")],
)
def test_mismatched_base_model_fails_before_any_weight_is_loaded(llama_bundle, monkeypatch, other, field) -> None:
    _, folder = llama_bundle
    wrong = other()
    no_weight_loading(monkeypatch)
    with pytest.raises(ValueError, match=field):
        CalibratedAdapter.from_pretrained(folder, base_model=wrong)


def test_mismatched_label_count_fails_before_weights(tmp_path, monkeypatch) -> None:
    folder = CalibratedAdapter(lora_bert(adue=False)).save_pretrained(tmp_path / "clf")
    wrong = tiny_bert(num_labels=2)
    no_weight_loading(monkeypatch)
    with pytest.raises(ValueError, match="num_labels: saved 3, model 2"):
        CalibratedAdapter.from_pretrained(folder, base_model=wrong)


def test_mismatched_architecture_by_path_fails_before_weights(llama_bundle, tmp_path, monkeypatch) -> None:
    _, folder = llama_bundle
    tiny_bert().save_pretrained(tmp_path / "bert")
    no_weight_loading(monkeypatch)
    with pytest.raises(ValueError, match="model_type: saved 'llama', model 'bert'"):
        CalibratedAdapter.from_pretrained(folder, base_model=str(tmp_path / "bert"))


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json", "calibration/temperature.json"])
def test_missing_file_is_named(llama_bundle, monkeypatch, name) -> None:
    _, folder = llama_bundle
    (folder / name).unlink()
    no_weight_loading(monkeypatch)
    with pytest.raises(BundleError, match=f"incomplete: {name} is missing"):
        CalibratedAdapter.from_pretrained(folder, base_model=tiny_llama())


def test_corrupted_files_are_named(llama_bundle) -> None:
    _, folder = llama_bundle
    weights = folder / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a partial download
    with pytest.raises(BundleError, match=r"adapter_model.safetensors does not match its checksum .*found 2304 bytes"):
        CalibratedAdapter.from_pretrained(folder, base_model=tiny_llama())
    weights.write_bytes(data)
    (folder / "calibration" / "temperature.json").write_text("{not json")
    with pytest.raises(BundleError, match="calibration/temperature.json does not match its checksum"):
        CalibratedAdapter.from_pretrained(folder, base_model=tiny_llama())


def test_folder_without_manifest_is_not_a_bundle(llama_bundle, tmp_path) -> None:
    bundle, _ = llama_bundle
    bundle.model.save_pretrained(tmp_path / "plain")  # a PEFT adapter only
    with pytest.raises(BundleError, match="holds a PEFT adapter only.*calibration.json is missing"):
        CalibratedAdapter.from_pretrained(tmp_path / "plain", base_model=tiny_llama())
    with pytest.raises(FileNotFoundError, match="not a bundle folder"):
        CalibratedAdapter.from_pretrained(tmp_path / "nowhere", base_model=tiny_llama())


def test_interrupted_save_leaves_no_partial_bundle(llama_bundle, monkeypatch) -> None:
    bundle, folder = llama_bundle
    parent = folder.parent
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C while the card is being written

    monkeypatch.setattr("hf_calib.hub.bundle.build_model_card", crash)
    bundle = CalibratedAdapter(bundle.model, temperature=2.5)
    with pytest.raises(KeyboardInterrupt):
        bundle.save_pretrained(folder)  # overwrite: the old bundle must survive intact
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    with pytest.raises(KeyboardInterrupt):
        bundle.save_pretrained(parent / "fresh")  # new folder: nothing must appear
    assert not (parent / "fresh").exists()
    assert sorted(p.name for p in parent.iterdir()) == ["bundle"], "temporary folders are cleaned up"


def test_overwrite_replaces_a_bundle_but_never_other_folders(llama_bundle, tmp_path) -> None:
    bundle, folder = llama_bundle
    CalibratedAdapter(bundle.model, temperature=2.5).save_pretrained(folder)
    assert json.loads((folder / "calibration" / "temperature.json").read_text())["temperature"] == 2.5
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and holds no calibrated adapter bundle"):
        bundle.save_pretrained(other)
    assert (other / "notes.txt").read_text() == "keep me"


def test_constructor_rejects_bad_arguments() -> None:
    model = lora_llama()
    with pytest.raises(TypeError, match="peft.PeftModel"):
        CalibratedAdapter(tiny_llama())
    thermometer = Thermometer(ThermometerConfig(input_size=32, hidden_size=4))
    with pytest.raises(ValueError, match="either temperature or thermometer"):
        CalibratedAdapter(model, temperature=1.5, thermometer=thermometer)
    with pytest.raises(ValueError, match="label_smoothing"):
        CalibratedAdapter(model, label_smoothing=1.5)


def test_peft_model_as_base_is_rejected(llama_bundle) -> None:
    bundle, folder = llama_bundle
    with pytest.raises(TypeError, match="without adapter"):
        CalibratedAdapter.from_pretrained(folder, base_model=lora_llama())
