"""Pushing bundles to the Hub, against huggingface_hub with an in-process HTTP transport (no network).

``FakeHub`` answers the endpoints a push uses, as the Hub does: ``/api/repos/create``, ``/api/validate-yaml``
(the card's metadata must parse as YAML, and its ``model-index`` must have the fields the Hub requires),
``/api/models/{repo}/preupload/{rev}`` (binary files -- a NUL byte in the sample -- go to LFS, text files are
"regular"), the LFS batch API with its upload and verify actions, and ``/api/models/{repo}/commit/{rev}``
(ndjson; regular files as base64, LFS files by their SHA-256, which must have been uploaded and match). It
records every request and committed file. Xet storage is switched off (its transfers bypass huggingface_hub's
HTTP client), so binaries take the LFS protocol.

The last test runs against a real Hub only when ``HF_CALIB_TEST_HUB_TOKEN`` and ``HF_CALIB_TEST_HUB_ENDPOINT``
are set (a staging endpoint and a throw-away namespace); it is skipped otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import uuid
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub.utils._http import default_client_factory
from test_hub_bundle import VOCAB, batch, lora_bert, lora_llama, tiny_llama
from transformers import Trainer, TrainingArguments

from hf_calib.callbacks import CalibratedAdapterCallback
from hf_calib.hub import CalibratedAdapter, CalibrationReport, CardInfo
from hf_calib.scaling import TemperatureScaler
from hf_calib.trainer import CalibratedTrainer

TOKEN = "hf_FAKEsecretTOKEN1234567890"
ENDPOINT = "https://hub.invalid"


def card_errors(content: str) -> list[str]:
    """What the Hub's YAML validation would reject in a card (``README.md`` text) (the fields it requires)."""
    if not content.startswith("---\n"):
        return []  # no metadata block
    front, separator, _ = content[4:].partition("\n---")
    if not separator:
        return ["the metadata block is not closed by '---'"]
    try:
        data = yaml.safe_load(front)
    except yaml.YAMLError as err:
        return [f"invalid YAML: {err}"]
    if data is None:
        return []
    if not isinstance(data, dict):
        return ["metadata must be a mapping"]
    errors = []
    for entry in data.get("model-index") or []:
        if not isinstance(entry.get("name"), str):
            errors.append("model-index[].name must be a string")
        for result in entry.get("results") or []:
            if not isinstance((result.get("task") or {}).get("type"), str):
                errors.append("model-index[].results[].task.type is required")
            dataset = result.get("dataset") or {}
            if not (isinstance(dataset.get("name"), str) and isinstance(dataset.get("type"), str)):
                errors.append("model-index[].results[].dataset needs name and type")
            for metric in result.get("metrics") or []:
                if not isinstance(metric.get("type"), str) or "value" not in metric:
                    errors.append("model-index[].results[].metrics[] needs type and value")
    for key in ("datasets", "tags"):
        if key in data and not (isinstance(data[key], list) and all(isinstance(x, str) for x in data[key])):
            errors.append(f"{key} must be a list of strings")
    return errors


