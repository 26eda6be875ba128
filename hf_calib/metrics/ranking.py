"""Misclassification detection: AUROC, AUPRC, risk-coverage curve and AURC of an uncertainty score.

Errors are the positive class and a higher uncertainty should mean a likelier error. Every function treats
equal uncertainties as one threshold (the whole tie group is accepted or rejected together), so results never
depend on the order of the samples.

Degenerate inputs: AUROC needs at least one error and one correct prediction, AUPRC at least one error; both
raise ``ValueError`` otherwise (they are undefined, and a made-up number would be mistaken for a result).
The risk-coverage curve and AURC are defined for any non-empty input.
"""

from __future__ import annotations

import torch

from ._checks import ArrayLike, binary_1d, same_length, scores_1d


def _inputs(uncertainty: ArrayLike, errors: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    u = scores_1d(uncertainty, "uncertainty")
    e = binary_1d(errors, "errors")
    same_length(("uncertainty", u), ("errors", e))
    return u, e


def _groups(uncertainty: torch.Tensor, errors: torch.Tensor, *, descending: bool) -> tuple[torch.Tensor, ...]:
    """Tie groups of the sorted scores: (value, size, number of errors), int64 counts, one entry per value."""
    order = torch.sort(uncertainty, descending=descending, stable=True).indices
    values, sizes = torch.unique_consecutive(uncertainty[order], return_counts=True)
    ends = sizes.cumsum(0) - 1
    cum_errors = errors[order].long().cumsum(0)[ends]
    n_errors = torch.diff(cum_errors, prepend=cum_errors.new_zeros(1))
    return values, sizes, n_errors


def _need_errors(n_pos: int, n: int, metric: str, need_correct: bool) -> None:
    if n_pos == 0:
        raise ValueError(f"{metric} is undefined without errors: all {n} predictions are correct.")
    if need_correct and n_pos == n:
        raise ValueError(f"{metric} is undefined without correct predictions: all {n} predictions are errors.")


def misclassification_auroc(uncertainty: ArrayLike, errors: ArrayLike) -> float:
    """Area under the ROC curve of ``uncertainty`` [N] for detecting ``errors`` [N] (positive class).

    ``AUROC = P(u_err > u_ok) + 0.5 P(u_err = u_ok)`` over pairs of an error and a correct prediction (the
    Mann-Whitney statistic with average ranks for ties), which equals the trapezoidal area under the ROC curve,
    as in ``sklearn.metrics.roc_auc_score``. Counted in int64, exact up to ~3e9 samples.

    Raises:
        ValueError: if there is no error or no correct prediction, or on malformed input.
    """
    u, e = _inputs(uncertainty, errors)
    n_pos = int(e.sum().item())
    _need_errors(n_pos, e.numel(), "misclassification_auroc", need_correct=True)
    _, sizes, pos = _groups(u, e, descending=False)
    neg = sizes - pos
    neg_below = torch.cumsum(neg, 0) - neg
    twice_wins = (pos * (2 * neg_below + neg)).sum().item()
    return twice_wins / (2 * n_pos * (e.numel() - n_pos))


def misclassification_auprc(uncertainty: ArrayLike, errors: ArrayLike) -> float:
    """Average precision of ``uncertainty`` [N] for detecting ``errors`` [N] (positive class).

    Thresholds at each distinct uncertainty from high to low; with ``P_j``, ``R_j`` the precision and recall
    of flagging every sample with uncertainty >= the j-th threshold, ``AP = sum_j (R_j - R_{j-1}) P_j``
    (no interpolation), as in ``sklearn.metrics.average_precision_score``. Equals 1.0 when every prediction
    is an error.

    Raises:
        ValueError: if there is no error, or on malformed input.
    """
    u, e = _inputs(uncertainty, errors)
    n_pos = int(e.sum().item())
    _need_errors(n_pos, e.numel(), "misclassification_auprc", need_correct=False)
    _, sizes, pos = _groups(u, e, descending=True)
    precision = pos.cumsum(0).double() / sizes.cumsum(0).double()
    return float((pos.double() * precision).sum().item()) / n_pos


def risk_coverage_curve(uncertainty: ArrayLike, errors: ArrayLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Selective risk against coverage when accepting the least uncertain predictions first.

    For each distinct uncertainty ``t_j`` (ascending), accept every sample with ``u <= t_j``:
    coverage ``c_j = |accepted| / N`` and risk ``r_j = errors among accepted / |accepted|``.

    Returns:
        ``(coverage, risk, thresholds)``, float64 tensors of shape [M] with M the number of distinct
        uncertainties; coverage increases to 1 and ``risk[-1]`` is the overall error rate.
    """
    u, e = _inputs(uncertainty, errors)
    values, sizes, n_err = _groups(u, e, descending=False)
    accepted = sizes.cumsum(0).double()
    return accepted / u.numel(), n_err.cumsum(0).double() / accepted, values


def aurc(uncertainty: ArrayLike, errors: ArrayLike) -> float:
    """Area under the risk-coverage curve (lower is better), in [0, 1].

    ``AURC = sum_j (c_j - c_{j-1}) r_j`` with ``c_0 = 0`` over the points of :func:`risk_coverage_curve`
    (right-endpoint rule). Without ties this is ``(1/N) sum_{k=1..N} risk of the k most certain samples``
    (Geifman et al., 2019); a tie group is accepted as a whole, so it contributes its end-point risk.
    """
    coverage, risk, _ = risk_coverage_curve(uncertainty, errors)
    widths = torch.diff(coverage, prepend=coverage.new_zeros(1))
    return float((widths * risk).sum().item())
