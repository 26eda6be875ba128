"""Token-level and multiple-choice calibration under DDP: 2 CPU processes (gloo) report exactly the
single-process metrics.

The eval set (13 rows, per-device batch 2, so 4 per step) does not divide evenly: distributed evaluation
pads the last batch with duplicated rows, which must not be counted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _launch import load_script, torchrun

SCRIPT = Path(__file__).parent / "scripts" / "eval_tiny.py"
KEYS = ("count", "ece", "rms_ce", "mce", "nll", "brier", "accuracy", "mean_confidence")


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    return load_script(SCRIPT).run(str(tmp / "report"), per_device=4, output_dir=str(tmp / "out"))


def _assert_same_metrics(got: dict, want: dict) -> None:
    # Counts exactly; the rest to float32 rounding of the logits (fused chunks vs the model's own matmul).
    assert got["eval_token_count"] == want["eval_token_count"]
    for key in KEYS:
        assert got[f"eval_token_{key}"] == pytest.approx(want[f"eval_token_{key}"], rel=1e-6, abs=1e-9), key


def test_single_process_reference(single_process):
    report = single_process
    assert report["fused"] and report["head_widths"] == [0]
    assert report["plain"]["eval_token_count"] == report["n_tokens"]
    _assert_same_metrics(report["calibrated"], report["plain"])
    assert 0.1 < report["plain"]["eval_token_accuracy"] < 0.9  # a non-trivial calibration problem
    assert {"eval_mc/macro/ece", "eval_mc/micro/nll", "eval_mc/micro/accuracy"} <= set(report["mc"])


@pytest.mark.distributed
def test_ddp_two_processes_match_single_process(tmp_path, single_process):
    out = tmp_path / "report"
    torchrun(SCRIPT, "--out", str(out), "--output-dir", str(tmp_path / "out"), "--per-device", "2")
    reports = [json.loads(Path(f"{out}.rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["world_size"] == 2 and report["fused"] and report["head_widths"] == [0]
        assert report["plain"]["eval_token_count"] == report["n_tokens"]  # no duplicated sample counted
        _assert_same_metrics(report["plain"], single_process["plain"])
        _assert_same_metrics(report["calibrated"], single_process["plain"])
        # Every rank scores every question with its (identical) replica: same values as one process.
        assert report["mc"].keys() == single_process["mc"].keys()
        for key, value in single_process["mc"].items():
            assert report["mc"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    # Only the main process draws: one diagram per trainer.
    assert len(reports[0]["written"]) == 2 and reports[1]["written"] == []
    assert all(Path(p).is_file() for p in reports[0]["written"])
