"""Fault injection on calibrated adapter bundles: failures the way they happen.

* a save killed with SIGKILL right after each of its renames (atomic exchange, and the two-rename fallback);
* bytes flipped inside tensor data, NaN written into tensors (with the checksum forged to match);
* tampered manifest fields (paths, checksums, versions, fingerprints) and calibrator configs;
* base models that differ in depth, in weights only, or are loaded in another dtype (which must still match);
* a folder holding a ``.env``, notes and logs pushed through the in-process fake Hub;
* permissions of a saved bundle.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import stat
import struct
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_hub_bundle import VOCAB, batch, lora_bert, lora_llama, no_weight_loading, tiny_bert, tiny_llama
from test_hub_push import ENDPOINT, TOKEN, FakeHub, hub  # noqa: F401 - the fixture is used by name

import hf_calib._folders as files
from hf_calib._secrets import scrub_secrets
from hf_calib.hub import BundleError, CalibratedAdapter, QuantizedModelWarning, push_folder
from hf_calib.hub._files import MANIFEST_FILE
from hf_calib.hub.push import HubPushError
from hf_calib.scaling import Thermometer, ThermometerConfig


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def temperature_of(folder: Path) -> float:
    loaded = CalibratedAdapter.from_pretrained(folder, base_model=tiny_llama())
    return loaded.temperature_scaler.temperature


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir())


def rewrite_manifest(folder: Path, edit) -> None:
    """Apply ``edit(manifest)`` and write the manifest back (the attacker's or the careless user's edit)."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    edit(manifest)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def forge_checksum(folder: Path, name: str) -> None:
    """Make the manifest agree with the current bytes of ``name`` (so only the deeper checks can catch it)."""
    data = (folder / name).read_bytes()

    def edit(manifest):
        manifest["checksums"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    rewrite_manifest(folder, edit)


# --------------------------------------------------------------------------------------------- SIGKILL


def _save_and_die(target: str, kill_at: int, temperature: float, mode: str) -> None:
    """In a forked child: save, and SIGKILL this process right after rename number ``kill_at``."""
    count = 0

    def counted(rename):
        def wrapper(*args, **kwargs):
            nonlocal count
            result = rename(*args, **kwargs)
            if result is not False:  # an exchange the system refused renamed nothing
                count += 1
                if count == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            return result

        return wrapper

    os.replace = counted(os.replace)
    os.rename = counted(os.rename)
    files.exchange = (lambda first, second: False) if mode == "fallback" else counted(files.exchange)
    CalibratedAdapter(lora_llama(), temperature=temperature).save_pretrained(target)
    os._exit(0)  # survived: no kill at this k


def renames_of_a_save(monkeypatch: pytest.MonkeyPatch, target: Path, mode: str) -> int:
    """How many renames a save to ``target`` makes (counted in this process, then undone)."""
    calls = []
    for module, name in ((os, "replace"), (os, "rename")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, **k: (calls.append(1), _real(*a, **k))[1])
    real_exchange = files.exchange
    fake = (lambda a, b: False) if mode == "fallback" else (lambda a, b: calls.append(1) or real_exchange(a, b))
    monkeypatch.setattr(files, "exchange", fake)
    scratch = target.parent / "count"
    shutil.copytree(target, scratch) if target.exists() else None
    CalibratedAdapter(lora_llama(), temperature=2.5).save_pretrained(scratch)
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.rmtree(scratch)
    return len(calls)


def kill_after(target: Path, k: int, mode: str) -> int:
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_save_and_die, args=(str(target), k, 2.5, mode))
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
        pytest.fail(f"the save killed at rename {k} hung")
    return child.exitcode


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_sigkill_after_every_rename_leaves_the_old_or_the_new_bundle(tmp_path, monkeypatch, mode) -> None:
    original = tmp_path / "original" / "bundle"
    CalibratedAdapter(lora_llama(), temperature=1.5).save_pretrained(original)
    n = renames_of_a_save(monkeypatch, original, mode)
    assert n >= (3 if mode == "exchange" else 4)
    seen = []
    for k in range(1, n + 1):
        target = tmp_path / f"kill-{k}" / "bundle"
        shutil.copytree(original, target)
        assert kill_after(target, k, mode) == -signal.SIGKILL
        # Whatever rename the save died after, the path loads, as the old bundle or the new one.
        seen.append(temperature_of(target))
        assert seen[-1] in (1.5, 2.5)
        # The next save tidies up what the killed one left next to the bundle, and loads see only the new one.
        CalibratedAdapter(lora_llama(), temperature=3.5).save_pretrained(target)
        assert siblings(target) == ["bundle"], f"leftovers after the save killed at rename {k}"
        assert temperature_of(target) == 3.5
    assert seen[0] == 1.5 and seen[-1] == 2.5, "the first renames happen while staging, the last one commits"


