"""One catalogue decides which metrics reach Trainer logs and the model card (hf_calib.metrics.catalog)."""

from __future__ import annotations

import dataclasses

import torch

from hf_calib.hub import CalibrationReport, CardInfo, build_model_card
from hf_calib.loss import TokenCalibrationMetrics, token_calibration_stats
from hf_calib.metrics import METRICS, CalibrationState, MetricInfo, catalog, headline_metrics, logged_metrics


def _stats(n_bins: int = 10) -> torch.Tensor:
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 9, 13), torch.randint(0, 13, (3, 9))
    labels[0, :4] = -100
    return token_calibration_stats(logits, labels, n_bins=n_bins)


def _card(report: CalibrationReport) -> str:
    card = build_model_card(
        info=CardInfo(),
        task="causal_lm",
        repo_id="me/adapter",
        adapter={"peft_type": "LORA"},
        label_smoothing=0.1,
        calibrators=[],
        report=report,
        diagram=False,
    )
    return str(card)


def test_every_catalogued_key_is_computed_by_the_state():
    state = CalibrationState(n_bins=10, keep_samples=True)
    torch.manual_seed(1)
    state.update_from_logits(torch.randn(50, 4), torch.randint(0, 4, (50,)))
    computed = state.compute()
    assert {info.key for info in METRICS} <= set(computed)
    assert len({info.key for info in METRICS}) == len(METRICS)


def test_logs_and_card_follow_the_catalogue():
    metrics = TokenCalibrationMetrics(10, prefix="token_").metrics_from_stats(_stats())
    assert set(metrics) == {"token_count"} | {f"token_{key}" for key in logged_metrics()}
    report = CalibrationReport(metrics={"ece": 0.1, "mce": 0.3, "nll": 1.2, "brier": 0.4, "accuracy": 0.5})
    assert list(report.headline()) == [k for k in headline_metrics() if k in report.metrics]
    text = _card(report)
    assert "| ECE | 0.1" in text and "| Accuracy | 0.5" in text
    assert "| MCE |" not in text  # not a headline metric


def test_a_new_catalogue_entry_reaches_logs_and_card_without_other_changes(monkeypatch):
    # Make MCE a headline metric and drop mean confidence from the logs: only the catalogue changes.
    changed = tuple(
        dataclasses.replace(info, headline=True)
        if info.key == "mce"
        else dataclasses.replace(info, logged=False)
        if info.key == "mean_confidence"
        else info
        for info in METRICS
    )
    monkeypatch.setattr(catalog, "METRICS", changed)
    metrics = TokenCalibrationMetrics(10, prefix="token_").metrics_from_stats(_stats())
    assert "token_mean_confidence" not in metrics and "token_mce" in metrics
    report = CalibrationReport(metrics={"ece": 0.1, "mce": 0.3, "nll": 1.2})
    assert list(report.headline()) == ["ece", "mce", "nll"]
    assert "| MCE | 0.3" in _card(report)


def test_metric_info_defaults():
    info = MetricInfo("x", "X")
    assert not info.logged and not info.headline
