"""Label-smoothing cross-entropy for callers that already hold the logits.

Same math and row kernels as :mod:`fused_linear`, but the input is ``logits [N, V]``. The only
large buffer it allocates is the gradient of the logits (which autograd needs anyway); the
float32 log-softmax copy that ``F.cross_entropy`` keeps is avoided by processing row chunks.
As in :mod:`fused_linear`, ignored rows are masked (zero logits, target 0, gradient factor 0,
loss 0) rather than dropped, so nothing here synchronizes with the device.
"""

from __future__ import annotations

import torch

from .fused_linear import CESettings, chunk_targets, loss_scale, valid_scale
from .row_stats import N_STATS


class LabelSmoothingCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        labels: torch.Tensor,
        scale: torch.Tensor,
        settings: CESettings,
    ) -> torch.Tensor:
        want_grad = ctx.needs_input_grad[0]
        n_rows, vocab = logits.shape
        chunk_rows = settings.chunk_rows
        grad_scale = valid_scale(labels, settings.ignore_index, scale) if want_grad else None
        # Every row is written below (ignored ones with exact zeros), so no zero fill is needed.
        grad_logits = torch.empty_like(logits) if want_grad else None
        losses = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
        stats = (
            torch.empty((n_rows, N_STATS), dtype=torch.float32, device=logits.device) if settings.row_stats else None
        )
        for start in range(0, n_rows, chunk_rows):
            stop = min(start + chunk_rows, n_rows)
            labels_c = labels[start:stop]
            valid = labels_c != settings.ignore_index
            # A float32 copy (the row kernel overwrites it) with ignored rows zeroed: finite, so
            # their zero gradient factor gives exact zeros.
            z = logits[start:stop].to(torch.float32, copy=True).masked_fill_(~valid.unsqueeze(1), 0.0)
            loss_c, dlogits, stats_c = settings.row_kernel(
                z,
                chunk_targets(labels_c, valid, vocab),
                label_smoothing=settings.label_smoothing,
                softcap=settings.softcap,
                grad_scale=None if grad_scale is None else grad_scale[start:stop],
                stats=stats is not None,
            )
            losses[start:stop] = torch.where(valid, loss_c, 0.0)
            if stats is not None:
                stats[start:stop] = stats_c
            if dlogits is not None:
                grad_logits[start:stop] = dlogits.to(logits.dtype)
            del z, dlogits, stats_c
        ctx.reduction = settings.reduction
        ctx.grad_logits = grad_logits
        out = losses if settings.reduction == "none" else losses.sum() * scale
        if stats is None:
            return out
        ctx.mark_non_differentiable(stats)
        return out, stats

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor, *_stats_grad: torch.Tensor):
        # Always return a new tensor, never the stored one: autograd may adopt the returned
        # gradient (or a view of it) as `.grad` and accumulate into it in place, which would
        # corrupt the stored gradient for a second backward (retain_graph=True, gradcheck).
        grad = ctx.grad_logits
        scale = grad_output.to(grad.dtype)
        if ctx.reduction == "none":
            scale = scale.unsqueeze(1)
        return grad * scale, None, None, None


def label_smoothing_ce_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    settings: CESettings,
    denominator: torch.Tensor | float = 1.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Flattened, validated inputs: ``logits [N, V]``, ``labels [N]``; ``"mean"`` divides by
    ``denominator`` (a number or a 0-d tensor that may live on the device). With ``settings.row_stats``
    returns ``(loss, stats [N, 5])`` (:mod:`row_stats`; ignored rows hold values of no meaning)."""
    scale = loss_scale(settings.reduction, denominator, logits.device)
    return LabelSmoothingCE.apply(logits, labels, scale, settings)
