"""The ``hf-calib`` command (also ``python -m hf_calib``): one subcommand per part of the toolkit.

The subcommands only parse arguments and call the recipes in :mod:`hf_calib.recipes`; libraries are
imported when a subcommand runs, so ``hf-calib --help`` is instant.

Errors: a user mistake prints one line, ``hf-calib SUB: error: <message>``, and exits with code 2 before any
model is loaded: argparse's type checks cover numbers, :mod:`hf_calib.recipes.checks` covers models,
adapters, MMLU subjects, devices and output folders (:class:`~hf_calib.recipes.checks.UsageError`).
``--debug`` shows the traceback instead. Ctrl-C exits with code 130.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .recipes.checks import UsageError

DEMO_OUTPUT = Path("outputs/demo")
#: numpy's seeds (``transformers.set_seed`` seeds numpy too) are in [0, 2**32).
MAX_SEED = 2**32 - 1


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line, ``hf-calib SUB: error: ...`` (no usage block), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def _count(text: str) -> int:
    """An argparse type: an integer >= 0 (a number of examples, 0 allowed)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0; got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0; got {value}")
    return value


def _smoothing(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1); got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"label smoothing must be in [0, 1); got {value}")
    return value


def _positive_float(upper: float) -> Callable[[str], float]:
    """An argparse type: a finite number in ``(0, upper]`` (inf, nan, 0 and negatives are refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in (0, {upper:g}]; got {text!r}") from None
        if not (math.isfinite(value) and 0.0 < value <= upper):
            raise argparse.ArgumentTypeError(f"expected a finite number in (0, {upper:g}]; got {text}")
        return value

    return parse


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {MAX_SEED}]; got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {MAX_SEED}]; got {value}")
    return value


def _common(parser: argparse.ArgumentParser, *, model_default: str | None = "smollm2") -> None:
    if model_default is not None:
        parser.add_argument(
            "--model",
            default=model_default,
            help=f"Hub id or local folder of the model; '{model_default}' uses the offline copy (default)",
        )
    parser.add_argument(
        "--device", default="auto", help="'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:N', 'mps'"
    )
    parser.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _add_specialize(sub: argparse._SubParsersAction) -> None:
    """``hf-calib specialize``: the specialization sweep (:mod:`.recipes.specialization_cli`)."""
    sp = sub.add_parser(
        "specialize",
        help="specialization trade-off: LoRA on general chats + n target examples for each n; table, JSON, plot",
        description="For each --n: a fresh LoRA adapter trained on the same general ShareGPT chats plus n movie-review "
        "sentiment examples (same steps, same seed); the base model and every adapter scored on the target task "
        "(label accuracy, ECE, exact match), general replies (ROUGE-L), token calibration on held-out chats and "
        "optionally MMLU calibration and an LLM judge. Writes specialization.json, .md and .png.",
    )
    _common(sp)
    sp.add_argument("--n", type=_count, nargs="+", default=[0, 10, 100], help="target examples per run (0 10 100)")
    sp.add_argument("--target", choices=["rotten_tomatoes", "imdb"], default="rotten_tomatoes", help="target reviews")
    sp.add_argument("--general-examples", type=_positive_int, default=160, help="general training chats (default 160)")
    sp.add_argument("--general-eval", type=_positive_int, default=24, help="held-out chats: replies and token ECE")
    sp.add_argument("--target-eval", type=_positive_int, default=200, help="held-out reviews (default 200)")
    sp.add_argument("--steps", type=_positive_int, default=30, help="training steps, the same for every n (default 30)")
    sp.add_argument("--batch-size", type=_positive_int, default=4, help="default 4")
    sp.add_argument("--lr", type=_positive_float(1.0), default=1e-3, help="LoRA learning rate (default 1e-3)")
    sp.add_argument("--label-smoothing", type=_smoothing, default=0.1, help="default 0.1")
    sp.add_argument("--max-length", type=_positive_int, default=128, help="tokens per training chat (default 128)")
    sp.add_argument("--max-chars", type=_positive_int, default=500, help="longest chat / review in characters")
    sp.add_argument("--max-new-tokens", type=_positive_int, default=48, help="reply length for general prompts")
    sp.add_argument("--exact-match", type=_count, default=50, help="target prompts answered greedily (0: skip)")
    sp.add_argument("--mmlu-subjects", nargs="+", help="also MMLU calibration on these subjects (default: none)")
    sp.add_argument("--mmlu-limit", type=_positive_int, default=20, help="questions per MMLU subject (default 20)")
    sp.add_argument("--judge", default=None, help="a causal LM that judges general replies ('smollm2'); default none")
    sp.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: leave as is)")
    sp.add_argument("--save-adapters", action="store_true", help="keep each adapter in OUTPUT_DIR/adapters/n<N>")
    sp.add_argument("--output-dir", type=Path, default=Path("outputs/specialization"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hf-calib",
        description="Calibration-aware fine-tuning for Hugging Face models: fused label smoothing, calibration "
        "metrics, temperature scaling and Thermometer, AdUE uncertainty heads, calibrated adapter bundles.",
        epilog="A mistake in the arguments exits with code 2 and a one-line message; --debug shows the traceback.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors (also after COMMAND)")
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

    sft = sub.add_parser(
        "sft", help="LoRA fine-tuning on chats with fused label smoothing; every Trainer flag (see --help)"
    )
    sft.add_argument("sft_args", nargs=argparse.REMAINDER, help="arguments of hf-calib sft, e.g. --dataset my.jsonl")

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

    _add_specialize(sub)

    bench = sub.add_parser("bench", help="benchmark the fused loss against Trainer's LabelSmoother (see --help)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of the benchmark, e.g. --quick")

    push = sub.add_parser("push", help="upload a saved calibrated-adapter bundle to the Hugging Face Hub")
    push.add_argument("bundle", type=Path, help="folder written by CalibratedAdapter.save_pretrained or the demo")
    push.add_argument("--repo-id", required=True, help="'user/name' on the Hub")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", default=None, help="branch to push to (default: main)")
    push.add_argument("--commit-message", default="Upload calibrated adapter bundle")
    push.add_argument("--token-env", default="HF_TOKEN", help="environment variable holding the token (never printed)")
    push.add_argument(
        "--dry-run", action="store_true", help="list the files that would be uploaded, with sizes; upload nothing"
    )
    return parser


def _parse_sft(parser: argparse.ArgumentParser, rest: list[str], *, debug: bool) -> argparse.Namespace:
    """``hf-calib sft`` parses its own flags: Trainer's, hf_calib's and the data's (:mod:`.recipes.sft_cli`)."""
    from .recipes.sft_cli import parse

    debug = debug or "--debug" in rest
    try:
        args = parse([arg for arg in rest if arg != "--debug"])
    except UsageError as exc:
        if debug:
            raise
        parser.exit(2, f"hf-calib sft: error: {exc}\n")
    args.command, args.debug = "sft", debug
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hf-calib`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    User errors (:class:`UsageError`, ``ValueError``, ``OSError``) print one line and exit with code 2
    (``SystemExit``) unless ``--debug`` is given, which re-raises them with their traceback.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    leading = 0
    while argv[leading : leading + 1] == ["--debug"]:
        leading += 1
    if argv[leading : leading + 1] == ["bench"]:
        # The benchmark has its own parser; hand it every argument, --help included.
        from .recipes.bench import main as bench_main

        bench_main(argv[leading + 1 :])
        return 0
    if argv[leading : leading + 1] == ["sft"]:
        args = _parse_sft(parser, argv[leading + 1 :], debug=leading > 0)
    else:
        args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .recipes import run

    try:
        return int(run(args.command, args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted; no partial output folder was left behind.", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        # UsageError is a checked mistake in the arguments; other ValueErrors and OSErrors (a missing file, a
        # full disk) are also the user's to fix, but their traceback may help: say how to see it.
        if args.debug:
            raise
        from ._secrets import scrub_secrets

        message = scrub_secrets(" ".join(str(exc).split()) or type(exc).__name__)
        if not isinstance(exc, UsageError):
            message += f" (run 'hf-calib --debug {args.command} ...' for the traceback)"
        parser.exit(2, f"hf-calib {args.command}: error: {message}\n")
