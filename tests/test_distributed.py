"""CalibratedTrainer under DDP and FSDP2: 2 CPU processes (gloo) match one process on the same global batch."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"
STEPS = 3


def _load_script():
    spec = importlib.util.spec_from_file_location("train_tiny", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(SCRIPT), "--out", str(out), "--output-dir", str(tmp_path / name),
        "--per-device", "2", "--steps", str(STEPS), *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """One process, per-device batch 4 = the 2 x 2 global batch, sequential order."""
    script = _load_script()
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
    for name, values in want["param_sums"].items():
        assert got["param_sums"][name] == pytest.approx(values, rel=1e-5, abs=1e-6), name


def test_single_process_reference_matches_label_smoother(single_process):
    calibrated, plain = single_process
    assert calibrated["fused"] and calibrated["head_widths"] == [0]
    assert plain["head_widths"] == [1001]
    _assert_same_run(calibrated, plain)


@pytest.mark.distributed
def test_ddp_two_processes_match_single_process(tmp_path, single_process):
    report = _torchrun(tmp_path, "ddp")
    assert report["world_size"] == 2 and report["fused"] and report["head_widths"] == [0]
    _assert_same_run(report, single_process[0])


@pytest.mark.distributed
def test_fsdp2_two_processes_match_single_process(tmp_path, single_process):
    report = _torchrun(tmp_path, "fsdp", "--fsdp")
    assert report["world_size"] == 2 and report["fused"] and report["head_widths"] == [0]
    _assert_same_run(report, single_process[0])
