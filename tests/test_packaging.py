"""The kernels/ folder ships as `hf_calib_kernels`, never as a top-level `kernels` package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import hf_calib_kernels

REPO = Path(__file__).resolve().parents[1]


def test_editable_install_maps_kernels_folder():
    assert Path(hf_calib_kernels.__file__).resolve().parent == REPO / "kernels"


@pytest.mark.integration
def test_wheel_contains_renamed_kernels_and_module_scripts(tmp_path):
    pytest.importorskip("setuptools")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("hf_calib-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert "hf_calib_kernels" in tops and "hf_calib" in tops
    assert "kernels" not in tops, "a top-level `kernels` package would clash with PyPI's `kernels`"
    for module in ("ce_torch.py", "ce_triton.py", "fused_linear.py", "logits_ce.py"):
        assert f"hf_calib_kernels/{module}" in names
    assert "hf_calib/metrics/evaluate_modules/ece/ece.py" in names
    assert not any(name.startswith(("tests/", "benchmarks/", "examples/")) for name in names)


@pytest.mark.integration
def test_wheel_installs_and_imports_in_a_fresh_target(tmp_path):
    build = tmp_path / "build"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(build), str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = build.glob("hf_calib-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True
    )
    code = "import hf_calib_kernels, hf_calib; print(hf_calib_kernels.__file__); print(hf_calib.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    assert all(Path(p).is_relative_to(target) for p in out), out
