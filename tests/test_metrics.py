"""Pure metric functions of ``hf_calib.metrics`` against torchmetrics, scikit-learn and direct transcriptions."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, average_precision_score, brier_score_loss, log_loss, roc_auc_score
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from hf_calib.metrics import (
    accuracy,
    aurc,
    brier_score,
    calibration_error,
    classwise_calibration_error,
    misclassification_auprc,
    misclassification_auroc,
    nll,
    nll_from_logits,
    risk_coverage_curve,
    top_label_calibration_error,
    top_label_confidence,
)
from hf_calib.metrics.calibration import quantile_bin_index, uniform_bin_index

NORMS = ("l1", "l2", "max")


def _tm(conf, correct, n_bins, norm, *, raw=False):
    """torchmetrics' binary calibration error of (confidence, correctness) pairs, in float64.

    torchmetrics bins are [b/B, (b+1)/B) plus a bin of their own for exactly 1.0; ours are (b/B, (b+1)/B].
    Unless ``raw``, confidences lying exactly on an edge b/B (b >= 1, including 1.0) are nudged just below it,
    which turns torchmetrics' convention into ours.
    """
    conf = torch.as_tensor(conf, dtype=torch.float64)
    if not raw:
        on_edge = (conf > 0) & (conf * n_bins == torch.round(conf * n_bins))
        conf = torch.where(on_edge, conf - 1e-12, conf)
    return binary_calibration_error(conf, torch.as_tensor(correct).long(), n_bins=n_bins, norm=norm).item()


def _random_probs(n, c, seed, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, c, (n,), generator=g)
    return torch.softmax(logits, dim=1).to(dtype), labels, logits


# ---------------------------------------------------------------- equal-width calibration error
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_bins", [1, 2, 10, 15])
@pytest.mark.parametrize("seed", [0, 1])
def test_calibration_error_matches_torchmetrics_random(norm, n_bins, seed):
    g = torch.Generator().manual_seed(seed)
    conf = torch.rand(500, generator=g, dtype=torch.float64)
    correct = torch.rand(500, generator=g, dtype=torch.float64) < conf**2
    ours = calibration_error(conf, correct, n_bins=n_bins, norm=norm)
    assert ours == pytest.approx(_tm(conf, correct, n_bins, norm), abs=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_top1_calibration_error_matches_torchmetrics_multiclass(norm):
    probs, labels, _ = _random_probs(400, 5, seed=3)
    conf, _, correct = top_label_confidence(probs, labels)
    expected = multiclass_calibration_error(probs, labels, num_classes=5, n_bins=15, norm=norm).item()
    # torchmetrics' multiclass path casts the probabilities to float32, hence the looser tolerance.
    assert calibration_error(conf, correct, n_bins=15, norm=norm) == pytest.approx(expected, abs=1e-6)


ADVERSARIAL = {
    "all_zero_conf": ([0.0] * 7, [0, 1, 0, 0, 1, 0, 0]),
    "all_one_conf": ([1.0] * 6, [1, 1, 0, 1, 1, 1]),
    "zeros_and_ones": ([0.0, 1.0, 0.0, 1.0, 1.0], [0, 1, 1, 0, 1]),
    "ties_off_edges": ([0.33] * 5 + [0.91] * 4, [1, 0, 0, 1, 0, 1, 1, 1, 0]),
    "all_correct": ([0.2, 0.55, 0.97, 0.61], [1, 1, 1, 1]),
    "all_wrong": ([0.2, 0.55, 0.97, 0.61], [0, 0, 0, 0]),
    "single_sample": ([0.7], [0]),
}


@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_bins", [1, 3, 15])
def test_calibration_error_adversarial_matches_torchmetrics(case, norm, n_bins):
    conf, correct = ADVERSARIAL[case]
    ours = calibration_error(conf, correct, n_bins=n_bins, norm=norm)
    assert ours == pytest.approx(_tm(conf, correct, n_bins, norm), abs=1e-12)


def test_calibration_error_hand_values():
    # Two bins: (0, .5] holds 0.2 (wrong) and 0.4 (right): gap |0.5 - 0.3| = 0.2; (.5, 1] holds 0.9 (right):
    # gap 0.1. ECE = 2/3 * 0.2 + 1/3 * 0.1, RMS = sqrt(2/3 * 0.04 + 1/3 * 0.01), MCE = 0.2.
    conf, correct = [0.2, 0.4, 0.9], [0, 1, 1]
    assert calibration_error(conf, correct, n_bins=2) == pytest.approx(2 / 3 * 0.2 + 1 / 3 * 0.1, abs=1e-15)
    assert calibration_error(conf, correct, n_bins=2, norm="l2") == pytest.approx((0.03) ** 0.5, abs=1e-15)
    assert calibration_error(conf, correct, n_bins=2, norm="max") == pytest.approx(0.2, abs=1e-15)


def test_uniform_bins_are_right_closed_with_zero_in_first_bin():
    # On inner edges our bins (b/B, (b+1)/B] differ from torchmetrics' [b/B, (b+1)/B): exactly-on-edge values
    # must behave like torchmetrics' values just below the edge.
    conf = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 0.25, 0.5], dtype=torch.float64)
    correct = torch.tensor([1, 0, 1, 1, 0, 1, 0])
    assert uniform_bin_index(conf, 4).tolist() == [0, 0, 1, 2, 3, 0, 1]
    nudged = (conf - 1e-12).clamp(min=0)
    for norm in NORMS:
        assert calibration_error(conf, correct, n_bins=4, norm=norm) == pytest.approx(
            _tm(nudged, correct, 4, norm, raw=True), abs=1e-9
        )
    # 0.25 sits in (0, 0.25] with us and in [0.25, 0.5) with torchmetrics: 0.475 vs 0.225.
    assert calibration_error([0.25, 0.3], [0, 1], n_bins=4) == pytest.approx(0.475, abs=1e-15)
    assert _tm([0.25, 0.3], [0, 1], 4, "l1", raw=True) == pytest.approx(0.225, abs=1e-12)


def test_confidence_one_shares_the_last_bin():
    # Saturated softmax outputs of exactly 1.0 are common in LMs: they join the last bin (Guo et al.'s
    # convention), whereas torchmetrics gives them a bin of their own.
    conf, correct = [0.96, 1.0, 1.0, 0.98], [1, 1, 0, 1]
    mean_gap = abs(0.75 - (0.96 + 1.0 + 1.0 + 0.98) / 4)
    assert calibration_error(conf, correct, n_bins=15) == pytest.approx(mean_gap, abs=1e-15)
    assert _tm(conf, correct, 15, "l1", raw=True) != pytest.approx(mean_gap, abs=1e-3)


@pytest.mark.parametrize("n_bins", [3, 7, 10, 15, 100])
def test_uniform_bin_index_exact_for_float32_near_edges(n_bins):
    values = []
    for i in range(1, n_bins):
        x = np.float32(i / n_bins)
        values += [x, np.nextafter(x, np.float32(0)), np.nextafter(x, np.float32(1))]
    values = np.array(values, dtype=np.float32)
    got = uniform_bin_index(torch.from_numpy(values), n_bins).tolist()
    for value, index in zip(values, got, strict=True):
        exact = Fraction(float(value))
        expected = next(b for b in range(n_bins) if exact <= Fraction(b + 1, n_bins))
        assert index == expected, (float(value), index, expected)


# ---------------------------------------------------------------- equal-mass calibration error
def _quantile_reference(conf, correct, n_bins, norm):
    """Direct transcription: nominal chunks of sorted positions, upper edge = chunk maximum, first edge >= c."""
    conf = [float(c) for c in conf]
    correct = [float(h) for h in correct]
    n = len(conf)
    ordered = sorted(conf)
    edges = []
    for k in range(n_bins):
        lo, hi = (k * n) // n_bins, ((k + 1) * n) // n_bins
        if hi > lo:
            edges.append((k, ordered[hi - 1]))
    members = {}
    for c, h in zip(conf, correct, strict=True):
        k = next(k for k, edge in edges if edge >= c)
        members.setdefault(k, []).append((c, h))
    gaps, weights = [], []
    for rows in members.values():
        gaps.append(abs(np.mean([h for _, h in rows]) - np.mean([c for c, _ in rows])))
        weights.append(len(rows) / n)
    gaps, weights = np.array(gaps), np.array(weights)
    if norm == "max":
        return gaps.max()
    if norm == "l2":
        return np.sqrt((weights * gaps**2).sum())
    return (weights * gaps).sum()


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize(("n", "n_bins"), [(300, 15), (301, 15), (97, 10), (7, 15), (15, 15), (1, 4)])
def test_quantile_calibration_error_matches_reference(norm, n, n_bins):
    g = torch.Generator().manual_seed(n)
    conf = torch.rand(n, generator=g, dtype=torch.float64)
    correct = torch.rand(n, generator=g, dtype=torch.float64) < conf
    ours = calibration_error(conf, correct, n_bins=n_bins, norm=norm, binning="quantile")
    assert ours == pytest.approx(_quantile_reference(conf, correct, n_bins, norm), abs=1e-12)


def test_quantile_bins_equal_mass_and_tie_handling():
    conf = torch.linspace(0.05, 0.95, 30, dtype=torch.float64)
    sizes = torch.bincount(quantile_bin_index(conf, 10), minlength=10)
    assert sizes.tolist() == [3] * 10
    sizes = torch.bincount(quantile_bin_index(conf[:29], 10), minlength=10)
    assert sorted(sizes.tolist()) == [2] + [3] * 9
    # A run of equal values straddling nominal chunks lands entirely in one bin.
    tied = torch.tensor([0.1, 0.2, 0.5, 0.5, 0.5, 0.5, 0.9, 0.95], dtype=torch.float64)
    index = quantile_bin_index(tied, 4)
    assert len(set(index[2:6].tolist())) == 1
    correct = torch.tensor([0, 1, 1, 0, 1, 0, 1, 1])
    for norm in NORMS:
        expected = _quantile_reference(tied, correct, 4, norm)
        assert calibration_error(tied, correct, n_bins=4, norm=norm, binning="quantile") == pytest.approx(expected)


def test_quantile_is_order_invariant_with_ties():
    g = torch.Generator().manual_seed(5)
    conf = (torch.rand(200, generator=g, dtype=torch.float64) * 8).round() / 8  # 9 distinct values
    correct = torch.rand(200, generator=g) < 0.6
    base = calibration_error(conf, correct, n_bins=10, binning="quantile")
    for _ in range(5):
        perm = torch.randperm(200, generator=g)
        assert calibration_error(conf[perm], correct[perm], n_bins=10, binning="quantile") == pytest.approx(
            base, abs=1e-14
        )


def test_quantile_special_cases_have_closed_forms():
    g = torch.Generator().manual_seed(8)
    conf = torch.rand(12, generator=g, dtype=torch.float64)
    correct = torch.rand(12, generator=g) < 0.5
    # N <= B with distinct values: one sample per bin, so ECE = mean |correct - c| and MCE = max of it.
    per_sample = (correct.double() - conf).abs()
    assert calibration_error(conf, correct, n_bins=15, binning="quantile") == pytest.approx(per_sample.mean().item())
    assert calibration_error(conf, correct, n_bins=15, binning="quantile", norm="max") == pytest.approx(
        per_sample.max().item()
    )
    # One bin: |accuracy - mean confidence| for both binnings.
    one = abs(correct.double().mean() - conf.mean()).item()
    assert calibration_error(conf, correct, n_bins=1, binning="quantile") == pytest.approx(one)
    assert calibration_error(conf, correct, n_bins=1) == pytest.approx(one)


# ---------------------------------------------------------------- top-label and class-wise ECE
@pytest.mark.parametrize("n_bins", [1, 10, 15])
@pytest.mark.parametrize("seed", [0, 1])
def test_top_label_ece_is_prediction_weighted_torchmetrics_ece(n_bins, seed):
    probs, labels, _ = _random_probs(600, 4, seed=seed)
    conf, pred, correct = probs.max(dim=1).values, probs.argmax(dim=1), probs.argmax(dim=1) == labels
    expected = sum(
        (pred == c).double().mean().item() * _tm(conf[pred == c], correct[pred == c], n_bins, "l1")
        for c in pred.unique().tolist()
    )
    assert top_label_calibration_error(probs, labels, n_bins=n_bins) == pytest.approx(expected, abs=1e-12)


def test_top_label_ece_with_one_class_equals_ece():
    probs, labels, _ = _random_probs(300, 3, seed=4, scale=0.3)
    probs = torch.cat([probs[:, :1] + 1.0, probs[:, 1:]], dim=1)
    probs = probs / probs.sum(dim=1, keepdim=True)  # class 0 always predicted
    conf, _, correct = top_label_confidence(probs, labels)
    assert top_label_calibration_error(probs, labels, n_bins=10) == pytest.approx(
        calibration_error(conf, correct, n_bins=10), abs=1e-14
    )


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_classwise_ece_is_mean_of_one_vs_rest_torchmetrics_ece(n_bins):
    probs, labels, _ = _random_probs(500, 6, seed=11)
    expected = np.mean([_tm(probs[:, k], labels == k, n_bins, "l1") for k in range(6)])
    assert classwise_calibration_error(probs, labels, n_bins=n_bins) == pytest.approx(expected, abs=1e-12)


def test_classwise_ece_handles_zero_probabilities():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    expected = np.mean([_tm(probs[:, k], labels == k, 5, "l1") for k in range(2)])
    assert classwise_calibration_error(probs, labels, n_bins=5) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- Brier, NLL, accuracy
@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_brier_score_matches_sklearn(dtype):
    probs, labels, _ = _random_probs(300, 7, seed=2, dtype=dtype)
    p64 = probs.double().numpy()
    expected = brier_score_loss(labels.numpy(), p64, labels=list(range(7)), scale_by_half=False)
    assert brier_score(probs, labels) == pytest.approx(expected, abs=1e-12)
    assert brier_score(probs, labels, normalize=True) == pytest.approx(expected / 7, abs=1e-12)
    onehot = F.one_hot(labels, 7).double()
    assert brier_score(probs, labels, normalize=True) == pytest.approx(
        ((probs.double() - onehot) ** 2).mean().item(), abs=1e-12
    )


def test_brier_score_extremes():
    assert brier_score([[1.0, 0.0, 0.0]], [0]) == 0.0
    assert brier_score([[1.0, 0.0, 0.0]], [1]) == pytest.approx(2.0)
    assert brier_score([[1.0, 0.0, 0.0]], [1], normalize=True) == pytest.approx(2 / 3)


def test_nll_matches_sklearn_and_torch():
    probs, labels, logits = _random_probs(300, 5, seed=6)
    expected = log_loss(labels.numpy(), probs.numpy(), labels=list(range(5)))
    assert nll(probs, labels) == pytest.approx(expected, abs=1e-12)
    assert nll_from_logits(logits, labels) == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-12)
    assert nll_from_logits(logits.float(), labels) == pytest.approx(
        F.cross_entropy(logits.float(), labels).item(), abs=1e-6
    )
    assert nll_from_logits(logits, labels) == pytest.approx(nll(probs, labels), abs=1e-12)


def test_nll_clamps_zero_probability():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    labels = torch.tensor([1, 0])
    assert nll(probs, labels) == pytest.approx((-np.log(1e-12) + np.log(2)) / 2)
    assert nll(probs, labels, min_prob=1e-6) == pytest.approx((-np.log(1e-6) + np.log(2)) / 2)


def test_accuracy_matches_sklearn_and_breaks_ties_to_lowest_index():
    probs, labels, _ = _random_probs(200, 4, seed=9)
    assert accuracy(probs, labels) == pytest.approx(accuracy_score(labels.numpy(), probs.argmax(1).numpy()))
    tied = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    assert accuracy(tied, [0, 1]) == 1.0
    assert accuracy(tied, [1, 1]) == 0.5
    _, pred, _ = top_label_confidence(tied, [1, 1])
    assert pred.tolist() == [0, 1]


# ---------------------------------------------------------------- misclassification detection
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_auprc_match_sklearn(ties, seed):
    g = torch.Generator().manual_seed(seed)
    unc = torch.rand(400, generator=g, dtype=torch.float64)
    errors = torch.rand(400, generator=g, dtype=torch.float64) < 0.2 + 0.5 * unc
    if ties:
        unc = (unc * 5).round() / 5
    assert misclassification_auroc(unc, errors) == pytest.approx(roc_auc_score(errors, unc), abs=1e-12)
    assert misclassification_auprc(unc, errors) == pytest.approx(average_precision_score(errors, unc), abs=1e-12)


def test_ranking_small_cases():
    assert misclassification_auroc([0.3, 0.3], [1, 0]) == 0.5
    assert misclassification_auroc([0.1, 0.9], [0, 1]) == 1.0
    assert misclassification_auroc([0.1, 0.9], [1, 0]) == 0.0
    assert misclassification_auprc([0.1, 0.2, 0.3], [1, 1, 1]) == pytest.approx(
        average_precision_score([1, 1, 1], [0.1, 0.2, 0.3])
    )
    assert misclassification_auprc([0.5] * 4, [1, 0, 0, 1]) == pytest.approx(0.5)


@pytest.mark.parametrize("errors", [[0, 0, 0], [1, 1, 1]])
def test_auroc_degenerate_raises(errors):
    with pytest.raises(ValueError, match="misclassification_auroc is undefined"):
        misclassification_auroc([0.1, 0.2, 0.3], errors)


def test_auprc_without_errors_raises():
    with pytest.raises(ValueError, match="misclassification_auprc is undefined"):
        misclassification_auprc([0.1, 0.2, 0.3], [0, 0, 0])


def _aurc_geifman(unc, errors):
    order = np.argsort(unc, kind="stable")
    e = np.asarray(errors, dtype=np.float64)[order]
    return np.mean(np.cumsum(e) / np.arange(1, len(e) + 1))


def test_risk_coverage_and_aurc_without_ties():
    g = torch.Generator().manual_seed(4)
    unc = torch.rand(300, generator=g, dtype=torch.float64)
    errors = torch.rand(300, generator=g, dtype=torch.float64) < unc
    coverage, risk, thresholds = risk_coverage_curve(unc, errors)
    order = torch.argsort(unc)
    assert torch.equal(thresholds, unc[order])
    assert torch.allclose(coverage, torch.arange(1, 301, dtype=torch.float64) / 300)
    assert torch.allclose(risk, errors[order].double().cumsum(0) / torch.arange(1, 301), atol=1e-15)
    assert aurc(unc, errors) == pytest.approx(_aurc_geifman(unc.numpy(), errors.numpy()), abs=1e-12)


def test_risk_coverage_and_aurc_with_ties():
    g = torch.Generator().manual_seed(12)
    unc = (torch.rand(250, generator=g, dtype=torch.float64) * 6).round()
    errors = torch.rand(250, generator=g) < 0.4
    coverage, risk, thresholds = risk_coverage_curve(unc, errors)
    assert thresholds.tolist() == sorted(set(unc.tolist()))
    expected_area, previous = 0.0, 0.0
    for j, t in enumerate(thresholds.tolist()):
        accepted = unc <= t
        assert coverage[j].item() == pytest.approx(accepted.double().mean().item())
        assert risk[j].item() == pytest.approx(errors[accepted].double().mean().item())
        expected_area += (accepted.double().mean().item() - previous) * errors[accepted].double().mean().item()
        previous = accepted.double().mean().item()
    assert aurc(unc, errors) == pytest.approx(expected_area, abs=1e-12)
    perm = torch.randperm(250, generator=g)
    assert aurc(unc[perm], errors[perm]) == pytest.approx(aurc(unc, errors), abs=1e-14)


def test_aurc_degenerate_cases():
    assert aurc([0.1, 0.5, 0.2], [0, 0, 0]) == 0.0
    assert aurc([0.1, 0.5, 0.2], [1, 1, 1]) == 1.0
    assert aurc([0.4], [1]) == 1.0
    assert aurc([0.4, 0.4], [1, 0]) == 0.5


# ---------------------------------------------------------------- accepted input types
def test_numpy_and_list_inputs_agree_with_tensors():
    probs, labels, _ = _random_probs(50, 3, seed=1)
    conf, _, correct = top_label_confidence(probs, labels)
    t = calibration_error(conf, correct)
    assert calibration_error(conf.numpy(), correct.numpy()) == t
    assert calibration_error(conf.tolist(), correct.int().tolist()) == t
    assert brier_score(probs.numpy(), labels.numpy()) == brier_score(probs, labels)


def test_half_precision_probabilities_are_accepted():
    probs, labels, _ = _random_probs(64, 10, seed=2, dtype=torch.bfloat16)
    assert 0 <= top_label_calibration_error(probs, labels) <= 1
    assert brier_score(probs, labels) == pytest.approx(brier_score(probs.double(), labels), abs=1e-12)


# ---------------------------------------------------------------- bad input
GOOD_CONF, GOOD_CORRECT = [0.2, 0.7, 0.9], [0, 1, 1]
GOOD_PROBS, GOOD_LABELS = [[0.2, 0.8], [0.6, 0.4]], [1, 0]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: calibration_error([], []), "confidences is empty"),
        (lambda: calibration_error([0.2, float("nan")], [0, 1]), "confidences contains NaN"),
        (lambda: calibration_error([0.2, float("inf")], [0, 1]), "confidences contains NaN or inf"),
        (lambda: calibration_error([0.2, 1.5], [0, 1]), r"confidences must lie in \[0, 1\]"),
        (lambda: calibration_error([-0.1, 0.5], [0, 1]), r"confidences must lie in \[0, 1\]"),
        (lambda: calibration_error([[0.2, 0.5]], [[0, 1]]), "confidences must be 1-D"),
        (lambda: calibration_error(GOOD_CONF, [0, 1]), "correct has 2 entries but confidences has 3"),
        (lambda: calibration_error(GOOD_CONF, [0, 2, 1]), "correct must hold only 0/1"),
        (lambda: calibration_error(GOOD_CONF, [0, float("nan"), 1]), "correct contains NaN"),
        (lambda: calibration_error(GOOD_CONF, GOOD_CORRECT, n_bins=0), "n_bins must be an integer >= 1"),
        (lambda: calibration_error(GOOD_CONF, GOOD_CORRECT, n_bins=2.5), "n_bins must be an integer >= 1"),
        (lambda: calibration_error(GOOD_CONF, GOOD_CORRECT, n_bins=True), "n_bins must be an integer >= 1"),
        (lambda: calibration_error(GOOD_CONF, GOOD_CORRECT, norm="l3"), "norm must be one of"),
        (lambda: calibration_error(GOOD_CONF, GOOD_CORRECT, binning="adaptive"), "binning must be"),
        (lambda: calibration_error([True, False], [0, 1]), "confidences must hold real numbers"),
        (lambda: top_label_calibration_error(GOOD_PROBS, [1, 2]), r"labels must lie in \[0, 2\)"),
        (lambda: top_label_calibration_error(GOOD_PROBS, [1, -100]), r"labels must lie in \[0, 2\)"),
        (lambda: classwise_calibration_error(GOOD_PROBS, [1.0, 0.0]), "labels must be an integer tensor"),
        (lambda: classwise_calibration_error(GOOD_PROBS, [1]), "labels has 1 entries but probs has 2"),
        (lambda: brier_score([[0.2, 0.78], [0.5, 0.5]], GOOD_LABELS), "each row of probs must sum to 1"),
        (lambda: brier_score([[2.0, -1.0]], [0]), r"probs must lie in \[0, 1\]"),
        (lambda: brier_score([0.2, 0.8], [1]), "probs must be 2-D"),
        (lambda: brier_score(np.zeros((0, 3)), []), "probs is empty"),
        (lambda: nll(GOOD_PROBS, GOOD_LABELS, min_prob=0.0), "min_prob must be a float in"),
        (lambda: nll_from_logits([[1.0, float("nan")]], [0]), "logits contains NaN"),
        (lambda: nll_from_logits([[1, 2]], [0]), "logits must be a floating-point tensor"),
        (lambda: accuracy(GOOD_PROBS, [[1, 0]]), "labels must be 1-D"),
        (lambda: misclassification_auroc([0.1, float("nan")], [0, 1]), "uncertainty contains NaN"),
        (lambda: misclassification_auroc([0.1, 0.2], [0, 1, 1]), "errors has 3 entries but uncertainty has 2"),
        (lambda: misclassification_auprc([0.1, 0.2], [0, 3]), "errors must hold only 0/1"),
        (lambda: aurc([], []), "uncertainty is empty"),
        (lambda: risk_coverage_curve([1j, 2j], [0, 1]), "uncertainty must be real-valued"),
        (lambda: calibration_error("abc", [1]), "confidences must"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
