"""The offline `evaluate` modules (ECE, Brier, misclassification AUROC) against hf_calib.metrics and sklearn.

``evaluate`` reads its cache locations and offline flags from the environment once, at import time, so the
modules are loaded in ONE child process started with ``HF_HOME`` / ``XDG_CACHE_HOME`` in a temporary folder,
``HF_HUB_OFFLINE=1`` and ``HF_EVALUATE_OFFLINE=1``, and with every socket connection and DNS lookup replaced by
a recorder that raises: any network attempt is reported back and fails the tests. The child writes what the
modules return to a JSON file; the tests compare it with the library computed here on the same inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from hf_calib.metrics import (
    brier_score,
    calibration_error,
    misclassification_auroc,
    top_label_calibration_error,
    top_label_confidence,
)
from hf_calib.metrics.evaluate_support import EVALUATE_MODULE_NAMES, evaluate_module

_CHILD = r"""
import json, socket, sys

attempts = []


def _deny(*args, **kwargs):
    attempts.append(repr(args)[:200])
    raise OSError("network access is disabled in this test")


socket.socket.connect = _deny
socket.socket.connect_ex = _deny
socket.create_connection = _deny
socket.getaddrinfo = _deny

import evaluate

from hf_calib.metrics.evaluate_support import evaluate_module

inputs = json.load(open(sys.argv[1]))
out = {
    "offline_flag": bool(evaluate.config.HF_EVALUATE_OFFLINE),
    "modules_cache": str(evaluate.config.HF_MODULES_CACHE),
}


def batches(module, predictions, references, size=97, **kwargs):
    for start in range(0, len(predictions), size):
        module.add_batch(predictions=predictions[start : start + size], references=references[start : start + size])
    return module.compute(**kwargs)


def error_of(fn):
    try:
        fn()
    except ValueError as err:
        return str(err)
    return None


conf, correct = inputs["confidences"], inputs["correct"]
probs, labels = inputs["probs"], inputs["labels"]
unc, errors = inputs["uncertainty"], inputs["errors"]

ece = evaluate.load(evaluate_module("ece"))
out["ece_compute"] = ece.compute(predictions=conf, references=correct)
out["ece_options"] = [
    ece.compute(predictions=conf, references=correct, n_bins=n_bins, norm=norm, binning=binning)
    for n_bins, norm, binning in inputs["ece_options"]
]
out["ece_batches"] = batches(ece, conf, correct, n_bins=10)
out["ece_probs"] = ece.compute(predictions=probs, references=labels)
out["ece_probs_batches"] = batches(ece, probs, labels)
out["ece_bool"] = ece.compute(predictions=conf, references=[bool(c) for c in correct])
out["ece_non_binary"] = error_of(lambda: ece.compute(predictions=[0.9, 0.8], references=[0.9, 1]))
out["ece_bad_norm"] = error_of(lambda: ece.compute(predictions=conf, references=correct, norm="l3"))
out["ece_out_of_range"] = error_of(lambda: ece.compute(predictions=[1.5, 0.8], references=[1, 1]))

brier = evaluate.load(evaluate_module("brier"))
out["brier_compute"] = brier.compute(predictions=probs, references=labels)
out["brier_normalized"] = brier.compute(predictions=probs, references=labels, normalize=True)
out["brier_batches"] = batches(brier, probs, labels)
out["brier_not_normalised_rows"] = error_of(lambda: brier.compute(predictions=[[0.9, 0.9]], references=[0]))
out["brier_label_range"] = error_of(lambda: brier.compute(predictions=[[0.5, 0.5]], references=[2]))

auroc = evaluate.load(evaluate_module("misclassification_auroc"))
out["auroc_compute"] = auroc.compute(predictions=unc, references=errors)
out["auroc_batches"] = batches(auroc, unc, errors)
out["auroc_no_error"] = error_of(lambda: auroc.compute(predictions=[0.1, 0.2], references=[0, 0]))

# evaluate also accepts the path of the script itself.
by_file = evaluate.load(evaluate_module("ece") + "/ece.py")
out["ece_by_file"] = by_file.compute(predictions=conf, references=correct)

