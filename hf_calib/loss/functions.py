"""Public label-smoothing cross-entropy losses: validation and backend dispatch.

The math lives in ``hf_calib_kernels`` (the repository's ``kernels/`` folder); this module checks
arguments, flattens shapes, resolves the denominator of ``reduction="mean"`` and picks a backend.

Nothing here makes the host wait for the device in the training path (a CUDA tensor, or any
tensor under ``torch.compile``). Checks of the arguments' types, shapes, dtypes and devices are
host-only. Checks of tensor *values* (labels in ``[0, V)`` or ``ignore_index``; a positive
``num_items_in_batch`` when some label counts) run:

* on the host, raising ``ValueError`` with the offending labels, when that costs no transfer:
  eager mode with the labels on the CPU, or eager mode anywhere with ``HF_CALIB_CHECK_LABELS=1``
  (one device-to-host sync per call: a debugging aid);
* otherwise (CUDA tensors, anything under ``torch.compile``, or ``HF_CALIB_CHECK_LABELS=0``) on the
  device with ``torch._assert_async``: no sync; on CUDA a failure is a device-side assert reported
  at a later synchronization (as for ``F.cross_entropy``), on the CPU a ``RuntimeError`` carrying
  the message. The kernels clamp targets into ``[0, V)`` so nothing reads outside a row meanwhile.

The ``"mean"`` denominator stays a tensor on the device when it is computed from the labels or
given as a tensor (``num_items_in_batch`` from Trainer); it is never turned into a Python number.
"""

from __future__ import annotations

import os

import torch

from hf_calib_kernels import CESettings, default_chunk_rows, fused_linear_ce, label_smoothing_ce_from_logits
from hf_calib_kernels.ce_torch import label_smoothing_ce_rows as _torch_rows
from hf_calib_kernels.row_stats import RowStats, split_row_stats

_REDUCTIONS = ("mean", "sum", "none")
_BACKENDS = (None, "torch", "triton")
#: ``1``: check label values on the host, with a ``ValueError`` naming them, on any device (eager
#: mode only; one device-to-host sync per call). ``0``: check them on the device even for CPU tensors.
#: Unset: on the host for CPU tensors, on the device otherwise.
CHECK_LABELS_ENV = "HF_CALIB_CHECK_LABELS"


