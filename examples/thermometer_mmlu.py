"""Thermometer vs temperature scaling on MMLU subjects, leave one subject out (makes the table in docs/scaling.md).

For each subject the offline SmolLM2-135M-Instruct reads every question once; the last-layer hidden
state at ``"Answer:"`` is Thermometer's feature and the answer scores are either the option letters'
logits at that same position (``--scoring letter``, one forward per question, as in the paper) or the
options' mean token log-probabilities (``--scoring cloze``, one more forward per option). Features and
scores are cached as safetensors under ``--cache-dir``, so a rerun only trains and evaluates.

    python examples/thermometer_mmlu.py --limit 80 --seeds 0 1 2 --out docs/scaling_results/thermometer_mmlu

prints the per-subject table (mean over seeds, ± std for Thermometer) and writes ``{out}.json`` and
``{out}.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

from hf_calib.assets import load_smollm2
from hf_calib.recipes.mc import DEFAULT_SUBJECTS
from hf_calib.recipes.thermometer import subject_task as mmlu_subject_task
from hf_calib.scaling import ThermometerConfig, ThermometerTask, leave_one_task_out


def subject_task(model, tokenizer, subject: str, args: argparse.Namespace) -> ThermometerTask:
    """Features, answer scores and labels of one subject's first ``args.limit`` questions (cached)."""
    return mmlu_subject_task(
        model,
        tokenizer,
        subject,
        limit=args.limit,
        scoring=args.scoring,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", nargs="+", default=list(DEFAULT_SUBJECTS))
    parser.add_argument("--limit", type=int, default=80, help="questions per subject (the first ones)")
    parser.add_argument("--scoring", choices=("letter", "cloze"), default="letter")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=5000, help="Thermometer steps (paper: 5000)")
    parser.add_argument("--hidden-size", type=int, default=512, help="Thermometer branch width (paper: 512)")
    parser.add_argument("--lambda-reg", type=float, default=1e-2, help="Gamma prior weight (paper: 1e-2)")
    parser.add_argument("--batch-size", type=int, default=16, help="LM forward batch size")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the LM forwards")
    parser.add_argument("--cache-dir", default=".cache/thermometer_mmlu")
    parser.add_argument("--out", default="docs/scaling_results/thermometer_mmlu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.time()
    model, tokenizer = load_smollm2()
    tasks = [subject_task(model, tokenizer, s, args) for s in args.subjects]
    extract_seconds = time.time() - start
    config = ThermometerConfig(
        input_size=tasks[0].features.shape[1],
        hidden_size=args.hidden_size,
        steps=args.steps,
        lambda_reg=args.lambda_reg,
    )
    # The Thermometer MLP is small: one thread avoids thread contention on a shared CPU.
    torch.set_num_threads(1)
    start = time.time()
    result = leave_one_task_out(tasks, config, seeds=args.seeds, show_progress=False)
    loo_seconds = time.time() - start

    table = result.to_markdown(metrics=("ece", "nll"))
    print(f"scoring={args.scoring}, {len(tasks)} subjects x {args.limit} questions, seeds {args.seeds}")
    print(table)
    print()
    print(result.mean_markdown())
    print(f"feature/score extraction {extract_seconds:.0f} s, leave-one-out {loo_seconds:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "command": "python examples/thermometer_mmlu.py " + " ".join(_argv(args)),
        "scoring": args.scoring,
        "subjects": args.subjects,
        "limit": args.limit,
        "seeds": args.seeds,
        "config": config.to_dict(),
        "model": "SmolLM2-135M-Instruct",
        "n_bins": result.n_bins,
        "per_task": result.per_task(),
        "mean": result.mean(),
        "rows": result.rows,
        "seconds": {"extraction": extract_seconds, "leave_one_out": loo_seconds},
        "table_markdown": table,
        "mean_markdown": result.mean_markdown(),
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(result.rows[0].keys()) + ["best_step"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result.rows)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.csv')}")


def _argv(args: argparse.Namespace) -> list[str]:
    parts = ["--subjects", *[f'"{s}"' for s in args.subjects]] if args.subjects != list(DEFAULT_SUBJECTS) else []
    parts += ["--limit", str(args.limit), "--scoring", args.scoring, "--seeds", *map(str, args.seeds)]
    parts += ["--steps", str(args.steps), "--hidden-size", str(args.hidden_size), "--lambda-reg", str(args.lambda_reg)]
    return [*parts, "--out", args.out]


if __name__ == "__main__":
    main()
