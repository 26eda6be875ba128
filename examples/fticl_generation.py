"""FT vs FTICL on two short-answer generation tasks, in-task and across tasks (SmolLM2-135M-Instruct, LoRA).

Everything is offline (docs/assets.md). The two tasks come from the chatterbot corpus
(``pip install --no-deps chatterbot-corpus==1.3.3``):

- **trivia**: closed-book question answering (``load_trivia``: 260 questions, answers of a few words);
- **chat**: a one-line reply to a short chit-chat message (``load_chatterbot``: the first exchange of the
  conversations of every file except ``trivia``, ``coding`` (code answers) and ``tech_support`` (10 pairs
  repeated), one row per distinct message).

For each seed and each task, SmolLM2 is fine-tuned with LoRA twice: plainly (**FT**: prompt -> reply) and
with **FTICL** (Yang et al., NAACL 2024: the same ``--k`` demonstrations of the task in front of every
training prompt). Every model is then scored on the held-out rows of *both* tasks by ROUGE-L and BLEU of
its greedy replies, next to the base model (without and with ``--k`` demonstrations). In-context models
(FTICL, base + ICL) see ``--k`` demonstrations of the task being evaluated, as in the paper's evaluation
script. The held-out rows are fixed; a seed draws the demonstrations and the training rows from the rest
and seeds LoRA's initialisation and the data order. Tables: mean ± standard error over seeds
(:class:`hf_calib.eval.CrossTaskReport`).

    python examples/fticl_generation.py                # 3 seeds, 128 rows: roughly 2 hours on 1 busy CPU thread
    python examples/fticl_generation.py --seeds 0 --train 64 --eval 40   # the documented run: 37 minutes
    python examples/fticl_generation.py --seeds 0 --train 16 --eval 8 --max-new-tokens 8   # a smoke run

Writes ``{results-dir}/fticl_generation.json`` and ``.md`` after every model (temporary file, then renamed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForSeq2Seq, TrainingArguments, set_seed

from hf_calib import CalibratedTrainer
from hf_calib.data import TaskTemplate, fticl_dataset, task_dataset
from hf_calib.eval import CrossTaskModel, CrossTaskReport, EvalTask, bleu, evaluate_cross_task
from hf_calib.eval.reference import rouge_l_scores

TRIVIA = TaskTemplate(prompt="Answer in a few words.\nQuestion: {question}\nAnswer:", completion=" {answer}")
CHAT = TaskTemplate(prompt="Reply in one short sentence.\nMessage: {prompt}\nReply:", completion=" {response}")
CHAT_EXCLUDED = ("trivia", "coding", "tech_support")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
ModelLoader = Callable[[], tuple[Any, Any]]


class TaskData(NamedTuple):
    """A generation task: its template, fixed held-out rows, and the pool that seeds draw training rows from."""

    name: str
    template: TaskTemplate
    eval_rows: Any  # datasets.Dataset
    pool: Any  # datasets.Dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one FT and FTICL run per seed")
    parser.add_argument("--train", type=int, default=128, help="training rows per task and seed")
    parser.add_argument("--eval", type=int, default=48, help="held-out rows per task")
    parser.add_argument("--k", type=int, default=2, help="FTICL / ICL demonstrations")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on busy shared cores)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/fticl_generation"))
    parser.add_argument("--results-dir", type=Path, default=Path("docs/data_and_eval_results"))
    args = parser.parse_args(argv)
    if args.train < args.batch_size or args.eval < 1 or args.k < 1 or len(set(args.seeds)) != len(args.seeds):
        parser.error("--train must be at least --batch-size, --eval and --k positive, --seeds distinct")
    return args


def split_task(name: str, template: TaskTemplate, rows, n_eval: int) -> TaskData:
    """Shuffle ``rows`` with a fixed seed (0) and hold out the first ``n_eval``; the rest is the training pool."""
    rows = rows.shuffle(seed=0)
    if len(rows) <= n_eval:
        raise ValueError(f"task {name!r} has {len(rows)} rows; lower --eval below that.")
    return TaskData(name, template, rows.select(range(n_eval)), rows.select(range(n_eval, len(rows))))


def load_tasks(n_eval: int) -> list[TaskData]:
    """The trivia and chat tasks from the offline chatterbot corpus (see the module docs)."""
    from hf_calib.assets import load_chatterbot, load_trivia

    chat = load_chatterbot()
    seen: set[str] = set()
    keep = [
        i
        for i, (category, prompt) in enumerate(zip(chat["category"], chat["prompt"], strict=True))
        if category not in CHAT_EXCLUDED and not (prompt.lower() in seen or seen.add(prompt.lower()))
    ]
    chat = chat.select(keep).remove_columns("category")
    return [split_task("trivia", TRIVIA, load_trivia(), n_eval), split_task("chat", CHAT, chat, n_eval)]


def seed_split(task: TaskData, seed: int, k: int, n_train: int) -> tuple[list[dict], Any]:
    """``(k demonstrations, n_train training rows)`` drawn from the task's pool by ``seed`` (disjoint)."""
    pool = task.pool.shuffle(seed=seed)
    if k + n_train > len(pool):
        raise ValueError(f"task {task.name!r}: k + train = {k + n_train} exceeds its pool of {len(pool)} rows.")
    return [dict(r) for r in pool.select(range(k))], pool.select(range(k, k + n_train))


