"""Judge reliability and judge validation on the offline SmolLM2-135M judge and ShareGPT answers.

Items: the first ``--items`` single-turn ShareGPT chats (``load_sharegpt_turns(limit=24, max_chars=800)``;
instruction = user turn, reference = assistant turn). Each instruction is judged with three responses:

- ``reference``: the reference answer itself (a correct answer);
- ``truncated``: the first third of the reference answer's words (partly correct);
- ``shuffled``: the reference answer of the next item (fluent, but answers another instruction).

**Synthetic ratings** (no human ratings exist offline): a constructed ordinal rating, reference 2 >
truncated 1 > shuffled 0. It encodes what any reasonable grader would agree on, not a human
study; it also favours reference-overlap metrics, since the top-rated response *is* the reference.

The judge (``LLMJudge(scoring="probability")``, reply prefix ``"Scores: "``) gives expected scores from
its token probabilities for every item; the default text judge (greedy reply, parsed) runs on the
``reference`` and ``shuffled`` responses for its parse-failure rate. :func:`hf_calib.eval.agreement`
then compares the judge's expected response score, ROUGE-L and BLEU with the synthetic ratings.

    python examples/judge_validation.py    # about 35 minutes on 2 busy shared CPU cores

Writes ``--output`` (JSON, default docs/data_and_eval_results/judge_validation.json) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from hf_calib.assets import load_sharegpt_turns, load_smollm2
from hf_calib.eval import LLMJudge, agreement, bleu
from hf_calib.eval.reference import rouge_l_scores

RATINGS = {"reference": 2, "truncated": 1, "shuffled": 0}
TEXT_KINDS = ("reference", "shuffled")  # also judged by the default text judge
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "data_and_eval_results" / "judge_validation.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20, help="ShareGPT items (instructions)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def build_items(n: int) -> list[dict]:
    """One row per (instruction, response kind): instruction, response, reference, kind, rating."""
    chats = load_sharegpt_turns(limit=24, max_chars=800)["messages"][:n]
    if len(chats) < n:
        raise ValueError(f"only {len(chats)} ShareGPT items available; pass --items {len(chats)} or fewer.")
    instructions = [c[0]["content"] for c in chats]
    references = [c[1]["content"] for c in chats]
    responses = {
        "reference": references,
        "truncated": [" ".join(r.split()[: max(1, len(r.split()) // 3)]) for r in references],
        "shuffled": [references[(i + 1) % n] for i in range(n)],
    }
    return [
        {"instruction": instructions[i], "response": responses[kind][i], "reference": references[i], "kind": kind}
        | {"rating": RATINGS[kind], "item": i}
        for kind in RATINGS
        for i in range(n)
    ]


def sentence_bleu(prediction: str, reference: str) -> float:
    return bleu([prediction], [reference]) if prediction.strip() else 0.0


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per response kind: judge means, valid mass, spread, missing and parse-failure rates, ROUGE-L, BLEU."""
    out = {}
    for kind in RATINGS:
        sub = [r for r in rows if r["kind"] == kind]
        texts = [r for r in sub if "text_reply" in r]
        out[kind] = {
            "n": len(sub),
            "expected_response": _mean([r["expected_response"] for r in sub]),
            "expected_reference": _mean([r["expected_reference"] for r in sub]),
            "response_std": _mean([r["response_std"] for r in sub]),
            "valid_mass_response": _mean([r["mass_response"] for r in sub]),
            "valid_mass_reference": _mean([r["mass_reference"] for r in sub]),
            "probability_missing_rate": sum(r["expected_response"] is None for r in sub) / len(sub),
            "text_n": len(texts),
            "text_parse_failure_rate": sum(r["text_response"] is None for r in texts) / len(texts) if texts else None,
            "rougeL": _mean([r["rougeL"] for r in sub]),
            "bleu": _mean([r["bleu"] for r in sub]),
        }
    return out


def _triples(rows: list[dict]) -> tuple[list[str], list[str], list[str]]:
    return [r["instruction"] for r in rows], [r["response"] for r in rows], [r["reference"] for r in rows]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = load_smollm2(dtype=torch.float32)
    rows = build_items(args.items)
    start = time.perf_counter()
    judge = LLMJudge(model, tok, scoring="probability", batch_size=args.batch_size)
    prob = judge.score(*_triples(rows))
    seconds_prob = time.perf_counter() - start
    text_rows = [r for r in rows if r["kind"] in TEXT_KINDS]
    start = time.perf_counter()
    text = LLMJudge(model, tok, max_new_tokens=12, batch_size=args.batch_size).score(*_triples(text_rows))
    seconds_text = time.perf_counter() - start
    for row, (resp, ref) in zip(rows, prob.distributions, strict=True):
        row.update(
            expected_response=_finite(resp.expected),
            expected_reference=_finite(ref.expected),
            response_std=resp.std,
            mass_response=resp.mass,
            mass_reference=ref.mass,
            response_probs=list(resp.probs),
            rougeL=rouge_l_scores([row["response"]], [row["reference"]])[0],
            bleu=sentence_bleu(row["response"], row["reference"]),
        )
    for row, verdict, reply in zip(text_rows, text.verdicts, text.replies, strict=True):
        row.update(text_response=verdict.response, text_reference=verdict.reference, text_reply=reply)
    ratings = [r["rating"] for r in rows]
    scorers = {
        "judge expected score (probability)": [r["expected_response"] for r in rows],
        "ROUGE-L": [r["rougeL"] for r in rows],
        "BLEU": [r["bleu"] for r in rows],
    }
    agreements = {
        name: agreement(scores, ratings, n_bootstrap=args.n_bootstrap, seed=0).to_dict()
        for name, scores in scorers.items()
    }
    result = {
        "command": " ".join(["python examples/judge_validation.py", *(sys.argv[1:] if argv is None else argv)]),
        "items": args.items,
        "ratings": RATINGS,
        "ratings_note": "synthetic ordinal ratings constructed from the response kind, not human ratings",
        "per_kind": summarise(rows),
        "overall_probability": prob.metrics(),
        "overall_text_default": text.metrics(),
        "agreement": agreements,
        "seconds": {"probability": seconds_prob, "text_default": seconds_text},
        "threads": args.threads,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print_tables(result)
    return result


def print_tables(result: dict) -> None:
    print(
        "| response | rating | judge E[score] | spread | valid mass | missing (probability) | text parse failures ",
        end="",
    )
    print("| ROUGE-L | BLEU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, s in result["per_kind"].items():
        print(
            f"| {kind} | {RATINGS[kind]} | {fmt(s['expected_response'])} | {fmt(s['response_std'])} | "
            f"{fmt(s['valid_mass_response'])} | {fmt(s['probability_missing_rate'])} | "
            f"{fmt(s['text_parse_failure_rate'])} | {fmt(s['rougeL'])} | {fmt(s['bleu'], 1)} |"
        )
    print("\n| scorer | n | Spearman [95% CI] | Kendall tau-b [95% CI] | pairwise accuracy [95% CI] |")
    print("|---|---|---|---|---|")
    for name, a in result["agreement"].items():
        cells = [f"{fmt(a[k]['value'])} [{fmt(a[k]['low'])}, {fmt(a[k]['high'])}]" for k in _KEYS]
        print(f"| {name} | {a['n']} | " + " | ".join(cells) + " |")


_KEYS = ("spearman", "kendall_tau_b", "pairwise_accuracy")

if __name__ == "__main__":
    main()
