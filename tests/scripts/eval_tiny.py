"""Evaluate a tiny random Llama's token-level calibration with transformers' Trainer + the factory and with
CalibratedTrainer (fused path), and write a json report.

Run directly for one process, or under ``python -m torch.distributed.run --nproc_per_node 2`` (CPU, gloo).
Every rank writes ``<out>.rank<R>.json``: both trainers' ``evaluate()`` metrics, the true number of supervised
tokens of the eval set, the widths of the output layer's outputs during CalibratedTrainer's evaluation (0 on
the fused path) and the reliability diagrams that rank wrote. The eval set has ``N_EXAMPLES = 13`` rows, not
divisible by ``world_size x per_device``, so distributed evaluation pads its last batch with duplicates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from _dist import shutdown
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hf_calib.callbacks import ReliabilityDiagramCallback
from hf_calib.eval import MultipleChoiceCalibration
from hf_calib.loss import TokenCalibrationConfig, token_calibration_metrics
from hf_calib.trainer import CalibratedTrainer

# The vocabulary covers the tiny BPE tokenizer of tests/test_multiple_choice.py (at most 300 ids),
# whose questions the CalibratedTrainer also scores at each evaluation.
VOCAB, SEQ, N_EXAMPLES = 311, 12, 13


def multiple_choice() -> MultipleChoiceCalibration:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_multiple_choice import _make_tokenizer, _questions

    return MultipleChoiceCalibration(_questions(), tokenizer=_make_tokenizer(), batch_size=4, show_progress=False)


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
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # confident predictions spread over the bins
    return model.eval()


class Rows(torch.utils.data.Dataset):
    """Rows whose supervised token counts differ; about half the targets are the model's own argmax."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(1, VOCAB, (N_EXAMPLES, SEQ), generator=g)
        with torch.no_grad():
            pred = model(input_ids=ids).logits.argmax(-1)
        labels = torch.randint(1, VOCAB, (N_EXAMPLES, SEQ), generator=g)
        take = torch.rand(N_EXAMPLES, SEQ, generator=g) < 0.5
        labels[:, 1:] = torch.where(take[:, 1:], pred[:, :-1], labels[:, 1:])
        for i in range(N_EXAMPLES):
            labels[i, : 1 + (i * 5) % 9] = -100
        self.rows = [
            {"input_ids": ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": labels[i]}
            for i in range(N_EXAMPLES)
        ]
        self.n_tokens = int((labels[:, 1:] != -100).sum())

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def _args(output_dir: str, per_device: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        report_to=[],
        use_cpu=True,
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,
        save_strategy="no",
        disable_tqdm=True,
        per_device_eval_batch_size=per_device,
        label_smoothing_factor=0.1,
    )


def _token_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("eval_token_") or k == "eval_loss"}


def _mc_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("eval_mc/")}


def run(out: str, *, per_device: int, output_dir: str) -> dict:
    model = build_model()
    data = Rows(model)
    preprocess, compute = pair = token_calibration_metrics(n_bins=10)
    plain = Trainer(
        model=build_model(),
        args=_args(os.path.join(output_dir, "plain"), per_device),
        eval_dataset=data,
        preprocess_logits_for_metrics=preprocess,
        compute_metrics=compute,
    )
    plain_callback = ReliabilityDiagramCallback(pair, trainer=plain)
    plain.add_callback(plain_callback)
    plain_metrics = plain.evaluate()

    widths: list[int] = []
    # Full-width logits only at one position per row (the multiple-choice letter scores); the token-level
    # evaluation runs the fused head, whose output is [B, T, 0].
    model.lm_head.register_forward_hook(lambda _m, _i, o: widths.append(int(o.shape[-1]) if o.shape[-2] > 1 else 0))
    calibrated = CalibratedTrainer(
        model=model,
        args=_args(os.path.join(output_dir, "calibrated"), per_device),
        eval_dataset=data,
        calibration_metrics=TokenCalibrationConfig(n_bins=10),
        multiple_choice=multiple_choice(),
    )
    widths.clear()  # the one-off probe at init ran the head normally
    calibrated_metrics = calibrated.evaluate()
    diagrams = [cb for cb in calibrated.callback_handler.callbacks if isinstance(cb, ReliabilityDiagramCallback)]
    report = {
        "world_size": calibrated.args.world_size,
        "n_tokens": data.n_tokens,
        "plain": _token_metrics(plain_metrics),
        "calibrated": _token_metrics(calibrated_metrics),
        "mc": _mc_metrics(calibrated_metrics),
        "fused": calibrated.fused_loss_active,
        "head_widths": sorted(set(widths)),
        "written": [str(p) for p in plain_callback.written] + [str(p) for cb in diagrams for p in cb.written],
    }
    rank = int(os.environ.get("RANK", "0"))
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(report))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-device", type=int, default=2)
    parser.add_argument("--output-dir", required=True)
    a = parser.parse_args()
    try:
        run(a.out, per_device=a.per_device, output_dir=a.output_dir)
    finally:
        shutdown()


if __name__ == "__main__":
    main()