def smollm2() -> tuple[Any, Any]:
    from hf_calib.assets import load_smollm2

    return load_smollm2(dtype=torch.float32)


def fine_tune(load_model: ModelLoader, task: TaskData, train_rows, demos: list[dict], seed: int, args) -> tuple:
    """LoRA fine-tuning on one task (FTICL when ``demos``, else FT); returns ``(model, tokenizer, summary)``."""
    set_seed(seed)  # LoRA's initialisation
    model, tokenizer = load_model()
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if demos:
        train, _ = fticl_dataset(train_rows, task.template, len(demos), tokenizer, pool=demos)
    else:
        train = task_dataset(train_rows, task.template, tokenizer)
    method = "FTICL" if demos else "FT"
    training_args = TrainingArguments(
        output_dir=str(args.output_dir / f"{method.lower()}-{task.name}-seed{seed}"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=seed,
        disable_tqdm=True,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = CalibratedTrainer(
        model=model, args=training_args, train_dataset=train, processing_class=tokenizer, data_collator=collator
    )
    t0 = time.perf_counter()
    output = trainer.train()
    summary = {
        "rows": len(train),
        "tokens_per_row": sum(len(ids) for ids in train["input_ids"]) / len(train),
        "steps": output.global_step,
        "train_loss": output.training_loss,
        "train_seconds": time.perf_counter() - t0,
    }
    print(f"[{method} on {task.name}, seed {seed}] {summary}")
    return model, tokenizer, summary


def run(
    args: argparse.Namespace,
    tasks: Sequence[TaskData],
    load_model: ModelLoader = smollm2,
    on_update: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """The whole experiment; ``on_update(results)`` is called after every model (to save partial results)."""
    eval_tasks = [EvalTask(t.name, t.eval_rows, t.template) for t in tasks]
    report = CrossTaskReport(tasks=[t.name for t in tasks], metrics=("rougeL", "bleu"))
    results: dict[str, Any] = {"argv": getattr(args, "argv", []), "report": None, "training": [], "replies": {}}
    results["references"] = {t.name: [t.template.render(r)[1].strip() for r in t.eval_rows] for t in tasks}
    options = {"max_new_tokens": args.max_new_tokens, "batch_size": args.eval_batch_size, "show_progress": False}

    def score(entry: CrossTaskModel, seed: int, extra: dict | None = None) -> None:
        t0 = time.perf_counter()
        replies: dict[str, list[str]] = {}
        report.add(
            entry.method, entry.trained_on, evaluate_cross_task(entry, eval_tasks, replies=replies, **options), seed
        )
        name = f"{entry.method} / {entry.trained_on or '-'}"
        results["replies"].setdefault(name, {})[str(seed)] = replies
        timing = {"eval_seconds": time.perf_counter() - t0}
        results["training"].append({"model": name, "seed": seed, **(extra or {}), **timing})
        results["report"] = report.to_dict()
        results["markdown"] = report.markdown()
        print(report.table())
        if on_update is not None:
            on_update(results)

    base, tokenizer = load_model()
    score(CrossTaskModel("base", None, base, tokenizer), args.seeds[0])  # greedy and fixed rows: seed-free
    for seed in args.seeds:
        splits = {t.name: seed_split(t, seed, args.k, args.train) for t in tasks}
        demos = {name: d for name, (d, _) in splits.items()}
        score(CrossTaskModel(f"base + ICL (k={args.k})", None, base, tokenizer, demos), seed)
        for task in tasks:
            for method in ("FT", f"FTICL (k={args.k})"):
                icl = method != "FT"
                shots = demos[task.name] if icl else []
                model, tok, summary = fine_tune(load_model, task, splits[task.name][1], shots, seed, args)
                score(CrossTaskModel(method, task.name, model, tok, demos if icl else {}), seed, summary)
                del model
    return results


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def item_se(replies: list[str], references: list[str], boot: int = 200) -> dict[str, tuple[float, float]]:
    """One seed's ``{metric: (score, SE over evaluation items)}``: ROUGE-L's SE is ``sd / sqrt(n)`` of the
    per-item F1; corpus BLEU's is the standard deviation of ``boot`` bootstrap resamples of the items."""
    per_item = rouge_l_scores(replies, references)
    rng = random.Random(0)
    n = len(replies)
    resampled = []
    for _ in range(boot):
        idx = [rng.randrange(n) for _ in range(n)]
        resampled.append(bleu([replies[i] for i in idx], [references[i] for i in idx]))
    return {
        "rougeL": (statistics.fmean(per_item), statistics.stdev(per_item) / math.sqrt(n) if n > 1 else math.nan),
        "bleu": (bleu(replies, references), statistics.stdev(resampled)),
    }


def item_se_table(results: dict[str, Any], seed: int) -> str:
    """Markdown: every model's scores of one seed with their SE over evaluation items (see :func:`item_se`)."""
    tasks = list(results["references"])
    header = " | ".join(f"{t} {m}" for t in tasks for m in ("ROUGE-L", "BLEU"))
    lines = [f"| model / trained on (seed {seed}; ± SE over items) | {header} |", "|---" * (2 * len(tasks) + 1) + "|"]
    for name, by_seed in results["replies"].items():
        if str(seed) not in by_seed:
            continue
        cells = []
        for t in tasks:
            se = item_se(by_seed[str(seed)][t], results["references"][t])
            cells += [f"{se['rougeL'][0]:.3f} ± {se['rougeL'][1]:.3f}", f"{se['bleu'][0]:.2f} ± {se['bleu'][1]:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# FT vs FTICL on generation, across tasks (SmolLM2-135M-Instruct, LoRA)",
        "",
        f"Command: `python examples/fticl_generation.py {' '.join(results['argv'])}`",
        "",
        "Bold: in-task (trained and evaluated on the same task). ROUGE-L F1 in [0, 1], corpus BLEU in [0, 100].",
        "",
        results["markdown"],
        "",
        item_se_table(results, int(next(iter(results["replies"]["base / -"])))),
        "",
        "| model | seed | rows | tokens/row | steps | train loss | train s | eval s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["training"]:
        cells = [r.get(k) for k in ("rows", "tokens_per_row", "steps", "train_loss", "train_seconds")]
        shown = ["-" if c is None else f"{c:.0f}" if isinstance(c, float) and c > 10 else f"{c:.3g}" for c in cells]
        lines.append(f"| {r['model']} | {r['seed']} | " + " | ".join(shown) + f" | {r['eval_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.argv = list(argv or [])
    torch.set_num_threads(args.threads)
    tasks = load_tasks(args.eval)
    print(", ".join(f"{t.name}: {len(t.eval_rows)} held out, pool {len(t.pool)}" for t in tasks))

    def save(results: dict) -> None:
        write_atomic(args.results_dir / "fticl_generation.json", json.dumps(results, indent=2))
        write_atomic(args.results_dir / "fticl_generation.md", markdown(results))

    results = run(args, tasks, on_update=save)
    print("\n" + markdown(results))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
