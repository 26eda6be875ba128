"""``hf-calib demo`` end to end: on random tiny models (every step, seconds) and once on the real offline models."""

from __future__ import annotations

import copy
import json
import math
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
    """The tiny demo's exit code, output folder and each fine-tune's log_history (keyed by label smoothing)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    histories = {}
    finetune = demo_module.Demo.finetune

    def recording(self, epsilon):
        outcome = finetune(self, epsilon)
        histories[epsilon] = copy.deepcopy(outcome.log_history)
        # The trainer's per-evaluation diagrams are switched off (they would only fill the scratch folder).
        histories[epsilon, "scratch PNGs"] = sorted((self.out / "scratch").rglob("*.png"))
        return outcome

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo_module.Demo, "finetune", recording)
        code = cli.main(["demo", "--tiny", "--output-dir", str(out), "--device", "cpu"])
    return code, out, histories


def test_tiny_demo_writes_report_plots_and_bundles(tiny_run, capsys):
    code, out, _ = tiny_run
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

    _, out, _ = tiny_run
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


def _expected_points(entries, keys):
    """The test's own reading of log_history entries (independent of the demo's extraction)."""
    return [
        {
            "step": e["step"],
            "ece": e[f"{keys}ece"],
            "accuracy": e[f"{keys}accuracy"],
            "mean_confidence": e[f"{keys}mean_confidence"],
            "gap": e[f"{keys}mean_confidence"] - e[f"{keys}accuracy"],
            "nll": e[f"{keys}nll"],
            "tokens": e[f"{keys}count"],
        }
        for e in entries
    ]


def _assert_same_points(stored, expected):
    assert [p["step"] for p in stored] == [p["step"] for p in expected]
    for got, want in zip(stored, expected, strict=True):
        assert got["tokens"] == want["tokens"] > 0
        for key in ("ece", "accuracy", "mean_confidence", "nll"):
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15)
        assert got["confidence_minus_accuracy"] == pytest.approx(want["gap"], rel=1e-12, abs=1e-15)


def test_tiny_demo_training_curves_match_log_history(tiny_run):
    from hf_calib.recipes.common import load_tokenizer
    from hf_calib.recipes.sft import sharegpt_splits

    _, out, histories = tiny_run
    plan = demo_module.TINY
    results = json.loads((out / "results.json").read_text())
    train, _ = sharegpt_splits(load_tokenizer("smollm2"), plan.sft_turns, plan.sft_eval_turns, plan.max_length, 0)
    # Causal shift: a row's first label is never predicted.
    supervised = sum(sum(label != -100 for label in row["labels"][1:]) for row in train)
    steps = math.ceil(len(train) / plan.sft_batch_size)
    assert steps >= 3, "the tiny plan should give a few logging steps"
    eval_every = math.ceil(steps / (plan.sft_evaluations + 1))
    for name, epsilon in (("plain CE", 0.0), ("label smoothing 0.1", 0.1)):
        history, stored = histories[epsilon], results["finetuning"][name]
        training = [e for e in history if "loss" in e]
        evaluations = [e for e in history if "eval_loss" in e]
        assert len(training) == steps  # logging_steps is 1 in the tiny plan; every log saw tokens
        _assert_same_points(stored["curves"]["train"], _expected_points(training, "token_"))
        # Every training token is counted once, in the log of the step that trained on it.
        assert sum(p["tokens"] for p in stored["curves"]["train"]) == supervised
        # Held out: before training (step 0), every eval_every steps, and the last step, evaluated once.
        expected_steps = [0, *range(eval_every, steps + 1, eval_every)]
        expected_steps += [steps] if expected_steps[-1] != steps else []
        assert [e["step"] for e in evaluations] == expected_steps
        held_out = stored["curves"]["held_out"]
        _assert_same_points(held_out, _expected_points(evaluations, "eval_token_"))
        assert len({p["tokens"] for p in held_out}) == 1
        assert held_out[0]["ece"] == pytest.approx(stored["before"]["token_ece"], rel=1e-12)
        assert held_out[-1]["ece"] == pytest.approx(stored["after"]["token_ece"], rel=1e-12)
        assert stored["steps"] == steps
        assert histories[epsilon, "scratch PNGs"] == []
    report = (out / "report.md").read_text()
    assert "(plots/finetuning_calibration.png)" in report
    assert "How to read the figure" in report
    # The figure is the two-panel PNG of draw_calibration_curves (11 x 5 inches at 120 dpi), not blank.
    from matplotlib.image import imread

    image = imread(out / "plots" / "finetuning_calibration.png")
    assert image.shape[:2] == (600, 1320)
    assert float(image[..., :3].std()) > 0.05


def test_calibration_curves_and_their_figure():
    from hf_calib.recipes._training_curves import calibration_curves, draw_calibration_curves

    train = {"token_accuracy": 0.25, "token_mean_confidence": 0.5, "token_nll": 2.0, "token_count": 40}
    held = {"eval_token_accuracy": 0.5, "eval_token_mean_confidence": 0.375, "eval_token_nll": 1.5}
    history = [
        {"step": 0, "eval_loss": 1.0, "eval_token_ece": 0.5, **held, "eval_token_count": 9},
        {"step": 1, "loss": 2.0, "token_count": 0},  # a log with no supervised token: no point
        {"step": 2, "loss": 2.0, "token_ece": 0.25, **train},
        {"step": 2, "eval_loss": 1.0, "eval_token_ece": 0.125, **held, "eval_token_count": 9},
        {"step": 2, "train_loss": 2.0, "train_runtime": 1.0},
    ]
    curves = calibration_curves(history)
    assert [p["step"] for p in curves["train"]] == [2]
    assert curves["train"][0] == {
        "step": 2,
        "ece": 0.25,
        "accuracy": 0.25,
        "mean_confidence": 0.5,
        "confidence_minus_accuracy": 0.25,
        "nll": 2.0,
        "tokens": 40,
    }
    assert [(p["step"], p["ece"], p["confidence_minus_accuracy"]) for p in curves["held_out"]] == [
        (0, 0.5, -0.125),
        (2, 0.125, -0.125),
    ]
    assert calibration_curves(history, prefix="other_") == {"train": [], "held_out": []}
    with pytest.raises(ValueError, match="no 'step'"):
        calibration_curves([{"loss": 1.0, "token_ece": 0.1, **train}])

    other = {"train": [{**curves["train"][0], "step": 3, "ece": 0.75}], "held_out": []}
    figure = draw_calibration_curves({"CE": curves, "LS": other}, title="t")
    ece_ax, gap_ax = figure.axes
    # Per panel: CE train, CE held out, LS train, LS held out (the last one empty), then the zero line.
    assert [list(line.get_xdata()) for line in ece_ax.get_lines()] == [[2], [0, 2], [3], []]
    assert [list(line.get_ydata()) for line in ece_ax.get_lines()] == [[0.25], [0.5, 0.125], [0.75], []]
    assert [list(line.get_ydata()) for line in gap_ax.get_lines()][:4] == [[0.25], [-0.125, -0.125], [0.25], []]
    assert [line.get_linestyle() for line in ece_ax.get_lines()] == ["-", "--", "-", "--"]
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels == ["CE, training tokens", "CE, held-out tokens", "LS, training tokens", "LS, held-out tokens"]
    with pytest.raises(ValueError, match="curves must hold 1 to 4"):
        draw_calibration_curves({})


def test_ctrl_c_leaves_no_output(tmp_path, monkeypatch, capsys):
    def interrupted(self):
        (self.out / "partial.txt").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_module.Demo, "run", interrupted)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--tiny", "--output-dir", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_sft_settings_checks_evaluations_and_reliability_diagrams():
    from hf_calib.recipes.sft import SFTSettings

    assert SFTSettings(evaluations=2).evaluations == 2
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="evaluations must be a non-negative integer"):
            SFTSettings(evaluations=bad)
    with pytest.raises(ValueError, match="reliability_diagrams must be True or False"):
        SFTSettings(reliability_diagrams="no")


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
