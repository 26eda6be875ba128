"""Public label-smoothing cross-entropy losses: validation and backend dispatch.

The math lives in ``hf_calib_kernels`` (the repository's ``kernels/`` folder); this module checks
arguments, flattens shapes, resolves the denominator of ``reduction="mean"`` and picks a backend.
"""

from __future__ import annotations

import os

import torch

from hf_calib_kernels import CESettings, chunk_rows_for, fused_linear_ce, label_smoothing_ce_from_logits
from hf_calib_kernels.ce_torch import label_smoothing_ce_rows as _torch_rows

_REDUCTIONS = ("mean", "sum", "none")
_BACKENDS = (None, "torch", "triton")


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
    valid = labels != ignore_index
    if labels.numel() and bool(((labels < 0) | (labels >= vocab)).logical_and_(valid).any()):
        bad = labels[valid & ((labels < 0) | (labels >= vocab))][:5].tolist()
        raise ValueError(
            f"labels must lie in [0, {vocab}) or equal ignore_index={ignore_index}; found {bad}. "
            "Mask padding and prompt positions with ignore_index."
        )


def _denominator(labels: torch.Tensor, ignore_index: int, reduction: str, num_items_in_batch) -> float:
    if reduction != "mean":
        return 1.0
    n_valid = int((labels != ignore_index).sum())
    if num_items_in_batch is None:
        return float(max(n_valid, 1))
    n_items = float(num_items_in_batch.item() if isinstance(num_items_in_batch, torch.Tensor) else num_items_in_batch)
    if n_items <= 0:
        if n_valid == 0:
            return 1.0
        raise ValueError(
            f"num_items_in_batch must be positive when labels hold {n_valid} non-ignored tokens; got {n_items}."
        )
    return n_items


def _run(
    op,
    labels: torch.Tensor,
    vocab: int,
    device: torch.device,
    *,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    num_items_in_batch,
    softcap: float | None,
    backend: str | None,
    chunk_bytes: int | None,
) -> torch.Tensor:
    """Flatten the labels, resolve backend, denominator and chunk size, run ``op``, reshape "none"."""
    row_kernel = _row_kernel(resolve_backend(backend, device))
    flat_labels = labels.reshape(-1).long()
    settings = CESettings(
        ignore_index=ignore_index,
        label_smoothing=float(label_smoothing),
        reduction=reduction,
        denominator=_denominator(flat_labels, ignore_index, reduction, num_items_in_batch),
        softcap=None if softcap is None else float(softcap),
        row_kernel=row_kernel,
        chunk_rows=chunk_rows_for(flat_labels.numel(), vocab, chunk_bytes),
    )
    out = op(flat_labels, settings)
    return out.reshape(labels.shape) if reduction == "none" else out


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
) -> torch.Tensor:
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
        chunk_bytes: size of one float32 logits chunk (default 256 MiB); peak extra memory is a
            small multiple of it.

    Rows are processed in chunks; only ``[chunk, V]`` logits exist at any time. For "mean"/"sum"
    the gradients are computed during forward; "none" recomputes chunk logits in backward.
    """
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
    _check_common(
        labels, vocab, label_smoothing=label_smoothing, ignore_index=ignore_index,
        reduction=reduction, softcap=softcap,
    )  # fmt: skip
    return _run(
        lambda flat_labels, settings: fused_linear_ce(hidden.reshape(-1, width), weight, bias, flat_labels, settings),
        labels, vocab, hidden.device,
        ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
        num_items_in_batch=num_items_in_batch, softcap=softcap, backend=backend, chunk_bytes=chunk_bytes,
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
) -> torch.Tensor:
    """Label-smoothing cross-entropy on ``logits [..., V]`` with the same contract as
    :func:`fused_linear_label_smoothing_ce` (soft cap applied here, float32 math, ``"mean"``
    over ``num_items_in_batch`` or the non-ignored labels, 0 when every label is ignored)."""
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
        lambda flat_labels, settings: label_smoothing_ce_from_logits(logits.reshape(-1, vocab), flat_labels, settings),
        labels, vocab, logits.device,
        ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
        num_items_in_batch=num_items_in_batch, softcap=softcap, backend=backend, chunk_bytes=chunk_bytes,
    )  # fmt: skip
