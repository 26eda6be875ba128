"""``hf-calib demo`` end to end: on random tiny models (every step, seconds) and once on the real offline models."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hf_calib import cli
from hf_calib.recipes import demo as demo_module

SECTIONS = (
    "## 1. Multiple-choice calibration on MMLU",
    "## 2. LoRA fine-tuning: plain cross-entropy vs label smoothing 0.1",
    "## 3. Thermometer",
    "## 4. AdUE",
    "## 5. Calibrated adapter bundles",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    code = cli.main(["demo", "--tiny", "--output-dir", str(out), "--device", "cpu"])
    return code, out


def test_tiny_demo_writes_report_plots_and_bundles(tiny_run, capsys):
    code, out = tiny_run
    assert code == 0
    report = (out / "report.md").read_text()
    for heading in SECTIONS:
        assert heading in report
    for image in ("mmlu_base", "mmlu_plain_CE", "mmlu_label_smoothing_0.1"):
        assert (out / "plots" / f"{image}.png").stat().st_size > 1000
        assert f"(plots/{image}.png)" in report
    results = json.loads((out / "results.json").read_text())
    assert set(results["mmlu"]) == {"base", "plain CE", "label smoothing 0.1"}
    assert set(results["finetuning"]) == {"plain CE", "label smoothing 0.1"}
    assert {"uncalibrated", "thermometer", "temperature_scaling", "oracle"} <= set(results["thermometer"]["mean"])
    assert set(results["adue"]["evaluation"]["auroc"]) == {"adue", "softmax_response", "entropy", "mahalanobis"}
    lm = out / "bundles" / "causal_lm_label_smoothing_thermometer"
    enc = out / "bundles" / "encoder_adue"
    assert (lm / "calibration" / "thermometer.safetensors").is_file()
    assert (enc / "adue_head.safetensors").is_file() and (enc / "calibration" / "temperature.json").is_file()
    for bundle in (lm, enc):
        assert (bundle / "adapter_model.safetensors").is_file() and (bundle / "README.md").is_file()
    assert not (out / "scratch").exists()
    # The numbers in the report are the ones in results.json.
    base = results["mmlu"]["base"]
    assert f"| base | {base['accuracy']:.3f} | {base['mean_confidence']:.3f} | {base['ece']:.3f} |" in report


def test_tiny_demo_bundle_loads_back(tiny_run):
    from hf_calib.hub import CalibratedAdapter
    from hf_calib.recipes.common import encoder_path

    _, out = tiny_run
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(encoder_path("minilm"))
    torch.manual_seed(0)
    base = demo_module.tiny_encoder(len(tokenizer))
    bundle = CalibratedAdapter.from_pretrained(out / "bundles" / "encoder_adue", base_model=base)
    batch = tokenizer(["a fine film", "dull"], return_tensors="pt", padding=True)
    outputs = bundle(**batch)
    assert outputs["calibrated_probs"].shape == (2, 2)
    assert torch.allclose(outputs["calibrated_probs"].sum(-1), torch.ones(2))
    assert outputs["uncertainty"].shape == (2,)


def test_ctrl_c_leaves_no_output(tmp_path, monkeypatch, capsys):
    def interrupted(self):
        (self.out / "partial.txt").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_module.Demo, "run", interrupted)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--tiny", "--output-dir", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_plans():
    assert demo_module.QUICK.mc_limit < demo_module.FULL.mc_limit
    assert demo_module.QUICK.sft_turns < demo_module.FULL.sft_turns
    assert demo_module.QUICK.thermometer_steps == 5000  # the paper's default, also in the quick demo


@pytest.mark.integration
@pytest.mark.skipif(
    os.environ.get("HF_CALIB_REAL_DEMO") != "1",
    reason="the real quick demo takes ~12 min; it is the README's main command (bash scripts/demo.sh), run there; "
    "set HF_CALIB_REAL_DEMO=1 to run it here too",
)
def test_real_quick_demo(tmp_path):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mmlu"]["base"]["accuracy"] > 0.0
    assert (out / "bundles" / "causal_lm_label_smoothing_thermometer" / "README.md").is_file()
