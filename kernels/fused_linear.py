"""Chunked, fused ``linear -> label-smoothing cross-entropy`` with gradients computed in forward.

The ``[N, V]`` logits are never materialized. The rows are processed in fixed chunks of
``settings.chunk_rows`` consecutive rows::

    logits_c = h_c @ W.T (+ b)                  [C, V] float32, the only large buffer
    loss_c, dlogits_c = row_kernel(logits_c)     (the row kernel overwrites logits_c)
    grad_h[c] = dlogits_c @ W
    grad_W   += dlogits_c.T @ h_c               (float32 accumulator)
    grad_b   += dlogits_c.sum(0)

No host synchronization: every shape and loop bound depends on ``N`` and ``V`` only, never on the
label values. Rows whose label is ``ignore_index`` go through the chunks like the others, masked:
their hidden state is replaced by zeros (so their logits are finite whatever the input), their
target by class 0, their per-row gradient factor by 0 and their loss by 0; so they contribute
exactly nothing. (Dropping them first would need their count on the host, i.e. a device-to-host
sync per call and a data-dependent shape that ``torch.compile`` cannot trace; the price is the
chunk matmuls of the ignored rows.) The scale of ``reduction="mean"`` (``1 / denominator``) is a
0-d device tensor, so a token count that lives on the device is never read by the host either.

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

from .row_stats import N_STATS

RowKernel = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class CESettings:
    """What one call of the loss needs besides its tensors (validated and resolved by the caller).

    Attributes:
        ignore_index: label of rows without loss or gradient.
        label_smoothing: epsilon in [0, 1).
        reduction: ``"mean"`` (sum / denominator), ``"sum"`` or ``"none"`` (per-row losses).
        softcap: ``c * tanh(z / c)`` applied to the logits first, or None.
        row_kernel: the per-row loss / gradient kernel (torch or Triton).
        chunk_rows: rows of logits materialized at a time.
        row_stats: also return the ``[N, 5]`` row statistics of :mod:`row_stats` (confidence,
            correctness, NLL, entropy, Brier) from the same softmax; ignored rows hold values of no meaning.

    The denominator of ``"mean"`` is not a setting but an argument of :func:`fused_linear_ce` and
    :func:`~hf_calib_kernels.logits_ce.label_smoothing_ce_from_logits`: it may be a device tensor.
    """

    ignore_index: int
    label_smoothing: float
    reduction: str
    softcap: float | None
    row_kernel: RowKernel
    chunk_rows: int
    row_stats: bool = False


#: Default size of one chunk of float32 logits. Peak extra memory is a small multiple of it.
DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024


#: The default chunk is a fraction ``1 / CHUNK_FRACTION`` of the ``[N, V]`` float32 logits, within
#: ``[MIN_CHUNK_BYTES, DEFAULT_CHUNK_BYTES]`` (see :func:`default_chunk_rows`).
CHUNK_FRACTION = 16
MIN_CHUNK_BYTES = 32 * 1024 * 1024


def chunk_rows_for(n_rows: int, vocab: int, chunk_bytes: int | None = None) -> int:
    """Rows per chunk so that one ``[rows, vocab]`` float32 buffer fits in ``chunk_bytes``."""
    budget = DEFAULT_CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
    rows = max(1, budget // (4 * max(vocab, 1)))
    return max(1, min(rows, n_rows))


def default_chunk_rows(
    n_rows: int, vocab: int, hidden_size: int = 0, chunk_bytes: int | None = None, *, backward: bool = True
) -> int:
    """Rows per chunk of the loss: ``chunk_bytes`` when given, else a chunk of
    ``N * V * 4 / CHUNK_FRACTION`` bytes clamped to ``[MIN_CHUNK_BYTES, DEFAULT_CHUNK_BYTES]``.

    The loss's working memory beyond its gradients is about one chunk, whereas ``LabelSmoother``'s grows
    with ``N * V`` (about four ``[N, V]`` float32 buffers), so a chunk proportional to ``N * V`` keeps the
    ratio small at every size; the bounds keep chunks tall enough for an efficient matmul and cap the
    memory at large ``N``. Without ``backward`` (a forward under ``no_grad``, e.g. evaluation) the chunk is
    ``DEFAULT_CHUNK_BYTES``: each chunk reads the whole weight once, and there are no gradients to keep small
    against. ``hidden_size`` is accepted for rules that depend on it (the measured sweep in
    ``docs/benchmarks.md`` found none needed).
    """
    if chunk_bytes is not None:
        return chunk_rows_for(n_rows, vocab, chunk_bytes)
    if not backward:  # forward only (evaluation): fewer, larger chunks read the weight fewer times
        return chunk_rows_for(n_rows, vocab, DEFAULT_CHUNK_BYTES)
    budget = n_rows * max(vocab, 1) * 4 // CHUNK_FRACTION
    budget = min(max(budget, MIN_CHUNK_BYTES), DEFAULT_CHUNK_BYTES)
    return chunk_rows_for(n_rows, vocab, budget)


def loss_scale(reduction: str, denominator: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """``1 / denominator`` for ``"mean"``, else 1, as a float32 0-d tensor on ``device``.

    A Python denominator becomes a device fill (no host-to-device copy), a tensor one stays on the
    device: nothing here waits for the device.
    """
    if reduction != "mean":
        return torch.ones((), dtype=torch.float32, device=device)
    if isinstance(denominator, torch.Tensor):
        return denominator.to(device=device, dtype=torch.float32).reciprocal()
    return torch.full((), 1.0 / float(denominator), dtype=torch.float32, device=device)


def chunk_targets(labels: torch.Tensor, valid: torch.Tensor, vocab: int) -> torch.Tensor:
    """Targets safe to index a ``[C, V]`` buffer with: ignored rows get class 0, and a label out of
    ``[0, V)`` (rejected by the caller's checks, asynchronously on a GPU) is clamped into range so no
    kernel ever reads outside a row."""
    return torch.where(valid, labels, 0).clamp_(0, vocab - 1)


def _chunk_logits(h_c: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = h_c @ weight.t()
    if bias is not None:
        logits += bias
    return logits.float() if logits.dtype != torch.float32 else logits


def _accumulate_grads(
    dlogits: torch.Tensor,
    h_c: torch.Tensor,
    start: int,
    weight: torch.Tensor,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    grad_bias: torch.Tensor | None,
) -> None:
    if grad_hidden is not None:
        grad_hidden[start : start + h_c.shape[0]] = dlogits.to(weight.dtype) @ weight
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
    settings: CESettings,
    *,
    grad_scale: torch.Tensor | None,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    grad_bias: torch.Tensor | None,
    stats_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss of every row (float32 ``[N]``, exactly 0 where the label is ignored), accumulating gradients
    and, into ``stats_out [N, 5]`` when given, the row statistics.

    ``grad_scale [N]`` must already be 0 on the ignored rows.
    """
    n_rows, vocab = hidden.shape[0], weight.shape[0]
    losses = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)
    chunk_rows = settings.chunk_rows
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        labels_c = labels[start:stop]
        valid = labels_c != settings.ignore_index
        # Zero hidden states on ignored rows: finite logits, so 0 * gradient is exactly 0 there.
        h_c = torch.where(valid.unsqueeze(1), hidden[start:stop], 0)
        logits = _chunk_logits(h_c, weight, bias)
        loss_c, dlogits, stats_c = settings.row_kernel(
            logits,
            chunk_targets(labels_c, valid, vocab),
            label_smoothing=settings.label_smoothing,
            softcap=settings.softcap,
            grad_scale=None if grad_scale is None else grad_scale[start:stop],
            stats=stats_out is not None,
        )
        losses[start:stop] = torch.where(valid, loss_c, 0.0)
        if stats_out is not None:
            stats_out[start:stop] = stats_c
        if dlogits is not None:
            _accumulate_grads(dlogits, h_c, start, weight, grad_hidden, grad_weight, grad_bias)
        # Free this chunk before the next one is allocated: peak extra memory is one chunk, not two.
        del logits, dlogits, stats_c
    return losses