def test_sigkill_of_a_first_save_leaves_nothing_or_the_new_bundle(tmp_path, monkeypatch) -> None:
    n = renames_of_a_save(monkeypatch, tmp_path / "none" / "bundle", "exchange")
    for k in range(1, n + 1):
        target = tmp_path / f"kill-{k}" / "bundle"
        assert kill_after(target, k, "exchange") == -signal.SIGKILL
        assert not target.exists() if k < n else temperature_of(target) == 2.5
        CalibratedAdapter(lora_llama(), temperature=3.5).save_pretrained(target)
        assert siblings(target) == ["bundle"]


def test_leftovers_of_a_running_save_are_kept(tmp_path) -> None:
    target = CalibratedAdapter(lora_llama(), temperature=1.5).save_pretrained(tmp_path / "bundle")
    running = tmp_path / f".bundle.{os.getppid()}.abc.tmp"  # a live process (our parent) is saving
    dead = tmp_path / ".bundle.999999999.def.tmp"  # no such process
    running.mkdir()
    dead.mkdir()
    CalibratedAdapter(lora_llama(), temperature=2.5).save_pretrained(target)
    assert siblings(target) == [running.name, "bundle"]


def test_saved_files_get_the_usual_permissions(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        folder = CalibratedAdapter(lora_bert(), temperature=1.2).save_pretrained(tmp_path / "bundle")
        t = Thermometer(ThermometerConfig(input_size=32, hidden_size=4))
        CalibratedAdapter(lora_llama(), thermometer=t).save_pretrained(tmp_path / "thermo")
    finally:
        os.umask(old)
    for root in (folder, tmp_path / "thermo"):
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


# --------------------------------------------------------------------------------------------- integrity


@pytest.fixture
def clf_bundle(tmp_path) -> Path:
    """A classifier bundle with temperature and AdUE head."""
    return CalibratedAdapter(lora_bert(), temperature=1.3).save_pretrained(tmp_path / "clf")


def tensor_data_offset(path: Path) -> int:
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + header_len


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adue_head.safetensors"])
def test_flipped_byte_in_tensor_data_is_named(clf_bundle, monkeypatch, name) -> None:
    path = clf_bundle / name
    data = bytearray(path.read_bytes())
    position = (tensor_data_offset(path) + len(data)) // 2  # inside the tensor data, header intact
    data[position] ^= 0x40
    path.write_bytes(bytes(data))
    no_weight_loading(monkeypatch)
    with pytest.raises(BundleError, match=rf"{name} does not match its checksum \(expected SHA-256 [0-9a-f]{{16}}"):
        CalibratedAdapter.from_pretrained(clf_bundle, base_model=tiny_bert())


def test_flipped_byte_in_thermometer_weights_is_named(tmp_path) -> None:
    t = Thermometer(ThermometerConfig(input_size=32, hidden_size=4))
    folder = CalibratedAdapter(lora_llama(), thermometer=t).save_pretrained(tmp_path / "b")
    path = folder / "calibration" / "thermometer.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="calibration/thermometer.safetensors does not match its checksum"):
        CalibratedAdapter.from_pretrained(folder, base_model=tiny_llama())


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adue_head.safetensors"])
def test_nan_in_a_tensor_is_refused_even_with_a_forged_checksum(clf_bundle, name) -> None:
    from safetensors.torch import load_file, save_file

    path = clf_bundle / name
    tensors = load_file(path)
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, path)
    forge_checksum(clf_bundle, name)
    with pytest.raises(BundleError, match=rf"non-finite values .* tensor '{key}' of {name}"):
        CalibratedAdapter.from_pretrained(clf_bundle, base_model=tiny_bert())


