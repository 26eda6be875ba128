"""Peak memory of one token-level calibration evaluation of SmolLM2-135M (vocab 49,152), three ways.

    (a) naive       plain Trainer; compute_metrics gets the gathered [N, T, V] logits and computes the metrics
                    from them (a CalibrationState fed one sample's logits at a time)
    (b) factory     plain Trainer + hf_calib.token_calibration_metrics(): each batch reduced to [B, 48]
    (c) calibrated  hf_calib.CalibratedTrainer, no compute_metrics: fused path, statistics computed inside the
                    output layer chunk by chunk, no [B, T, V] logits at all

Each mode runs in a fresh process. Reported per mode: the process's peak RSS over its whole life (model
loading included), its RSS just before ``evaluate()`` and the peak RSS during ``evaluate()`` (the kernel's
high-water mark is reset first through ``/proc/self/clear_refs``), the extra memory of the evaluation
(peak during minus before), the evaluation's wall time, and the metrics, which must agree across modes.

    python benchmarks/bench_eval_memory.py                      # 64 ShareGPT turns x 128 tokens, ~5 min on 2 cores
    python benchmarks/bench_eval_memory.py --samples 16 --modes factory calibrated
    python benchmarks/bench_eval_memory.py --out r.json; python benchmarks/bench_eval_memory.py --table-from r.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

# The same padded ShareGPT rows as the calibration-free benchmark (run as scripts: the folder is on sys.path).
from bench_calibration_free import _Rows
from bench_calibration_free import _rows as _dataset

MODES = ("naive", "factory", "calibrated")
KEYS = ("count", "ece", "rms_ce", "mce", "nll", "brier", "accuracy", "mean_confidence")


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    except OSError:
        return False
    return True


def _naive_compute_metrics(eval_pred) -> dict:
    """The naive way: metrics straight from the gathered logits [N, T, V] (one sample's softmax at a time)."""
    import torch

    from hf_calib.metrics import CalibrationState

    logits = torch.from_numpy(eval_pred.predictions)
    labels = torch.from_numpy(eval_pred.label_ids)
    state = CalibrationState(15, keep_samples=False)
    for i in range(logits.shape[0]):
        state.update_from_logits(logits[i, :-1], labels[i, 1:], ignore_index=-100)
    values = state.compute()
    values["count"] = values.pop("n_samples")
    return {f"token_{k}": values[k] for k in KEYS}


def child(mode: str, n_samples: int, max_length: int, batch_size: int, output_dir: str) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments

    from hf_calib.assets import load_smollm2
    from hf_calib.loss import TokenCalibrationConfig, token_calibration_metrics
    from hf_calib.trainer import CalibratedTrainer

    torch.manual_seed(0)
    model, tokenizer = load_smollm2()
    data = _Rows(_dataset(tokenizer, n_samples, max_length))
    with torch.no_grad():  # the first forward allocates ~0.5 GB for good; do it before any measurement
        model(input_ids=torch.arange(8)[None])
    args = TrainingArguments(
        output_dir=output_dir,
        report_to=[],
        use_cpu=True,
        per_device_eval_batch_size=batch_size,
        disable_tqdm=True,
        save_strategy="no",
    )
    if mode == "naive":
        trainer = Trainer(model=model, args=args, eval_dataset=data, compute_metrics=_naive_compute_metrics)
    elif mode == "factory":
        preprocess, compute = token_calibration_metrics(n_bins=15)
        trainer = Trainer(
            model=model,
            args=args,
            eval_dataset=data,
            preprocess_logits_for_metrics=preprocess,
            compute_metrics=compute,
        )
    else:
        config = TokenCalibrationConfig(n_bins=15, reliability_diagram=False)
        trainer = CalibratedTrainer(model=model, args=args, eval_dataset=data, calibration_metrics=config)
    rss_before = _status_mib("VmRSS")
    reset = _reset_peak_rss()
    start = time.perf_counter()
    metrics = trainer.evaluate()
    seconds = time.perf_counter() - start
    eval_peak = _status_mib("VmHWM") if reset else float("nan")
    return {
        "mode": mode,
        "n_samples": len(data),
        "max_length": max_length,
        "vocab": int(model.config.vocab_size),
        "process_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "rss_before_eval_mib": rss_before,
        "eval_peak_mib": eval_peak,
        "eval_extra_mib": eval_peak - rss_before,
        "eval_seconds": seconds,
        "fused": bool(getattr(trainer, "fused_loss_active", False)),
        "metrics": {k: metrics[f"eval_token_{k}"] for k in KEYS},
    }


def _table(results: list[dict]) -> str:
    base = next((r for r in results if r["mode"] == "naive"), results[0])
    lines = [
        f"| mode | process peak RSS (MiB) | RSS before eval (MiB) | peak during eval (MiB) | eval extra (MiB) "
        f"| {base['mode']} extra / this extra | eval time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = base["eval_extra_mib"] / r["eval_extra_mib"] if r["eval_extra_mib"] > 0 else float("inf")
        lines.append(
            f"| {r['mode']} | {r['process_peak_mib']:.0f} | {r['rss_before_eval_mib']:.0f} | {r['eval_peak_mib']:.0f} "
            f"| {r['eval_extra_mib']:.0f} | {ratio:.1f} | {r['eval_seconds']:.1f} |"
        )
    lines += ["", "| mode | " + " | ".join(KEYS) + " |", "|---|" + "---:|" * len(KEYS)]
    for r in results:
        m = r["metrics"]
        lines.append(f"| {r['mode']} | " + " | ".join(f"{m[k]:.6g}" for k in KEYS) + " |")
    diffs = {k: max(abs(r["metrics"][k] - base["metrics"][k]) for r in results) for k in KEYS}
    lines += ["", f"max abs difference from {base['mode']}: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())]
    return "\n".join(lines)


def _header(results: list[dict], batch_size: int) -> str:
    first = results[0]
    return (
        f"SmolLM2-135M, vocab {first['vocab']}, {first['n_samples']} samples x {first['max_length']} tokens, "
        f"eval batch {batch_size}, {first['metrics']['count']} supervised tokens"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="ShareGPT turns in the eval set")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per sample (padded to this length)")
    parser.add_argument("--batch-size", type=int, default=8, help="per-device eval batch size")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--output-dir", default="outputs/bench_eval_memory")
    parser.add_argument("--out", help="also write the raw results to this json file")
    parser.add_argument("--table-from", help="only re-print the tables of a json file written by --out")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.table_from:
        with open(a.table_from) as f:
            saved = json.load(f)
        print(_header(saved["results"], saved["batch_size"]) + "\n\n" + _table(saved["results"]))
        return
    if a.child:
        print("RESULT " + json.dumps(child(a.child, a.samples, a.max_length, a.batch_size, a.output_dir)))
        return
    results = []
    for mode in a.modes:
        cmd = [sys.executable, __file__, "--child", mode, "--samples", str(a.samples)]
        cmd += ["--max-length", str(a.max_length), "--batch-size", str(a.batch_size), "--output-dir", a.output_dir]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT ") :]))
        r = results[-1]
        print(f"{mode}: eval extra {r['eval_extra_mib']:.0f} MiB, {r['eval_seconds']:.1f} s", flush=True)
    print("\n" + _header(results, a.batch_size) + "\n\n" + _table(results))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"batch_size": a.batch_size, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
