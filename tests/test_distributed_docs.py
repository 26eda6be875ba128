"""The ``torchrun`` / ``accelerate launch`` commands of docs/distributed.md, run as written (CPU, gloo).

Every such line of the page's ```bash blocks is run with only its launcher replaced by the one of this
Python environment (``<venv>/bin/torchrun``, ``<venv>/bin/accelerate``), from a scratch folder that holds
``examples/distributed_tiny.py``, with ``OMP_NUM_THREADS=1``. Each must succeed, report 2 processes under
DDP and the fused loss, and print finite metrics; in float32 its training losses and token calibration
metrics must equal a single-process run of the same script (same global batch), in bf16 come close to one.
"""

from __future__ import annotations

import ast
import contextlib
import io
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _launch import load_script

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "distributed.md"
EXAMPLE = "examples/distributed_tiny.py"
BIN = Path(sys.executable).parent  # the environment's scripts: torchrun, accelerate
LAUNCHERS = ("torchrun", "accelerate")
TOKEN_KEYS = ("ece", "rms_ce", "mce", "nll", "brier", "accuracy", "mean_confidence")
PRINTED = ("eval_loss", "eval_token_count", *(f"eval_token_{k}" for k in TOKEN_KEYS))
# Launcher variables a surrounding launch (or an earlier in-process run) may have left behind.
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

GLOO = torch.distributed.is_available() and torch.distributed.is_gloo_available()
needs_gloo = pytest.mark.skipif(not GLOO, reason="torch.distributed with the gloo backend is unavailable in this torch")


def doc_commands() -> list[str]:
    """The ``torchrun`` / ``accelerate launch`` command lines of the page's ```bash blocks (``\\`` joined)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip().startswith(("torchrun ", "accelerate launch "))]


COMMANDS = doc_commands()
IDS = [f"{i}-{c.split()[0]}{'-bf16' if '--bf16' in c.split() else ''}" for i, c in enumerate(COMMANDS)]


def parse_report(stdout: str) -> dict:
    """What examples/distributed_tiny.py prints on rank 0 (see its ``main``)."""
    header = re.search(r"^world_size: .*$", stdout, flags=re.M)
    losses = re.search(r"^train_loss per step: (\[.*\])$", stdout, flags=re.M)
    assert header and losses, f"no report in the output:\n{stdout[-3000:]}"
    metrics = {k: float(v) for k, v in re.findall(r"^(eval_\w+): (\S+)$", stdout, flags=re.M)}
    return {
        "header": dict(re.findall(r"(\w+): (\S+)", header.group(0))),
        "losses": ast.literal_eval(losses.group(1)),
        "metrics": metrics,
    }


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """``python examples/distributed_tiny.py [--bf16]`` in this process, parsed; computed on first use."""
    script = load_script(ROOT / EXAMPLE)
    tmp = tmp_path_factory.mktemp("single")
    cache: dict[bool, dict] = {}

    def run(bf16: bool) -> dict:
        if bf16 not in cache:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                script.main(["--output-dir", str(tmp / f"bf16-{bf16}"), *(["--bf16"] if bf16 else [])])
            cache[bf16] = parse_report(out.getvalue())
        return cache[bf16]

    return run


def test_doc_has_the_launch_commands():
    assert any(c.startswith("torchrun ") for c in COMMANDS) and any(
        c.startswith("accelerate launch ") for c in COMMANDS
    )
    assert any("--bf16" in shlex.split(c) for c in COMMANDS)
    for command in COMMANDS:
        assert EXAMPLE in shlex.split(command, comments=True), command


@pytest.mark.distributed
@needs_gloo
@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_doc_command_runs_as_written(command, tmp_path, single_process):
    argv = shlex.split(command, comments=True)
    launcher = BIN / argv[0]
    if not launcher.is_file():
        pytest.skip(f"{argv[0]} is not installed next to {sys.executable}")
    (tmp_path / "examples").mkdir()
    (tmp_path / EXAMPLE).symlink_to(ROOT / EXAMPLE)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV and not k.startswith(("ACCELERATE_", "PET_"))}
    env |= {"OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}  # no accelerate config
    proc = subprocess.run(
        [str(launcher), *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    got = parse_report(proc.stdout)

    bf16 = "--bf16" in argv
    assert got["header"]["world_size"] == "2"
    assert got["header"]["fused_loss_active"] == "True"
    assert got["header"]["wrapped_in"] == "DistributedDataParallel"
    assert got["header"]["mixed_precision"] == ("bf16" if bf16 else "no")
    assert set(PRINTED) <= got["metrics"].keys()
    assert all(math.isfinite(got["metrics"][k]) for k in PRINTED) and all(math.isfinite(x) for x in got["losses"])

    want = single_process(bf16)
    # No duplicated evaluation row counted: the same number of tokens as one process.
    assert got["metrics"]["eval_token_count"] == want["metrics"]["eval_token_count"]
    if bf16:
        # bf16 matmuls round differently with another per-device batch: close, not equal.
        assert got["losses"] == pytest.approx(want["losses"], rel=1e-3)
        assert got["metrics"]["eval_token_nll"] == pytest.approx(want["metrics"]["eval_token_nll"], rel=1e-3)
    else:
        assert got["losses"] == pytest.approx(want["losses"], rel=1e-5)
        for key in TOKEN_KEYS:
            assert got["metrics"][f"eval_token_{key}"] == pytest.approx(
                want["metrics"][f"eval_token_{key}"], rel=1e-5, abs=1e-8
            ), key
