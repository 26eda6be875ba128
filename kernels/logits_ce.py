"""Label-smoothing cross-entropy for callers that already hold the logits.

Same math and row kernels as :mod:`fused_linear`, but the input is ``logits [N, V]``. The only
large buffer it allocates is the gradient of the logits (which autograd needs anyway); the
float32 log-softmax copy that ``F.cross_entropy`` keeps is avoided by processing row chunks.
"""

from __future__ import annotations

import torch

from .fused_linear import CESettings


class LabelSmoothingCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        labels: torch.Tensor,
        settings: CESettings,
    ) -> torch.Tensor:
        want_grad = ctx.needs_input_grad[0]
        rows_valid = (labels != settings.ignore_index).nonzero().squeeze(1)
        n_valid = rows_valid.numel()
        reduction, chunk_rows = settings.reduction, settings.chunk_rows
        scale = 1.0 / settings.denominator if reduction == "mean" else 1.0
        grad_logits = torch.zeros_like(logits) if want_grad else None
        losses = torch.empty(n_valid, dtype=torch.float32, device=logits.device)
        for start in range(0, n_valid, chunk_rows):
            rows = rows_valid[start : start + chunk_rows]
            loss_c, dlogits = settings.row_kernel(
                logits.index_select(0, rows).float(),
                labels.index_select(0, rows),
                label_smoothing=settings.label_smoothing,
                softcap=settings.softcap,
                grad_scale=torch.full((rows.numel(),), scale, device=logits.device) if want_grad else None,
            )
            losses[start : start + rows.numel()] = loss_c
            if dlogits is not None:
                grad_logits.index_copy_(0, rows, dlogits.to(logits.dtype))
        ctx.reduction = reduction
        ctx.grad_logits = grad_logits
        if reduction == "none":
            out = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
            return out.index_copy_(0, rows_valid, losses)
        return losses.sum() * scale

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        # Always return a new tensor, never the stored one: autograd may adopt the returned
        # gradient (or a view of it) as `.grad` and accumulate into it in place, which would
        # corrupt the stored gradient for a second backward (retain_graph=True, gradcheck).
        grad = ctx.grad_logits
        scale = grad_output.to(grad.dtype)
        if ctx.reduction == "none":
            scale = scale.unsqueeze(1)
        return grad * scale, None, None


def label_smoothing_ce_from_logits(logits: torch.Tensor, labels: torch.Tensor, settings: CESettings) -> torch.Tensor:
    """Flattened, validated inputs: ``logits [N, V]``, ``labels [N]``."""
    return LabelSmoothingCE.apply(logits, labels, settings)
