"""Sentiment fine-tuning of SmolLM2-135M-Instruct on IMDB, plain (FT) vs FTICL, tested in and out of domain.

Everything is offline (docs/assets.md). One LoRA run per method on a few hundred IMDB reviews (cut to
``--max-chars`` characters so that FTICL prompts stay short):

- **FT**: ``prompt -> label word``, loss on the label only;
- **FTICL** (Yang et al., NAACL 2024): the same ``--k`` IMDB demonstrations in front of every training
  prompt (and of every evaluation prompt), loss on the label only.

Each model (and the base model, with and without the demonstrations) is evaluated by the label tokens'
first-step logits on held-out IMDB (in domain) and Rotten Tomatoes (out of domain), and by an LLM judge
(SmolLM2 itself; weak) on held-out ShareGPT prompts, which measures what the sentiment training did to
general instruction following. During training, ``GenerationEvalCallback`` logs the specialization /
forgetting curve (label exact match on IMDB prompts, ROUGE-L on ShareGPT prompts).

    python examples/fticl_sentiment.py            # about 45 minutes on 2 busy shared CPU cores
    python examples/fticl_sentiment.py --train 64 --eval 32 --judge-prompts 8   # a quick smoke run

Writes ``{results-dir}/fticl_sentiment.json`` and ``.md`` (written to a temporary file, then renamed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForSeq2Seq, TrainingArguments, set_seed

from hf_calib import CalibratedTrainer
from hf_calib.assets import load_movie_reviews, load_sharegpt_turns, load_smollm2
from hf_calib.callbacks import GenerationEvalCallback
from hf_calib.data import TaskTemplate, fticl_dataset, task_dataset, with_context
from hf_calib.eval import (
    GenerationTask,
    LLMJudge,
    evaluate_domains,
    format_domain_table,
    generate_texts,
)

TEMPLATE = TaskTemplate(
    prompt="Review: {text}\nSentiment (positive or negative):",
    completion=" {label}",
    verbalizers={"label": ["negative", "positive"]},
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=96, help="IMDB reviews to fine-tune on")
    parser.add_argument("--eval", type=int, default=200, help="held-out reviews per source (IMDB, Rotten Tomatoes)")
    parser.add_argument("--max-chars", type=int, default=200, help="reviews are cut to this many characters")
    parser.add_argument("--k", type=int, default=2, help="FTICL demonstrations")
    parser.add_argument("--judge-prompts", type=int, default=20, help="held-out ShareGPT prompts for the judge")
    parser.add_argument("--track-prompts", type=int, default=4, help="prompts per task for the curve while training")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="reply length for ShareGPT prompts")
    parser.add_argument("--base-icl", action="store_true", help="also score the base model with the demonstrations")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on busy shared cores)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/fticl_sentiment"))
    parser.add_argument("--results-dir", type=Path, default=Path("docs/data_and_eval_results"))
    args = parser.parse_args(argv)
    if args.train < args.batch_size or args.eval < 1 or args.k < 1:
        parser.error("--train must be at least --batch-size, and --eval and --k positive")
    return args


def clean_review(text: str, max_chars: int) -> str:
    """Drop IMDB's ``<br />`` tags and cut at a word boundary to at most ``max_chars`` characters."""
    text = " ".join(re.sub(r"<br\s*/?>", " ", text).split())
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 3]
    return (cut[: cut.rfind(" ")] if " " in cut else cut) + "..."


def load_reviews(source: str, n: int, max_chars: int, seed: int):
    data = load_movie_reviews(source).shuffle(seed=seed).select(range(n))  # the files are sorted by label
    return data.map(lambda row: {"text": clean_review(row["text"], max_chars)}, desc=f"cleaning {source}")


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def lora_model(r: int):
    model, tokenizer = load_smollm2(dtype=torch.float32)
    lora = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"
    )
    return get_peft_model(model, lora), tokenizer


def judge_scores(model, tokenizer, judge: LLMJudge, chats: list, max_new_tokens: int) -> dict[str, Any]:
    prompts = [c[0]["content"] for c in chats]
    references = [c[1]["content"] for c in chats]
    replies = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, desc="ShareGPT replies")
    result = judge.score(prompts, replies, references)
    return {**result.metrics("judge"), "replies": list(result.replies)[:3]}


