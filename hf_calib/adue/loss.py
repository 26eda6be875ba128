"""The AdUE training loss.

    L = BCE(U, e) + alpha * MSE(U, u_SR) + beta * sum_k ||theta_k - theta0_k||^2

with U [N] the head's uncertainty, e [N] the frozen classifier's error indicator, u_SR [N] its normalised
softmax response ``(1 - max p) / (1 - 1/C)``, and the last term (L2-SP) pulling the head's parameters
``theta`` back to their starting values ``theta0`` (the classification head's weights). BCE and MSE are
means over the batch; L2-SP is a plain sum of squares over all head parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F


def l2_sp(parameters: Iterable[tuple[str, torch.Tensor]], initial: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``sum_k ||theta_k - theta0_k||^2`` over named ``parameters`` against ``initial`` (same names)."""
    total: torch.Tensor | None = None
    for name, param in parameters:
        if name not in initial:
            raise ValueError(f"initial has no value for parameter {name!r}; snapshot the head before training.")
        term = (param - initial[name]).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("parameters is empty; the AdUE head has nothing to regularise.")
    return total


def adue_loss(
    uncertainty: torch.Tensor,
    errors: torch.Tensor,
    softmax_response: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    parameters: Iterable[tuple[str, torch.Tensor]] | None = None,
    initial: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The AdUE loss and its three unweighted terms (detached scalars ``bce``, ``mse``, ``l2_sp``) for logging.

    Args:
        uncertainty: U [N] in (0, 1).
        errors: e [N], 1.0 for a misclassified example, else 0.0.
        softmax_response: u_SR [N] of the frozen logits.
        alpha: weight of the MSE term.
        beta: weight of the L2-SP term; with ``beta > 0`` pass the head's ``named_parameters()`` and ``initial``.
    """
    if uncertainty.shape != errors.shape or uncertainty.shape != softmax_response.shape or uncertainty.ndim != 1:
        raise ValueError(
            f"uncertainty, errors and softmax_response must all have shape [N]; got {tuple(uncertainty.shape)}, "
            f"{tuple(errors.shape)} and {tuple(softmax_response.shape)}."
        )
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be non-negative; got alpha={alpha}, beta={beta}.")
    u = uncertainty.float()
    bce = F.binary_cross_entropy(u, errors.to(u.dtype))
    mse = F.mse_loss(u, softmax_response.to(u.dtype))
    total = bce + alpha * mse
    reg = torch.zeros((), device=u.device)
    if beta > 0:
        if parameters is None or initial is None:
            raise ValueError("beta > 0 needs parameters (head.named_parameters()) and their initial values.")
        reg = l2_sp(parameters, initial)
        total = total + beta * reg
    return total, {"bce": bce.detach(), "mse": mse.detach(), "l2_sp": reg.detach()}
