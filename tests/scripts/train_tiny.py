"""Train a tiny random Llama with CalibratedTrainer (or transformers' Trainer) and write a json report.

Run directly for one process, or under ``python -m torch.distributed.run --nproc_per_node 2`` for
DDP or FSDP2 on CPU (gloo). Rank 0 writes ``--out``: the logged losses, the widths of the output
layer's outputs seen during training (0 on the fused path) and the final parameters' sums and sums of squares.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from _dist import shutdown
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hf_calib.trainer import CalibratedTrainer

VOCAB, SEQ, N_EXAMPLES = 1001, 12, 16


def build_model() -> LlamaForCausalLM:
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
    """Rows with different numbers of supervised tokens, so each rank sees a different count."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.rows = []
        for i in range(N_EXAMPLES):
            ids = torch.randint(1, VOCAB, (SEQ,), generator=g)
            labels = ids.clone()
            labels[: 1 + (i * 5) % 9] = -100
            self.rows.append({"input_ids": ids, "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": labels})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def run(out: str, *, trainer: str, per_device: int, steps: int, fsdp: bool, output_dir: str) -> dict:
    model = build_model()
    extra = {}
    if fsdp:
        extra = dict(
            fsdp="full_shard", fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}
        )
    args = TrainingArguments(
        output_dir=output_dir,
        report_to=[],
        use_cpu=True,
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        max_steps=steps,
        per_device_train_batch_size=per_device,
        train_sampling_strategy="sequential",
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        label_smoothing_factor=0.1,
        average_tokens_across_devices=True,
        **extra,
    )
    cls = CalibratedTrainer if trainer == "calibrated" else Trainer
    widths: list[int] = []
    model.lm_head.register_forward_hook(lambda _m, _i, o: widths.append(int(o.shape[-1])))
    runner = cls(model=model, args=args, train_dataset=Rows())
    widths.clear()
    runner.train()
    sums = {}
    for name, p in runner.model.named_parameters():
        full = (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().double()
        sums[name] = [float(full.sum()), float(full.pow(2).sum())]
    report = {
        "losses": [h["loss"] for h in runner.state.log_history if "loss" in h],
        # Training-token calibration logged with each loss (CalibratedTrainer only).
        "train_calibration": [
            {k: v for k, v in h.items() if k.startswith("token_")} for h in runner.state.log_history if "loss" in h
        ],
        "head_widths": sorted(set(widths)),
        "fused": bool(getattr(runner, "fused_loss_active", False)),
        "world_size": runner.args.world_size,
        "param_sums": sums,
    }
    if int(os.environ.get("RANK", "0")) == 0:
        with open(out, "w") as f:
            json.dump(report, f)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--trainer", choices=["calibrated", "plain"], default="calibrated")
    parser.add_argument("--per-device", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--output-dir", required=True)
    a = parser.parse_args()
    try:
        run(a.out, trainer=a.trainer, per_device=a.per_device, steps=a.steps, fsdp=a.fsdp, output_dir=a.output_dir)
    finally:
        shutdown()


if __name__ == "__main__":
    main()
