"""``hf-calib sft``: LoRA fine-tuning of a causal LM on chats with fused label smoothing, on Trainer's own flags.

The command line is ``transformers.HfArgumentParser`` over :class:`SFTRunArguments` (model, data, LoRA) and
:class:`~hf_calib.CalibratedTrainingArguments` (every ``TrainingArguments`` flag plus hf_calib's), so
``--report_to``, ``--bf16``, ``--gradient_accumulation_steps``, ``--calibration_n_bins`` ... all work, and
``--config run.yaml`` (or ``.json``) gives any of them from a file (flags on the command line win). The older
short flags stay as aliases: ``--label-smoothing`` (``--label_smoothing_factor``), ``--batch-size``
(``--per_device_train_batch_size``), ``--lr`` (``--learning_rate``), ``--epochs`` (``--num_train_epochs``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import UsageError

#: The older flags of ``hf-calib sft`` and the Trainer flags they now stand for.
LEGACY_FLAGS = {
    "--label-smoothing": "--label_smoothing_factor",
    "--batch-size": "--per_device_train_batch_size",
    "--lr": "--learning_rate",
    "--epochs": "--num_train_epochs",
}
#: TrainingArguments defaults of this command (a file given with --config and the command line override them).
DEFAULTS: dict[str, Any] = {
    "output_dir": "outputs/sft",
    "label_smoothing_factor": 0.1,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "learning_rate": 2e-4,
    "num_train_epochs": 1.0,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 2,
    "logging_steps": 5,
    "save_strategy": "no",
    "report_to": "none",
}
MAX_SEED = 2**32 - 1


@dataclass
class SFTRunArguments:
    """What ``hf-calib sft`` adds to Trainer's flags: the model, the data and the LoRA adapter."""

    model: str = field(
        default="smollm2", metadata={"help": "Local folder or Hub id of a causal LM; 'smollm2' = the offline copy."}
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Local .jsonl/.json/.csv/.parquet file or saved datasets folder, in chat ('messages') or "
            "prompt/completion form (default: the offline ShareGPT turns)."
        },
    )
    turns: int = field(default=256, metadata={"help": "Training chats taken from the data (default 256)."})
    eval_turns: int = field(default=32, metadata={"help": "Held-out chats, drawn with --seed (default 32)."})
    max_length: int = field(default=128, metadata={"help": "Tokens per chat (default 128)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (default 8)."})
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"], metadata={"help": "Modules LoRA adapts (default q_proj v_proj)."}
    )
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."})
    config: str | None = field(
        default=None, metadata={"help": "A .yaml or .json file of any of these flags (the command line wins)."}
    )


