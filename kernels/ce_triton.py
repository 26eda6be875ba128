"""Triton row kernel for label-smoothing cross-entropy.

The GPU twin of :mod:`ce_torch`: same contract, :func:`label_smoothing_ce_rows`, on one chunk of
rows whose float32 logits are already materialized. One Triton program handles one row and walks
its vocabulary in blocks of ``BLOCK_V`` columns, twice at most:

* pass 1 keeps an online max ``m`` and sum ``s = sum_v exp(z_v - m)`` (rescaled whenever ``m``
  grows), plus ``sum_v z_v`` for the smoothing term; ``z_y`` is read directly. Then::

      lse  = m + log(s)
      loss = lse - (1 - eps) * z_y - (eps / V) * sum_v z_v

* pass 2 (only when a gradient is requested) recomputes ``z`` block by block and overwrites the
  logits buffer in place with::

      grad_v = scale * (exp(z_v - lse) - eps / V - (1 - eps) * [v == y]) * dz_v/draw_v

With a soft cap ``c``, ``z = c * tanh(raw / c)`` and ``dz/draw = 1 - tanh(raw / c)^2``; the cap is
applied once, to the raw logits, in both passes.

With ``HAS_STATS``, pass 1 also keeps the running argmax (first index of the maximum), ``sum_v e_v (z_v - m)``
and ``sum_v e_v^2`` (``e_v = exp(z_v - m)``), rescaled with ``m`` like ``s``::

    sum e (z - m')  =  a * (sum e (z - m) + (m - m') * s)     sum e^2  ->  a^2 * sum e^2     a = exp(m - m')

and writes the row statistics of :mod:`row_stats` (confidence, correctness, NLL, entropy, Brier) from them.
The loss and gradient do not change. Columns past ``V`` in the last block are masked
out of the max, the sum of exponentials and the smoothing sum. All arithmetic is float32.

Tensors on the CPU work only under the Triton interpreter (``TRITON_INTERPRET=1`` set before this
module is imported), which the tests use.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

#: Widest block of columns one program loads at a time on the GPU (float32, 16 KiB).
MAX_BLOCK_V_GPU = 4096
#: Under the interpreter (CPU tensors) blocks stay narrow, so realistic vocabularies take several
#: blocks and the tests exercise the online rescaling and the partial last block.
MAX_BLOCK_V_INTERPRETER = 1024


@triton.jit
def _tanh(x):
    """``tanh(x)`` from ``exp`` only (the interpreter lacks libdevice).

    ``sign(x) (1 - e) / (1 + e)`` with ``e = exp(-2|x|)`` in ``(0, 1]`` never overflows; near 0
    a short odd series avoids the cancellation in ``1 - e``.
    """
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    x2 = ax * ax
    t_small = ax * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))))
    t = tl.where(ax < 0.1, t_small, (1.0 - e) / (1.0 + e))
    return tl.where(x < 0.0, -t, t)


@triton.jit
def _sech2(x):
    """``1 - tanh(x)^2 = 4e / (1 + e)^2`` with ``e = exp(-2|x|)``: no cancellation near ``|tanh| = 1``."""
    e = tl.exp(-2.0 * tl.abs(x))
    return 4.0 * e / ((1.0 + e) * (1.0 + e))


@triton.jit
def _update_moments(run_ez, run_e2, run_arg, run_max, run_sum, shift, e, z_for_max, block_max, start):
    """One block's step of the online statistics: ``sum e (z - m)``, ``sum e^2`` and the first argmax, rescaled
    from the old maximum ``run_max`` to the new ``shift`` (see the module docstring); ``e = exp(z - shift)``."""
    # (run_max - shift) * run_sum is 0 * -inf = NaN before the first finite logit: use 0 then.
    delta = tl.where(run_max == -float("inf"), 0.0, run_max - shift)
    alpha = tl.exp(delta)
    e_shifted = tl.where(e > 0.0, e * (z_for_max - shift), 0.0)
    run_ez = alpha * (run_ez + delta * run_sum) + tl.sum(e_shifted, axis=0)
    run_e2 = alpha * alpha * run_e2 + tl.sum(e * e, axis=0)
    block_arg = tl.argmax(z_for_max, axis=0) + start
    run_arg = tl.where(block_max > run_max, block_arg, run_arg)
    return run_ez, run_e2, run_arg


@triton.jit
def _store_row_stats(out, nll, run_sum, run_ez, run_e2, correct):
    """Write confidence, correctness, NLL, entropy and Brier (the ``row_stats`` columns) at ``out``."""
    inv = 1.0 / run_sum
    tl.store(out, inv)
    tl.store(out + 1, tl.where(correct, 1.0, 0.0))
    tl.store(out + 2, nll)
    tl.store(out + 3, tl.log(run_sum) - run_ez * inv)
    tl.store(out + 4, tl.maximum(run_e2 * inv * inv - 2.0 * tl.exp(-nll) + 1.0, 0.0))


@triton.jit
def _label_smoothing_ce_rows_kernel(
    logits_ptr,
    labels_ptr,
    grad_scale_ptr,
    loss_ptr,
    stats_ptr,
    stride_row,
    vocab,
    eps_over_v,
    one_minus_eps,
    cap,
    HAS_SOFTCAP: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_GRAD: tl.constexpr,
    HAS_STATS: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    target = tl.load(labels_ptr + row)
    cols = tl.arange(0, BLOCK_V)
    raw_target = tl.load(row_ptr + target).to(tl.float32)
    if HAS_SOFTCAP:
        z_target = cap * _tanh(raw_target / cap)
    else:
        z_target = raw_target

    run_max = -float("inf")
    run_sum = 0.0
    z_sum = 0.0
    run_ez, run_e2, run_arg = 0.0, 0.0, 0  # HAS_STATS: sum e (z - run_max), sum e^2, first argmax
    for start in range(0, vocab, BLOCK_V):
        offs = start + cols
        mask = offs < vocab
        raw = tl.load(row_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            z = cap * _tanh(raw / cap)
        else:
            z = raw
        # Masked lanes are -inf for the max / exp and 0 for the smoothing sum, never both.
        z_for_max = tl.where(mask, z, -float("inf"))
        block_max = tl.max(z_for_max, axis=0)
        new_max = tl.maximum(run_max, block_max)
        # While every logit seen so far is -inf, shift by 0 instead: exp(-inf - -inf) would be NaN.
        shift = tl.where(new_max == -float("inf"), 0.0, new_max)
        e = tl.exp(z_for_max - shift)
        if HAS_STATS:
            run_ez, run_e2, run_arg = _update_moments(
                run_ez, run_e2, run_arg, run_max, run_sum, shift, e, z_for_max, block_max, start
            )
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(e, axis=0)
        run_max = new_max
        if HAS_SMOOTHING:
            z_sum += tl.sum(tl.where(mask, z, 0.0), axis=0)

    lse = run_max + tl.log(run_sum)
    loss = lse - one_minus_eps * z_target
    if HAS_SMOOTHING:
        loss -= eps_over_v * z_sum
    tl.store(loss_ptr + row, loss)
    if HAS_STATS:
        _store_row_stats(stats_ptr + row * 5, lse - z_target, run_sum, run_ez, run_e2, run_arg == target)
    if HAS_GRAD:
        scale = tl.load(grad_scale_ptr + row).to(tl.float32)
        for start in range(0, vocab, BLOCK_V):
            offs = start + cols
            mask = offs < vocab
            raw = tl.load(row_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_SOFTCAP:
                z = cap * _tanh(raw / cap)
            else:
                z = raw
            grad = tl.exp(z - lse)
            if HAS_SMOOTHING:
                grad -= eps_over_v
            grad = tl.where(offs == target, grad - one_minus_eps, grad) * scale
            if HAS_SOFTCAP:
                grad *= _sech2(raw / cap)
            tl.store(row_ptr + offs, grad, mask=mask)


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _block_v(vocab: int, device: torch.device) -> int:
    cap = MAX_BLOCK_V_INTERPRETER if device.type == "cpu" else MAX_BLOCK_V_GPU
    return min(cap, _next_power_of_2(max(vocab, 1)))


@torch.library.custom_op("hf_calib_kernels::label_smoothing_ce_rows_triton", mutates_args=("logits",))
def _launch(
    logits: torch.Tensor,
    labels: torch.Tensor,
    grad_scale: torch.Tensor | None,
    label_smoothing: float,
    softcap: float | None,
    block_v: int,
    stats: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the kernel on contiguous ``logits [C, V]`` (overwritten with the gradient when
    ``grad_scale`` is given); returns the ``[C]`` losses and the ``[C, 5]`` row statistics (``[0, 5]``
    without ``stats``).

    A custom operator, so ``torch.compile`` keeps the launch as one opaque node (with the fake
    implementation below for shapes) instead of tracing Triton's launcher or the interpreter.
    """
    n_rows, vocab = logits.shape
    loss = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    row_stats = torch.empty((n_rows if stats else 0, 5), dtype=torch.float32, device=logits.device)
    if n_rows == 0:
        return loss, row_stats
    eps = float(label_smoothing)
    # Triton launches on the current CUDA device; the lm_head may sit elsewhere (device_map="auto").
    device_guard = torch.cuda.device(logits.device) if logits.device.type == "cuda" else contextlib.nullcontext()
    with device_guard:
        _label_smoothing_ce_rows_kernel[(n_rows,)](
            logits,
            labels,
            loss if grad_scale is None else grad_scale,
            loss,
            row_stats if stats else loss,
            logits.stride(0),
            vocab,
            eps / vocab,
            1.0 - eps,
            1.0 if softcap is None else float(softcap),
            HAS_SOFTCAP=softcap is not None,
            HAS_SMOOTHING=eps > 0.0,
            HAS_GRAD=grad_scale is not None,
            HAS_STATS=stats,
            BLOCK_V=block_v,
            num_warps=8 if block_v >= 2048 else 4,
        )
    return loss, row_stats