class FakeHub:
    """The Hub endpoints of a push, in process; ``commits`` maps each commit to ``{path: bytes}``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None]] = []  # (method, URL, Authorization header)
        self.created: list[dict] = []
        self.commits: list[dict] = []
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> bytes uploaded through LFS
        #: ``(status, message)`` to answer every request with (an outage, a refused token), or None.
        self.fail_with: tuple[int, str] | None = None

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        self.requests.append((request.method, str(request.url), request.headers.get("authorization")))
        if self.fail_with is not None:
            status, message = self.fail_with
            return httpx2.Response(status, json={"error": message})
        body = request.read()
        base = f"{request.url.scheme}://{request.url.host}"  # Trainer's own HfApi uses the default endpoint
        if path == "/api/repos/create":
            payload = json.loads(body)
            self.created.append(payload)
            repo = f"{payload['organization']}/{payload['name']}" if payload["organization"] else payload["name"]
            return httpx2.Response(200, json={"url": f"{base}/{repo}"})
        if path == "/api/validate-yaml":
            errors = card_errors(json.loads(body)["content"])
            if errors:
                return httpx2.Response(400, json={"error": "; ".join(errors)})
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            modes = [
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if b"\0" in base64.b64decode(f["sample"]) else "regular",
                    "shouldIgnore": False,
                }
                for f in files
            ]
            return httpx2.Response(200, json={"files": modes})
        if path.endswith(".git/info/lfs/objects/batch"):
            objects = [
                {
                    "oid": o["oid"],
                    "size": o["size"],
                    "actions": {
                        "upload": {"href": f"{base}/fake-lfs/{o['oid']}"},
                        "verify": {"href": f"{base}/fake-lfs-verify"},
                    },
                }
                for o in json.loads(body)["objects"]
            ]
            return httpx2.Response(200, json={"objects": objects, "transfer": "basic"})
        if path.startswith("/fake-lfs/") and request.method == "PUT":
            oid = path.rsplit("/", 1)[1]
            if hashlib.sha256(body).hexdigest() != oid:
                return httpx2.Response(400, json={"error": "uploaded bytes do not match the oid"})
            self.lfs_objects[oid] = body
            return httpx2.Response(200)
        if path == "/fake-lfs-verify":
            info = json.loads(body)
            ok = info["oid"] in self.lfs_objects and len(self.lfs_objects[info["oid"]]) == info["size"]
            return httpx2.Response(200 if ok else 404, json={})
        if "/commit/" in path:
            repo = path.split("/api/models/")[1].split("/commit/")[0]
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            files = {
                line["value"]["path"]: base64.b64decode(line["value"]["content"])
                for line in lines
                if line["key"] == "file"
            }
            lfs = {line["value"]["path"]: line["value"]["oid"] for line in lines if line["key"] == "lfsFile"}
            missing = [p for p, oid in lfs.items() if oid not in self.lfs_objects]
            if missing:
                return httpx2.Response(422, json={"error": f"LFS objects were never uploaded: {missing}"})
            files.update({p: self.lfs_objects[oid] for p, oid in lfs.items()})
            self.commits.append({"repo": repo, "message": lines[0]["value"]["summary"], "files": files, "lfs": lfs})
            oid = uuid.uuid4().hex + "0" * 8
            return httpx2.Response(200, json={"commitUrl": f"{base}/{repo}/commit/{oid}", "commitOid": oid})
        return httpx2.Response(404, json={"error": f"no fake endpoint for {request.method} {path}"})

    def files(self, repo: str) -> dict[str, bytes]:
        """The repository's content after all commits (later commits overwrite earlier files)."""
        content: dict[str, bytes] = {}
        for commit in self.commits:
            if commit["repo"] == repo:
                content.update(commit["files"])
        return content

    def lfs_files(self, repo: str) -> set[str]:
        """Paths of ``repo`` committed as LFS pointers."""
        return {path for commit in self.commits if commit["repo"] == repo for path in commit["lfs"]}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # PEFT's save_pretrained: no vocabulary lookup on the Hub
    # Xet transfers go through hf_xet's own HTTP stack, which no in-process transport can answer: use LFS.
    for module in (huggingface_hub._commit_api, huggingface_hub.hf_api):
        monkeypatch.setattr(module, "is_xet_available", lambda: False)
    fake = FakeHub()
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake)))
    try:
        yield fake
    finally:
        huggingface_hub.set_client_factory(default_client_factory)