def _build_parser() -> tuple[Any, tuple[type, ...]]:
    """HfArgumentParser with one-line errors (``hf-calib sft: error: ...``, exit code 2), and its dataclasses."""
    from transformers import HfArgumentParser

    from ..trainer import CalibratedTrainingArguments

    class Parser(HfArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            self.exit(2, f"hf-calib sft: error: {message} (see 'hf-calib sft --help')\n")

    parser = Parser(
        (SFTRunArguments, CalibratedTrainingArguments),
        prog="hf-calib sft",
        description="LoRA fine-tuning of a causal LM on chats with fused label smoothing (CalibratedTrainer); "
        "every TrainingArguments flag works. Older aliases: "
        + ", ".join(f"{old} = {new}" for old, new in LEGACY_FLAGS.items())
        + ".",
    )
    parser.set_defaults(**DEFAULTS)
    return parser, (SFTRunArguments, CalibratedTrainingArguments)


def _modern(arg: str) -> str:
    """``arg`` with an older flag name replaced by the Trainer flag it stands for (``--lr=0.1`` too)."""
    name, sep, value = arg.partition("=")
    return LEGACY_FLAGS.get(name, name) + sep + value


def _config_file(argv: list[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    return None


def _read_config(path: Path, known: set[str]) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"--config {str(path)!r} is not a file; pass a .yaml or .json file of flags.")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - json.JSONDecodeError is a ValueError, yaml.YAMLError is not
        raise UsageError(f"--config {str(path)!r} does not parse: {' '.join(str(exc).split())}") from None
    if not isinstance(values, dict):
        raise UsageError(f"--config {str(path)!r} must hold a mapping of flag names to values.")
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"--config {str(path)!r}: unknown settings {unknown}; use the flag names without '--'.")
    return values


def _check(run: SFTRunArguments, training: Any) -> None:
    """Ranges argparse's types do not check, named by flag."""
    for name in ("turns", "eval_turns", "max_length", "lora_r"):
        if getattr(run, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer; got {getattr(run, name)}.")
    eps = training.label_smoothing_factor
    if not 0.0 <= eps < 1.0:
        raise UsageError(f"--label_smoothing_factor (--label-smoothing) must be in [0, 1); got {eps}.")
    lr = training.learning_rate
    if not (math.isfinite(lr) and 0.0 < lr <= 1.0):
        raise UsageError(f"--learning_rate (--lr) must be a finite number in (0, 1]; got {lr}.")
    epochs = training.num_train_epochs
    if training.max_steps <= 0 and not (math.isfinite(epochs) and 0.0 < epochs <= 1000.0):
        raise UsageError(f"--num_train_epochs (--epochs) must be a finite number in (0, 1000]; got {epochs}.")
    if training.per_device_train_batch_size < 1:
        raise UsageError(
            "--per_device_train_batch_size (--batch-size) must be a positive integer; "
            f"got {training.per_device_train_batch_size}."
        )
    if not 0 <= training.seed <= MAX_SEED:
        raise UsageError(f"--seed must be an integer in [0, {MAX_SEED}]; got {training.seed}.")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The arguments of ``hf-calib sft ARGV`` as the namespace the recipe and its pre-flight checks read.

    Raises :class:`UsageError` for a mistake found after parsing; argparse's own errors exit with code 2.
    """
    argv = [_modern(arg) for arg in argv]
    parser, argument_types = _build_parser()
    config = _config_file(argv)
    if config is not None:
        known = {f.name for dtype in argument_types for f in dataclasses.fields(dtype)}
        parser.set_defaults(**_read_config(config, known))
    try:
        run, training, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except ValueError as exc:  # TrainingArguments' own checks (e.g. --bf16 without a bf16 device)
        raise UsageError(" ".join(str(exc).split())) from None
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    _check(run, training)
    return argparse.Namespace(
        **{f.name: getattr(run, f.name) for f in dataclasses.fields(run)},
        output_dir=Path(training.output_dir),
        seed=training.seed,
        batch_size=training.per_device_train_batch_size,
        training=training,
    )


def cli(args: argparse.Namespace) -> int:
    from transformers import set_seed

    from .common import format_table, load_causal_lm, load_tokenizer, staged_dir
    from .sft import SFTSettings, chat_splits, finetune_chat_lora, load_chat_dataset, sharegpt_splits

    training = args.training
    if args.device == "cpu" and not training.use_cpu:
        training = dataclasses.replace(training, use_cpu=True)
    settings = SFTSettings(
        label_smoothing=training.label_smoothing_factor,
        max_length=args.max_length,
        batch_size=training.per_device_train_batch_size,
        learning_rate=training.learning_rate,
        epochs=training.num_train_epochs,
        lora_r=args.lora_r,
        lora_targets=tuple(args.lora_targets),
        seed=training.seed,
        show_progress=not training.disable_tqdm,
    )
    set_seed(training.seed)
    # The data first: a slice too small for the settings is reported before the model is loaded.
    tokenizer = load_tokenizer(args.model)
    try:
        if args.dataset is None:
            train, held_out = sharegpt_splits(tokenizer, args.turns, args.eval_turns, args.max_length, training.seed)
        else:
            data = load_chat_dataset(args.dataset)
            train, held_out = chat_splits(data, tokenizer, args.max_length, args.turns, args.eval_turns, training.seed)
    except ValueError as exc:
        flag = "--turns/--eval-turns" if args.dataset is None else "--dataset"
        message = str(exc) if str(exc).startswith("--dataset") else f"{flag}: {exc}"
        raise UsageError(message) from None
    if len(train) < settings.batch_size:
        raise UsageError(
            f"--batch-size {settings.batch_size} is larger than the {len(train)} usable training chats; lower "
            "--batch-size or raise --turns."
        )
    model, tokenizer = load_causal_lm(args.model, device=args.device, tokenizer=tokenizer)
    with staged_dir(args.output_dir) as out:
        outcome = finetune_chat_lora(
            model, tokenizer, train, held_out, settings, output_dir=out / "run", training_args=training
        )
        outcome.model.save_pretrained(out / "adapter")
    rows = [{"when": "before", **outcome.before}, {"when": "after", **outcome.after}]
    print(
        f"\nlabel smoothing {settings.label_smoothing}, {outcome.steps} steps in {outcome.seconds:.0f}s, "
        f"loss path: {'fused' if outcome.fused else 'full logits (fallback)'}"
    )
    print(format_table(rows, floatfmt=".4f"))
    print(f"adapter saved to {args.output_dir / 'adapter'}")
    return 0
