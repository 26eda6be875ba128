"""``hf-calib sft``: LoRA fine-tuning on offline ShareGPT turns with fused label smoothing."""

from __future__ import annotations

import argparse

from transformers import set_seed

from .common import format_table, load_causal_lm, staged_dir
from .sft import SFTSettings, finetune_chat_lora, tokenize_turns


def cli(args: argparse.Namespace) -> int:
    from ..assets import load_sharegpt_turns

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
    model, tokenizer = load_causal_lm(args.model, device=args.device)
    turns = load_sharegpt_turns(limit=args.turns + args.eval_turns, max_chars=16 * args.max_length)
    data = tokenize_turns(turns, tokenizer, args.max_length)
    if len(data) <= args.eval_turns:
        raise ValueError(f"only {len(data)} usable turns; lower --eval-turns or raise --turns.")
    split = data.train_test_split(test_size=args.eval_turns, seed=args.seed)
    with staged_dir(args.output_dir) as out:
        outcome = finetune_chat_lora(model, tokenizer, split["train"], split["test"], settings, output_dir=out / "run")
        outcome.model.save_pretrained(out / "adapter")
    rows = [{"when": "before", **outcome.before}, {"when": "after", **outcome.after}]
    print(
        f"\nlabel smoothing {settings.label_smoothing}, {outcome.steps} steps in {outcome.seconds:.0f}s, "
        f"loss path: {'fused' if outcome.fused else 'full logits (fallback)'}"
    )
    print(format_table(rows, floatfmt=".4f"))
    print(f"adapter saved to {args.output_dir / 'adapter'}")
    return 0