def _triton_rows():
    from hf_calib_kernels.ce_triton import label_smoothing_ce_rows

    return label_smoothing_ce_rows


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """``None`` -> ``"triton"`` on CUDA when triton imports, else ``"torch"``."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of None, 'torch', 'triton'; got {backend!r}.")
    if backend is None:
        return "triton" if device.type == "cuda" and _triton_importable() else "torch"
    if backend == "triton":
        if not _triton_importable():
            raise ValueError("backend='triton' needs the `triton` package: pip install triton.")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"backend='triton' got tensors on {device.type}; Triton runs on CUDA, or on CPU only "
                "under the interpreter: set TRITON_INTERPRET=1 before importing triton, or use backend='torch'."
            )
    return backend


def _row_kernel(backend: str):
    return _triton_rows() if backend == "triton" else _torch_rows


def _check_common(
    labels: torch.Tensor,
    vocab: int,
    *,
    label_smoothing: float,
    ignore_index: int,
    reduction: str,
    softcap: float | None,
) -> None:
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"label_smoothing must be a float in [0, 1); got {label_smoothing!r}.")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}; got {reduction!r}.")
    if softcap is not None and not (isinstance(softcap, (int, float)) and softcap > 0):
        raise ValueError(f"softcap must be None or a positive number; got {softcap!r}.")
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            "labels must be an integer tensor (torch.long) of class ids; "
            f"got {getattr(labels, 'dtype', type(labels).__name__)}."
        )
    if vocab < 1:
        raise ValueError(f"the vocabulary (number of classes) must be at least 1; got {vocab}.")
    _check_label_values(labels, vocab, ignore_index)


def _checks_on_host(t: torch.Tensor) -> bool:
    """Whether value checks of ``t`` run on the host (exact ``ValueError``) instead of the device:
    in eager mode, for CPU tensors (no transfer) unless ``HF_CALIB_CHECK_LABELS=0``, and for any
    tensor with ``HF_CALIB_CHECK_LABELS=1``; never while ``torch.compile`` traces."""
    if torch.compiler.is_compiling():
        return False
    flag = os.environ.get(CHECK_LABELS_ENV, "")
    return flag == "1" or (flag != "0" and t.device.type == "cpu")


def _require(ok: torch.Tensor, on_host: bool, host_message, device_message: str) -> None:
    """``ok`` (a 0-d bool tensor) must hold: checked now on the host (``ValueError(host_message())``,
    which may read tensor values), or by an asynchronous device-side assertion (no sync)."""
    if on_host:
        if not bool(ok):
            raise ValueError(host_message())
    else:
        torch._assert_async(ok, device_message)


def _check_label_values(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    if not labels.numel():
        return
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    rule = f"labels must lie in [0, {vocab}) or equal ignore_index={ignore_index}"
    hint = "Mask padding and prompt positions with ignore_index."
    _require(
        ~bad.any(),
        _checks_on_host(labels),
        lambda: f"{rule}; found {labels[bad][:5].tolist()}. {hint}",
        f"{rule}; some are not (set {CHECK_LABELS_ENV}=1 and run eagerly to list them). {hint}",
    )


def _denominator(labels: torch.Tensor, ignore_index: int, reduction: str, num_items_in_batch) -> torch.Tensor | float:
    """Divisor of ``"mean"``: ``num_items_in_batch`` when given, else the number of non-ignored labels
    (at least 1). A 0-d float32 tensor on the labels' device unless ``num_items_in_batch`` is a Python
    number; 1 for the other reductions. Never read back by the host in the training path."""
    if reduction != "mean":
        return 1.0
    valid = labels != ignore_index
    if num_items_in_batch is None:
        return valid.sum().clamp_(min=1).to(torch.float32)
    rule = "num_items_in_batch must be positive when some labels are not ignored"

    def require_no_valid_label(positive: torch.Tensor | bool, shown) -> None:
        # A non-positive count is fine only when every label is ignored (the sum is 0, so is the loss).
        _require(positive | ~valid.any(), _checks_on_host(labels), lambda: f"{rule}; got {shown()}.", f"{rule}.")

    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.numel() != 1:
            raise ValueError(
                "num_items_in_batch must be a number or a one-element tensor; "
                f"got shape {tuple(num_items_in_batch.shape)}."
            )
        n_items = num_items_in_batch.reshape(()).to(device=labels.device, dtype=torch.float32)
        positive = n_items > 0
        require_no_valid_label(positive, lambda: float(n_items))
        return torch.where(positive, n_items, 1.0)
    if num_items_in_batch > 0:
        return float(num_items_in_batch)
    require_no_valid_label(False, lambda: num_items_in_batch)
    return 1.0


def _needs_backward(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _masked_row_stats(buffer: torch.Tensor, valid: torch.Tensor, shape: torch.Size) -> RowStats:
    """:class:`RowStats` shaped like the labels, NaN (``correct``: False) where the label is ignored."""
    stats = split_row_stats(buffer)
    nan = torch.full((), float("nan"), dtype=buffer.dtype, device=buffer.device)
    return RowStats(
        *(
            (field & valid if field.dtype == torch.bool else torch.where(valid, field, nan)).reshape(shape)
            for field in stats
        )
    )


def _run(
    op,
    labels: torch.Tensor,
    vocab: int,
    width: int,
    device: torch.device,
    *,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    num_items_in_batch,
    softcap: float | None,
    backend: str | None,
    chunk_bytes: int | None,
    return_stats: bool,
    backward: bool,
) -> torch.Tensor | tuple[torch.Tensor, RowStats]:
    """Flatten the labels, resolve backend, denominator and chunk size, run ``op``, reshape "none"."""
    if not isinstance(return_stats, bool):
        raise ValueError(f"return_stats must be True or False; got {return_stats!r}.")
    row_kernel = _row_kernel(resolve_backend(backend, device))
    flat_labels = labels.reshape(-1).long()
    settings = CESettings(
        ignore_index=ignore_index,
        label_smoothing=float(label_smoothing),
        reduction=reduction,
        softcap=None if softcap is None else float(softcap),
        row_kernel=row_kernel,
        chunk_rows=default_chunk_rows(flat_labels.numel(), vocab, width, chunk_bytes, backward=backward),
        row_stats=return_stats,
    )
    out = op(flat_labels, settings, _denominator(flat_labels, ignore_index, reduction, num_items_in_batch))
    stats = None
    if return_stats:
        out, buffer = out
        stats = _masked_row_stats(buffer, flat_labels != ignore_index, labels.shape)
    out = out.reshape(labels.shape) if reduction == "none" else out
    return out if stats is None else (out, stats)


def _check_linear_inputs(hidden, weight, labels, bias) -> tuple[int, int]:
    """Types, shapes, devices and dtypes of :func:`fused_linear_label_smoothing_ce`'s tensors; ``(V, H)``."""
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}.")
    if not hidden.dtype.is_floating_point:
        raise ValueError(f"hidden must be a floating-point tensor; got {hidden.dtype}.")
    if hidden.dim() < 1:
        raise ValueError("hidden must have shape [..., H]; got a 0-d tensor.")
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape [V, H]; got {tuple(weight.shape)}.")
    vocab, width = weight.shape
    if hidden.shape[-1] != width:
        raise ValueError(f"hidden's last dimension ({hidden.shape[-1]}) must equal weight.shape[1] ({width}).")
    if not isinstance(labels, torch.Tensor) or labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(hidden.shape[:-1])} (hidden's shape without H); "
            f"got {tuple(getattr(labels, 'shape', ()))}. Shift labels before calling."
        )
    tensors = {"weight": weight, "labels": labels} | ({"bias": bias} if bias is not None else {})
    for name, t in tensors.items():
        if t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {hidden.device}; move them together.")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} must equal hidden dtype {hidden.dtype}.")
    if bias is not None:
        if bias.shape != (vocab,):
            raise ValueError(f"bias must have shape [{vocab}]; got {tuple(bias.shape)}.")
        if bias.dtype != hidden.dtype:
            raise ValueError(f"bias dtype {bias.dtype} must equal hidden dtype {hidden.dtype}.")
    return vocab, width


