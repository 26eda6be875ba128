"""The bundle's model card and calibration report: metadata that huggingface_hub parses, text a user can follow,
and metrics checked against independent references (plain torch, scikit-learn)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, metadata_load
from sklearn.metrics import roc_auc_score
from test_hub_bundle import class_report, lora_bert, lora_llama, token_report

from hf_calib.hub import CalibratedAdapter, CalibrationReport, CardInfo


@pytest.fixture(autouse=True)
def _no_hub_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _reference_ece(conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> float:
    """Equal-width bins (b/B, (b+1)/B], 0 in the first bin: sum_b n_b/N |acc_b - conf_b|."""
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if in_bin.any():
            total += in_bin.float().mean().item() * abs(
                correct[in_bin].float().mean().item() - conf[in_bin].mean().item()
            )
    return total


def test_report_metrics_match_independent_references() -> None:
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(200, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (200,), generator=g)
    uncertainty = torch.rand(200, generator=g, dtype=torch.float64)
    report = CalibrationReport.from_logits(logits, labels, temperature=2.0, uncertainty=uncertainty, n_bins=10)
    for metrics, t in ((report.metrics, 2.0), (report.uncalibrated, 1.0)):
        p = torch.softmax(logits / t, dim=1)
        conf, pred = p.max(dim=1)
        correct = pred == labels
        # The state stores confidences in float32: agreement to float32 rounding.
        assert metrics["ece"] == pytest.approx(_reference_ece(conf, correct, 10), abs=1e-6)
        assert metrics["nll"] == pytest.approx(F.cross_entropy(logits / t, labels).item(), rel=1e-9)
        brier = ((p - F.one_hot(labels, 4).double()) ** 2).sum(dim=1).mean().item()
        assert metrics["brier"] == pytest.approx(brier, rel=1e-9)
        assert metrics["accuracy"] == pytest.approx(correct.double().mean().item())
        auroc = roc_auc_score((~correct).numpy(), uncertainty.numpy())
        assert metrics["misclassification_auroc"] == pytest.approx(auroc, rel=1e-9)
    assert report.uncertainty == "adue" and report.level == "answer"
    # Scaling changes calibration, never accuracy.
    assert report.metrics["accuracy"] == report.uncalibrated["accuracy"]
    assert report.metrics["nll"] != pytest.approx(report.uncalibrated["nll"])


def test_report_validation_and_json_round_trip() -> None:
    report = CalibrationReport.from_logits(torch.randn(30, 3), torch.arange(30) % 3, temperature=1.5)
    again = CalibrationReport.from_dict(report.to_dict())
    assert again == report and again.state is None
    with pytest.raises(ValueError, match="no CalibrationState to draw"):
        again.save_diagram("x.png")
    with pytest.raises(ValueError, match="temperature must be"):
        CalibrationReport.from_logits(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match=r"metrics\['ece'\] must be a finite number"):
        CalibrationReport(metrics={"ece": math.nan})
    with pytest.raises(ValueError, match="level must be one of"):
        CalibrationReport(metrics={}, level="sentence")
    with pytest.raises(TypeError, match="logits must be floating point"):
        CalibrationReport.from_logits(torch.ones(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long))


def test_card_metadata_parses_and_carries_eval_results(tmp_path) -> None:
    model = lora_bert()
    report = class_report(model, 0.9)
    card = CardInfo(
        base_model="tiny/bert",
        datasets=["stanfordnlp/sst2"],
        training={"Learning rate": 2e-4, "Epochs": 3},
        license="apache-2.0",
        language="en",
    )
    folder = CalibratedAdapter(model, temperature=0.9, label_smoothing=0.1, report=report, card=card).save_pretrained(
        tmp_path / "b", repo_id="me/sst2-calibrated"
    )
    readme = folder / "README.md"
    meta = metadata_load(readme)
    assert meta["base_model"] == "tiny/bert" and meta["datasets"] == ["stanfordnlp/sst2"]
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-classification"
    assert {"hf-calib", "calibration", "lora"} <= set(meta["tags"])

    loaded = ModelCard.load(readme)
    results = {r.metric_type: r for r in loaded.data.eval_results}
    assert set(results) == {"ece", "brier", "nll", "misclassification_auroc", "accuracy"}
    for key, result in results.items():
        assert result.metric_value == pytest.approx(report.metrics[key], abs=1e-6)
        assert result.task_type == "text-classification" and result.dataset_name == "toy"
        assert result.dataset_split == "test"
    assert "AdUE" in results["misclassification_auroc"].metric_name
    assert loaded.data.model_name == "sst2-calibrated"

    text = loaded.text
    # Read as a user: what it is, how to load it, what the numbers are, the picture, the training settings.
    assert 'CalibratedAdapter.from_pretrained("me/sst2-calibrated", base_model=base)' in text
    assert "AutoModelForSequenceClassification" in text and "outputs.uncertainty" in text
    assert "T = 0.9" in text and "epsilon = 0.1" in text
    assert "| ECE | " + f"{report.uncalibrated['ece']:.4g} | {report.metrics['ece']:.4g} |" in text
    assert "![Reliability diagram" in text and "(reliability_diagram.png)" in text
    assert (folder / "reliability_diagram.png").read_bytes().startswith(b"\x89PNG")
    assert "| PEFT method | LoRA |" in text and "| LoRA rank (r) | 4 |" in text and "| Learning rate | 0.0002 |" in text
    assert text.startswith("\n# sst2-calibrated\n\nA LoRA adapter for [`tiny/bert`](https://huggingface.co/tiny/bert)")
    assert "`stanfordnlp/sst2`" in text and "## Limitations" in text


def test_card_without_report_or_scaling_is_still_valid(tmp_path) -> None:
    folder = CalibratedAdapter(lora_llama()).save_pretrained(tmp_path / "plain")
    meta = metadata_load(folder / "README.md")
    assert "model-index" not in meta and meta["pipeline_tag"] == "text-generation"
    text = ModelCard.load(folder / "README.md").text
    assert "No post-hoc scaling" in text and "reliability_diagram.png" not in text


def test_token_level_card_names_the_level(tmp_path) -> None:
    model = lora_llama()
    bundle = CalibratedAdapter(model, temperature=1.2, report=token_report(model, 1.2))
    results = bundle.model_card("me/lm").data.eval_results
    ece = next(r for r in results if r.metric_type == "ece")
    assert "token-level, after calibration" in ece.metric_name and ece.task_type == "text-generation"
