"""The machine side of the fused-CE benchmark (:mod:`hf_calib.recipes.bench`): CPU model, free memory, the
estimated peak memory and time of one (configuration, method) run, and which methods fit in RAM.

Reads ``/proc``; imports nothing heavy.
"""

from __future__ import annotations

import platform
import time

from ._bench_report import parse_config

#: Large buffers each method holds at its peak beyond inputs and gradients, in float32 ``[N, V]``
#: buffers (unfused: 4.0 measured, whatever H) or in fused chunks (one chunk, plus slack).
NV_BUFFERS = {"labelsmoother": 4.2, "cross_entropy": 4.2, "floor_full": 1.2}
CHUNK_BUFFERS = 1.2
#: GEMM throughput assumed for runtime estimates (2 shared AVX-512 cores: 70 GFLOP/s fp32 under load).
DEFAULT_GFLOPS = 70.0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def estimate_bytes(method: str, vocab: int, width: int, tokens: int, chunk_bytes: int | None) -> int:
    """Peak resident memory of one child: inputs and gradients (2 x 4 (NH + VH)), plus big buffers."""
    if method in NV_BUFFERS:
        big = NV_BUFFERS[method] * 4 * tokens * vocab
    else:
        from hf_calib_kernels import DEFAULT_CHUNK_BYTES

        big = CHUNK_BUFFERS * min(chunk_bytes or DEFAULT_CHUNK_BYTES, 4 * tokens * vocab)
    return int(2 * 4 * (tokens * width + vocab * width) + big)


def _wait_for_memory(need: int, margin: int, max_wait_s: float = 900.0) -> bool:
    """Wait (other processes share the machine) until ``need + margin`` bytes are available."""
    deadline = time.monotonic() + max_wait_s
    while _meminfo("MemAvailable") < need + margin:
        if time.monotonic() > deadline:
            return False
        time.sleep(10)
    return True


def estimate_seconds(vocab: int, width: int, tokens: int, gflops: float) -> float:
    """One forward + backward of one method: the three GEMMs, ``6 N V H`` flops."""
    return 6.0 * tokens * vocab * width / (gflops * 1e9)


def methods_that_fit(
    name: str, methods: list[str], chunk_bytes: int | None, margin: int, cuda: bool, skipped: list[str]
) -> list[str]:
    """The ``methods`` whose estimated peak memory fits in RAM (all of them on CUDA); the rest go to ``skipped``."""
    vocab, width, tokens = parse_config(name)
    fits = []
    for method in methods:
        need = estimate_bytes(method, vocab, width, tokens, chunk_bytes)
        if cuda or need + margin <= _meminfo("MemTotal"):
            fits.append(method)
        else:
            total = _meminfo("MemTotal")
            skipped.append(f"{name} {method}: needs ~{need / 1024**3:.1f} GiB of {total / 1024**3:.1f} GiB")
            print("skip", skipped[-1], flush=True)
    return fits
