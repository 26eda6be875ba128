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
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

VOCABS = (32000, 128256, 262144)
HIDDENS = (576, 2048)
TOKENS = (2048, 8192)
QUICK = ("V32000_H576_N2048", "V128256_H576_N2048", "V262144_H576_N2048")
CPU_METHODS = ("labelsmoother", "cross_entropy", "fused", "floor")
ALL_METHODS = (*CPU_METHODS, "fused_triton", "floor_full")
LABEL_SMOOTHING = 0.1
IGNORED_FRACTION = 0.1
MIB = 1024 * 1024
#: Large buffers each method holds at its peak beyond inputs and gradients, in float32 ``[N, V]``
#: buffers (unfused: 4.0 measured, whatever H) or in fused chunks (one chunk, plus slack).
NV_BUFFERS = {"labelsmoother": 4.2, "cross_entropy": 4.2, "floor_full": 1.2}
CHUNK_BUFFERS = 1.2
#: GEMM throughput assumed for runtime estimates (2 shared AVX-512 cores: 70 GFLOP/s fp32 under load).
DEFAULT_GFLOPS = 70.0


def config_name(vocab: int, hidden: int, tokens: int) -> str:
    return f"V{vocab}_H{hidden}_N{tokens}"


def parse_config(name: str) -> tuple[int, int, int]:
    vocab, hidden, tokens = (int(part[1:]) for part in name.split("_"))
    return vocab, hidden, tokens


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

    from hf_calib.losses import fused_linear_label_smoothing_ce
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


def _load(paths: list[str]) -> list[dict]:
    records = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        records.extend(data["runs"] if isinstance(data, dict) else data)
    return records


def _save(path: str, records: list[dict], meta: dict) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
    tmp.replace(path)