def test_saving_a_diverged_adapter_is_refused(tmp_path) -> None:
    model = lora_llama()
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("inf"))
    with pytest.raises(ValueError, match="adapter tensor .*lora_B.* NaN or inf"):
        CalibratedAdapter(model, temperature=1.2).save_pretrained(tmp_path / "b")
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


def _drop(key):
    return lambda m: m.pop(key)


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["files"].append("../outside.json"), "not a plain file path"),
        (lambda m: m["files"].append("/etc/passwd"), "not a plain file path"),
        (lambda m: m["files"].append(".env"), "not a plain file path"),
        (_drop("checksums"), "'checksums' must give the SHA-256 and size"),
        (lambda m: m["checksums"].popitem(), "'checksums' must give the SHA-256 and size"),
        (lambda m: m["checksums"]["adapter_config.json"].update(sha256="abc"), "checksum of adapter_config.json"),
        (lambda m: m["checksums"]["adapter_config.json"].update(size=-1), "checksum of adapter_config.json"),
        (lambda m: m["checksums"]["adapter_config.json"].update(size="12"), "checksum of adapter_config.json"),
        (lambda m: m["checksums"]["adapter_model.safetensors"].update(size=1), "adapter_model.safetensors does not"),
        (_set("files", "adapter_model.safetensors"), "'files' must be a list"),
        (_set("format_version", 1), "written before bundles recorded checksums"),
        (_set("format_version", 99), "Upgrade hf_calib"),
        (_set("format_version", True), "format_version True"),
        (_set("base_model", []), "'base_model' must be a JSON object"),
        (_set("task", "translation"), "unknown task"),
    ],
)
def test_tampered_manifest_fields_are_refused_before_any_weight(clf_bundle, monkeypatch, edit, message) -> None:
    rewrite_manifest(clf_bundle, edit)
    no_weight_loading(monkeypatch)
    with pytest.raises(BundleError, match=message):
        CalibratedAdapter.from_pretrained(clf_bundle, base_model=tiny_bert())


def test_a_manifest_without_fingerprint_is_refused_unless_opted_out(clf_bundle, monkeypatch) -> None:
    rewrite_manifest(clf_bundle, _drop("base_model"))
    with monkeypatch.context() as patch:
        no_weight_loading(patch)
        with pytest.raises(ValueError, match="no base-model fingerprint was recorded"):
            CalibratedAdapter.from_pretrained(clf_bundle, base_model=tiny_bert())
    with pytest.warns(UserWarning, match="no base-model fingerprint.*Loading anyway"):
        loaded = CalibratedAdapter.from_pretrained(clf_bundle, base_model=tiny_bert(), allow_base_model_mismatch=True)
    assert loaded.temperature_scaler.temperature == 1.3


@pytest.mark.parametrize(
    ("name", "edit", "field"),
    [
        ("calibration/temperature.json", lambda c: c.update(temperature="hot"), "temperature"),
        ("calibration/temperature.json", lambda c: c.update(temperature=float("nan")), "temperature"),
        ("adue_config.json", lambda c: c.update(hidden_size=200_000_000), "hidden_size"),
        ("adue_config.json", lambda c: c.update(num_labels="3"), "num_labels"),
    ],
)
def test_tampered_calibrator_configs_are_refused(clf_bundle, name, edit, field) -> None:
    path = clf_bundle / name
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))
    forge_checksum(clf_bundle, name)
    with pytest.raises(ValueError, match=field):
        CalibratedAdapter.from_pretrained(clf_bundle, base_model=tiny_bert())


def test_tampered_thermometer_size_fails_before_allocating(tmp_path, monkeypatch) -> None:
    t = Thermometer(ThermometerConfig(input_size=32, hidden_size=4))
    folder = CalibratedAdapter(lora_llama(), thermometer=t).save_pretrained(tmp_path / "b")
    path = folder / "calibration" / "thermometer_config.json"
    content = json.loads(path.read_text())
    content["config"]["hidden_size"] = 200_000_000  # ~25 GB of float32 weights if it were built
    path.write_text(json.dumps(content))
    forge_checksum(folder, "calibration/thermometer_config.json")
    base = tiny_llama()

    real_init = torch.nn.Linear.__init__

    def no_big_module(self, in_features, out_features, *args, **kwargs):
        if in_features * out_features > 10**6:
            raise AssertionError(f"a Linear({in_features}, {out_features}) was built before the check")
        real_init(self, in_features, out_features, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Linear, "__init__", no_big_module)
    with pytest.raises(ValueError, match="hidden_size"):
        CalibratedAdapter.from_pretrained(folder, base_model=base)