def disk_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_push_to_hub_uploads_every_file_of_the_bundle(hub: FakeHub, tmp_path, caplog, capsys) -> None:
    model = lora_bert()
    with torch.no_grad():
        out = model(**batch(8))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    report = CalibrationReport.from_logits(out.logits, labels, temperature=1.3, uncertainty=out.uncertainty)
    bundle = CalibratedAdapter(model, temperature=1.3, report=report, card=CardInfo(base_model="tiny/bert"))
    caplog.set_level(logging.DEBUG)
    info = bundle.push_to_hub("me/calibrated", token=TOKEN, private=True, endpoint=ENDPOINT)

    assert hub.created == [{"name": "calibrated", "organization": "me", "visibility": "private", "type": "model"}]
    assert [c["message"] for c in hub.commits] == ["Upload calibrated adapter (hf_calib)"]
    assert info.oid and info.commit_url.startswith(f"{ENDPOINT}/me/calibrated/commit/")
    uploaded = hub.files("me/calibrated")
    local = disk_files(bundle.save_pretrained(tmp_path / "same", repo_id="me/calibrated"))
    assert (
        set(uploaded)
        == set(local)
        == {
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors",
            "adue_config.json",
            "adue_head.safetensors",
            "calibration.json",
            "calibration/temperature.json",
            "reliability_diagram.png",
        }
    )
    for name in ("adapter_model.safetensors", "adue_head.safetensors", "calibration/temperature.json"):
        assert uploaded[name] == local[name], name
    # Every request was authenticated with the token, which never reached a log line or the terminal.
    to_hub = [(method, url, auth) for method, url, auth in hub.requests if url.startswith(ENDPOINT)]
    lfs = {"adapter_model.safetensors", "adue_head.safetensors", "reliability_diagram.png"}
    assert hub.lfs_files("me/calibrated") == lfs, "binary files go through LFS, as on the Hub"
    urls = [url.removeprefix(ENDPOINT) for _, url, _ in to_hub]
    assert urls[:4] == [
        "/api/repos/create",
        "/api/validate-yaml",
        "/api/models/me/calibrated/preupload/main",
        "/me/calibrated.git/info/lfs/objects/batch",
    ]
    assert sorted(u for u in urls if u.startswith("/fake-lfs/")) == sorted(
        f"/fake-lfs/{hashlib.sha256(uploaded[name]).hexdigest()}" for name in lfs
    )
    assert urls[-1] == "/api/models/me/calibrated/commit/main"
    # The LFS storage URLs are the Hub's own here; huggingface_hub sends the token to the Hub endpoints only.
    to_hub = [r for r in to_hub if not r[1].removeprefix(ENDPOINT).startswith("/fake-lfs")]
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in to_hub)
    printed = capsys.readouterr()
    assert TOKEN not in caplog.text and TOKEN not in printed.out and TOKEN not in printed.err

    # What was uploaded loads back into the same model.
    repo = tmp_path / "download"
    for name, data in uploaded.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    from test_hub_bundle import tiny_bert

    loaded = CalibratedAdapter.from_pretrained(repo, base_model=tiny_bert())
    with torch.no_grad():
        assert torch.equal(loaded(**batch()).uncertainty, bundle(**batch()).uncertainty)


def test_hub_repo_id_downloads_only_json_safetensors_png_and_readme(hub: FakeHub, tmp_path, monkeypatch) -> None:
    bundle = CalibratedAdapter(lora_llama(), temperature=1.1)
    bundle.push_to_hub("me/lm", token=TOKEN, endpoint=ENDPOINT)
    (tmp_path / "snapshot").mkdir()
    for name, data in hub.files("me/lm").items():
        (tmp_path / "snapshot" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "snapshot" / name).write_bytes(data)
    calls = []

    def snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    loaded = CalibratedAdapter.from_pretrained("me/lm", base_model=tiny_llama(), revision="v1", token=TOKEN)
    assert calls == [
        {
            "repo_id": "me/lm",
            "revision": "v1",
            "token": TOKEN,
            "cache_dir": None,
            "endpoint": None,
            "allow_patterns": ["*.json", "*.safetensors", "*.png", "README.md"],
        }
    ]
    with torch.no_grad():
        assert torch.equal(loaded(**batch()).calibrated_probs, bundle(**batch()).calibrated_probs)


