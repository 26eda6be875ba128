"""Agreement of a scorer with reference ratings: scipy's Spearman / Kendall tau-b, a brute-force pairwise
accuracy, and the bootstrap intervals rebuilt from explicitly resampled data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from hf_calib.eval import agreement, bleu, rouge_l
from hf_calib.eval.reference import rouge_l_scores


def _pairwise_accuracy(scores, ratings) -> float:
    """O(n^2): over pairs with different ratings, 1 if the scorer orders them alike, 1/2 if it ties them."""
    total = hits = 0.0
    for i, j in itertools.combinations(range(len(scores)), 2):
        if ratings[i] == ratings[j]:
            continue
        total += 1
        if scores[i] == scores[j]:
            hits += 0.5
        elif (scores[i] > scores[j]) == (ratings[i] > ratings[j]):
            hits += 1
    return hits / total if total else math.nan


def _random_with_ties(seed: int, n: int):
    rng = np.random.default_rng(seed)
    ratings = rng.integers(1, 6, n).astype(float)  # a 1-5 Likert scale: many ties
    scores = np.round(ratings + rng.normal(0, 1.5, n))  # a noisy scorer, rounded: ties too
    return scores, ratings


@pytest.mark.parametrize(("seed", "n"), [(0, 5), (1, 12), (2, 40), (3, 97)])
def test_point_estimates_match_scipy_and_brute_force(seed, n):
    scores, ratings = _random_with_ties(seed, n)
    result = agreement(scores, ratings, n_bootstrap=0)
    assert result.spearman.value == pytest.approx(stats.spearmanr(scores, ratings).statistic, abs=1e-12)
    assert result.kendall_tau_b.value == pytest.approx(stats.kendalltau(scores, ratings).statistic, abs=1e-12)
    assert result.pairwise_accuracy.value == pytest.approx(_pairwise_accuracy(scores, ratings), abs=1e-12)
    assert result.n == n and result.n_missing == 0
    assert result.n_pairs == sum(a != b for a, b in itertools.combinations(ratings, 2))
    assert math.isnan(result.spearman.low) and result.notes == ()


def test_bootstrap_intervals_are_percentiles_of_resampled_statistics():
    scores, ratings = _random_with_ties(4, 15)
    n_boot, confidence = 60, 0.9
    result = agreement(scores, ratings, n_bootstrap=n_boot, confidence=confidence, seed=7)
    # The same resamples, drawn as item counts from the documented generator, then expanded to data.
    counts = np.random.default_rng(7).multinomial(15, np.full(15, 1 / 15), size=n_boot)
    replicates = {"spearman": [], "kendall_tau_b": [], "pairwise_accuracy": []}
    for row in counts:
        idx = np.repeat(np.arange(15), row)
        s, r = scores[idx], ratings[idx]
        replicates["spearman"].append(stats.spearmanr(s, r).statistic)
        replicates["kendall_tau_b"].append(stats.kendalltau(s, r).statistic)
        replicates["pairwise_accuracy"].append(_pairwise_accuracy(s, r))
    for key, values in replicates.items():
        values = np.array(values, dtype=float)
        values = values[np.isfinite(values)]
        low, high = np.quantile(values, [0.05, 0.95])
        estimate = getattr(result, key)
        assert (estimate.low, estimate.high) == pytest.approx((low, high), abs=1e-12)
        assert estimate.low <= estimate.value <= estimate.high


def test_perfect_and_reversed_scorers():
    ratings = [1, 2, 2, 3, 5]
    perfect = agreement([10, 20, 20, 30, 50], ratings, n_bootstrap=50)
    assert (perfect.spearman.value, perfect.kendall_tau_b.value, perfect.pairwise_accuracy.value) == (1, 1, 1)
    reversed_ = agreement([5, 4, 4, 3, 1], ratings, n_bootstrap=0)
    assert reversed_.spearman.value == pytest.approx(-1) and reversed_.pairwise_accuracy.value == 0


def test_missing_scores_are_dropped_and_counted():
    scores, ratings = _random_with_ties(5, 20)
    with_missing = [None if i in (3, 8) else s for i, s in enumerate(scores)]
    with_missing[11] = float("nan")
    keep = [i for i in range(20) if i not in (3, 8, 11)]
    result = agreement(with_missing, ratings, n_bootstrap=30)
    reference = agreement(scores[keep], ratings[keep], n_bootstrap=30)
    assert result.n == 17 and result.n_missing == 3
    assert result.spearman == reference.spearman and result.pairwise_accuracy == reference.pairwise_accuracy


def test_constant_inputs_give_nan_with_a_note():
    constant_scores = agreement([3.0] * 6, [1, 2, 3, 4, 5, 6], n_bootstrap=20)
    assert math.isnan(constant_scores.spearman.value) and math.isnan(constant_scores.kendall_tau_b.value)
    assert constant_scores.pairwise_accuracy.value == 0.5  # every pair tied by the scorer: half credit
    assert any("scores are constant" in note for note in constant_scores.notes)
    constant_ratings = agreement([1, 2, 3, 4], [2, 2, 2, 2], n_bootstrap=20)
    assert all(math.isnan(getattr(constant_ratings, k).value) for k in ("spearman", "pairwise_accuracy"))
    assert constant_ratings.n_pairs == 0 and any("ratings are constant" in n for n in constant_ratings.notes)
    assert math.isnan(constant_ratings.spearman.low)


@pytest.mark.parametrize(
    ("scores", "ratings", "kwargs", "match"),
    [
        ([1, 2], [1, 2], {}, "at least 3"),
        ([1, None, None, 2], [1, 2, 3, 4], {}, "at least 3"),
        ([1, 2, 3], [1, 2], {}, "pair up"),
        ([1, 2, 3], [1, None, 3], {}, "reference_ratings must all be finite"),
        ([1, 2, math.inf], [1, 2, 3], {}, "infinite"),
        ([1, 2, 3], [1, 2, 3], {"n_bootstrap": -1}, "n_bootstrap"),
        ([1, 2, 3], [1, 2, 3], {"confidence": 1.0}, "confidence"),
    ],
)
def test_input_errors(scores, ratings, kwargs, match):
    with pytest.raises(ValueError, match=match):
        agreement(scores, ratings, **kwargs)


def test_type_errors():
    with pytest.raises(TypeError, match="not a string"):
        agreement("123", [1, 2, 3])
    with pytest.raises(TypeError, match="numbers"):
        agreement(["a", "b", "c"], [1, 2, 3])


def test_any_scorer_reference_metrics():
    references = ["the cat sat on the mat", "a dog ran in the park", "blue birds fly high", "old trees stand"]
    predictions = ["the cat sat on the mat", "a dog ran", "fish swim", "the cat sat on the mat"]
    ratings = [3, 2, 1, 0]
    rouge = rouge_l_scores(predictions, references)
    sentence_bleu = [bleu([p], [r]) for p, r in zip(predictions, references, strict=True)]
    assert rouge_l(predictions, references) == pytest.approx(np.mean(rouge))
    for scores in (rouge, sentence_bleu):
        result = agreement(scores, ratings, n_bootstrap=20)
        assert result.spearman.value == pytest.approx(stats.spearmanr(scores, ratings).statistic)
        assert result.pairwise_accuracy.value == pytest.approx(_pairwise_accuracy(scores, ratings))
    assert agreement(rouge, ratings, n_bootstrap=0).to_dict()["spearman"]["value"] > 0.5