out["network_attempts"] = attempts
json.dump(out, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def data() -> dict[str, list]:
    g = torch.Generator().manual_seed(0)
    n, c = 600, 4
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    probs = torch.softmax(logits, dim=1)
    labels = torch.multinomial(torch.softmax(logits * 0.6, dim=1), 1, generator=g).squeeze(1)
    conf, _, hit = top_label_confidence(probs, labels)
    # A noisy uncertainty: informative but not perfect, with a few exact ties.
    unc = ((1 - conf) + 0.2 * torch.rand(n, generator=g, dtype=torch.float64)).round(decimals=2)
    return {
        "confidences": conf.tolist(),
        "correct": hit.int().tolist(),
        "probs": probs.tolist(),
        "labels": labels.tolist(),
        "uncertainty": unc.tolist(),
        "errors": (~hit).int().tolist(),
        "ece_options": [[10, "l1", "uniform"], [7, "l2", "uniform"], [15, "max", "uniform"], [10, "l1", "quantile"]],
    }


@pytest.fixture(scope="module")
def offline(data, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("evaluate_offline")
    (folder / "inputs.json").write_text(json.dumps(data))
    env = dict(os.environ)
    env.update(
        HF_HOME=str(folder / "hf_home"),
        XDG_CACHE_HOME=str(folder / "xdg_cache"),
        HF_HUB_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    for name in ("HF_MODULES_CACHE", "HF_METRICS_CACHE", "HF_EVALUATE_CACHE", "HF_DATASETS_CACHE"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder / "inputs.json"), str(folder / "outputs.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads((folder / "outputs.json").read_text())
    out["folder"] = str(folder)
    return out


def _close(value: float, reference: float) -> bool:
    return value == pytest.approx(reference, rel=1e-12, abs=1e-15)


def test_unknown_name_lists_available_modules():
    with pytest.raises(ValueError, match="available: brier, ece, misclassification_auroc"):
        evaluate_module("accuracy")
    with pytest.raises(ValueError, match="unknown evaluate module"):
        evaluate_module(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", EVALUATE_MODULE_NAMES)
def test_module_path_is_a_folder_holding_its_same_named_script(name):
    # evaluate.load treats a local folder as a module only if it holds <folder name>.py.
    folder = Path(evaluate_module(name))
    assert folder.is_absolute() and folder.name == name
    script = folder / f"{name}.py"
    assert script.is_file()
    # evaluate copies the script alone: relative imports would make it fetch files, so there must be none.
    assert not any(line.startswith(("from .", "import .")) for line in script.read_text().splitlines())


def test_loads_offline_without_any_network_access(offline):
    assert offline["network_attempts"] == []
    assert offline["offline_flag"] is True
    cache = Path(offline["modules_cache"])
    assert cache.is_relative_to(offline["folder"])
    for name in EVALUATE_MODULE_NAMES:
        assert list(cache.glob(f"evaluate_modules/metrics/{name}/*/{name}.py")), f"{name} was not copied to {cache}"


def test_ece_module_matches_library(offline, data):
    conf, hit = data["confidences"], data["correct"]
    assert offline["ece_compute"] == {"ece": pytest.approx(calibration_error(conf, hit), rel=1e-12)}
    assert offline["ece_bool"] == offline["ece_compute"]
    assert offline["ece_by_file"] == offline["ece_compute"]
    assert offline["ece_batches"] == {"ece": pytest.approx(calibration_error(conf, hit, n_bins=10), rel=1e-12)}
    names = {("l1", "uniform"): "ece", ("l2", "uniform"): "rms_ce", ("max", "uniform"): "mce"}
    names[("l1", "quantile")] = "adaptive_ece"
    for (n_bins, norm, binning), got in zip(data["ece_options"], offline["ece_options"], strict=True):
        want = calibration_error(conf, hit, n_bins=n_bins, norm=norm, binning=binning)
        assert list(got) == [names[(norm, binning)]]
        assert _close(next(iter(got.values())), want)
    # The options change the value, so the comparison above can tell whether they were passed through.
    assert len({round(next(iter(got.values())), 12) for got in offline["ece_options"]}) == len(data["ece_options"])


def test_ece_module_from_probability_rows(offline, data):
    conf, _, hit = top_label_confidence(data["probs"], data["labels"])
    want = calibration_error(conf, hit)
    assert _close(offline["ece_probs"]["ece"], want)
    assert _close(offline["ece_probs_batches"]["ece"], want)
    # For 4 classes the top-label ECE differs, so this is the plain ECE of the top-1 confidences.
    assert not _close(want, top_label_calibration_error(data["probs"], data["labels"]))


def test_brier_module_matches_library_and_numpy(offline, data):
    p, y = np.asarray(data["probs"]), np.asarray(data["labels"])
    reference = float(((p - np.eye(p.shape[1])[y]) ** 2).sum(axis=1).mean())
    assert _close(offline["brier_compute"]["brier"], brier_score(p, y))
    assert _close(offline["brier_compute"]["brier"], reference)
    assert _close(offline["brier_batches"]["brier"], reference)
    assert list(offline["brier_normalized"]) == ["brier_normalized"]
    assert _close(offline["brier_normalized"]["brier_normalized"], reference / p.shape[1])


def test_auroc_module_matches_library_and_sklearn(offline, data):
    u, e = data["uncertainty"], data["errors"]
    assert _close(offline["auroc_compute"]["misclassification_auroc"], misclassification_auroc(u, e))
    assert _close(offline["auroc_compute"]["misclassification_auroc"], roc_auc_score(e, u))
    assert _close(offline["auroc_batches"]["misclassification_auroc"], roc_auc_score(e, u))


def test_modules_raise_the_library_errors(offline):
    assert "correct must hold only 0/1" in offline["ece_non_binary"]
    assert "norm must be one of" in offline["ece_bad_norm"]
    assert "confidences must lie in [0, 1]" in offline["ece_out_of_range"]
    assert "must sum to 1" in offline["brier_not_normalised_rows"]
    assert "labels must lie in [0, 2)" in offline["brier_label_range"]
    assert "undefined without errors" in offline["auroc_no_error"]