def train_one(method: str, args, train_rows, demos, tracking: dict[str, list], eval_rows) -> tuple[Any, Any, dict]:
    """LoRA fine-tuning of one method; returns (model, tokenizer, summary)."""
    model, tokenizer = lora_model(args.lora_r)
    if method == "FTICL":
        train, _ = fticl_dataset(train_rows, TEMPLATE, args.k, tokenizer, pool=demos)
        context_rows = demos
    else:
        train = task_dataset(train_rows, TEMPLATE, tokenizer)
        context_rows = []
    # A small slice for the held-out loss; the accuracy tables use all of eval_rows afterwards.
    held_out = task_dataset(
        eval_rows.select(range(min(16, len(eval_rows)))), TEMPLATE, tokenizer, demonstrations=context_rows
    )
    n_tokens = sum(len(ids) for ids in train["input_ids"])
    print(f"[{method}] {len(train)} training rows, {n_tokens / len(train):.0f} tokens per row on average")
    steps = math.ceil(args.epochs * len(train) / args.batch_size)
    training_args = TrainingArguments(
        output_dir=str(args.output_dir / method.lower()),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        logging_steps=max(1, steps // 8),
        eval_strategy="steps",
        eval_steps=max(1, steps // 2),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=args.seed,
    )
    trainer = CalibratedTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    )
    context = "\n\n".join("".join(TEMPLATE.render(r)) for r in context_rows)
    sentiment = GenerationTask(
        "sentiment",
        [with_context(context, TEMPLATE.render(r)[0]) for r in eval_rows],
        [TEMPLATE.render(r)[1].strip() for r in eval_rows],
        metrics=("exact_match",),
        max_samples=args.track_prompts,
        max_new_tokens=4,
    )
    general = GenerationTask(
        "general",
        tracking["prompts"],
        tracking["references"],
        metrics=("rougeL",),
        max_samples=args.track_prompts,
    )
    trainer.add_callback(GenerationEvalCallback([sentiment, general], trainer=trainer, max_new_tokens=32))
    # Step 0 of the curve. train() starts a fresh TrainerState, so this evaluation is not in log_history.
    start = {"step": 0, **trainer.evaluate()}
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    curve = [
        {k: v for k, v in e.items() if k.startswith("eval_gen/") or k in ("step", "eval_loss")}
        for e in [start, *trainer.state.log_history]
        if any(k.startswith("eval_") for k in e)
    ]
    print(f"[{method}] trained {steps} steps in {seconds:.0f}s")
    return model, tokenizer, {"train_seconds": seconds, "steps": steps, "rows": len(train), "curve": curve}


def markdown(results: dict, args: argparse.Namespace) -> str:
    lines = [
        "# FT vs FTICL on movie-review sentiment (SmolLM2-135M-Instruct, LoRA)",
        "",
        f"Command: `python examples/fticl_sentiment.py {' '.join(results['argv'])}`",
        "",
        format_domain_table(results["accuracy"], metric="accuracy", in_domain="imdb"),
        "",
        "| model | judge response | judge reference | ratio | missing / n |",
        "|---|---|---|---|---|",
    ]
    for name, j in results["judge"].items():
        lines.append(
            f"| {name} | {j['judge_response']:.2f} | {j['judge_reference']:.2f} | {j['judge_ratio']:.3f} "
            f"| {j['judge_missing']:.0f} / {j['judge_n']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_seed(args.seed)
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"argv": argv or [], "accuracy": {}, "judge": {}, "training": {}}

    def save() -> None:  # after every stage, so a stopped run keeps what it measured
        write_atomic(args.results_dir / "fticl_sentiment.json", json.dumps(results, indent=2))
        write_atomic(args.results_dir / "fticl_sentiment.md", markdown(results, args))

    imdb = load_reviews("imdb", args.k + args.train + args.eval, args.max_chars, args.seed)
    demos = [dict(r) for r in imdb.select(range(args.k))]
    train_rows = imdb.select(range(args.k, args.k + args.train))
    eval_sets = {
        "imdb": imdb.select(range(args.k + args.train, len(imdb))),
        "rotten_tomatoes": load_reviews("rotten_tomatoes", args.eval, args.max_chars, args.seed),
    }
    chats = load_sharegpt_turns(limit=args.judge_prompts + args.track_prompts, max_chars=800)["messages"]
    judge_chats, track_chats = chats[: args.judge_prompts], chats[args.judge_prompts :]
    tracking = {"prompts": [c[0]["content"] for c in track_chats], "references": [c[1]["content"] for c in track_chats]}
    print(f"IMDB: {len(train_rows)} train, {len(eval_sets['imdb'])} eval; Rotten Tomatoes: {args.eval} eval")

    base, tokenizer = load_smollm2(dtype=torch.float32)
    judge = LLMJudge(base, tokenizer, max_new_tokens=8)
    t0 = time.perf_counter()
    results["accuracy"]["base (0-shot)"] = evaluate_domains(base, tokenizer, eval_sets, TEMPLATE)
    if args.base_icl:
        results["accuracy"][f"base + {args.k} demos (ICL)"] = evaluate_domains(
            base, tokenizer, eval_sets, TEMPLATE, demonstrations=demos
        )
    results["judge"]["base"] = judge_scores(base, tokenizer, judge, judge_chats, args.max_new_tokens)
    results["training"]["base_eval_seconds"] = time.perf_counter() - t0
    save()
    print(format_domain_table(results["accuracy"], metric="accuracy", in_domain="imdb"))

    for method in ("FT", "FTICL"):
        model, tok, summary = train_one(method, args, train_rows, demos, tracking, eval_sets["imdb"])
        name = f"FTICL (k={args.k})" if method == "FTICL" else "FT"
        t0 = time.perf_counter()
        shots = demos if method == "FTICL" else []
        results["accuracy"][name] = evaluate_domains(model, tok, eval_sets, TEMPLATE, demonstrations=shots)
        results["judge"][name] = judge_scores(model, tok, judge, judge_chats, args.max_new_tokens)
        summary["eval_seconds"] = time.perf_counter() - t0
        results["training"][name] = summary
        save()
        print(format_domain_table(results["accuracy"], metric="accuracy", in_domain="imdb"))
        del model

    print("\n" + markdown(results, args))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
