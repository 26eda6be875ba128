"""Binned calibration errors: ECE / RMS-CE / MCE (equal-width or equal-mass bins), top-label and class-wise ECE.

Conventions (see ``docs/metrics.md``):

* Equal-width bin ``b`` of ``B`` is ``(b/B, (b+1)/B]``; a confidence of exactly 0 goes to bin 0. The index is
  ``max(ceil(c * B) - 1, 0)`` computed in float64, which is exact for float32/bf16/fp16 confidences.
  torchmetrics uses left-closed bins ``[b/B, (b+1)/B)`` plus an extra bin for exactly 1.0, so the two differ
  only for confidences lying exactly on an inner bin edge.
* Per bin: ``n_b`` samples, accuracy ``acc_b = sum(correct) / n_b``, confidence ``conf_b = sum(c) / n_b``,
  gap ``g_b = |acc_b - conf_b|``; only non-empty bins count. With ``N`` samples,
  ``l1`` (ECE) ``= sum_b (n_b / N) g_b``, ``l2`` (RMS-CE) ``= sqrt(sum_b (n_b / N) g_b^2)``,
  ``max`` (MCE) ``= max_b g_b``.

All sums are float64, so results do not depend on batch order beyond ~1e-15.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from ._checks import ArrayLike, binary_1d, check_n_bins, confidences_1d, labels_1d, probs_2d, same_length

Norm = Literal["l1", "l2", "max"]
Binning = Literal["uniform", "quantile"]
_NORMS = ("l1", "l2", "max")
_BINNINGS = ("uniform", "quantile")


def check_norm(norm: str) -> str:
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of 'l1' (ECE), 'l2' (RMS-CE), 'max' (MCE); got {norm!r}.")
    return norm


def uniform_bin_index(confidences: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Equal-width bin of each confidence: ``max(ceil(c * B) - 1, 0)``, int64 of shape [N]."""
    return (torch.ceil(confidences.to(torch.float64) * n_bins).long() - 1).clamp_(0, n_bins - 1)