# --------------------------------------------------------------------------------------------- base models


@pytest.fixture
def llama_folder(tmp_path) -> Path:
    return CalibratedAdapter(lora_llama(), temperature=1.7).save_pretrained(tmp_path / "lm")


def deeper_or_shallower(layers: int):
    model = tiny_llama()
    config = model.config
    config.num_hidden_layers = layers
    other = type(model)(config)
    other.load_state_dict(model.state_dict(), strict=False)  # the shared layers keep their weights
    return other.eval()


@pytest.mark.parametrize("layers", [1, 3])
def test_base_with_another_depth_is_refused_before_any_weight(llama_folder, monkeypatch, layers) -> None:
    wrong = deeper_or_shallower(layers)
    no_weight_loading(monkeypatch)
    with pytest.raises(ValueError, match=f"num_hidden_layers: saved 2, model {layers}"):
        CalibratedAdapter.from_pretrained(llama_folder, base_model=wrong)


def test_base_with_another_depth_by_path_is_refused_before_its_weights(llama_folder, tmp_path, monkeypatch) -> None:
    deeper_or_shallower(3).save_pretrained(tmp_path / "deep")
    no_weight_loading(monkeypatch)
    with pytest.raises(ValueError, match="num_hidden_layers: saved 2, model 3"):
        CalibratedAdapter.from_pretrained(llama_folder, base_model=str(tmp_path / "deep"))


def test_base_with_other_weights_only_is_refused(llama_folder) -> None:
    with pytest.raises(ValueError, match=r"weights: \d+ of \d+ tensors hold other values"):
        CalibratedAdapter.from_pretrained(llama_folder, base_model=tiny_llama(seed=1))
    slightly = tiny_llama()
    with torch.no_grad():
        slightly.model.layers[1].mlp.down_proj.weight.mul_(1.01)  # one tensor, 1 % off
    with pytest.raises(ValueError, match=r"1 of \d+ tensors hold other values \(model.layers.1.mlp.down_proj.weight\)"):
        CalibratedAdapter.from_pretrained(llama_folder, base_model=slightly)
    with pytest.warns(UserWarning, match="Loading anyway"):
        CalibratedAdapter.from_pretrained(llama_folder, base_model=slightly, allow_base_model_mismatch=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_base_loaded_in_another_dtype_still_matches(llama_folder, tmp_path, dtype) -> None:
    reference = CalibratedAdapter.from_pretrained(llama_folder, base_model=tiny_llama())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no mismatch warning either
        loaded = CalibratedAdapter.from_pretrained(llama_folder, base_model=tiny_llama().to(dtype))
        tiny_llama().save_pretrained(tmp_path / "base")
        by_path = CalibratedAdapter.from_pretrained(llama_folder, base_model=str(tmp_path / "base"), dtype=dtype)
    assert loaded.temperature_scaler.temperature == by_path.temperature_scaler.temperature == 1.7
    with torch.no_grad():
        probs = loaded(**batch()).calibrated_probs
        torch.testing.assert_close(probs, reference(**batch()).calibrated_probs, atol=0.02, rtol=0)


def test_bundle_saved_from_a_half_precision_base_loads_on_float32(tmp_path) -> None:
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_llama().to(torch.bfloat16), config)
    folder = CalibratedAdapter(model, temperature=1.1).save_pretrained(tmp_path / "bf16")
    assert json.loads((folder / MANIFEST_FILE).read_text())["base_model"]["weights"]["dtype"] == "bfloat16"
    assert CalibratedAdapter.from_pretrained(folder, base_model=tiny_llama()).temperature_scaler.temperature == 1.1
    with pytest.raises(ValueError, match="hold other values"):
        CalibratedAdapter.from_pretrained(folder, base_model=tiny_llama(seed=3))


