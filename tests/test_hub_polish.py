"""Hub polish (issue 13, item 8): honest model-index datasets, cards regenerated for the repository pushed to,
calibrators loaded from Hub ids (only their own JSON / safetensors files), usual file permissions.

The Hub is never contacted: pushes go through the in-process ``FakeHub`` of ``tests/test_hub_push.py`` (which
validates the card's metadata as the Hub does) and downloads through a fake ``snapshot_download`` that serves a
local folder and records what was asked for.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import stat
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import EvalResult, ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from test_hub_bundle import batch, class_report, lora_bert, lora_llama, tiny_llama
from test_hub_push import ENDPOINT, TOKEN, FakeHub, card_errors, hub  # noqa: F401 - the fixture is used by name

from hf_calib import cli
from hf_calib.hub import CalibratedAdapter, CalibrationReport, CardInfo, push_folder
from hf_calib.hub.card import card_for_repo
from hf_calib.scaling import TemperatureScaler, Thermometer, ThermometerConfig


@pytest.fixture(autouse=True)
def _no_hub_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # PEFT's save_pretrained: no vocabulary lookup on the Hub


def _model_index(card_text: str) -> list[dict]:
    front = card_text[4:].partition("\n---")[0]
    return yaml.safe_load(front)["model-index"]


def _report(dataset: str | None = None) -> CalibrationReport:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(30, 3, generator=g)
    return CalibrationReport.from_logits(logits, torch.arange(30) % 3, temperature=1.2, dataset=dataset, split="eval")


# --------------------------------------------------------------------------------------------- 1. card datasets


@pytest.mark.parametrize(
    ("report_dataset", "card", "expected"),
    [
        ("org/held-out", CardInfo(datasets=["org/train"], eval_dataset="org/other"), "org/held-out"),
        (None, CardInfo(datasets=["org/train"]), "org/train"),
        (None, CardInfo(datasets=["a/x", "b/y"], eval_dataset="b/y"), "b/y"),
        (None, CardInfo(datasets=["a/x", "b/y"]), None),  # ambiguous: not guessed
        (None, CardInfo(), None),
    ],
)
def test_model_index_dataset_comes_from_the_report_or_the_card(report_dataset, card, expected) -> None:
    bundle = CalibratedAdapter(lora_llama(), temperature=1.2, report=_report(report_dataset), card=card)
    text = bundle.model_card("me/lm").content
    # As the Hub validates it (the fake Hub's rules) and as huggingface_hub parses it back.
    assert card_errors(text) == []
    name, results = model_index_to_eval_results(_model_index(text))
    assert name == "lm" and results and all(isinstance(r, EvalResult) for r in results)
    parsed = ModelCard(text).data.eval_results
    assert [(r.dataset_type, r.dataset_name) for r in parsed] == [(r.dataset_type, r.dataset_name) for r in results]
    for result in results:
        assert result.dataset_split == "eval"
        if expected is None:
            assert (result.dataset_type, result.dataset_name) == ("custom", "held-out calibration set")
        else:
            assert (result.dataset_type, result.dataset_name) == (expected, expected), "never 'custom' when known"
    body = ModelCard(text).text
    assert f"Measured on {expected or 'a held-out set'} (eval split)" in body


def test_card_info_round_trip_keeps_eval_dataset_and_reads_old_manifests() -> None:
    info = CardInfo(base_model="b/m", datasets="a/x", eval_dataset="a/x-test", tags="t")
    assert CardInfo.from_dict(info.to_dict()) == info
    old = {k: v for k, v in info.to_dict().items() if k != "eval_dataset"}  # a manifest from before the field
    assert CardInfo.from_dict(old).eval_dataset is None
    assert CardInfo.from_dict({**old, "from_the_future": 1}).datasets == ["a/x"]
    assert CardInfo.from_dict(None) == CardInfo()
    with pytest.raises(TypeError, match="eval_dataset must be"):
        CardInfo(eval_dataset=["a/x"])


# --------------------------------------------------------------------------------------------- 2. push regenerates


@pytest.fixture
def clf(tmp_path) -> tuple[CalibratedAdapter, Path]:
    model = lora_bert()
    card = CardInfo(base_model="tiny/bert", datasets=["org/sst"], license="apache-2.0")
    bundle = CalibratedAdapter(model, temperature=0.9, report=class_report(model, 0.9), card=card)
    return bundle, bundle.save_pretrained(tmp_path / "local")  # no repo id: the placeholder example


def test_push_uploads_the_card_save_pretrained_writes_for_the_repo(hub: FakeHub, clf, tmp_path) -> None:  # noqa: F811
    bundle, folder = clf
    saved = (folder / "README.md").read_bytes()
    assert b'from_pretrained("path/to/this/folder"' in saved
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    plan = push_folder(folder, "me/x", dry_run=True)
    expected = (bundle.save_pretrained(tmp_path / "for-x", repo_id="me/x") / "README.md").read_bytes()
    assert plan.contents == {"README.md": expected}
    assert dict(plan.files)["README.md"] == len(expected)
    assert plan.notes["README.md"] == "model card regenerated for me/x" and hub.requests == []

    push_folder(folder, "me/x", token=TOKEN, endpoint=ENDPOINT)
    uploaded = hub.files("me/x")
    assert uploaded["README.md"] == expected
    card = ModelCard(expected.decode())
    assert card.data.model_name == "x" and card.text.startswith("\n# x\n")
    assert 'CalibratedAdapter.from_pretrained("me/x", base_model=base)' in card.text
    for name in set(uploaded) - {"README.md"}:
        assert uploaded[name] == (folder / name).read_bytes(), name
    # The folder is untouched, and it still verifies (the README is not checksummed).
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    from test_hub_bundle import tiny_bert

    CalibratedAdapter.from_pretrained(folder, base_model=tiny_bert())


def test_a_card_saved_for_another_repo_or_with_its_own_name(hub: FakeHub, tmp_path) -> None:  # noqa: F811
    model = lora_llama()
    named = CalibratedAdapter(model, temperature=1.1, report=_report(), card=CardInfo(model_name="My model"))
    plain = CalibratedAdapter(model, temperature=1.1, report=_report("org/eval"))
    for i, bundle in enumerate((named, plain)):
        folder = bundle.save_pretrained(tmp_path / f"b{i}", repo_id="old/name")
        expected = bundle.model_card("new/repo").content
        plan = push_folder(folder, "new/repo", dry_run=True)
        assert plan.contents["README.md"].decode() == expected
        assert (bundle.card.model_name or "repo") == ModelCard(expected).data.model_name
        # Already written for the target: uploaded from the folder as it is.
        again = push_folder(folder, "old/name", dry_run=True)
        assert again.contents == {} and again.notes["README.md"] == "model card already written for old/name"


def test_a_bare_name_gets_the_namespace_the_hub_answers(hub: FakeHub, clf, monkeypatch) -> None:  # noqa: F811
    bundle, folder = clf
    answer = FakeHub.__call__

    def create_in_my_namespace(self, request):
        if request.url.path == "/api/repos/create":
            self.requests.append((request.method, str(request.url), request.headers.get("authorization")))
            return httpx2.Response(200, json={"url": f"{ENDPOINT}/me/bare"})
        return answer(self, request)

    monkeypatch.setattr(FakeHub, "__call__", create_in_my_namespace)
    push_folder(folder, "bare", token=TOKEN, endpoint=ENDPOINT)
    assert hub.files("me/bare")["README.md"].decode() == bundle.model_card("me/bare").content


def test_a_hand_written_readme_goes_as_saved_with_a_warning(hub: FakeHub, clf) -> None:  # noqa: F811
    _, folder = clf
    (folder / "README.md").write_text("---\nlicense: mit\n---\n\n# Mine\n\nNo usage example here.\n")
    with pytest.warns(UserWarning, match="not an hf_calib model card"):
        plan = push_folder(folder, "me/own", dry_run=True)
    assert plan.contents == {} and plan.notes["README.md"].startswith("uploaded as saved")
    (folder / "README.md").write_text("---\n[unclosed\n---\nbody\n")  # metadata that does not parse
    with pytest.warns(UserWarning, match="not an hf_calib model card"):
        assert push_folder(folder, "me/own", dry_run=True).contents == {}
    with pytest.raises(ValueError, match="valid Hub repository id"):
        push_folder(folder, "me/x y", dry_run=True)


def test_card_for_repo_is_exactly_the_builder_for_every_pair_of_ids() -> None:
    bundle = CalibratedAdapter(lora_llama(), temperature=1.1, report=_report("org/eval"))
    for old in (None, "me/a", "yes"):
        for new in ("me/x", "me/yes", "on", "me/123"):
            got = card_for_repo(bundle.model_card(old).content, new)
            assert got == bundle.model_card(new).content, (old, new)
    crlf = bundle.model_card(None).content.replace("\n", "\r\n")  # a card edited on Windows keeps its newlines
    assert card_for_repo(crlf, "me/x") == bundle.model_card("me/x").content.replace("\n", "\r\n")
    assert card_for_repo("# no metadata, no example\n", "me/x") is None


def test_cli_dry_run_shows_the_regenerated_card(hub: FakeHub, clf, capsys) -> None:  # noqa: F811
    _, folder = clf
    assert cli.main(["push", str(folder), "--repo-id", "me/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload README.md (" in out and "model card regenerated for me/x)" in out
    assert "--- README.md (saved)" in out and "+++ README.md (uploaded to me/x)" in out
    assert '-model = CalibratedAdapter.from_pretrained("path/to/this/folder", base_model=base)' in out
    assert '+model = CalibratedAdapter.from_pretrained("me/x", base_model=base)' in out
    assert "-# calibrated-adapter" in out and "+# x" in out and "nothing was uploaded" in out
    assert hub.requests == []


def test_cli_push_uploads_the_regenerated_card(hub: FakeHub, clf, capsys, monkeypatch) -> None:  # noqa: F811
    bundle, folder = clf
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli.main(["push", str(folder), "--repo-id", "me/cli"]) == 0
    out = capsys.readouterr().out
    assert "README.md: model card regenerated for me/cli" in out and TOKEN not in out
    assert hub.files("me/cli")["README.md"].decode() == bundle.model_card("me/cli").content


# --------------------------------------------------------------------------------------------- 3. Hub ids


class FakeSnapshots:
    """``snapshot_download`` serving ``root`` (a repository's files): records each call, copies only what the
    ``allow_patterns`` match into a fresh snapshot folder, as huggingface_hub does."""

    def __init__(self, root: Path, snapshots: Path) -> None:
        self.root, self.snapshots, self.calls = root, snapshots, []

    def __call__(self, **kwargs) -> str:
        self.calls.append(kwargs)
        target = self.snapshots / f"snapshot-{len(self.calls)}"
        target.mkdir(parents=True)
        for path in self.root.rglob("*"):
            name = path.relative_to(self.root).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(name, p) for p in kwargs["allow_patterns"]):
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target / name)
        return str(target)


@pytest.fixture
def hub_repo(tmp_path, monkeypatch) -> tuple[Path, FakeSnapshots]:
    """A bundle as its Hub repository holds it, plus a stray pickle and code, behind a fake snapshot_download."""
    model = lora_llama()
    thermometer = Thermometer(ThermometerConfig(input_size=32, hidden_size=4))
    root = CalibratedAdapter(model, thermometer=thermometer).save_pretrained(tmp_path / "repo", repo_id="me/bundle")
    TemperatureScaler(1.7).save_pretrained(root / "calibration", model=model)
    TemperatureScaler(0.8).save_pretrained(root)
    for name in ("calibration/temperature.bin", "calibration/thermometer.pt", "pytorch_model.bin"):
        (root / name).write_bytes(b"\x80\x04pickle")
    (root / "calibration" / "loader.py").write_text("import os\n")
    fake = FakeSnapshots(root, tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return root, fake


def _only_own_files(fake: FakeSnapshots, allowed: set[str]) -> None:
    for call in fake.calls:
        assert set(call["allow_patterns"]) <= allowed, call["allow_patterns"]
        assert all(p.endswith((".json", ".safetensors")) for p in call["allow_patterns"])
        assert not any(fnmatch.fnmatch(bad, p) for p in call["allow_patterns"] for bad in ("x.bin", "x.pt", "x.py"))


def test_temperature_from_a_hub_id(hub_repo) -> None:
    _, fake = hub_repo
    scaler = TemperatureScaler.from_pretrained("me/bundle", subfolder="calibration", revision="v2", token=TOKEN)
    assert scaler.temperature == 1.7 and scaler.model_fingerprint is not None
    assert fake.calls == [
        {
            "repo_id": "me/bundle",
            "revision": "v2",
            "token": TOKEN,
            "cache_dir": None,
            "endpoint": None,
            "allow_patterns": ["calibration/temperature.json"],
        }
    ]
    assert TemperatureScaler.from_pretrained("me/bundle", cache_dir="/tmp/c").temperature == 0.8
    assert fake.calls[-1]["allow_patterns"] == ["temperature.json"] and fake.calls[-1]["cache_dir"] == "/tmp/c"
    # With the model: the recorded fingerprint is checked as for a local folder.
    with pytest.raises(ValueError, match="fitted on a different base model"):
        TemperatureScaler.from_pretrained("me/bundle", tiny_llama(hidden=16), subfolder="calibration")
    _only_own_files(fake, {"temperature.json", "calibration/temperature.json"})


def test_thermometer_from_a_hub_id(hub_repo) -> None:
    root, fake = hub_repo
    loaded = Thermometer.from_pretrained("me/bundle", subfolder="calibration")
    local = Thermometer.from_pretrained(root / "calibration")
    for (name, a), (_, b) in zip(loaded.state_dict().items(), local.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert fake.calls[0]["allow_patterns"] == [
        "calibration/thermometer_config.json",
        "calibration/thermometer.safetensors",
    ]
    _only_own_files(fake, {"calibration/thermometer_config.json", "calibration/thermometer.safetensors"})
    snapshot = Path(fake.snapshots / "snapshot-1")
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()) == [
        "calibration/thermometer.safetensors",
        "calibration/thermometer_config.json",
    ]
    with pytest.raises(FileNotFoundError, match="thermometer_config.json"):
        Thermometer.from_pretrained("me/bundle")  # the repository root holds none


def test_local_folders_never_touch_the_network(hub_repo, tmp_path, monkeypatch) -> None:
    root, fake = hub_repo
    monkeypatch.chdir(root.parent)
    assert TemperatureScaler.from_pretrained("repo", subfolder="calibration").temperature == 1.7  # relative str
    assert TemperatureScaler.from_pretrained(root / "calibration").temperature == 1.7
    assert Thermometer.from_pretrained(Path("repo/calibration")).config.hidden_size == 4
    bundle = CalibratedAdapter.from_pretrained(Path("repo"), base_model=tiny_llama())
    with torch.no_grad():
        assert bundle(**batch()).calibrated_probs.shape[:2] == (3, 7)
    for missing in (tmp_path / "nowhere", Path("me/nowhere")):  # a pathlib.Path is always local
        with pytest.raises(FileNotFoundError, match=r"directory=.*is not a folder.*local path"):
            TemperatureScaler.from_pretrained(missing)
    assert fake.calls == []


@pytest.mark.parametrize("bad", ["./missing", "~/missing-hf-calib", "a/b/c", "not a repo", "x--y", "/abs/missing"])
def test_neither_a_folder_nor_a_repo_id_is_named(hub_repo, bad) -> None:
    _, fake = hub_repo
    for cls in (TemperatureScaler, Thermometer):
        with pytest.raises(FileNotFoundError, match=r"directory='.*' is not a folder \(and not a Hub repository id"):
            cls.from_pretrained(bad)
    with pytest.raises(FileNotFoundError, match=r"path_or_repo_id='.*' is not a bundle folder"):
        CalibratedAdapter.from_pretrained(bad, base_model=tiny_llama())
    assert fake.calls == []


def test_a_file_is_not_a_folder_and_subfolders_stay_inside(hub_repo, tmp_path) -> None:
    root, fake = hub_repo
    with pytest.raises(FileNotFoundError, match="exists but is not a folder"):
        TemperatureScaler.from_pretrained(str(root / "calibration.json"))
    for subfolder in ("../x", "/etc", "a/../../b"):
        with pytest.raises(ValueError, match="subfolder must be a relative folder"):
            TemperatureScaler.from_pretrained("me/bundle", subfolder=subfolder)
    assert fake.calls == []


def test_bundles_still_download_their_safe_patterns(hub_repo) -> None:
    _, fake = hub_repo
    CalibratedAdapter.from_pretrained("me/bundle", base_model=tiny_llama(), token=TOKEN)
    assert fake.calls == [
        {
            "repo_id": "me/bundle",
            "revision": None,
            "token": TOKEN,
            "cache_dir": None,
            "endpoint": None,
            "allow_patterns": ["*.json", "*.safetensors", "*.png", "README.md"],
        }
    ]


def test_scaling_does_not_import_the_hub() -> None:
    import ast

    import hf_calib.scaling

    for path in Path(hf_calib.scaling.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = ("." * node.level) + (node.module or "")
                assert "hub" not in module.split("."), (path.name, module)


# --------------------------------------------------------------------------------------------- 4. permissions


def test_calibrator_files_get_the_usual_permissions(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        TemperatureScaler(1.3).save_pretrained(tmp_path / "t" / "nested")
        Thermometer(ThermometerConfig(input_size=8, hidden_size=4)).save_pretrained(tmp_path / "m" / "nested")
        CalibratedAdapter(lora_llama(), temperature=1.3).save_pretrained(tmp_path / "b")
    finally:
        os.umask(old)
    for root in (tmp_path / "t", tmp_path / "m", tmp_path / "b"):
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
    assert json.loads((tmp_path / "t" / "nested" / "temperature.json").read_text())["temperature"] == 1.3