def test_push_refuses_a_partial_bundle(hub: FakeHub, tmp_path) -> None:
    from hf_calib.hub import BundleError, push_folder

    folder = CalibratedAdapter(lora_llama(), temperature=1.2).save_pretrained(tmp_path / "b")
    (folder / "calibration" / "temperature.json").unlink()
    with pytest.raises(BundleError, match="calibration/temperature.json is missing"):
        push_folder(folder, "me/partial", token=TOKEN, endpoint=ENDPOINT)
    assert hub.requests == [] and hub.commits == []


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, VOCAB, (n, 8), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.ids[i]}


def _args(tmp_path: Path, strategy: str, **kwargs) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        save_steps=1,
        save_strategy="steps",
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        label_smoothing_factor=0.1,
        push_to_hub=True,
        hub_model_id="me/run",
        hub_token=TOKEN,
        hub_strategy=strategy,
        # Trainer skips a checkpoint's push while the previous one is still uploading; the tests count every
        # push, so each waits for the one before (otherwise checkpoint-2 is sometimes never pushed).
        hub_always_push=True,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        **kwargs,
    )


@pytest.mark.parametrize("strategy", ["end", "every_save", "checkpoint", "all_checkpoints"])
def test_calibrated_trainer_pushes_the_whole_bundle(hub: FakeHub, tmp_path, strategy, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    model = lora_llama()
    model.train()
    trainer = CalibratedTrainer(
        model=model, args=_args(tmp_path, strategy), train_dataset=_Tokens(), eval_dataset=_Tokens(4)
    )
    trainer.train()
    trainer._finish_current_push()
    during = [c for c in hub.commits if c["message"].startswith("Training in progress")]
    if strategy == "end":
        assert during == [], "hub_strategy='end' pushes nothing while training"
    else:
        assert during, "every save is pushed"
        root = {name for c in during for name in c["files"] if "/" not in name or name.startswith("calibration/")}
        assert {"adapter_model.safetensors", "adapter_config.json", "calibration.json", "README.md"} <= root
        manifest = json.loads(during[0]["files"]["calibration.json"])
        assert manifest["label_smoothing"] == 0.1 and manifest["components"]["temperature"] is None
    in_folders = {name for c in hub.commits for name in c["files"] if "checkpoint" in name.split("/")[0]}
    if strategy == "checkpoint":
        assert {"last-checkpoint/calibration.json", "last-checkpoint/adapter_model.safetensors"} <= in_folders
    elif strategy == "all_checkpoints":
        for step in (1, 2):
            assert {f"checkpoint-{step}/calibration.json", f"checkpoint-{step}/README.md"} <= in_folders
    else:
        assert in_folders == set(), "only the checkpoint strategies upload checkpoint folders"

    # After training: evaluate, fit a temperature, push at the end; the README is the calibration card and,
    # without a report of its own, the bundle reports the evaluation's token-level calibration.
    metrics = trainer.evaluate()
    trainer.calibrated_adapter.temperature = TemperatureScaler(1.4)
    trainer.push_to_hub()
    final = hub.commits[-1]["files"]
    report = json.loads(final["calibration.json"])["report"]
    assert report["level"] == "token" and report["split"] == "eval"
    assert report["metrics"]["ece"] == pytest.approx(metrics["eval_token_ece"])
    assert report["metrics"]["n_samples"] == metrics["eval_token_count"]
    assert final["reliability_diagram.png"].startswith(b"\x89PNG")
    assert "measured without post-hoc scaling (T = 1)" in final["README.md"].decode()
    assert "(reliability_diagram.png)" in final["README.md"].decode()
    assert json.loads(final["calibration.json"])["components"]["temperature"]["value"] == 1.4
    assert json.loads(final["calibration/temperature.json"])["temperature"] == 1.4
    card = final["README.md"].decode()
    assert "library_name: peft" in card and "T = 1.4" in card and "Label smoothing" in card
    assert TOKEN not in caplog.text

    # The pushed repository is a loadable bundle (Trainer's extra files such as training_args.bin are ignored).
    repo = tmp_path / "download"
    for name, data in hub.files("me/run").items():
        if not name.startswith("last-checkpoint/"):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_bytes(data)
    loaded = CalibratedAdapter.from_pretrained(repo, base_model=tiny_llama())
    with torch.no_grad():
        out = loaded(**batch())
        reference = trainer.model.eval()(**batch()).logits
    torch.testing.assert_close(out.logits, reference)
    assert float(out.temperature) == pytest.approx(1.4)


def test_calibrated_trainer_keeps_a_single_bundle_writer(hub: FakeHub, tmp_path) -> None:
    mine = CalibratedAdapterCallback(temperature=TemperatureScaler(1.3))
    args = _args(tmp_path, "end")
    trainer = CalibratedTrainer(model=lora_llama(), args=args, train_dataset=_Tokens(), callbacks=[mine])
    writers = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, CalibratedAdapterCallback)]
    assert writers == [mine] and trainer.calibrated_adapter is mine
    assert mine.token_calibration is trainer.token_calibration
    with pytest.raises(TypeError, match="calibrated_adapter must be"):
        CalibratedTrainer(model=lora_llama(), args=args, calibrated_adapter=object())
    assert len(hub.created) == 1, "a bad argument fails before Trainer creates the Hub repository"