def test_quantized_base_falls_back_to_the_config_check_with_a_warning(llama_folder) -> None:
    base = tiny_llama()
    base.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    with pytest.warns(QuantizedModelWarning, match="this base model is quantized.*only the config was checked"):
        loaded = CalibratedAdapter.from_pretrained(llama_folder, base_model=base)
    assert loaded.temperature_scaler.temperature == 1.7
    with pytest.raises(ValueError, match="num_hidden_layers"):  # the config is still compared
        wrong = deeper_or_shallower(3)
        wrong.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
        CalibratedAdapter.from_pretrained(llama_folder, base_model=wrong)


def test_fingerprint_covers_every_shape_field_and_skips_adapter_weights(llama_folder, clf_bundle) -> None:
    saved = json.loads((llama_folder / MANIFEST_FILE).read_text())["base_model"]
    for key in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size"):
        assert saved[key] is not None, key
    names = set(saved["weights"]["tensors"])
    assert names == {n for n, _ in tiny_llama().named_parameters()} - {"lm_head.weight"} or names == {
        n for n, _ in tiny_llama().named_parameters()
    }
    clf = json.loads((clf_bundle / MANIFEST_FILE).read_text())["base_model"]
    assert not any("lora" in n or "classifier" in n or "adue" in n for n in clf["weights"]["tensors"])
    assert clf["num_labels"] == 3


# --------------------------------------------------------------------------------------------- pushing


