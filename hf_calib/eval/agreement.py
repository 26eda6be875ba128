"""How well a scorer agrees with reference ratings: rank correlations and pairwise accuracy, with bootstrap CIs.

Validating a judge (or ROUGE-L, BLEU, any per-item score) means comparing its scores with trusted ratings
of the same items, usually human ones. :func:`agreement` reports, over the items:

- **Spearman's rho**: Pearson correlation of the average ranks (ties share their mean rank);
- **Kendall's tau-b**: ``(C - D) / sqrt((P - T_s) (P - T_r))`` with C / D the concordant / discordant
  pairs, P all pairs, T_s / T_r the pairs tied in the scores / in the ratings (scipy's default variant);
- **pairwise accuracy**: over the pairs the ratings order (different ratings), the fraction the scorer
  orders the same way. A pair the *scorer* ties counts as half correct (the expected accuracy of breaking
  the tie at random), so a constant scorer gets 0.5 and ties are not rewarded. Equals
  ``1/2 + (C - D) / (2 (P - T_r))``.

Each comes with a percentile bootstrap confidence interval: items are resampled with replacement
``n_bootstrap`` times and the statistic recomputed on each resample (ranks and ties included).

**Missing scores** (``None`` or NaN, e.g. a judge reply that did not parse) drop their item from every
statistic; ``n_missing`` counts them. Reference ratings must all be finite. **Undefined statistics** are
NaN with a note, not an error: a constant scorer or constant ratings leave both correlations undefined,
and constant ratings leave no pair to order. Resamples where a statistic is undefined are left out of its
interval. Needs at least 3 scored items.

Everything is numpy (no scipy at run time): each statistic is a quadratic form in the items' resample
counts, so the point estimate and all bootstrap replicates share one code path; memory and time are
O(n^2) per replicate, fine for the few hundred to few thousand items a rated sample has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["AgreementResult", "Estimate", "agreement"]

_STATS = ("spearman", "kendall_tau_b", "pairwise_accuracy")


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap percentile interval (``nan`` bounds if undefined or no bootstrap)."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class AgreementResult:
    """:func:`agreement`'s output: three statistics with intervals, the counts, and notes on undefined ones."""

    spearman: Estimate
    kendall_tau_b: Estimate
    pairwise_accuracy: Estimate
    n: int  # items used (scored)
    n_missing: int  # items dropped for a missing score
    n_pairs: int  # pairs of used items with different reference ratings
    confidence: float
    n_bootstrap: int
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """A JSON-ready dict (NaN stays ``float("nan")``)."""
        return asdict(self)


def _as_floats(values: Sequence[float | None], name: str) -> np.ndarray:
    if isinstance(values, str | bytes):
        raise TypeError(f"{name} must be a sequence of numbers, not a string.")
    try:
        return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must hold numbers (or None for a missing score): {error}") from None


def _statistics(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The three statistics for each row of ``weights`` [B, n] (item counts of a resample; ones = the data)."""
    sx = np.sign(x[:, None] - x[None, :])
    sy = np.sign(y[:, None] - y[None, :])

    def pairs(matrix: np.ndarray) -> np.ndarray:  # sum over resampled pairs i < j of matrix[item_i, item_j]
        return np.einsum("bi,ij,bj->b", weights, matrix, weights) / 2

    concordance = pairs(sx * sy)  # C - D
    untied_x, untied_y = pairs(np.abs(sx)), pairs(np.abs(sy))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.where((untied_x > 0) & (untied_y > 0), concordance / np.sqrt(untied_x * untied_y), np.nan)
        accuracy = np.where(untied_y > 0, 0.5 + concordance / (2 * untied_y), np.nan)
        total = weights.sum(1, keepdims=True)
        ranks = []
        for signs in (sx, sy):
            # Average 1-based rank in the resample: items strictly below, plus the middle of the tie group.
            below, equal = weights @ (signs > 0).T, weights @ (signs == 0).T
            ranks.append(below + (equal + 1) / 2)
        centred = [r - (weights * r).sum(1, keepdims=True) / total for r in ranks]
        cov = (weights * centred[0] * centred[1]).sum(1)
        var_x, var_y = ((weights * c * c).sum(1) for c in centred)
        rho = np.where((untied_x > 0) & (untied_y > 0), cov / np.sqrt(var_x * var_y), np.nan)
    return {"spearman": np.clip(rho, -1, 1), "kendall_tau_b": np.clip(tau, -1, 1), "pairwise_accuracy": accuracy}


def agreement(
    scores: Sequence[float | None],
    reference_ratings: Sequence[float],
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> AgreementResult:
    """Agreement of per-item ``scores`` with ``reference_ratings`` of the same items (see the module docs).

    ``scores`` may hold ``None`` / NaN for missing scores (their items are dropped and counted);
    ``reference_ratings`` must be finite numbers (any ordinal scale). ``n_bootstrap`` resamples (0: no
    intervals) with ``numpy.random.default_rng(seed)`` give percentile intervals at ``confidence``.

    Raises:
        ValueError: lengths differ, a rating is missing, fewer than 3 scored items, or a bad
            ``n_bootstrap`` / ``confidence``.
    """
    x, y = _as_floats(scores, "scores"), _as_floats(reference_ratings, "reference_ratings")
    if x.shape != y.shape:
        raise ValueError(f"scores and reference_ratings must pair up one to one; got lengths {len(x)} and {len(y)}.")
    if not np.isfinite(y).all():
        raise ValueError("reference_ratings must all be finite numbers; drop the unrated items first.")
    if np.isinf(x).any():
        raise ValueError("scores must be finite numbers or None/NaN for a missing score; got an infinite score.")
    if not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative integer (0: no intervals); got {n_bootstrap!r}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1; got {confidence}.")
    scored = ~np.isnan(x)
    x, y = x[scored], y[scored]
    n = len(x)
    if n < 3:
        raise ValueError(f"agreement needs at least 3 items with a score; got {n} (of {len(scored)}).")
    point = {k: float(v[0]) for k, v in _statistics(np.ones((1, n)), x, y).items()}
    lows, highs = dict.fromkeys(_STATS, math.nan), dict.fromkeys(_STATS, math.nan)
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n, np.full(n, 1 / n), size=n_bootstrap).astype(np.float64)
        chunks = [_statistics(counts[i : i + 200], x, y) for i in range(0, n_bootstrap, 200)]
        alpha = (1 - confidence) / 2
        for key in _STATS:
            replicates = np.concatenate([c[key] for c in chunks])
            replicates = replicates[np.isfinite(replicates)]
            if len(replicates):
                lows[key], highs[key] = (float(q) for q in np.quantile(replicates, [alpha, 1 - alpha]))
    notes = []
    if np.all(x == x[0]):
        notes.append("the scores are constant: Spearman and Kendall are undefined (NaN).")
    if np.all(y == y[0]):
        notes.append("the reference ratings are constant: no pair to order, every statistic is undefined (NaN).")
    return AgreementResult(
        **{k: Estimate(point[k], lows[k], highs[k]) for k in _STATS},
        n=n,
        n_missing=int((~scored).sum()),
        n_pairs=int(np.sum(y[:, None] != y[None, :]) // 2),
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        notes=tuple(notes),
    )
