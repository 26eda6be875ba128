"""CalibratedTrainer under DDP and FSDP2: 2 CPU processes (gloo) match one process on the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _launch import load_script, torchrun

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"
STEPS = 3


def _torchrun(tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    torchrun(
        SCRIPT, "--out", str(out), "--output-dir", str(tmp_path / name), "--per-device", "2",
        "--steps", str(STEPS), *extra,
    )  # fmt: skip
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """One process, per-device batch 4 = the 2 x 2 global batch, sequential order."""
    script = load_script(SCRIPT)
    tmp = tmp_path_factory.mktemp("single")
    calibrated = script.run(
        str(tmp / "c.json"), trainer="calibrated", per_device=4, steps=STEPS, fsdp=False, output_dir=str(tmp / "c")
    )
    plain = script.run(
        str(tmp / "p.json"), trainer="plain", per_device=4, steps=STEPS, fsdp=False, output_dir=str(tmp / "p")
    )
    return calibrated, plain


def _assert_same_run(got: dict, want: dict) -> None:
    assert got["losses"] == pytest.approx(want["losses"], rel=1e-5)
    assert got["param_sums"].keys() == want["param_sums"].keys()
    # Training-token calibration: sums reduced over processes at each log, so 2 processes equal 1.
    assert len(got["train_calibration"]) == len(want["train_calibration"])
    for got_log, want_log in zip(got["train_calibration"], want["train_calibration"], strict=True):
        assert got_log.keys() == want_log.keys()
        for key, value in want_log.items():
            assert got_log[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    for name, values in want["param_sums"].items():
        assert got["param_sums"][name] == pytest.approx(values, rel=1e-5, abs=1e-6), name


def test_single_process_reference_matches_label_smoother(single_process):
    calibrated, plain = single_process
    assert calibrated["fused"] and calibrated["head_widths"] == [0]
    assert all(log["token_count"] > 0 and "token_ece" in log for log in calibrated["train_calibration"])
    assert plain["train_calibration"] == [{}] * STEPS
    assert plain["head_widths"] == [1001]
    _assert_same_run({**calibrated, "train_calibration": plain["train_calibration"]}, plain)


@pytest.mark.distributed
def test_ddp_two_processes_match_single_process(tmp_path, single_process):
    report = _torchrun(tmp_path, "ddp")
    assert report["world_size"] == 2 and report["fused"] and report["head_widths"] == [0]
    _assert_same_run(report, single_process[0])
