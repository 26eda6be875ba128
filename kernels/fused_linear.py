"""Chunked, fused ``linear -> label-smoothing cross-entropy`` with gradients computed in forward.

The ``[N, V]`` logits are never materialized. Rows whose label is ignored are dropped first
(they carry no loss and no gradient); the remaining rows are processed in chunks::

    logits_c = h_c @ W.T (+ b)                  [C, V] float32, the only large buffer
    loss_c, dlogits_c = row_kernel(logits_c)     (the row kernel overwrites logits_c)
    grad_h[c] = dlogits_c @ W
    grad_W   += dlogits_c.T @ h_c               (float32 accumulator)
    grad_b   += dlogits_c.sum(0)

For ``reduction="mean"`` or ``"sum"`` the upstream gradient is a scalar, so the gradients are
computed during forward and backward only rescales them. For ``reduction="none"`` the
per-row upstream gradient is unknown at forward time, so backward recomputes each chunk's
logits (one extra matmul) instead of storing ``[N, V]``.

Half-precision inputs run their matmuls in the input dtype; logits, softmax, loss and the
weight/bias gradient accumulators are float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

RowKernel = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class CESettings:
    """What one call of the loss needs besides its tensors (validated and resolved by the caller).

    Attributes:
        ignore_index: label of rows without loss or gradient.
        label_smoothing: epsilon in [0, 1).
        reduction: ``"mean"`` (sum / ``denominator``), ``"sum"`` or ``"none"`` (per-row losses).
        denominator: divisor of ``"mean"`` (the number of non-ignored labels, or ``num_items_in_batch``).
        softcap: ``c * tanh(z / c)`` applied to the logits first, or None.
        row_kernel: the per-row loss / gradient kernel (torch or Triton).
        chunk_rows: rows of logits materialized at a time.
    """

    ignore_index: int
    label_smoothing: float
    reduction: str
    denominator: float
    softcap: float | None
    row_kernel: RowKernel
    chunk_rows: int


#: Default size of one chunk of float32 logits. Peak extra memory is a small multiple of it.
DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024


def chunk_rows_for(n_rows: int, vocab: int, chunk_bytes: int | None = None) -> int:
    """Rows per chunk so that one ``[rows, vocab]`` float32 buffer fits in ``chunk_bytes``."""
    budget = DEFAULT_CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
    rows = max(1, budget // (4 * max(vocab, 1)))
    return max(1, min(rows, n_rows))


def _chunk_logits(h_c: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = h_c @ weight.t()
    if bias is not None:
        logits += bias
    return logits.float() if logits.dtype != torch.float32 else logits


def _accumulate_grads(
    dlogits: torch.Tensor,
    h_c: torch.Tensor,
    rows: torch.Tensor,
    weight: torch.Tensor,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    grad_bias: torch.Tensor | None,
) -> None:
    if grad_hidden is not None:
        grad_hidden.index_copy_(0, rows, (dlogits.to(weight.dtype) @ weight).to(grad_hidden.dtype))
    if grad_weight is not None:
        # Accumulate in float32: chunk-wise sums in bf16 drift.
        grad_weight.addmm_(dlogits.t(), h_c.float())
    if grad_bias is not None:
        grad_bias += dlogits.sum(dim=0)


def _run_chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    rows_valid: torch.Tensor,
    settings: CESettings,
    *,
    grad_scale: torch.Tensor | None,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    grad_bias: torch.Tensor | None,
) -> torch.Tensor:
    """Loss of every valid row (float32, ``[len(rows_valid)]``), accumulating gradients."""
    losses = torch.empty(rows_valid.numel(), dtype=torch.float32, device=hidden.device)
    want_grad = grad_scale is not None
    chunk_rows = settings.chunk_rows
    for start in range(0, rows_valid.numel(), chunk_rows):
        stop = min(start + chunk_rows, rows_valid.numel())
        rows = rows_valid[start:stop]
        h_c = hidden.index_select(0, rows)
        logits = _chunk_logits(h_c, weight, bias)
        loss_c, dlogits = settings.row_kernel(
            logits,
            labels.index_select(0, rows),
            label_smoothing=settings.label_smoothing,
            softcap=settings.softcap,
            grad_scale=grad_scale[start:stop] if want_grad else None,
        )
        losses[start:stop] = loss_c
        if dlogits is not None:
            _accumulate_grads(dlogits, h_c, rows, weight, grad_hidden, grad_weight, grad_bias)
        # Free this chunk before the next one is allocated: peak extra memory is one chunk, not two.
        del logits, dlogits
    return losses


class FusedLinearLabelSmoothingCE(torch.autograd.Function):
    """Autograd glue; see the module docstring. Inputs are already validated and flattened."""

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        settings: CESettings,
    ) -> torch.Tensor:
        needs_h, needs_w, needs_b = ctx.needs_input_grad[:3]
        rows_valid = (labels != settings.ignore_index).nonzero().squeeze(1)
        reduction = settings.reduction
        n_rows = hidden.shape[0]
        device = hidden.device
        ctx.reduction = reduction

        if reduction == "none":
            losses = _run_chunks(
                hidden, weight, bias, labels, rows_valid, settings,
                grad_scale=None, grad_hidden=None, grad_weight=None, grad_bias=None,
            )  # fmt: skip
            out = torch.zeros(n_rows, dtype=torch.float32, device=device)
            out.index_copy_(0, rows_valid, losses)
            ctx.save_for_backward(hidden, weight, bias, labels, rows_valid)
            ctx.settings = settings
            return out

        grad_hidden = torch.zeros_like(hidden) if needs_h else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=device) if needs_w else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=device) if needs_b else None
        any_grad = needs_h or needs_w or needs_b
        scale = 1.0 / settings.denominator if reduction == "mean" else 1.0
        grad_scale = torch.full((rows_valid.numel(),), scale, device=device) if any_grad else None
        losses = _run_chunks(
            hidden, weight, bias, labels, rows_valid, settings,
            grad_scale=grad_scale, grad_hidden=grad_hidden, grad_weight=grad_weight, grad_bias=grad_bias,
        )  # fmt: skip
        loss = losses.sum() * scale
        ctx.grads = (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
        )
        # Only for a second backward (retain_graph=True), which recomputes the gradients.
        ctx.save_for_backward(hidden, weight, bias, labels, rows_valid)
        ctx.settings = settings
        ctx.scale = scale
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if ctx.reduction != "none" and ctx.grads is not None:
            # Hand the stored gradients over and drop ctx's reference: autograd then adopts them as
            # `.grad` instead of copying them (grad_weight is [V, H]).
            # Scaled in place (no device-to-host sync to test for 1, no second [V, H] buffer).
            stored, ctx.grads = ctx.grads, None
            grads = [None if g is None else g.mul_(grad_output.to(g.dtype)) for g in stored]
            return (*grads, None, None)

        hidden, weight, bias, labels, rows_valid = ctx.saved_tensors
        if ctx.reduction == "none":
            grad_scale = grad_output.reshape(-1).float().index_select(0, rows_valid)
        else:
            grad_scale = (grad_output.float().reshape(1) * ctx.scale).expand(rows_valid.numel()).contiguous()
        needs_h, needs_w, needs_b = ctx.needs_input_grad[:3]
        device = hidden.device
        grad_hidden = torch.zeros_like(hidden) if needs_h else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=device) if needs_w else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=device) if needs_b else None
        _run_chunks(
            hidden, weight, bias, labels, rows_valid, ctx.settings,
            grad_scale=grad_scale, grad_hidden=grad_hidden, grad_weight=grad_weight, grad_bias=grad_bias,
        )  # fmt: skip
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
            None,
        )


def fused_linear_ce(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    settings: CESettings,
) -> torch.Tensor:
    """Run the fused loss on flattened, validated inputs (``hidden [N, H]``, ``labels [N]``).

    Returns a float32 scalar (``"mean"``: sum / ``settings.denominator``; ``"sum"``) or ``[N]`` losses.
    """
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if not needs_grad:
        rows_valid = (labels != settings.ignore_index).nonzero().squeeze(1)
        losses = _run_chunks(
            hidden, weight, bias, labels, rows_valid, settings,
            grad_scale=None, grad_hidden=None, grad_weight=None, grad_bias=None,
        )  # fmt: skip
        if settings.reduction == "none":
            out = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            return out.index_copy_(0, rows_valid, losses)
        total = losses.sum()
        return total / settings.denominator if settings.reduction == "mean" else total
    return FusedLinearLabelSmoothingCE.apply(hidden, weight, bias, labels, settings)
