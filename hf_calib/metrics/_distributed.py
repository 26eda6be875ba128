"""Tensor collectives used by ``CalibrationState.sync``: a sum and a variable-length gather (no pickling)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def collective_device(group: dist.ProcessGroup | None) -> torch.device:
    """NCCL needs CUDA tensors; every other backend (gloo, mpi) works on CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor, group: dist.ProcessGroup | None, device: torch.device) -> torch.Tensor:
    """Sum of ``t`` over the ranks of ``group``, returned on CPU."""
    x = t.to(device).clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x.cpu()


def all_gather_rows(t: torch.Tensor, group: dist.ProcessGroup | None, device: torch.device) -> list[torch.Tensor]:
    """Gather a 1-D tensor whose length differs between ranks; returns one CPU tensor per rank, in rank order.

    Lengths are gathered first, every rank pads to the longest, and the padding is dropped afterwards.
    Booleans travel as uint8 because not every backend reduces or gathers bool tensors.
    """
    world = dist.get_world_size(group)
    dtype = t.dtype
    payload = t.to(torch.uint8) if dtype == torch.bool else t
    length = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length, group=group)
    sizes = [int(n.item()) for n in lengths]
    # At least one element: some backends reject zero-size collectives.
    padded = torch.zeros(max(max(sizes), 1), dtype=payload.dtype, device=device)
    padded[: payload.numel()] = payload.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return [part[:size].cpu().to(dtype) for part, size in zip(parts, sizes, strict=True)]
