"""Proper scores and accuracy of probability rows: Brier score, negative log-likelihood, accuracy."""

from __future__ import annotations

import math

import torch

from ._checks import ArrayLike, labels_1d, logits_2d, same_length
from .calibration import probs_and_labels

DEFAULT_MIN_PROB = 1e-12


def brier_per_sample(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``sum_c (p_ic - 1[y_i = c])^2`` for validated probs [N, C] and labels [N]; float64 [N], in [0, 2]."""
    p = probs.to(torch.float64)
    p_true = p.gather(1, labels[:, None]).squeeze(1)
    # sum_c p_c^2 - 2 p_y + 1, written this way to avoid materialising the one-hot matrix.
    return (p.square().sum(dim=1) - 2 * p_true + 1).clamp_(min=0)


def nll_per_sample(probs: torch.Tensor, labels: torch.Tensor, min_prob: float = DEFAULT_MIN_PROB) -> torch.Tensor:
    """``-log(max(p_iy, min_prob))`` for validated probs [N, C] and labels [N]; float64 [N]."""
    p_true = probs.to(torch.float64).gather(1, labels[:, None]).squeeze(1)
    return -torch.log(p_true.clamp(min=min_prob))


def nll_from_logits_per_sample(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``logsumexp(z_i) - z_iy`` (float32 for 16/32-bit logits, float64 for float64 logits); float64 [N]."""
    log_p = torch.log_softmax(logits, dim=1)
    return (-log_p.gather(1, labels[:, None]).squeeze(1)).to(torch.float64)


def check_min_prob(min_prob: float) -> float:
    if not (isinstance(min_prob, int | float) and 0 < min_prob < 1 and math.isfinite(min_prob)):
        raise ValueError(f"min_prob must be a float in (0, 1), e.g. 1e-12; got {min_prob!r}.")
    return float(min_prob)


def brier_score(probs: ArrayLike, labels: ArrayLike, *, normalize: bool = False) -> float:
    """Multiclass Brier score of probabilities [N, C] against labels [N].

    ``normalize=False``: ``(1/N) sum_i sum_c (p_ic - 1[y_i = c])^2``, in [0, 2] (Brier's original definition).
    ``normalize=True``: the same divided by C, i.e. the mean over all N*C entries (Thermometer's code), in
    [0, 2/C].
    """
    p, y = probs_and_labels(probs, labels)
    score = float(brier_per_sample(p, y).mean().item())
    return score / p.shape[1] if normalize else score


def nll(probs: ArrayLike, labels: ArrayLike, *, min_prob: float = DEFAULT_MIN_PROB) -> float:
    """Mean negative log-likelihood of the true class from probabilities [N, C]:
    ``(1/N) sum_i -log(max(p_iy, min_prob))``.

    The clamp keeps a zero probability (underflow in the softmax) finite: each sample contributes at most
    ``-log(min_prob)`` (27.6 for the default 1e-12). Use :func:`nll_from_logits` when logits are available;
    it needs no clamp.
    """
    min_prob = check_min_prob(min_prob)
    p, y = probs_and_labels(probs, labels)
    return float(nll_per_sample(p, y, min_prob).mean().item())


def nll_from_logits(logits: ArrayLike, labels: ArrayLike) -> float:
    """Mean cross-entropy of logits [N, C] against labels [N]: ``(1/N) sum_i (logsumexp(z_i) - z_iy)``.

    Same value as ``torch.nn.functional.cross_entropy(logits.float(), labels)``; computed in float32 (float64
    when the logits are float64), accumulated in float64.
    """
    z = logits_2d(logits)
    y = labels_1d(labels, z.shape[1])
    same_length(("logits", z), ("labels", y))
    return float(nll_from_logits_per_sample(z, y).mean().item())


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy ``(1/N) sum_i 1[argmax_c p_ic = y_i]`` of scores [N, C] (probabilities) and labels [N].

    Argmax ties go to the lowest class index.
    """
    p, y = probs_and_labels(probs, labels)
    return float((p.argmax(dim=1) == y).double().mean().item())
