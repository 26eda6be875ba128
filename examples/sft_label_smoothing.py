"""LoRA fine-tuning of SmolLM2-135M-Instruct on ShareGPT turns with label smoothing, fused.

Everything is offline: the model and the conversations come from PyPI packages (docs/assets.md).
The loss is ``hf_calib``'s fused label-smoothing cross-entropy, switched on by the ordinary
``TrainingArguments(label_smoothing_factor=...)`` knob through ``CalibratedTrainer``: the
``[tokens, vocab]`` logits are never built. Prints the training loss, the held-out loss and
token-level calibration (ECE, NLL, accuracy, mean confidence) before and after, the time, and the
peak memory of the process.

    python examples/sft_label_smoothing.py                     # about 3 minutes on 2 CPU cores
    python examples/sft_label_smoothing.py --turns 512 --label-smoothing 0.0
"""

from __future__ import annotations

import argparse
import math
import resource
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForSeq2Seq, TrainingArguments, set_seed

from hf_calib import CalibratedTrainer
from hf_calib.assets import load_sharegpt_turns, load_smollm2
from hf_calib.data import tokenize_chat_completion


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


def build_dataset(n_turns: int, tokenizer, max_length: int):
    # Long answers are cut at max_length; prompts that leave no answer token are dropped.
    turns = load_sharegpt_turns(limit=n_turns, max_chars=4 * max_length * 4)
    data = turns.map(
        lambda ex: tokenize_chat_completion(ex["messages"], tokenizer, max_length),
        remove_columns=turns.column_names,
        desc="tokenizing",
    )
    return data.filter(lambda ex: any(t != -100 for t in ex["labels"]), desc="dropping prompt-only rows")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    t0 = time.perf_counter()
    model, tokenizer = load_smollm2(dtype=torch.float32)
    print(f"loaded SmolLM2-135M-Instruct in {time.perf_counter() - t0:.1f}s (vocab {model.config.vocab_size})")
    lora = LoraConfig(
        r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"LoRA r={args.lora_r} on q_proj, v_proj: {trainable:,} trainable parameters")

    data = build_dataset(args.turns + args.eval_turns, tokenizer, args.max_length)
    split = data.train_test_split(test_size=min(args.eval_turns, len(data) // 5), seed=args.seed)
    n_tokens = sum(sum(t != -100 for t in row) for row in split["train"]["labels"])
    print(f"ShareGPT turns: {len(split['train'])} train ({n_tokens:,} answer tokens), {len(split['test'])} held out")

    training_args = TrainingArguments(
        output_dir=str(args.output_dir),
        label_smoothing_factor=args.label_smoothing,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        logging_steps=max(1, math.ceil(args.epochs * len(split["train"]) / args.batch_size) // 8),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=args.seed,
        disable_tqdm=False,
    )
    trainer = CalibratedTrainer(
        model=model,
        args=training_args,
        train_dataset=split["train"],
        eval_dataset=split["test"],
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    )
    path = "fused (no [tokens, vocab] logits)" if trainer.fused_loss_active else "full logits (fallback)"
    print(f"loss path: {path}")
    before_metrics = trainer.evaluate()
    before = before_metrics["eval_loss"]
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    after_metrics = trainer.evaluate()
    after = after_metrics["eval_loss"]

    print(f"\nstep  training loss (label smoothing {args.label_smoothing})")
    for entry in trainer.state.log_history:
        if "loss" in entry:
            print(f"{entry['step']:>4}  {entry['loss']:.4f}")
    print(
        f"held-out loss (label smoothing {args.label_smoothing}): {before:.4f} before -> {after:.4f} after "
        f"({len(split['test'])} turns)"
    )
    for key in ("token_ece", "token_nll", "token_accuracy", "token_mean_confidence"):
        if f"eval_{key}" in after_metrics:
            old, new = before_metrics[f"eval_{key}"], after_metrics[f"eval_{key}"]
            print(f"held-out {key}: {old:.4f} before -> {new:.4f} after")
    if not math.isfinite(after):
        raise SystemExit("the held-out loss is not finite")
    print(f"training time: {train_seconds:.1f}s for {trainer.state.global_step} steps")
    print(f"peak memory (process RSS): {peak_rss_mib():,.0f} MiB")
    adapter_dir = args.output_dir / "adapter"
    model.save_pretrained(adapter_dir)
    print(f"adapter saved to {adapter_dir}")


if __name__ == "__main__":
    main()