def test_callback_gives_plain_trainer_the_same_push(hub: FakeHub, tmp_path) -> None:
    model = lora_llama()
    callback = CalibratedAdapterCallback(card=CardInfo(datasets=["toy/sft"]))
    args = _args(tmp_path, "every_save")
    trainer = Trainer(model=model, args=args, train_dataset=_Tokens(), callbacks=[callback])
    trainer.train()
    trainer._finish_current_push()
    assert any("calibration.json" in c["files"] for c in hub.commits)
    callback.temperature = TemperatureScaler(0.9)
    callback.push_to_hub(trainer)
    final = hub.commits[-1]["files"]
    assert "hf_calib.hub import CalibratedAdapter" in final["README.md"].decode()
    assert "toy/sft" in final["README.md"].decode()
    assert json.loads(final["calibration/temperature.json"])["temperature"] == 0.9
    assert "create_model_card" not in vars(trainer), "the temporary card override is removed"


@pytest.mark.skipif(
    not (os.environ.get("HF_CALIB_TEST_HUB_TOKEN") and os.environ.get("HF_CALIB_TEST_HUB_ENDPOINT")),
    reason="set HF_CALIB_TEST_HUB_TOKEN and HF_CALIB_TEST_HUB_ENDPOINT (and HF_CALIB_TEST_HUB_NAMESPACE) to run",
)
def test_push_and_load_against_a_real_hub(tmp_path) -> None:
    token = os.environ["HF_CALIB_TEST_HUB_TOKEN"]
    endpoint = os.environ["HF_CALIB_TEST_HUB_ENDPOINT"]
    namespace = os.environ.get("HF_CALIB_TEST_HUB_NAMESPACE", "")
    repo_id = f"{namespace}/hf-calib-test-{uuid.uuid4().hex[:8]}".lstrip("/")
    bundle = CalibratedAdapter(lora_llama(), temperature=1.25)
    info = bundle.push_to_hub(repo_id, token=token, private=True, endpoint=endpoint)
    api = huggingface_hub.HfApi(endpoint=endpoint, token=token)
    try:
        files = set(api.list_repo_files(info.repo_url.repo_id))
        assert {"calibration.json", "calibration/temperature.json", "adapter_model.safetensors", "README.md"} <= files
        loaded = CalibratedAdapter.from_pretrained(
            info.repo_url.repo_id, base_model=tiny_llama(), token=token, cache_dir=tmp_path, endpoint=endpoint
        )
        with torch.no_grad():
            assert torch.equal(loaded(**batch()).calibrated_probs, bundle(**batch()).calibrated_probs)
    finally:
        api.delete_repo(info.repo_url.repo_id)