def quantile_bin_index(confidences: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Equal-mass bin of each confidence (int64 [N]); bins may be empty.

    Sort the N confidences; nominal bin ``k`` holds sorted positions ``[floor(kN/B), floor((k+1)N/B))``, so
    sizes differ by at most one when B does not divide N (and some are empty when N < B). The upper edge
    ``e_k`` of a non-empty nominal bin is its largest value, and a sample falls in the first bin whose
    edge is >= its value, i.e. bins are ``(e_{k-1}, e_k]``. Equal values therefore always share a bin (the
    lowest one their run reaches), which makes the result independent of the input order.
    """
    n = confidences.numel()
    values = confidences.to(torch.float64)
    ordered = torch.sort(values).values
    positions = torch.arange(n_bins + 1, device=values.device) * n // n_bins
    starts, ends = positions[:-1], positions[1:]
    nominal = torch.arange(n_bins, device=values.device)[ends > starts]
    edges = ordered[ends[nominal] - 1]
    # searchsorted(side="left") finds the first edge >= value; the last edge is the maximum, so all fit.
    return nominal[torch.searchsorted(edges, values)]


def bin_sums(
    index: torch.Tensor, confidences: torch.Tensor, correct: torch.Tensor, n_slots: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-slot (count int64, sum of confidences float64, sum of correct float64), each of shape [n_slots]."""
    device = confidences.device
    count = torch.zeros(n_slots, dtype=torch.int64, device=device)
    conf_sum = torch.zeros(n_slots, dtype=torch.float64, device=device)
    correct_sum = torch.zeros(n_slots, dtype=torch.float64, device=device)
    count.index_add_(0, index, torch.ones_like(index))
    conf_sum.index_add_(0, index, confidences.to(torch.float64))
    correct_sum.index_add_(0, index, correct.to(torch.float64))
    return count, conf_sum, correct_sum


def calibration_error_from_sums(
    count: torch.Tensor, conf_sum: torch.Tensor, correct_sum: torch.Tensor, norm: str, n_total: int | None = None
) -> float:
    """Calibration error from per-bin sums (any shape, flattened): the formulas of the module docstring.

    ``n_total`` defaults to ``count.sum()``; class-wise ECE passes the per-class total instead.
    """
    count, conf_sum, correct_sum = count.reshape(-1), conf_sum.reshape(-1), correct_sum.reshape(-1)
    nonempty = count > 0
    n = count[nonempty].to(torch.float64)
    gap = (correct_sum[nonempty] / n - conf_sum[nonempty] / n).abs()
    total = float(count.sum().item()) if n_total is None else float(n_total)
    if norm == "max":
        return float(gap.max().item()) if gap.numel() else 0.0
    if norm == "l2":
        return math.sqrt(float((n / total * gap.square()).sum().item()))
    return float((n / total * gap).sum().item())


def calibration_error(
    confidences: ArrayLike,
    correct: ArrayLike,
    *,
    n_bins: int = 15,
    norm: Norm = "l1",
    binning: Binning = "uniform",
) -> float:
    """Binned calibration error of confidences [N] against 0/1 correctness [N].

    ``norm="l1"`` is the ECE ``sum_b (n_b/N) |acc_b - conf_b|``, ``"l2"`` the RMS calibration error
    ``sqrt(sum_b (n_b/N) (acc_b - conf_b)^2)`` and ``"max"`` the MCE ``max_b |acc_b - conf_b|`` over non-empty
    bins. ``binning="uniform"`` uses bins ``(b/B, (b+1)/B]`` (0 goes to the first bin); ``"quantile"`` uses
    equal-mass bins (adaptive ECE; ties and uneven splits as in :func:`quantile_bin_index`).

    Args:
        confidences: top-label probability of each prediction, in [0, 1], shape [N].
        correct: 1 (or True) where the prediction was right, shape [N].
        n_bins: number of bins B >= 1.

    Returns:
        A float in [0, 1].

    Raises:
        ValueError: on empty or mismatched inputs, NaN/inf, confidences outside [0, 1], non-0/1 ``correct``,
            ``n_bins < 1`` or an unknown ``norm``/``binning``.
    """
    n_bins = check_n_bins(n_bins)
    check_norm(norm)
    if binning not in _BINNINGS:
        raise ValueError(f"binning must be 'uniform' (equal width) or 'quantile' (equal mass); got {binning!r}.")
    conf = confidences_1d(confidences)
    hit = binary_1d(correct, "correct")
    same_length(("confidences", conf), ("correct", hit))
    index = uniform_bin_index(conf, n_bins) if binning == "uniform" else quantile_bin_index(conf, n_bins)
    return calibration_error_from_sums(*bin_sums(index, conf, hit, n_bins), norm)


def top_label_confidence(probs: ArrayLike, labels: ArrayLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-1 confidence, prediction and correctness of probability rows.

    Args:
        probs: softmax probabilities [N, C].
        labels: integer class labels [N] in [0, C).

    Returns:
        ``(confidence float64 [N], prediction int64 [N], correct bool [N])``; on ties the prediction is the
        lowest class index (``torch.argmax``).
    """
    p, y = probs_and_labels(probs, labels)
    return top1(p, y)


def probs_and_labels(probs: ArrayLike, labels: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated ``(probs float64 [N, C], labels int64 [N])``."""
    p = probs_2d(probs)
    y = labels_1d(labels, p.shape[1])
    same_length(("probs", p), ("labels", y))
    return p, y


def top1(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(confidence, prediction, correct)`` of validated probability rows; argmax ties go to the lowest index."""
    pred = probs.argmax(dim=1)
    return probs.gather(1, pred[:, None]).squeeze(1), pred, pred == labels


def top_label_bin_sums(
    confidence: torch.Tensor, pred: torch.Tensor, correct: torch.Tensor, n_classes: int, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over the (predicted class, equal-width bin) cells, each of shape [C, B]."""
    index = pred * n_bins + uniform_bin_index(confidence, n_bins)
    sums = bin_sums(index, confidence, correct, n_classes * n_bins)
    return tuple(s.view(n_classes, n_bins) for s in sums)  # type: ignore[return-value]


def classwise_bin_sums(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over the (class k, bin of p_k) cells over all samples: count, sum of p_k, sum of 1[y = k]; [C, B]."""
    n_classes = probs.shape[1]
    index = torch.arange(n_classes, device=probs.device) * n_bins + uniform_bin_index(probs, n_bins)
    is_label = torch.nn.functional.one_hot(labels, n_classes).bool()
    sums = bin_sums(index.reshape(-1), probs.reshape(-1), is_label.reshape(-1), n_classes * n_bins)
    return tuple(s.view(n_classes, n_bins) for s in sums)  # type: ignore[return-value]


def top_label_calibration_error(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15) -> float:
    """Top-label ECE (Thermometer's TL-ECE) of probabilities [N, C] against labels [N].

    With ``c_i`` the top-1 confidence and ``k_i`` the predicted class, cell ``(k, b)`` holds the samples
    predicted as ``k`` whose confidence falls in equal-width bin ``b``:
    ``TL-ECE = sum_k sum_b (n_kb / N) |acc_kb - conf_kb|`` over non-empty cells. It is the ECE computed
    separately on each predicted class, weighted by that class's share of predictions.
    """
    n_bins = check_n_bins(n_bins)
    p, y = probs_and_labels(probs, labels)
    conf, pred, hit = top1(p, y)
    return calibration_error_from_sums(*top_label_bin_sums(conf, pred, hit, p.shape[1], n_bins), "l1")


def classwise_calibration_error(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15) -> float:
    """Class-wise ECE (Kull et al., 2019) of probabilities [N, C] against labels [N].

    For every class ``k`` bin all N samples by ``p_ik`` (equal-width bins); in bin ``b`` compare the mean of
    ``p_ik`` with the frequency of ``y_i = k``:
    ``CW-ECE = (1/C) sum_k sum_b (n_kb / N) |freq_kb - conf_kb|``, the mean over classes of each class's
    one-vs-rest ECE.
    """
    n_bins = check_n_bins(n_bins)
    p, y = probs_and_labels(probs, labels)
    per_class = calibration_error_from_sums(*classwise_bin_sums(p, y, n_bins), "l1", n_total=p.shape[0])
    return per_class / p.shape[1]
