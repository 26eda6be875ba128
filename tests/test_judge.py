"""LLM judge (parsing, counts, stub and tiny-model judges) and the offline reference metrics ROUGE-L / BLEU.

Probability scoring (expected scores from the judge's token probabilities): tests/test_judge_probability.py.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest
import torch
from test_multiple_choice import _llama, _make_tokenizer

from hf_calib.data import encode_prompt
from hf_calib.eval import JUDGE_PROMPT, LLMJudge, bleu, exact_match, generate_texts, parse_judge_reply, rouge_l
from hf_calib.eval.generation import generate_from_ids
from hf_calib.eval.reference import reference_scores, rouge_l_scores

PARSE_TABLE = [
    ("7,8", (7.0, 8.0, None)),
    ("7, 8", (7.0, 8.0, None)),
    ("7 ,8", (7.0, 8.0, None)),
    ("7;8", (7.0, 8.0, None)),
    ("Scores: 7,8.", (7.0, 8.0, None)),
    ("(7, 8)", (7.0, 8.0, None)),
    ("7/10, 8/10", (7.0, 8.0, None)),
    ("7.5,8", (7.5, 8.0, None)),
    ("7, reference: 8", (7.0, 8.0, None)),
    ("7,8\nThe response is fine; 1,2", (7.0, 8.0, None)),
    ("0,10", (0.0, 10.0, None)),
    ("", (None, None, "malformed")),
    ("seven, eight", (None, None, "malformed")),
    ("7", (None, None, "malformed")),
    ("7 8", (None, None, "malformed")),
    ("7,8,9", (None, None, "malformed")),
    ("score 7.5.3,8", (None, None, "malformed")),
    ("11,8", (None, None, "out_of_range")),
    ("7,10.5", (None, None, "out_of_range")),
    ("7,-1", (None, None, "out_of_range")),
    ("-1,5", (None, None, "out_of_range")),
    ("123,4", (None, None, "out_of_range")),
]


@pytest.mark.parametrize(("reply", "expected"), PARSE_TABLE)
def test_parse_table(reply, expected):
    verdict = parse_judge_reply(reply)
    assert (verdict.response, verdict.reference, verdict.failure) == expected


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError, match="reply"):
        parse_judge_reply(None)


def test_stub_judge_means_ratio_and_missing_counts():
    replies = iter(["8,9", "6, 10", "nonsense", "12,3", "4;6"])
    seen = []

    def stub(prompt: str) -> str:
        seen.append(prompt)
        return next(replies)

    judge = LLMJudge(stub)
    n = 5
    result = judge.score([f"do {i}" for i in range(n)], [f"resp {{{i}}}" for i in range(n)], ["ref"] * n)
    # The prompt carries instruction, response and reference verbatim (braces included).
    assert seen[1] == JUDGE_PROMPT.replace("{instruction}", "do 1").replace("{response}", "resp {1}").replace(
        "{reference}", "ref"
    )
    scored = [(8, 9), (6, 10), (4, 6)]
    mean_resp = sum(a for a, _ in scored) / 3
    mean_ref = sum(b for _, b in scored) / 3
    metrics = result.metrics()
    assert metrics["judge_response"] == pytest.approx(mean_resp)
    assert metrics["judge_reference"] == pytest.approx(mean_ref)
    assert metrics["judge_ratio"] == pytest.approx(mean_resp / mean_ref)
    assert (metrics["judge_missing"], metrics["judge_malformed"], metrics["judge_out_of_range"]) == (2, 1, 1)
    assert metrics["judge_n"] == 5 and result.replies[2] == "nonsense"


def test_all_missing_gives_nan_and_counts():
    result = LLMJudge(lambda p: "no idea").score(["a", "b"], ["x", "y"], ["r", "s"])
    metrics = result.metrics("j")
    assert math.isnan(metrics["j_response"]) and math.isnan(metrics["j_ratio"]) and metrics["j_missing"] == 2


def test_judge_input_errors():
    with pytest.raises(ValueError, match="pair up"):
        LLMJudge(lambda p: "1,1").score(["a"], ["x", "y"], ["r"])
    with pytest.raises(TypeError, match="must return a str"):
        LLMJudge(lambda p: 7).score(["a"], ["x"], ["r"])
    with pytest.raises(TypeError, match="callable"):
        LLMJudge(42)
    with pytest.raises(ValueError, match="tokenizer"):
        LLMJudge(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="\\{reference\\}"):
        LLMJudge(lambda p: "1,1", prompt_template="{instruction} {response}")


def test_tiny_hf_judge_counts_its_unparsable_replies():
    tok = _make_tokenizer()
    model = _llama(len(tok), seed=3)
    judge = LLMJudge(model, tok, max_new_tokens=5, batch_size=2, show_progress=False)
    instructions, responses, references = ["the cat sat"] * 3, ["red dog", "big tree", "blue"], ["mat", "ran", "on"]
    result = judge.score(instructions, responses, references)
    # Same greedy replies as generating on the judge prompts directly, and each verdict is that reply parsed.
    prompts = judge.prompts(instructions, responses, references)
    assert list(result.replies) == generate_texts(model, tok, prompts, max_new_tokens=5, show_progress=False)
    failures = Counter(parse_judge_reply(r).failure for r in result.replies)
    metrics = result.metrics()
    assert metrics["judge_missing"] == failures["malformed"] + failures["out_of_range"]
    assert metrics["judge_malformed"] == failures["malformed"] and metrics["judge_n"] == 3
    assert metrics["judge_missing"] >= 1  # a random 2-layer model does not write "<score>,<score>"


def test_reply_prefix_starts_the_judge_turn():
    tok = _make_tokenizer()
    model = _llama(len(tok), seed=3)
    judge = LLMJudge(model, tok, reply_prefix="7,8 ", max_new_tokens=3, show_progress=False)
    result = judge.score(["the cat"], ["red dog"], ["mat"])
    prompt = judge.prompts(["the cat"], ["red dog"], ["mat"])[0]
    ids = encode_prompt(tok, prompt, chat=False) + tok("7,8 ", add_special_tokens=False)["input_ids"]
    continuation = generate_from_ids(model, tok, [ids], max_new_tokens=3, show_progress=False)[0]
    assert result.replies == ("7,8 " + continuation,)
    expected = parse_judge_reply("7,8 " + continuation)
    assert result.verdicts[0] == expected


# ---- reference metrics ---------------------------------------------------------------------------


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def _rouge_l_plain(pred: str, ref: str) -> float:
    p, r = re.findall(r"[a-z0-9]+", pred.lower()), re.findall(r"[a-z0-9]+", ref.lower())
    lcs = _lcs(p, r)
    if not p or not r or lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


PAIRS = [
    ("the cat sat on the mat", "the cat is on the mat"),
    ("A quick brown fox.", "the quick brown dog jumps"),
    ("completely different words", "nothing in common here"),
    ("", "an empty prediction"),
    ("Same text, same score!", "same text same score"),
]


def test_rouge_l_against_package_and_plain_lcs():
    from rouge_score import rouge_scorer

    preds, refs = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    ours = rouge_l_scores(preds, refs, use_stemmer=False)
    package = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    assert ours == pytest.approx([package.score(r, p)["rougeL"].fmeasure for p, r in PAIRS])
    assert ours == pytest.approx([_rouge_l_plain(p, r) for p, r in PAIRS])
    assert ours[3] == 0.0 and ours[4] == pytest.approx(1.0)
    assert rouge_l(preds, refs, use_stemmer=False) == pytest.approx(sum(ours) / len(ours))
    # Stemming: "cats" and "cat" match only with the stemmer.
    assert rouge_l(["cats"], ["cat"]) == 1.0 and rouge_l(["cats"], ["cat"], use_stemmer=False) == 0.0


def _bleu_plain(preds: list[str], refs: list[str]) -> float:
    """Corpus BLEU on whitespace tokens (no smoothing needed when every n-gram order has a match)."""
    matches, totals, pred_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for pred, ref in zip(preds, refs, strict=True):
        p, r = pred.split(), ref.split()
        pred_len, ref_len = pred_len + len(p), ref_len + len(r)
        for n in range(1, 5):
            pc = Counter(tuple(p[i : i + n]) for i in range(len(p) - n + 1))
            rc = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            matches[n - 1] += sum(min(c, rc[g]) for g, c in pc.items())
            totals[n - 1] += max(len(p) - n + 1, 0)
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4
    brevity = min(1.0, math.exp(1 - ref_len / pred_len))
    return 100 * brevity * math.exp(log_precision)


def test_bleu_against_package_and_plain_formula():
    import sacrebleu

    preds = ["the cat sat on the mat today", "a dog ran over the big red hill"]
    refs = ["the cat sat on the red mat today", "the dog ran over the big red hill fast"]
    ours = bleu(preds, refs)
    assert ours == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert ours == pytest.approx(_bleu_plain(preds, refs))
    assert bleu(["the same words here"], ["the same words here"]) == pytest.approx(100.0)
    assert bleu([""], ["a reference"]) == 0.0


def test_exact_match_and_bundle():
    assert exact_match([" Positive", "negative", ""], ["positive", "positive", ""]) == pytest.approx(2 / 3)
    scores = reference_scores(["a b c d"], ["a b c d"], ("rougeL", "bleu", "exact_match"))
    assert scores == pytest.approx({"rougeL": 1.0, "bleu": 100.0, "exact_match": 1.0})


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((["a"], ["a", "b"]), ValueError, "pair up"),
        (([], []), ValueError, "empty"),
        (("abc", ["a"]), TypeError, "list of strings"),
        (([1], ["a"]), TypeError, "list of strings"),
    ],
)
def test_reference_metric_errors(args, error, match):
    for fn in (rouge_l, bleu, exact_match):
        with pytest.raises(error, match=match):
            fn(*args)


def test_unknown_reference_metric():
    with pytest.raises(ValueError, match="unknown metrics"):
        reference_scores(["a"], ["a"], ("meteor",))