@_launch.register_fake
def _launch_fake(logits, labels, grad_scale, label_smoothing, softcap, block_v, stats):
    n_rows = logits.shape[0]
    return logits.new_empty(n_rows, dtype=torch.float32), logits.new_empty((n_rows if stats else 0, 5))


def label_smoothing_ce_rows(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    label_smoothing: float,
    softcap: float | None,
    grad_scale: torch.Tensor | None,
    block_v: int | None = None,
    stats: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Loss (and optionally its gradient) for a chunk of rows; the contract of
    :func:`hf_calib_kernels.ce_torch.label_smoothing_ce_rows`.

    Args:
        logits: ``[C, V]`` float32 raw logits (before the soft cap), contiguous. Consumed:
            when ``grad_scale`` is given it is overwritten with the gradient and returned.
        labels: ``[C]`` int64, every entry in ``[0, V)``.
        label_smoothing: ``eps`` in ``[0, 1)``.
        softcap: soft-cap value ``c`` or ``None``.
        grad_scale: ``[C]`` per-row gradient factors, or ``None`` to skip the gradient.
        block_v: columns per block (a power of two); default ``min(next_pow2(V), 4096)`` on the
            GPU and at most 1024 under the interpreter.
        stats: also return the ``[C, 5]`` float32 row statistics (:mod:`row_stats`).

    Returns:
        ``(loss [C] float32, grad [C, V] float32 or None, stats [C, 5] float32 or None)`` with
        ``grad = grad_scale[:, None] * dloss/draw``.
    """
    vocab = logits.shape[1]
    if logits.dtype != torch.float32:
        raise ValueError(f"logits must be float32 for the Triton row kernel; got {logits.dtype}.")
    if not logits.is_contiguous():
        logits = logits.contiguous()
    block = _block_v(vocab, logits.device) if block_v is None else int(block_v)
    if block < 1 or block & (block - 1):
        raise ValueError(f"block_v must be a power of two; got {block_v}.")
    want_grad = grad_scale is not None
    if want_grad:
        grad_scale = grad_scale.to(device=logits.device, dtype=torch.float32).contiguous()
    cap = None if softcap is None else float(softcap)
    loss, row_stats = _launch(logits, labels.contiguous(), grad_scale, float(label_smoothing), cap, block, bool(stats))
    return loss, logits if want_grad else None, row_stats if stats else None