def valid_scale(labels: torch.Tensor, ignore_index: int, scale: torch.Tensor) -> torch.Tensor:
    """``[N]`` float32 per-row gradient factors: ``scale`` where the label is not ignored, 0 elsewhere."""
    return (labels != ignore_index).to(torch.float32).mul_(scale)


def _grad_buffers(hidden, weight, bias, needs):
    """Gradient buffers for the inputs that need one. ``grad_hidden`` is not zeroed: the chunks
    write every row of it. ``grad_weight`` / ``grad_bias`` are float32 accumulators."""
    needs_h, needs_w, needs_b = needs
    device = hidden.device
    return (
        torch.empty_like(hidden) if needs_h else None,
        torch.zeros(weight.shape, dtype=torch.float32, device=device) if needs_w else None,
        torch.zeros(bias.shape, dtype=torch.float32, device=device) if needs_b else None,
    )


def _stats_buffer(hidden: torch.Tensor, settings: CESettings) -> torch.Tensor | None:
    if not settings.row_stats:
        return None
    return torch.empty((hidden.shape[0], N_STATS), dtype=torch.float32, device=hidden.device)


def _with_stats(ctx, out: torch.Tensor, stats: torch.Tensor | None):
    """``out``, or ``(out, stats)`` with the statistics marked as having no gradient."""
    if stats is None:
        return out
    ctx.mark_non_differentiable(stats)
    return out, stats


