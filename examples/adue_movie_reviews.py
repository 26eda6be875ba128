"""AdUE on movie-review sentiment: LoRA-tune MiniLM, then train the uncertainty head and compare baselines.

Per seed: LoRA (r=8, alpha=16 on query/key/value; the classifier in modules_to_save) fine-tunes the offline
all-MiniLM-L6-v2 on a training split of Rotten Tomatoes snippets for one epoch; the adapted model is frozen,
an AdUE head is attached, features of the train/validation/test splits are cached once, the head is fitted
with the paper's grid (selection by validation AUROC) and every score's misclassification AUROC is measured
on the test split. The splits are drawn once with ``--split-seed``; ``--seeds`` vary LoRA and AdUE.

``--part decoder`` runs SmolLM2-135M-Instruct as a zero-shot verbaliser classifier (the tokens "negative" /
"positive" as the assistant's first token after the chat-template prompt, no LoRA) on a few hundred snippets.

    python examples/adue_movie_reviews.py --part encoder --seeds 0 1 2
    python examples/adue_movie_reviews.py --part decoder

Prints a table and writes JSON to ``docs/adue_results/`` (``minilm_rotten_tomatoes.json``,
``smollm2_verbaliser.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_calib.adue import AdUEConfig, attach_adue_head, evaluate_uncertainty, extract_adue_features, fit_adue_head
from hf_calib.assets import load_movie_reviews, load_smollm2, minilm_path
from hf_calib.recipes.adue import EncoderSettings, review_splits, run_encoder, text_loader

SCORES = ("adue", "softmax_response", "entropy", "mahalanobis")
PROMPT = "Is the sentiment of this movie review positive or negative? Answer with one word.\n\nReview: {text}"
VERBALISER = ("negative", "positive")  # label order


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--split-seed", type=int, default=1234)
    parser.add_argument("--part", choices=("encoder", "decoder", "both"), default="encoder")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--val-size", type=int, default=800)
    parser.add_argument("--test-size", type=int, default=1200)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lora-epochs", type=float, default=1.0)
    parser.add_argument("--lora-lr", type=float, default=2e-3)
    parser.add_argument("--lora-batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--max-epochs", type=int, default=50, help="AdUE epochs per grid point (paper: 50).")
    parser.add_argument("--decoder-size", type=int, default=320, help="Snippets for the decoder run (split 2:1:1).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine).")
    parser.add_argument("--out", type=Path, default=Path("docs/adue_results"))
    return parser.parse_args()


def make_splits(args: argparse.Namespace) -> dict[str, Any]:
    return review_splits("rotten_tomatoes", (args.train_size, args.val_size, args.test_size), seed=args.split_seed)


def run_encoder_seed(args: argparse.Namespace, seed: int, splits: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2, local_files_only=True)
    settings = EncoderSettings(
        max_length=args.max_length,
        epochs=args.lora_epochs,
        learning_rate=args.lora_lr,
        batch_size=args.lora_batch_size,
        eval_batch_size=args.eval_batch_size,
        seed=seed,
    )
    outcome = run_encoder(model, tokenizer, splits, settings, AdUEConfig(seed=seed, max_epochs=args.max_epochs))
    result = {k: v for k, v in outcome.evaluation.items() if k != "test_uncertainty"}
    result.update(
        seed=seed,
        train_errors=int(outcome.features["train"].errors.sum()),
        val_errors=int(outcome.features["val"].errors.sum()),
        lora_seconds=round(outcome.seconds["lora"], 1),
        adue_fit_seconds=round(outcome.seconds["adue_fit"], 1),
        adue=outcome.fit.to_dict(),
    )
    aurocs = ", ".join(f"{k} {v:.4f}" for k, v in result["auroc"].items())
    print(f"seed {seed}: accuracy {result['accuracy']:.4f}; test AUROC {aurocs}", flush=True)
    return result


def run_decoder(args: argparse.Namespace) -> dict[str, Any]:
    model, tokenizer = load_smollm2()
    tokenizer.padding_side = "left"  # the verbaliser reads the last position
    tokenizer.truncation_side = "left"  # never cut the assistant prompt the label token follows
    ids = [tokenizer(w, add_special_tokens=False).input_ids for w in VERBALISER]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"the verbaliser words must be single tokens; got {ids}.")
    n = args.decoder_size
    # Snippets the encoder run never sees: its splits take the first train + val + test of the same shuffle.
    data = load_movie_reviews("rotten_tomatoes").shuffle(seed=args.split_seed)
    data = data.select(range(len(data) - n, len(data)))
    data = data.map(
        lambda r: {
            "text": tokenizer.apply_chat_template(
                [{"role": "user", "content": PROMPT.format(text=r["text"])}], tokenize=False, add_generation_prompt=True
            )
        }
    )
    cut = [0, n // 2, 3 * n // 4, n]
    splits = {name: data.select(range(cut[i], cut[i + 1])) for i, name in enumerate(("train", "val", "test"))}
    attach_adue_head(model, verbaliser_token_ids=[i[0] for i in ids])
    feats = {
        name: extract_adue_features(model, text_loader(split, tokenizer, 512, 8), desc=f"SmolLM2 features {name}")
        for name, split in splits.items()
    }
    start = time.perf_counter()
    fit = fit_adue_head(model, feats["train"], feats["val"], feats["test"], AdUEConfig(max_epochs=args.max_epochs))
    result = evaluate_uncertainty(fit.head, feats["train"], feats["test"])
    result.update(
        args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        verbaliser=list(VERBALISER),
        train_errors=int(feats["train"].errors.sum()),
        val_errors=int(feats["val"].errors.sum()),
        adue_fit_seconds=round(time.perf_counter() - start, 1),
        adue=fit.to_dict(),
    )
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = {"accuracy": [r["accuracy"] for r in runs]}
    keys.update({s: [r["auroc"][s] for r in runs] for s in SCORES})
    return {k: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0} for k, v in keys.items()}


def print_encoder_table(runs: list[dict[str, Any]], summary: dict[str, dict[str, float]], seeds: list[int]) -> None:
    print(f"\nMiniLM + LoRA on Rotten Tomatoes, test misclassification AUROC over seeds {seeds}")
    print(f"{'score':<18} {'mean':>8} {'std':>8}   per seed")
    for key in ("accuracy", *SCORES):
        per_seed = [r["accuracy"] if key == "accuracy" else r["auroc"][key] for r in runs]
        cells = " ".join(f"{v:.4f}" for v in per_seed)
        print(f"{key:<18} {summary[key]['mean']:>8.4f} {summary[key]['std']:>8.4f}   {cells}")


def write(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    meta = {"torch": torch.__version__, "platform": platform.platform()}
    if args.part in ("encoder", "both"):
        started = time.perf_counter()
        splits = make_splits(args)
        tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
        runs = [run_encoder_seed(args, seed, splits, tokenizer) for seed in args.seeds]
        summary = summarize(runs)
        print_encoder_table(runs, summary, args.seeds)
        report = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            **meta,
            "runs": runs,
            "summary": summary,
            "total_seconds": round(time.perf_counter() - started, 1),
        }
        write(report, args.out / "minilm_rotten_tomatoes.json")
    if args.part in ("decoder", "both"):
        started = time.perf_counter()
        decoder = run_decoder(args)
        decoder.update(meta, total_seconds=round(time.perf_counter() - started, 1))
        print(f"\nSmolLM2-135M-Instruct verbaliser, test n={decoder['n']}, errors={decoder['n_errors']}")
        print(
            f"accuracy {decoder['accuracy']:.4f}; AUROC "
            + ", ".join(f"{k} {v:.4f}" for k, v in decoder["auroc"].items())
        )
        write(decoder, args.out / "smollm2_verbaliser.json")


if __name__ == "__main__":
    main()