def fused_linear_label_smoothing_ce(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    softcap: float | None = None,
    backend: str | None = None,
    chunk_bytes: int | None = None,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, RowStats]:
    """Label-smoothing cross-entropy of ``hidden @ weight.T + bias`` without materializing logits.

    Equal (forward and gradients for ``hidden``, ``weight`` and ``bias``) to::

        logits = hidden @ weight.T + bias
        if softcap: logits = softcap * tanh(logits / softcap)
        F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), label_smoothing=eps,
                        ignore_index=ignore_index, reduction=reduction)

    except that ``"mean"`` divides by ``num_items_in_batch`` when given (Trainer's token count over
    gradient accumulation and devices), and a batch whose labels are all ignored gives 0, not NaN.

    Args:
        hidden: ``[..., H]`` floating hidden states, already aligned with ``labels`` (shift first).
        weight: ``[V, H]`` output-layer weight. ``bias``: optional ``[V]``.
        labels: ``[...]`` integer targets in ``[0, V)`` or ``ignore_index``.
        label_smoothing: ``eps`` in ``[0, 1)``; mass ``eps / V`` goes to every class.
        reduction: ``"mean"`` or ``"sum"`` (float32 scalar) or ``"none"`` (float32, shape of labels).
        softcap: optional soft cap ``c`` applied as ``c * tanh(logits / c)``.
        backend: ``None`` (Triton on CUDA, chunked torch elsewhere), ``"torch"`` or ``"triton"``.
        chunk_bytes: size of one float32 logits chunk; by default chosen from N, V and H
            (``hf_calib_kernels.default_chunk_rows``). Peak extra memory is a small multiple of it.
        return_stats: also return, from the same softmax (no extra matmul), the per-token statistics
            of the unsmoothed prediction (:class:`hf_calib_kernels.row_stats.RowStats`: ``confidence`` =
            max p, ``correct`` = argmax == label, ``nll`` = -log p(label), ``entropy``, ``brier``), each
            shaped like ``labels``, NaN (``correct``: False) where the label is ignored; they carry no
            gradient. The loss is then ``(loss, stats)``.

    Rows are processed in chunks; only ``[chunk, V]`` logits exist at any time. For "mean"/"sum"
    the gradients are computed during forward; "none" recomputes chunk logits in backward.
    """
    vocab, width = _check_linear_inputs(hidden, weight, labels, bias)
    _check_common(
        labels, vocab, label_smoothing=label_smoothing, ignore_index=ignore_index,
        reduction=reduction, softcap=softcap,
    )  # fmt: skip
    return _run(
        lambda flat_labels, settings, denominator: fused_linear_ce(
            hidden.reshape(-1, width), weight, bias, flat_labels, settings, denominator
        ),
        labels, vocab, width, hidden.device,
        ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
        num_items_in_batch=num_items_in_batch, softcap=softcap, backend=backend, chunk_bytes=chunk_bytes,
        return_stats=return_stats, backward=_needs_backward(hidden, weight, bias),
    )  # fmt: skip


def label_smoothing_ce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    softcap: float | None = None,
    backend: str | None = None,
    chunk_bytes: int | None = None,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, RowStats]:
    """Label-smoothing cross-entropy on ``logits [..., V]`` with the same contract as
    :func:`fused_linear_label_smoothing_ce` (soft cap applied here, float32 math, ``"mean"``
    over ``num_items_in_batch`` or the non-ignored labels, 0 when every label is ignored; ``return_stats``
    adds the per-token statistics of the same softmax)."""
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point:
        raise ValueError(f"logits must be a floating-point tensor; got {getattr(logits, 'dtype', type(logits))}.")
    if logits.dim() < 1:
        raise ValueError("logits must have shape [..., V]; got a 0-d tensor.")
    if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(logits.shape[:-1])} (logits' shape without V); "
            f"got {tuple(getattr(labels, 'shape', ()))}."
        )
    if labels.device != logits.device:
        raise ValueError(f"labels are on {labels.device} but logits are on {logits.device}.")
    vocab = logits.shape[-1]
    _check_common(
        labels, vocab, label_smoothing=label_smoothing, ignore_index=ignore_index,
        reduction=reduction, softcap=softcap,
    )  # fmt: skip
    return _run(
        lambda flat_labels, settings, denominator: label_smoothing_ce_from_logits(
            logits.reshape(-1, vocab), flat_labels, settings, denominator
        ),
        labels, vocab, 0, logits.device,
        ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
        num_items_in_batch=num_items_in_batch, softcap=softcap, backend=backend, chunk_bytes=chunk_bytes,
        return_stats=return_stats, backward=_needs_backward(logits),
    )  # fmt: skip
