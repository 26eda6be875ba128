"""Benchmark the fused label-smoothing cross-entropy against the unfused losses and the matmul floor.

For every configuration (vocabulary ``V``, hidden size ``H``, tokens ``N``) and every method, a
fresh Python process builds the same inputs (fp32, ``hidden [N, H]`` and ``weight [V, H]`` both
requiring grad, ``labels [N]`` with 10% set to -100), runs one forward + backward and prints a
JSON line; the parent interleaves methods and repeats, then prints time medians, peak memory and
the ratios. Methods (labels are shifted the way the Trainer does for causal LMs):

* ``labelsmoother`` -- ``logits = hidden @ weight.T`` with autograd, then Trainer's
  ``LabelSmoother(epsilon=0.1)(..., shift_labels=True)`` (its own ``logits[:-1].contiguous()``).
* ``cross_entropy`` -- full logits, then ``F.cross_entropy(label_smoothing=0.1)`` on labels
  shifted by padding (as ``transformers``' ``ForCausalLMLoss``; no logits copy).
* ``fused`` -- ``hf_calib.fused_linear_label_smoothing_ce(..., label_smoothing=0.1)``, torch backend.
* ``fused_triton`` -- the same with ``backend="triton"`` (CUDA only).
* ``floor`` -- the three GEMMs the fused loss performs (same non-ignored rows, same chunks, same
  gathers), with the row kernel removed: the chunk's logits stand in for its gradient.
* ``floor_full`` -- the three GEMMs on all ``N`` rows, unchunked (``[N, V]`` logits reused as
  the gradient); shows what chunking costs the GEMMs.

Peak extra memory = peak resident memory of the process during the timed run (``VmHWM`` after
resetting it, on CUDA ``max_memory_allocated``) minus the resident memory just before the run,
when the inputs exist and no gradient does. It includes the gradients of ``hidden`` and
``weight`` (outputs every method must produce); ``extra excl. grads`` subtracts their size.

Usage::

    hf-calib bench --quick                 # or: python benchmarks/bench_fused_ce.py --quick
    python benchmarks/bench_fused_ce.py --configs 'V*_N2048' --repeats 3 --out results.json
    python benchmarks/bench_fused_ce.py --table-from results.json
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

# Absolute imports: each measurement runs this file as a script in a fresh process (see _run_one).
from hf_calib.recipes._bench_report import MIB as MIB
from hf_calib.recipes._bench_report import _fmt as _fmt
from hf_calib.recipes._bench_report import (
    _load,
    _save,
    config_name,
    markdown_tables,
    parse_config,
    print_run,
    summarize,
    write_csv,
)
from hf_calib.recipes._bench_report import ratios as ratios
from hf_calib.recipes._bench_resources import CHUNK_BUFFERS as CHUNK_BUFFERS
from hf_calib.recipes._bench_resources import (
    DEFAULT_GFLOPS,
    _cpu_model,
    _wait_for_memory,
    estimate_bytes,
    estimate_seconds,
    methods_that_fit,
)
from hf_calib.recipes._bench_resources import NV_BUFFERS as NV_BUFFERS
from hf_calib.recipes._bench_resources import _meminfo as _meminfo

VOCABS = (32000, 128256, 262144)
HIDDENS = (576, 2048)
TOKENS = (2048, 8192)
QUICK = ("V32000_H576_N2048", "V128256_H576_N2048", "V262144_H576_N2048")
CPU_METHODS = ("labelsmoother", "cross_entropy", "fused", "floor")
ALL_METHODS = (*CPU_METHODS, "fused_triton", "floor_full")
LABEL_SMOOTHING = 0.1
IGNORED_FRACTION = 0.1


# ----------------------------------------------------------------------------------------------
# Child: one (configuration, method) in a fresh process.
# ----------------------------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); ``False`` when not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _make_inputs(vocab: int, width: int, tokens: int, device):
    import torch

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, width, generator=gen).to(device).requires_grad_()
    weight = (torch.randn(vocab, width, generator=gen) * width**-0.5).to(device).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=gen)
    labels[torch.randperm(tokens, generator=gen)[: int(IGNORED_FRACTION * tokens)]] = -100
    return hidden, weight, labels.to(device)


def _shift_labels(labels):
    """Targets aligned with the hidden states: ``labels[1:]`` padded with -100 (ForCausalLMLoss)."""
    import torch.nn.functional as F

    return F.pad(labels, (0, 1), value=-100)[1:].contiguous()


def _method_fn(method: str, chunk_bytes: int | None):
    """``fn(hidden, weight, labels) -> (loss, grad_hidden, grad_weight)``; ``labels`` unshifted."""
    import torch
    import torch.nn.functional as F

    from hf_calib.loss import fused_linear_label_smoothing_ce
    from hf_calib_kernels import chunk_rows_for

    def backprop(loss, hidden, weight):
        loss.backward()
        return loss.detach(), hidden.grad, weight.grad

    if method == "labelsmoother":
        from transformers.trainer_pt_utils import LabelSmoother

        smoother = LabelSmoother(epsilon=LABEL_SMOOTHING)

        def run(hidden, weight, labels):
            # Trainer.compute_loss for a causal LM: the model returns full logits, the smoother shifts.
            logits = hidden @ weight.t()
            return backprop(smoother({"logits": logits}, labels, shift_labels=True), hidden, weight)

    elif method == "cross_entropy":

        def run(hidden, weight, labels):
            logits = hidden @ weight.t()
            loss = F.cross_entropy(logits, _shift_labels(labels), label_smoothing=LABEL_SMOOTHING)
            return backprop(loss, hidden, weight)

    elif method in ("fused", "fused_triton"):
        backend = "torch" if method == "fused" else "triton"

        def run(hidden, weight, labels):
            loss = fused_linear_label_smoothing_ce(
                hidden,
                weight,
                _shift_labels(labels),
                label_smoothing=LABEL_SMOOTHING,
                backend=backend,
                chunk_bytes=chunk_bytes,
            )
            return backprop(loss, hidden, weight)

    elif method == "floor":

        @torch.no_grad()
        def run(hidden, weight, labels):
            targets = _shift_labels(labels)
            rows_valid = (targets != -100).nonzero().squeeze(1)
            chunk_rows = chunk_rows_for(targets.numel(), weight.shape[0], chunk_bytes)
            grad_hidden = torch.zeros_like(hidden)
            grad_weight = torch.zeros_like(weight)
            for start in range(0, rows_valid.numel(), chunk_rows):
                rows = rows_valid[start : start + chunk_rows]
                h_c = hidden.index_select(0, rows)
                g = h_c @ weight.t()
                grad_hidden.index_copy_(0, rows, g @ weight)
                grad_weight.addmm_(g.t(), h_c)
                del g  # as the fused loss: one chunk alive at a time
            return None, grad_hidden, grad_weight

    elif method == "floor_full":

        @torch.no_grad()
        def run(hidden, weight, labels):
            g = hidden @ weight.t()
            return None, g @ weight, g.t() @ hidden

    else:
        raise ValueError(f"unknown method {method!r}; choose from {ALL_METHODS}.")
    return run


def run_child(spec: dict) -> dict:
    """Time one forward + backward and measure its peak extra memory; returns a JSON-able dict."""
    import torch

    vocab, width, tokens = spec["V"], spec["H"], spec["N"]
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    hidden, weight, labels = _make_inputs(vocab, width, tokens, device)
    run = _method_fn(spec["method"], spec.get("chunk_bytes"))

    # Warm up (thread pools, MKL/cuBLAS handles, Triton compilation) on a small slice.
    n_warm = min(tokens, 64)
    h_warm = hidden.detach()[:n_warm].clone().requires_grad_()
    run(h_warm, weight, labels[:n_warm])
    del h_warm
    weight.grad = None

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        if not _reset_peak_rss():
            raise RuntimeError("cannot reset VmHWM (/proc/self/clear_refs); peak memory would be wrong.")
        base = _status_kib("VmRSS") * 1024
    start, cpu_start = time.perf_counter(), time.process_time()
    loss, grad_hidden, grad_weight = run(hidden, weight, labels)
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024

    grad_bytes = grad_hidden.nbytes + grad_weight.nbytes
    return {
        "config": config_name(vocab, width, tokens),
        "V": vocab,
        "H": width,
        "N": tokens,
        "method": spec["method"],
        "device": device.type,
        "chunk_bytes": spec.get("chunk_bytes"),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_extra_bytes": peak - base,
        "grad_bytes": grad_bytes,
        "loss": None if loss is None else float(loss),
        "grad_hidden_norm": float(grad_hidden.norm()),
        "grad_weight_norm": float(grad_weight.norm()),
        "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------------
# Parent: schedule children, collect, summarize.
# ----------------------------------------------------------------------------------------------


def _run_one(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timeout after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {**spec, "error": f"exit code {proc.returncode}: {' | '.join(tail)}"}


def _selected_configs(patterns: list[str] | None, quick: bool) -> list[str]:
    names = [config_name(v, h, n) for n in TOKENS for v in VOCABS for h in HIDDENS]
    if quick:
        names = [n for n in names if n in QUICK]
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)} (10-15 min on 2 cores)")
    parser.add_argument("--configs", nargs="+", help="glob patterns over names like V128256_H576_N2048")
    parser.add_argument("--shapes", nargs="+", metavar="V,H,N", help="run these shapes instead of the grid")
    parser.add_argument("--methods", nargs="+", choices=ALL_METHODS, help="default: all four CPU methods")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per (config, method); median")
    parser.add_argument("--chunk-bytes", type=int, default=None, help="chunk size of fused and floor")
    parser.add_argument("--gflops", type=float, default=DEFAULT_GFLOPS, help="GEMM rate for runtime estimates")
    parser.add_argument("--max-minutes", type=float, default=None, help="skip configs estimated to take longer")
    parser.add_argument("--mem-margin-gib", type=float, default=2.0, help="keep this much RAM free")
    parser.add_argument("--out", help="JSON file of raw runs, rewritten after every run (appends if it exists)")
    parser.add_argument("--csv", help="also write the summary as CSV")
    parser.add_argument("--table-from", nargs="+", help="only print the tables of these JSON result files")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def _start_log(out: str | None, cuda: bool) -> tuple[list[dict], dict, list[str]]:
    """``(records, meta, skipped)``: the runs and skips already in ``out`` (appended to) and this command's metadata."""
    import torch

    previous = json.loads(Path(out).read_text()) if out and Path(out).exists() else {}
    records = previous.get("runs", [])
    old_meta = previous.get("meta", {})
    meta = {
        "commands": [*old_meta.get("commands", []), shlex.join(["python", *sys.argv])],
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    return records, meta, list(old_meta.get("skipped", []))


def _config_names(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """``--shapes`` if given, else the grid narrowed by ``--quick`` and ``--configs``."""
    if not args.shapes:
        return _selected_configs(args.configs, args.quick)
    try:
        return [config_name(*(int(x) for x in shape.split(","))) for shape in args.shapes]
    except (TypeError, ValueError):
        parser.error(f"--shapes takes V,H,N triples of integers, e.g. 1000,64,256; got {args.shapes}.")


def _run_config(
    name: str,
    fits: list[str],
    est_s: float,
    args: argparse.Namespace,
    device: str,
    margin: int,
    log: tuple[list[dict], dict, list[str]],
) -> None:
    """``args.repeats`` rounds of the ``fits`` methods on ``name``; each run is appended to ``log`` (and ``--out``)."""
    records, meta, skipped = log
    vocab, width, tokens = parse_config(name)
    for repeat in range(args.repeats):
        for method in fits:
            spec = {"V": vocab, "H": width, "N": tokens, "method": method, "device": device}
            spec["chunk_bytes"] = args.chunk_bytes
            need = estimate_bytes(method, vocab, width, tokens, args.chunk_bytes)
            if device == "cuda" or _wait_for_memory(need, margin):
                rec = _run_one(spec, timeout=max(300.0, 20 * est_s))
            else:
                rec = {**spec, "error": f"{need / 1024**3:.1f} GiB never became free"}
            rec["repeat"] = repeat
            rec["load_avg_1min"] = os.getloadavg()[0]
            records.append(rec)
            print_run(method, rec)
            if args.out:
                _save(args.out, records, {**meta, "skipped": sorted(set(skipped))})


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)

    if args.child:
        print("RESULT " + json.dumps(run_child(json.loads(args.child))), flush=True)
        return
    if args.table_from:
        summary = summarize(_load(args.table_from))
        print(markdown_tables(summary))
        if args.csv:
            write_csv(args.csv, summary)
        return

    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    methods = list(args.methods or (CPU_METHODS + (("fused_triton",) if cuda else ())))
    if not cuda and "fused_triton" in methods:
        parser.error("fused_triton needs CUDA.")
    records, meta, skipped = log = _start_log(args.out, cuda)
    margin = int(args.mem_margin_gib * 1024**3)
    for name in _config_names(args, parser):
        vocab, width, tokens = parse_config(name)
        est_s = estimate_seconds(vocab, width, tokens, args.gflops)
        fits = methods_that_fit(name, methods, args.chunk_bytes, margin, cuda, skipped)
        est_total_min = est_s * len(fits) * args.repeats / 60
        if args.max_minutes is not None and est_total_min > args.max_minutes:
            skipped.append(f"{name}: estimated {est_total_min:.0f} min > --max-minutes")
            print("skip", skipped[-1], flush=True)
            continue
        print(f"{name}: ~{est_s:.0f} s per run, ~{est_total_min:.1f} min in all", flush=True)
        _run_config(name, fits, est_s, args, device, margin, log)
    summary = summarize(records)
    print()
    print(markdown_tables(summary))
    if skipped:
        print("\nNot run:\n" + "\n".join(f"- {s}" for s in skipped))
    if args.csv:
        write_csv(args.csv, summary)


if __name__ == "__main__":
    main()
