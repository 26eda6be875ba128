"""CalibratedTrainer under DDP on CPU: a tiny random Llama, synthetic data, any number of processes.

Trains a few steps with the fused label-smoothing loss, then evaluates; rank 0 prints ``eval_loss`` and
the token calibration metrics (``eval_token_*``). The global batch is fixed (``--global-batch``) and
each process gets ``global batch / world size`` rows, so one process and two processes run the same
optimisation and print the same training losses and token metrics (up to float32 rounding;
``eval_loss`` depends on the per-device batch). The 13 evaluation rows do not fill the last batch:
with 2 processes, distributed evaluation pads it with repeated rows, which the token metrics do not
count. CPU only (gloo); no download. See docs/distributed.md.

    python examples/distributed_tiny.py
    torchrun --standalone --nproc_per_node 2 examples/distributed_tiny.py
    torchrun --standalone --nproc_per_node 2 examples/distributed_tiny.py --bf16
    accelerate launch --multi_gpu --num_processes 2 --main_process_port 0 examples/distributed_tiny.py
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from hf_calib import CalibratedTrainer

VOCAB, SEQ, N_TRAIN, N_EVAL = 256, 16, 32, 13
PRINTED = (
    "eval_loss",
    "eval_token_count",
    "eval_token_ece",
    "eval_token_rms_ce",
    "eval_token_mce",
    "eval_token_nll",
    "eval_token_brier",
    "eval_token_accuracy",
    "eval_token_mean_confidence",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps")
    parser.add_argument("--global-batch", type=int, default=8, help="training rows per step, over all processes")
    parser.add_argument("--global-eval-batch", type=int, default=4, help="evaluation rows per step, over all processes")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (TrainingArguments(bf16=True))")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/distributed_tiny"))
    return parser.parse_args(argv)


def build_model() -> LlamaForCausalLM:
    """A 2-layer Llama, random weights; the same on every process (same seed)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


class Rows(torch.utils.data.Dataset):
    """Synthetic rows: Zipf-distributed tokens (learnable in a few steps), a prompt of varying length
    masked with -100, so processes see different numbers of supervised tokens."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        zipf = 1.0 / torch.arange(1, VOCAB, dtype=torch.float64)
        ids = 1 + torch.multinomial(zipf, n * SEQ, replacement=True, generator=g).view(n, SEQ)
        self.rows = []
        for i in range(n):
            labels = ids[i].clone()
            labels[: 1 + (i * 5) % 9] = -100
            self.rows.append(
                {"input_ids": ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": labels}
            )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    for name in ("global_batch", "global_eval_batch"):
        if getattr(args, name) % world_size:
            raise SystemExit(f"--{name.replace('_', '-')} must be divisible by the {world_size} processes")
    training_args = TrainingArguments(
        output_dir=str(args.output_dir),
        use_cpu=True,
        ddp_backend="gloo" if world_size > 1 else None,
        label_smoothing_factor=args.label_smoothing,
        per_device_train_batch_size=args.global_batch // world_size,
        per_device_eval_batch_size=args.global_eval_batch // world_size,
        average_tokens_across_devices=True,  # the default: the loss is normalised by the global token count
        max_steps=args.steps,
        learning_rate=args.lr,
        optim="sgd",
        lr_scheduler_type="constant",
        bf16=args.bf16,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )
    trainer = CalibratedTrainer(
        model=build_model(),
        args=training_args,
        train_dataset=Rows(N_TRAIN, seed=1),
        eval_dataset=Rows(N_EVAL, seed=2),
    )
    trainer.train()
    metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        wrapper = type(trainer.model_wrapped).__name__  # DistributedDataParallel with several processes
        print(
            f"world_size: {trainer.args.world_size}  per_device_train_batch_size: "
            f"{training_args.per_device_train_batch_size}  fused_loss_active: {trainer.fused_loss_active}  "
            f"wrapped_in: {wrapper}  mixed_precision: {trainer.accelerator.mixed_precision}"
        )
        print(f"train_loss per step: {losses}")
        for key in PRINTED:
            print(f"{key}: {metrics[key]}")
        if not all(math.isfinite(metrics[key]) for key in PRINTED):
            raise SystemExit("non-finite evaluation metric")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Tear the gloo process group down explicitly; leaving it to interpreter exit can abort the process.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
