"""The ``hf-calib`` command (also ``python -m hf_calib``): one subcommand per part of the toolkit.

The subcommands only parse arguments and call the recipes in :mod:`hf_calib.recipes`; libraries are
imported when a subcommand runs, so ``hf-calib --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

DEMO_OUTPUT = Path("outputs/demo")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def _smoothing(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1); got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"label smoothing must be in [0, 1); got {value}")
    return value


def _common(parser: argparse.ArgumentParser, *, model_default: str | None = "smollm2") -> None:
    if model_default is not None:
        parser.add_argument(
            "--model",
            default=model_default,
            help=f"Hub id or local folder of the model; '{model_default}' uses the offline copy (default)",
        )
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when available, else CPU), 'cpu', 'cuda:0'")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-calib",
        description="Calibration-aware fine-tuning for Hugging Face models: fused label smoothing, calibration "
        "metrics, temperature scaling and Thermometer, AdUE uncertainty heads, calibrated adapter bundles.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="the whole toolkit end to end on offline models and data (default: --quick)")
    size = demo.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="full", action="store_false", help="small slices, ~10 min on 2 CPU cores")
    size.add_argument("--full", dest="full", action="store_true", help="larger slices (several times longer)")
    demo.set_defaults(full=False)
    _common(demo)
    demo.add_argument("--encoder", default="minilm", help="encoder for the AdUE part; 'minilm' = offline copy")
    demo.add_argument("--output-dir", type=Path, default=DEMO_OUTPUT, help=f"default {DEMO_OUTPUT}")
    demo.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # random tiny models, for tests

    sft = sub.add_parser("sft", help="LoRA fine-tuning on ShareGPT turns with fused label smoothing")
    _common(sft)
    sft.add_argument("--turns", type=_positive_int, default=256, help="training turns (default 256)")
    sft.add_argument("--eval-turns", type=_positive_int, default=32, help="held-out turns (default 32)")
    sft.add_argument("--max-length", type=_positive_int, default=128, help="tokens per turn (default 128)")
    sft.add_argument("--label-smoothing", type=_smoothing, default=0.1, help="epsilon (default 0.1; 0 = plain CE)")
    sft.add_argument("--batch-size", type=_positive_int, default=8)
    sft.add_argument("--lr", type=float, default=2e-4)
    sft.add_argument("--epochs", type=float, default=1.0)
    sft.add_argument("--lora-r", type=_positive_int, default=8)
    sft.add_argument("--output-dir", type=Path, default=Path("outputs/sft"), help="the adapter goes to DIR/adapter")

    ev = sub.add_parser("eval", help="multiple-choice calibration on MMLU subjects, with a reliability diagram")
    _common(ev)
    ev.add_argument("--adapter", type=Path, help="a PEFT adapter folder to apply to --model")
    ev.add_argument("--subjects", nargs="+", help="MMLU subjects (default: 12 general-knowledge subjects)")
    ev.add_argument("--limit", type=_positive_int, default=20, help="questions per subject (default 20)")
    ev.add_argument("--scoring", choices=["letter", "cloze"], default="cloze", help="default cloze")
    ev.add_argument("--output-dir", type=Path, default=Path("outputs/eval"))

    th = sub.add_parser("thermometer", help="fit a Thermometer on MMLU subjects and evaluate held-out subjects")
    _common(th)
    th.add_argument("--adapter", type=Path, help="a PEFT adapter folder to apply to --model")
    th.add_argument("--subjects", nargs="+", help="training subjects (default: the demo's 12 subjects minus held-out)")
    th.add_argument("--held-out", nargs="+", help="held-out subjects (default: the last quarter of --subjects)")
    th.add_argument("--limit", type=_positive_int, default=40, help="questions per subject (default 40)")
    th.add_argument("--scoring", choices=["letter", "cloze"], default="cloze", help="default cloze")
    th.add_argument("--steps", type=_positive_int, default=None, help="training steps (default: the paper's 5000)")
    th.add_argument("--output-dir", type=Path, default=Path("outputs/thermometer"))

    ad = sub.add_parser("adue", help="LoRA-tune an encoder on movie-review sentiment and train an AdUE head")
    _common(ad, model_default="minilm")
    ad.add_argument("--source", choices=["rotten_tomatoes", "imdb"], default="rotten_tomatoes")
    ad.add_argument("--train-size", type=_positive_int, default=2000)
    ad.add_argument("--test-size", type=_positive_int, default=1000)
    ad.add_argument("--output-dir", type=Path, default=Path("outputs/adue"))

    bench = sub.add_parser("bench", help="benchmark the fused loss against Trainer's LabelSmoother (see --help)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of the benchmark, e.g. --quick")

    push = sub.add_parser("push", help="upload a saved calibrated-adapter bundle to the Hugging Face Hub")
    push.add_argument("bundle", type=Path, help="folder written by CalibratedAdapter.save_pretrained or the demo")
    push.add_argument("--repo-id", required=True, help="'user/name' on the Hub")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", default=None, help="branch to push to (default: main)")
    push.add_argument("--commit-message", default="Upload calibrated adapter bundle")
    push.add_argument("--token-env", default="HF_TOKEN", help="environment variable holding the token (never printed)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # The benchmark has its own parser; hand it every argument, --help included.
        from .bench import main as bench_main

        bench_main(argv[1:])
        return 0
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from . import recipes

    try:
        return int(recipes.run(args.command, args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted; no partial output folder was left behind.", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"hf-calib {args.command}: error: {exc}\n")
    return 0
