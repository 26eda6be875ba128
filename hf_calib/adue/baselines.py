"""Baseline uncertainty scores for misclassification detection, and the comparison table against AdUE.

- softmax response: ``1 - max_c p_c``;
- predictive entropy: ``-sum_c p_c log p_c`` (natural log, ``0 log 0 = 0``);
- Mahalanobis distance (Lee et al., 2018): class means ``mu_c`` and one shared covariance ``Sigma`` (the
  maximum-likelihood estimate, pooled over classes) fitted on training features; the score of ``x`` is
  ``min_c (x - mu_c)^T Sigma^+ (x - mu_c)`` with ``Sigma^+`` the pseudo-inverse (features are often rank-deficient).
"""

from __future__ import annotations

from typing import Any

import torch

from ..metrics import accuracy, misclassification_auroc
from .features import AdUEFeatures
from .head import AdUEHead
from .train import predict_uncertainty


def softmax_response(logits: torch.Tensor) -> torch.Tensor:
    """``1 - max softmax(logits)`` [N] for ``logits`` [N, C], in float64."""
    return 1.0 - torch.softmax(logits.double(), dim=-1).max(dim=-1).values


def predictive_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``-sum_c p_c log p_c`` [N] for ``logits`` [N, C], in float64 (exact where some p_c underflow to 0)."""
    log_p = torch.log_softmax(logits.double(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


class MahalanobisDistance:
    """Class-conditional Gaussians with a shared covariance over flattened features; score = min distance.

    ``fit(features [N, ...], labels [N])`` then ``score(features [M, ...]) -> [M]`` (float64).
    """

    def __init__(self) -> None:
        self.means: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> MahalanobisDistance:
        """Fit class means and the pooled covariance on training ``features`` and their true ``labels``."""
        x = features.reshape(len(features), -1).double()
        y = labels.reshape(-1).long()
        if len(x) != len(y) or len(x) < 2:
            raise ValueError(f"features and labels must hold the same number (>= 2) of rows; got {len(x)}, {len(y)}.")
        classes = torch.unique(y)
        means = torch.stack([x[y == c].mean(0) for c in classes])
        centred = x - means[torch.searchsorted(classes, y)]
        covariance = centred.T @ centred / len(x)
        self.means = means
        self.precision = torch.linalg.pinv(covariance, hermitian=True)
        return self

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """``min_c (x - mu_c)^T Sigma^+ (x - mu_c)`` [M] for ``features`` [M, ...]."""
        if self.means is None or self.precision is None:
            raise ValueError("MahalanobisDistance is not fitted; call fit(train_features, train_labels) first.")
        x = features.reshape(len(features), -1).double()
        if x.shape[1] != self.means.shape[1]:
            raise ValueError(f"features have width {x.shape[1]} but the fit saw {self.means.shape[1]}.")
        diff = x[:, None, :] - self.means[None, :, :]
        distances = torch.einsum("mcd,de,mce->mc", diff, self.precision, diff)
        return distances.min(dim=-1).values


def evaluate_uncertainty(
    head: AdUEHead | None,
    train: AdUEFeatures,
    test: AdUEFeatures,
) -> dict[str, Any]:
    """Misclassification AUROC of AdUE (if ``head``) and the baselines on ``test``, with accuracy.

    Mahalanobis is fitted on ``train``'s features and true labels. Returns ``{"accuracy", "n", "n_errors",
    "auroc": {"adue", "softmax_response", "entropy", "mahalanobis"}}``.
    """
    errors = test.errors
    scores = {
        "softmax_response": softmax_response(test.logits),
        "entropy": predictive_entropy(test.logits),
        "mahalanobis": MahalanobisDistance().fit(train.features, train.labels).score(test.features),
    }
    if head is not None:
        scores = {"adue": predict_uncertainty(head, test.features), **scores}
    return {
        "accuracy": accuracy(torch.softmax(test.logits.double(), dim=-1), test.labels),
        "n": len(test),
        "n_errors": int(errors.sum().item()),
        "auroc": {name: misclassification_auroc(score, errors) for name, score in scores.items()},
    }