def test_push_uploads_exactly_the_bundle(hub, clf_bundle) -> None:  # noqa: F811 - pytest fixture
    (clf_bundle / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    (clf_bundle / "notes").mkdir()
    (clf_bundle / "notes" / "ideas.md").write_text("private notes")
    (clf_bundle / "train.log").write_text("step 1 loss 2.3")
    (clf_bundle / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    (clf_bundle / ".cache").mkdir()
    (clf_bundle / ".cache" / "x.json").write_text("{}")
    expected = {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "adue_config.json",
        "adue_head.safetensors",
        "calibration.json",
        "calibration/temperature.json",
    }
    plan = push_folder(clf_bundle, "me/exact", dry_run=True)
    assert {name for name, _ in plan.files} == expected and hub.requests == []
    assert plan.ignored == [".cache/x.json", ".env", "adapter_model.bin", "notes/ideas.md", "train.log"]
    with pytest.warns(UserWarning, match=r"not uploading 5 file\(s\).*\.env.*train\.log"):
        push_folder(clf_bundle, "me/exact", token=TOKEN, endpoint=ENDPOINT)
    uploaded = hub.files("me/exact")
    assert set(uploaded) == expected
    for name in expected - {"README.md"}:
        assert uploaded[name] == (clf_bundle / name).read_bytes(), name
    # The card is regenerated for the target repository (its usage example loads me/exact), as planned.
    assert uploaded["README.md"] == plan.contents["README.md"] and b"me/exact" in uploaded["README.md"]
    assert hub.lfs_files("me/exact") >= {"adapter_model.safetensors", "adue_head.safetensors"}


def test_push_refuses_a_damaged_bundle_before_contacting_the_hub(hub, clf_bundle) -> None:  # noqa: F811
    path = clf_bundle / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="adapter_model.safetensors does not match its checksum"):
        push_folder(clf_bundle, "me/damaged", token=TOKEN, endpoint=ENDPOINT)
    assert hub.requests == []


def test_push_errors_carry_no_token(hub, clf_bundle) -> None:  # noqa: F811
    hub.fail_with = (401, f"Invalid credentials in Authorization header: Bearer {TOKEN} (token={TOKEN})")
    with pytest.raises(HubPushError) as caught:
        push_folder(clf_bundle, "me/denied", token=TOKEN, endpoint=ENDPOINT)
    assert TOKEN not in str(caught.value) and "401" in str(caught.value)
    assert TOKEN not in repr(caught.value.__cause__) if caught.value.__cause__ else True


@pytest.mark.parametrize(
    "text",
    [
        f"401 Client Error for url https://hub.invalid?token={TOKEN}",
        f"Authorization: Bearer {TOKEN}",
        f"bad token {TOKEN}",
        "token: hf_abcdefghijklmnopqrstuvwxyz",
    ],
)
def test_scrub_secrets_masks_anything_token_like(text) -> None:
    scrubbed = scrub_secrets(text, TOKEN)
    assert TOKEN not in scrubbed and "hf_abcdefghij" not in scrubbed and "***" in scrubbed


def test_hidden_files_are_never_uploaded_even_if_listed(hub, clf_bundle) -> None:  # noqa: F811
    (clf_bundle / ".secret.json").write_text("{}")
    rewrite_manifest(clf_bundle, lambda m: m["files"].append(".secret.json"))
    with pytest.raises(BundleError, match="not a plain file path"):
        push_folder(clf_bundle, "me/hidden", token=TOKEN, endpoint=ENDPOINT)
    assert hub.requests == []


def test_loading_ignores_files_outside_the_manifest(clf_bundle) -> None:
    (clf_bundle / "stray.safetensors").write_bytes(b"not even safetensors")
    loaded = CalibratedAdapter.from_pretrained(clf_bundle, base_model=tiny_bert())
    with torch.no_grad():
        assert loaded(**batch()).calibrated_probs.shape == (3, 3)
    assert VOCAB == 300


# --------------------------------------------------------------------------------------------- hf-calib push


def test_cli_push_dry_run_lists_files_and_sizes(hub, clf_bundle, capsys) -> None:  # noqa: F811
    from hf_calib import cli

    (clf_bundle / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    assert cli.main(["push", str(clf_bundle), "--repo-id", "me/dry", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "not uploaded (not part of the bundle): .env" in out
    listed = {line.split()[2] for line in out.splitlines() if line.startswith("would upload")}
    assert listed == {p.relative_to(clf_bundle).as_posix() for p in clf_bundle.rglob("*") if p.is_file()} - {".env"}
    assert "nothing was uploaded" in out and hub.requests == [] and TOKEN not in out


def test_cli_push_uploads_the_bundle_and_fails_in_one_line_without_the_token(
    hub,  # noqa: F811
    clf_bundle,
    capsys,
    monkeypatch,
) -> None:
    from hf_calib import cli

    monkeypatch.setenv("MY_TOKEN", TOKEN)
    (clf_bundle / "train.log").write_text("loss 2.3")
    assert cli.main(["push", str(clf_bundle), "--repo-id", "me/cli", "--token-env", "MY_TOKEN", "--private"]) == 0
    assert "train.log" not in hub.files("me/cli") and "calibration.json" in hub.files("me/cli")
    assert hub.created[-1]["visibility"] == "private"
    push_calls = ("/api/repos/create", "/api/validate-yaml", "/preupload/", "/commit/")
    api_auth = [auth for _, url, auth in hub.requests if any(call in url for call in push_calls)]
    assert len(api_auth) == 4 and set(api_auth) == {f"Bearer {TOKEN}"}, "the token from --token-env is used"
    capsys.readouterr()

    hub.fail_with = (401, f"Invalid token {TOKEN}; Authorization: Bearer {TOKEN}")
    with pytest.raises(SystemExit) as info:
        cli.main(["push", str(clf_bundle), "--repo-id", "me/cli", "--token-env", "MY_TOKEN"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "401" in err[0] and "$MY_TOKEN" in err[0] and "Traceback" not in captured.err
    assert TOKEN not in captured.err + captured.out


def test_a_temperature_at_its_bound_is_flagged_in_the_manifest_and_the_card(tmp_path) -> None:
    from hf_calib.scaling import TemperatureAtBoundWarning, TemperatureScaler

    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [5.0, 1.0], [1.0, 6.0]])  # every label is the top logit
    with pytest.warns(TemperatureAtBoundWarning, match="min_temperature"):
        scaler = TemperatureScaler().fit(logits, torch.tensor([0, 1, 0, 1]))
    assert scaler.at_bound == "min" and scaler.temperature == pytest.approx(0.01)
    folder = CalibratedAdapter(lora_llama(), temperature=scaler).save_pretrained(tmp_path / "b")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["components"]["temperature"]["at_bound"] == "min"
    card = (folder / "README.md").read_text()
    assert "**Caution:** the fit stopped at the lowest temperature it allows" in card
    loaded = CalibratedAdapter.from_pretrained(folder, base_model=tiny_llama())
    assert loaded.temperature_scaler.at_bound == "min"
    plain = CalibratedAdapter(lora_llama(), temperature=1.2).save_pretrained(tmp_path / "plain")
    assert "Caution" not in (plain / "README.md").read_text()
