"""``hf-calib sft``: LoRA fine-tuning on offline ShareGPT turns with fused label smoothing."""

from __future__ import annotations

import argparse

from transformers import set_seed

from .checks import UsageError
from .common import format_table, load_causal_lm, load_tokenizer, staged_dir
from .sft import SFTSettings, finetune_chat_lora, sharegpt_splits


def cli(args: argparse.Namespace) -> int:
    settings = SFTSettings(
        label_smoothing=args.label_smoothing,
        max_length=args.max_length,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        epochs=args.epochs,
        lora_r=args.lora_r,
        seed=args.seed,
    )
    set_seed(args.seed)
    # The data first: a slice too small for the settings is reported before the model is loaded.
    tokenizer = load_tokenizer(args.model)
    try:
        train, held_out = sharegpt_splits(tokenizer, args.turns, args.eval_turns, args.max_length, args.seed)
    except ValueError as exc:
        raise UsageError(f"--turns/--eval-turns: {exc}") from None
    if len(train) < settings.batch_size:
        raise UsageError(
            f"--batch-size {settings.batch_size} is larger than the {len(train)} usable training turns; lower "
            "--batch-size or raise --turns."
        )
    model, tokenizer = load_causal_lm(args.model, device=args.device, tokenizer=tokenizer)
    with staged_dir(args.output_dir) as out:
        outcome = finetune_chat_lora(model, tokenizer, train, held_out, settings, output_dir=out / "run")
        outcome.model.save_pretrained(out / "adapter")
    rows = [{"when": "before", **outcome.before}, {"when": "after", **outcome.after}]
    print(
        f"\nlabel smoothing {settings.label_smoothing}, {outcome.steps} steps in {outcome.seconds:.0f}s, "
        f"loss path: {'fused' if outcome.fused else 'full logits (fallback)'}"
    )
    print(format_table(rows, floatfmt=".4f"))
    print(f"adapter saved to {args.output_dir / 'adapter'}")
    return 0
