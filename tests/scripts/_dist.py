"""Shared by the torchrun test scripts (their folder is first on ``sys.path`` when they run)."""

import torch


def shutdown() -> None:
    """Tear the gloo process group down explicitly; leaving it to interpreter exit can abort the process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
