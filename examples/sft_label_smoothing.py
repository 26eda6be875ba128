"""LoRA fine-tuning of SmolLM2-135M-Instruct on ShareGPT turns with label smoothing, fused.

Everything is offline: the model and the conversations come from PyPI packages (docs/assets.md).
The loss is ``hf_calib``'s fused label-smoothing cross-entropy, switched on by the ordinary
``TrainingArguments(label_smoothing_factor=...)`` knob through ``CalibratedTrainer``: the
``[tokens, vocab]`` logits are never built. Prints the training loss, the held-out loss and
token-level calibration (ECE, NLL, accuracy, mean confidence) before and after, the time, and the
peak memory of the process. (``hf-calib sft`` runs the same recipe.)

    python examples/sft_label_smoothing.py                     # about 3 minutes on 2 CPU cores
    python examples/sft_label_smoothing.py --turns 512 --label-smoothing 0.0
"""

from __future__ import annotations

import argparse
import math
import resource
from pathlib import Path

import torch
from transformers import set_seed

from hf_calib.assets import load_sharegpt_turns, load_smollm2
from hf_calib.recipes.sft import SFTSettings, finetune_chat_lora, tokenize_turns


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=256, help="ShareGPT (user, assistant) turns to train on")
    parser.add_argument("--eval-turns", type=int, default=32, help="held-out turns for the before/after loss")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per example (prompt + answer)")
    parser.add_argument("--label-smoothing", type=float, default=0.1, help="epsilon of label smoothing")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/sft_label_smoothing"))
    args = parser.parse_args(argv)
    if args.turns < args.batch_size:
        parser.error(f"--turns ({args.turns}) must be at least --batch-size ({args.batch_size})")
    if not 0.0 <= args.label_smoothing < 1.0:
        parser.error(f"--label-smoothing must be in [0, 1); got {args.label_smoothing}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_seed(args.seed)
    model, tokenizer = load_smollm2(dtype=torch.float32)
    turns = load_sharegpt_turns(limit=args.turns + args.eval_turns, max_chars=16 * args.max_length)
    data = tokenize_turns(turns, tokenizer, args.max_length)
    split = data.train_test_split(test_size=min(args.eval_turns, len(data) // 5), seed=args.seed)
    print(f"ShareGPT turns: {len(split['train'])} train, {len(split['test'])} held out")
    settings = SFTSettings(
        label_smoothing=args.label_smoothing,
        max_length=args.max_length,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        epochs=args.epochs,
        lora_r=args.lora_r,
        seed=args.seed,
    )
    outcome = finetune_chat_lora(model, tokenizer, split["train"], split["test"], settings, output_dir=args.output_dir)
    print(f"loss path: {'fused (no [tokens, vocab] logits)' if outcome.fused else 'full logits (fallback)'}")
    print(f"\nstep  training loss (label smoothing {args.label_smoothing})")
    for step, loss in outcome.losses:
        print(f"{step:>4}  {loss:.4f}")
    for key in ("loss", "token_ece", "token_nll", "token_accuracy", "token_mean_confidence"):
        if key in outcome.after:
            print(f"held-out {key}: {outcome.before[key]:.4f} before -> {outcome.after[key]:.4f} after")
    if not math.isfinite(outcome.after["loss"]):
        raise SystemExit("the held-out loss is not finite")
    print(f"training time: {outcome.seconds:.1f}s for {outcome.steps} steps")
    print(f"peak memory (process RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    adapter_dir = args.output_dir / "adapter"
    outcome.model.save_pretrained(adapter_dir)
    print(f"adapter saved to {adapter_dir}")


if __name__ == "__main__":
    main()