class FusedLinearLabelSmoothingCE(torch.autograd.Function):
    """Autograd glue; see the module docstring. Inputs are already validated and flattened;
    ``scale`` is the float32 0-d tensor of :func:`loss_scale`."""

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        scale: torch.Tensor,
        settings: CESettings,
    ) -> torch.Tensor:
        needs = ctx.needs_input_grad[:3]
        ctx.reduction = settings.reduction
        ctx.settings = settings
        stats = _stats_buffer(hidden, settings)
        if settings.reduction == "none":
            ctx.grads = None
            ctx.save_for_backward(hidden, weight, bias, labels, scale)
            losses = _run_chunks(
                hidden, weight, bias, labels, settings,
                grad_scale=None, grad_hidden=None, grad_weight=None, grad_bias=None, stats_out=stats,
            )  # fmt: skip
            return _with_stats(ctx, losses, stats)

        grad_hidden, grad_weight, grad_bias = _grad_buffers(hidden, weight, bias, needs)
        grad_scale = valid_scale(labels, settings.ignore_index, scale) if any(needs) else None
        losses = _run_chunks(
            hidden, weight, bias, labels, settings,
            grad_scale=grad_scale, grad_hidden=grad_hidden, grad_weight=grad_weight, grad_bias=grad_bias,
            stats_out=stats,
        )  # fmt: skip
        ctx.grads = (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
        )
        # Only for a second backward (retain_graph=True), which recomputes the gradients.
        ctx.save_for_backward(hidden, weight, bias, labels, scale)
        return _with_stats(ctx, losses.sum() * scale, stats)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor, *_stats_grad: torch.Tensor):
        if ctx.reduction != "none" and ctx.grads is not None:
            # Hand the stored gradients over and drop ctx's reference: autograd then adopts them as
            # `.grad` instead of copying them (grad_weight is [V, H]).
            # Scaled in place (no device-to-host sync to test for 1, no second [V, H] buffer).
            stored, ctx.grads = ctx.grads, None
            grads = [None if g is None else g.mul_(grad_output.to(g.dtype)) for g in stored]
            return (*grads, None, None, None)

        hidden, weight, bias, labels, scale = ctx.saved_tensors
        settings = ctx.settings
        valid = labels != settings.ignore_index
        if ctx.reduction == "none":
            grad_scale = torch.where(valid, grad_output.reshape(-1).float(), 0.0)
        else:
            grad_scale = valid.to(torch.float32).mul_(grad_output.float() * scale)
        grad_hidden, grad_weight, grad_bias = _grad_buffers(hidden, weight, bias, ctx.needs_input_grad[:3])
        _run_chunks(
            hidden, weight, bias, labels, settings,
            grad_scale=grad_scale, grad_hidden=grad_hidden, grad_weight=grad_weight, grad_bias=grad_bias,
        )  # fmt: skip
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
            None,
            None,
        )


def fused_linear_ce(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    settings: CESettings,
    denominator: torch.Tensor | float = 1.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run the fused loss on flattened, validated inputs (``hidden [N, H]``, ``labels [N]``).

    Returns a float32 scalar (``"mean"``: sum / ``denominator``, a number or a 0-d tensor that may
    live on the device; ``"sum"``) or ``[N]`` losses; with ``settings.row_stats``, ``(loss, stats [N, 5])``.
    """
    scale = loss_scale(settings.reduction, denominator, hidden.device)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if not needs_grad:
        stats = _stats_buffer(hidden, settings)
        losses = _run_chunks(
            hidden, weight, bias, labels, settings,
            grad_scale=None, grad_hidden=None, grad_weight=None, grad_bias=None, stats_out=stats,
        )  # fmt: skip
        out = losses if settings.reduction == "none" else losses.sum() * scale
        return out if stats is None else (out, stats)
    return FusedLinearLabelSmoothingCE.apply(hidden, weight, bias, labels, scale, settings)