def summarize(records: list[dict]) -> list[dict]:
    """One row per (config, method): median time, max peak memory, and consistency of results."""
    rows = {}
    for rec in records:
        if "error" in rec:
            continue
        key = (rec["V"], rec["H"], rec["N"], rec["method"])
        rows.setdefault(key, []).append(rec)
    out = []
    for (vocab, width, tokens, method), recs in sorted(rows.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        out.append(
            {
                "config": config_name(vocab, width, tokens),
                "V": vocab,
                "H": width,
                "N": tokens,
                "method": method,
                "runs": len(recs),
                "seconds": statistics.median(r["seconds"] for r in recs),
                "cpu_seconds": statistics.median(r["cpu_seconds"] for r in recs),
                "peak_extra_mib": max(r["peak_extra_bytes"] for r in recs) / MIB,
                "grads_mib": recs[0]["grad_bytes"] / MIB,
                "loss": recs[0]["loss"],
                "grad_hidden_norm": recs[0]["grad_hidden_norm"],
                "grad_weight_norm": recs[0]["grad_weight_norm"],
            }
        )
    return out


def ratios(summary: list[dict]) -> list[dict]:
    """Per configuration: fused vs LabelSmoother (time, memory) and fused vs the matmul floor."""
    by_config = {}
    for row in summary:
        by_config.setdefault(row["config"], {})[row["method"]] = row
    out = []
    for config, methods in by_config.items():
        fused, ls, floor = methods.get("fused"), methods.get("labelsmoother"), methods.get("floor")
        if fused is None:
            continue
        row = {"config": config}
        if ls is not None:
            row["time_vs_ls"] = fused["seconds"] / ls["seconds"]
            row["cpu_vs_ls"] = fused["cpu_seconds"] / ls["cpu_seconds"]
            row["mem_vs_ls"] = fused["peak_extra_mib"] / ls["peak_extra_mib"]
            ls_excl = ls["peak_extra_mib"] - ls["grads_mib"]
            row["mem_excl_grads_vs_ls"] = (fused["peak_extra_mib"] - fused["grads_mib"]) / ls_excl
        if floor is not None:
            row["time_vs_floor"] = fused["seconds"] / floor["seconds"]
            row["cpu_vs_floor"] = fused["cpu_seconds"] / floor["cpu_seconds"]
        ref = ls or methods.get("cross_entropy")
        if ref is not None and ref["loss"] is not None:
            row["loss_rel_diff"] = abs(fused["loss"] - ref["loss"]) / abs(ref["loss"])
            row["grad_w_rel_diff"] = abs(fused["grad_weight_norm"] - ref["grad_weight_norm"]) / ref["grad_weight_norm"]
        out.append(row)
    return out


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_tables(summary: list[dict]) -> str:
    """Two Markdown tables: per (config, method) measurements, and the fused loss's ratios per config."""
    lines = [
        "| V | H | N | method | runs | wall (s) | CPU (s) | peak extra (MiB) | grads (MiB) | excl. grads (MiB) |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        lines.append(
            f"| {r['V']} | {r['H']} | {r['N']} | {r['method']} | {r['runs']} | {r['seconds']:.2f} "
            f"| {r['cpu_seconds']:.2f} | {r['peak_extra_mib']:.0f} | {r['grads_mib']:.0f} "
            f"| {r['peak_extra_mib'] - r['grads_mib']:.0f} |"
        )
    lines += [
        "",
        "| V | H | N | fused / LS wall | fused / LS CPU | fused / floor wall | fused / floor CPU "
        "| fused / LS peak extra | same, excl. grads | loss rel. diff | ‖grad W‖ rel. diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ratios(summary):
        vocab, width, tokens = parse_config(r["config"])
        cells = [
            _fmt(r.get("time_vs_ls"), ".2f"),
            _fmt(r.get("cpu_vs_ls"), ".2f"),
            _fmt(r.get("time_vs_floor"), ".2f"),
            _fmt(r.get("cpu_vs_floor"), ".2f"),
            _fmt(r.get("mem_vs_ls"), ".3f"),
            _fmt(r.get("mem_excl_grads_vs_ls"), ".3f"),
            _fmt(r.get("loss_rel_diff"), ".1e"),
            _fmt(r.get("grad_w_rel_diff"), ".1e"),
        ]
        lines.append(f"| {vocab} | {width} | {tokens} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: str, summary: list[dict]) -> None:
    keys = ["config", "V", "H", "N", "method", "runs", "seconds", "cpu_seconds", "peak_extra_mib", "grads_mib", "loss"]
    lines = [",".join(keys)]
    for row in summary:
        lines.append(",".join("" if row[k] is None else str(row[k]) for k in keys))
    Path(path).write_text("\n".join(lines) + "\n")


def _selected_configs(patterns: list[str] | None, quick: bool) -> list[str]:
    names = [config_name(v, h, n) for n in TOKENS for v in VOCABS for h in HIDDENS]
    if quick:
        names = [n for n in names if n in QUICK]
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    return names


def main(argv: list[str] | None = None) -> None:
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
    previous = json.loads(Path(args.out).read_text()) if args.out and Path(args.out).exists() else {}
    records = previous.get("runs", [])
    old_meta = previous.get("meta", {})
    meta = {
        "commands": [*old_meta.get("commands", []), shlex.join(["python", *sys.argv])],
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }

    skipped = list(old_meta.get("skipped", []))
    margin = int(args.mem_margin_gib * 1024**3)
    if args.shapes:
        try:
            names = [config_name(*(int(x) for x in shape.split(","))) for shape in args.shapes]
        except (TypeError, ValueError):
            parser.error(f"--shapes takes V,H,N triples of integers, e.g. 1000,64,256; got {args.shapes}.")
    else:
        names = _selected_configs(args.configs, args.quick)
    for name in names:
        vocab, width, tokens = parse_config(name)
        est_s = estimate_seconds(vocab, width, tokens, args.gflops)
        fits = []
        for method in methods:
            need = estimate_bytes(method, vocab, width, tokens, args.chunk_bytes)
            if cuda or need + margin <= _meminfo("MemTotal"):
                fits.append(method)
            else:
                total = _meminfo("MemTotal")
                skipped.append(f"{name} {method}: needs ~{need / 1024**3:.1f} GiB of {total / 1024**3:.1f} GiB")
                print("skip", skipped[-1], flush=True)
        est_total_min = est_s * len(fits) * args.repeats / 60
        if args.max_minutes is not None and est_total_min > args.max_minutes:
            skipped.append(f"{name}: estimated {est_total_min:.0f} min > --max-minutes")
            print("skip", skipped[-1], flush=True)
            continue
        print(f"{name}: ~{est_s:.0f} s per run, ~{est_total_min:.1f} min in all", flush=True)
        for repeat in range(args.repeats):
            for method in fits:
                spec = {"V": vocab, "H": width, "N": tokens, "method": method, "device": device}
                spec["chunk_bytes"] = args.chunk_bytes
                need = estimate_bytes(method, vocab, width, tokens, args.chunk_bytes)
                if cuda or _wait_for_memory(need, margin):
                    rec = _run_one(spec, timeout=max(300.0, 20 * est_s))
                else:
                    rec = {**spec, "error": f"{need / 1024**3:.1f} GiB never became free"}
                rec["repeat"] = repeat
                rec["load_avg_1min"] = os.getloadavg()[0]
                records.append(rec)
                if "error" in rec:
                    print(f"  {method:14s} ERROR {rec['error']}", flush=True)
                else:
                    print(
                        f"  {method:14s} {rec['seconds']:8.2f} s  peak extra {rec['peak_extra_bytes'] / MIB:9.0f} MiB"
                        f"  (grads {rec['grad_bytes'] / MIB:.0f} MiB)  loss {rec['loss']}",
                        flush=True,
                    )
                if args.out:
                    _save(args.out, records, {**meta, "skipped": sorted(set(skipped))})
    summary = summarize(records)
    print()
    print(markdown_tables(summary))
    if skipped:
        print("\nNot run:\n" + "\n".join(f"- {s}" for s in skipped))
    if args.csv:
        write_csv(args.csv, summary)


if __name__ == "__main__":
    main()
