"""Plain-torch row kernel for label-smoothing cross-entropy.

This is the CPU (and reference) twin of :mod:`ce_triton`. Both implement the same contract,
:func:`label_smoothing_ce_rows`, on one chunk of rows whose logits are already materialized
(the chunked driver in :mod:`fused_linear` produces them one chunk at a time).

Per row, with logits ``z`` (after the optional soft cap ``z = c * tanh(raw / c)``), target ``y``,
smoothing ``eps`` and vocabulary size ``V``::

    loss = lse(z) - (1 - eps) * z_y - (eps / V) * sum_v z_v
    dloss/dz_v = softmax(z)_v - eps / V - (1 - eps) * [v == y]
    dloss/draw_v = dloss/dz_v * (1 - tanh(raw_v / c) ** 2)      (soft cap only)

The smoothing mass is spread over all ``V`` classes, target included, exactly as
``torch.nn.functional.cross_entropy(label_smoothing=eps)``.

With ``stats=True`` the same pass also returns the row statistics of :mod:`row_stats` (confidence,
correctness, NLL, entropy, Brier): the exponentials are taken in blocks of whole rows (about 1 MiB, so they stay
in cache) that also add up ``sum_v e_v (z_v - m)`` and ``sum_v e_v^2``, so the only extra memory is one such
block, and the loss and gradient are bit for bit those computed without statistics. Without a gradient the exponentials
are not written back (the loss then agrees with the statistics-free one to float32 rounding).
"""

from __future__ import annotations

import torch

from .row_stats import stats_from_sums

#: Bytes of float32 logits per block of rows when the exponentials also feed the row statistics: a block this
#: small stays in the CPU's cache for its few passes (exponentials, two dot products, sum or write-back).
STATS_BLOCK_BYTES = 1 << 20


def _exp_with_moments_(shifted: torch.Tensor, *, keep: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Per row of ``shifted = z - m``: ``(sum_v e_v, sum_v e_v (z_v - m), sum_v e_v^2)`` with ``e = exp(z - m)``,
    a block of whole rows at a time. With ``keep`` the buffer is overwritten with ``e`` (the gradient needs it) and
    the first sum is left to the caller (``None``), so that it is computed exactly as without statistics; without
    ``keep`` the buffer is left as it is. A ``-inf`` logit has ``e = 0`` and adds 0 (not ``0 * -inf``)."""
    n_rows, vocab = shifted.shape
    lowest = torch.finfo(shifted.dtype).min
    step = max(1, STATS_BLOCK_BYTES // (4 * max(vocab, 1)))
    sum_e = None if keep else shifted.new_empty(n_rows)
    sum_ez = shifted.new_empty(n_rows)
    sum_e2 = shifted.new_empty(n_rows)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        block = shifted[start:stop].clamp_(min=lowest)  # -inf -> lowest: exp 0; NaN stays NaN
        e = torch.exp(block)
        sum_ez[start:stop] = torch.einsum("ij,ij->i", e, block)
        sum_e2[start:stop] = torch.einsum("ij,ij->i", e, e)
        if keep:
            block.copy_(e)
        else:
            sum_e[start:stop] = e.sum(dim=1)
    return sum_e, sum_ez, sum_e2


def label_smoothing_ce_rows(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    label_smoothing: float,
    softcap: float | None,
    grad_scale: torch.Tensor | None,
    stats: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Loss (and optionally its gradient and row statistics) for a chunk of rows, computed in place.

    Args:
        logits: ``[C, V]`` float32, contiguous. Raw logits (before the soft cap). The buffer is
            consumed: it is overwritten with intermediate values and, when possible, reused for
            the returned gradient.
        labels: ``[C]`` int64, every entry in ``[0, V)`` (ignored rows were removed by the caller).
        label_smoothing: ``eps`` in ``[0, 1)``.
        softcap: soft-cap value ``c`` or ``None``.
        grad_scale: ``[C]`` float32 per-row factors applied to the gradient, or ``None`` to skip
            the gradient entirely.
        stats: also return the ``[C, 5]`` float32 row statistics of :mod:`row_stats`.

    Returns:
        ``(loss [C] float32, grad [C, V] float32 or None, stats [C, 5] float32 or None)`` where ``grad``
        is ``grad_scale[:, None] * dloss/draw``.
    """
    n_rows, vocab = logits.shape
    eps = float(label_smoothing)
    rows = torch.arange(n_rows, device=logits.device)
    if softcap is not None:
        # logits now holds t = tanh(raw / c); z = c * t lives in a second buffer because the
        # chain-rule factor (1 - t^2) is still needed after the softmax.
        tanh_raw = logits.div_(softcap).tanh_()
        z = torch.mul(tanh_raw, softcap)
    else:
        tanh_raw = None
        z = logits

    z_target = z[rows, labels]
    z_sum = z.sum(dim=1) if eps > 0.0 else None
    sum_exp = None
    if stats:
        row_max, argmax = z.max(dim=1, keepdim=True)
        exp_z = z.sub_(row_max)  # z is consumed here
        sum_exp, sum_ez, sum_e2 = _exp_with_moments_(exp_z, keep=grad_scale is not None)
        sum_exp = None if sum_exp is None else sum_exp.unsqueeze(1)
    else:
        row_max = z.amax(dim=1, keepdim=True)
        exp_z = z.sub_(row_max).exp_()  # z is consumed here
    if sum_exp is None:
        sum_exp = exp_z.sum(dim=1, keepdim=True)
    lse = (row_max + sum_exp.log()).squeeze(1)

    loss = lse - (1.0 - eps) * z_target
    if z_sum is not None:
        loss = loss - (eps / vocab) * z_sum
    row_stats = None
    if stats:
        correct = argmax.squeeze(1) == labels
        row_stats = stats_from_sums(sum_exp.squeeze(1), sum_ez, sum_e2, lse - z_target, correct)

    if grad_scale is None:
        return loss, None, row_stats

    scale = grad_scale.to(torch.float32).unsqueeze(1)
    grad = exp_z.mul_(scale / sum_exp)  # scale * softmax
    if eps > 0.0:
        grad.sub_(scale * (eps / vocab))
    grad[rows, labels] -= scale.squeeze(1) * (1.0 - eps)
    if tanh_raw is not None:
        grad.mul_(tanh_raw.square_().neg_().add_(1.0))
    return loss, grad, row_stats
