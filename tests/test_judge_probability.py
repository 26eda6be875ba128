"""Probability scoring of the LLM judge: expected scores from the judge's next-token probabilities.

The reference computation runs each ``context + str(s)`` through a plain unpadded forward and multiplies
the token probabilities after the stem shared by the eleven texts, times the probability that the next
token does not start with a digit (read from the decoded token texts).
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from test_multiple_choice import WORDS, _llama, _make_tokenizer

from hf_calib.eval import LLMJudge, evaluate_generation
from hf_calib.eval.generation import GenerationTask
from hf_calib.eval.judge import JudgeResult
from hf_calib.eval.judge_probability import ScoreDistribution, digit_token_mask, score_candidates, score_distributions
from hf_calib.eval.prompts import special_prefix_ids

DIGITS = "0123456789"  # ASCII only: str.isdigit() also accepts "²"


def _merged_number_tokenizer():
    """A byte-level BPE that learns " 7", "10", " 10" ... as single tokens (unlike SmolLM2's digit splitting)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    lines = [f"Scores: {rng.randint(0, 10)},{rng.randint(0, 10)} {rng.choice(WORDS)}" for _ in range(2000)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<pad>", "<s>", "</s>"]
    )
    backend.train_from_iterator(lines, trainer)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _reference_logprobs(model, tok, prefix, text):
    """Unnormalised log p(s), s = 0..10, from plain forwards (no padding, no cache)."""
    full = [prefix + tok(text + str(s), add_special_tokens=False)["input_ids"] for s in range(11)]
    base = prefix + tok(text, add_special_tokens=False)["input_ids"]
    n = 0
    while all(len(f) > n for f in full) and n < len(base) and len({f[n] for f in full} | {base[n]}) == 1:
        n += 1
    digit = torch.tensor([tok.decode([i])[:1] in DIGITS for i in range(model.config.vocab_size)])
    out = []
    for seq in full:
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].double(), -1)
        total = sum(logp[k - 1, seq[k]] for k in range(n, len(seq)))
        out.append(float(total + torch.logsumexp(logp[-1][~digit], -1)))
    return torch.tensor(out, dtype=torch.float64)


def _check(dist: ScoreDistribution, logp: torch.Tensor):
    probs = torch.softmax(logp, -1)
    assert sum(dist.probs) == pytest.approx(1.0, abs=1e-9)
    assert dist.probs == pytest.approx(probs.tolist(), abs=2e-6)
    assert dist.mass == pytest.approx(float(torch.logsumexp(logp, -1).exp()), rel=1e-4)
    assert 0 < dist.mass <= 1
    assert dist.expected == pytest.approx(float((probs * torch.arange(11)).sum()), abs=1e-4)
    var = float((probs * (torch.arange(11) - dist.expected) ** 2).sum())
    assert dist.std == pytest.approx(math.sqrt(var), abs=1e-4)


@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("use_cache", [True, False])
def test_distributions_match_plain_forward(merged, use_cache):
    tok = _merged_number_tokenizer() if merged else _make_tokenizer()
    if merged:  # the case this tokenizer exists for: "10" and " 7" are single tokens
        assert len(tok("10", add_special_tokens=False)["input_ids"]) == 1
        assert len(tok(" 7", add_special_tokens=False)["input_ids"]) == 1
    else:  # digits one by one, as in SmolLM2
        assert len(tok("10", add_special_tokens=False)["input_ids"]) == 2
    model = _llama(len(tok), seed=5)
    prefix = special_prefix_ids(tok)
    texts = ["the cat sat on a mat. Scores: ", "red dog Scores: ", "a big tree ran on the mat today. Scores:"]
    contexts = [(prefix, t) for t in texts]
    pairs = score_distributions(model, tok, contexts, then=",", batch_size=2, show_progress=False, use_cache=use_cache)
    for (prefix_ids, text), (first, second) in zip(contexts, pairs, strict=True):
        _check(first, _reference_logprobs(model, tok, prefix_ids, text))
        # The reference score is read after the most likely response score and the separator.
        _check(second, _reference_logprobs(model, tok, prefix_ids, text + str(first.mode) + ","))
    # Candidates: the context's own tokens, unless a digit merges with its last characters.
    stem, cands = score_candidates(tok, prefix, texts[0])
    assert (len(cands[10]) == 1) == merged
    assert stem + cands[7] == prefix + tok(texts[0] + "7", add_special_tokens=False)["input_ids"]


def test_digit_mask_reads_raw_tokens():
    tok = _merged_number_tokenizer()
    mask = digit_token_mask(tok, len(tok) + 3)
    # Byte-level BPE: a token's decoded text starts with its raw string's first character (or a space: "Ġ").
    expected = [tok.decode([i])[:1] in DIGITS for i in range(len(tok))] + [False] * 3
    assert mask.tolist() == expected
    assert mask[tok.convert_tokens_to_ids("10")] and not mask[tok.convert_tokens_to_ids("Ġ7")]


def test_probability_judge_scores_and_metrics():
    tok = _make_tokenizer()
    model = _llama(len(tok), seed=3)
    judge = LLMJudge(model, tok, scoring="probability", batch_size=2, show_progress=False)
    assert judge.reply_prefix == "Scores: "
    ins, resp, refs = ["the cat sat", "a dog", "blue"], ["red dog", "big tree", "blue"], ["mat", "ran", "on"]
    result = judge.score(ins, resp, refs)
    assert result.scoring == "probability" and result.verdicts == () and result.replies == ()
    contexts = [(special_prefix_ids(tok), p + "Scores: ") for p in judge.prompts(ins, resp, refs)]
    for (prefix, text), (first, _) in zip(contexts, result.distributions, strict=True):
        _check(first, _reference_logprobs(model, tok, prefix, text))
    expected_resp = [r.expected for r, _ in result.distributions]
    expected_ref = [g.expected for _, g in result.distributions]
    metrics = result.metrics()
    assert metrics["judge_missing"] == 0 and metrics["judge_n"] == 3
    assert metrics["judge_response"] == pytest.approx(sum(expected_resp) / 3)
    assert metrics["judge_ratio"] == pytest.approx(sum(expected_resp) / sum(expected_ref))
    masses = [d.mass for pair in result.distributions for d in pair]
    assert metrics["judge_valid_mass"] == pytest.approx(sum(masses) / 6)
    assert metrics["judge_response_std"] == pytest.approx(sum(r.std for r, _ in result.distributions) / 3)
    assert result.response_scores == pytest.approx(expected_resp)
    assert "judge_malformed" not in metrics and "judge_text_missing" not in metrics


def test_both_mode_reports_text_failures_next_to_probabilities():
    tok = _make_tokenizer()
    model = _llama(len(tok), seed=3)
    args = (["the cat sat", "a dog"], ["red dog", "big tree"], ["mat", "ran"])
    both = LLMJudge(model, tok, scoring="both", max_new_tokens=4, show_progress=False).score(*args)
    text = LLMJudge(model, tok, reply_prefix="Scores: ", max_new_tokens=4, show_progress=False).score(*args)
    prob = LLMJudge(model, tok, scoring="probability", show_progress=False).score(*args)
    assert both.scoring == "both" and both.replies == text.replies and both.distributions == prob.distributions
    metrics = both.metrics()
    assert metrics["judge_text_parse_failure_rate"] == text.metrics()["judge_parse_failure_rate"]
    assert metrics["judge_text_missing"] == text.n_missing and metrics["judge_missing"] == 0
    assert metrics["judge_response"] == prob.metrics()["judge_response"]


def test_judge_result_from_hand_made_distributions():
    def dist(probs, mass):
        return ScoreDistribution(tuple(probs), mass)

    ten = [0.0] * 10 + [1.0]
    half = [0.5] + [0.0] * 9 + [0.5]
    result = JudgeResult(distributions=((dist(half, 0.2), dist(ten, 0.6)), (dist(ten, 1.0), dist(ten, 0.8))))
    metrics = result.metrics("j")
    assert (half_dist := result.distributions[0][0]).expected == 5 and half_dist.std == 5 and half_dist.mode == 0
    assert metrics["j_response"] == 7.5 and metrics["j_reference"] == 10 and metrics["j_ratio"] == 0.75
    assert metrics["j_valid_mass"] == pytest.approx(0.65) and metrics["j_valid_mass_response"] == pytest.approx(0.6)
    assert metrics["j_response_std"] == 2.5 and metrics["j_reference_std"] == 0 and metrics["j_missing"] == 0


def test_probability_scoring_errors():
    with pytest.raises(ValueError, match="callable"):
        LLMJudge(lambda p: "1,1", scoring="probability")
    with pytest.raises(ValueError, match="scoring must be one of"):
        LLMJudge(lambda p: "1,1", scoring="logits")


def test_judge_from_a_local_path(tmp_path):
    tok = _make_tokenizer()
    model = _llama(len(tok), seed=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    args = (["the cat sat"], ["red dog"], ["mat"])
    loaded = LLMJudge(str(tmp_path), scoring="probability", show_progress=False)
    assert not loaded.judge.training
    in_memory = LLMJudge(model, tok, scoring="probability", show_progress=False).score(*args)
    assert loaded.score(*args).distributions[0][0].probs == pytest.approx(in_memory.distributions[0][0].probs)


def test_generation_task_with_a_probability_judge():
    tok = _make_tokenizer()
    model = _llama(len(tok), seed=3)
    judge = LLMJudge(model, tok, scoring="probability")
    task = GenerationTask("general", ["the cat sat", "a dog"], ["mat", "ran"], judge=judge)
    out = evaluate_generation(model, tok, task, max_new_tokens=3, show_progress=False)
    assert out["gen/general/judge_missing"] == 0 and 0 < out["gen/general/judge_valid_mass"] <= 1
    assert judge.show_progress  # the caller's judge keeps its own setting


def test_smollm2_judge_always_answers():
    """Offline SmolLM2-135M as judge: every item gets an expected score; "10" is written as "1" + "0"."""
    from hf_calib.assets import load_sharegpt_turns, load_smollm2

    torch.set_num_threads(1)
    model, tok = load_smollm2(dtype=torch.float32)
    chats = load_sharegpt_turns(limit=3, max_chars=200)["messages"]
    instructions, references = [c[0]["content"] for c in chats], [c[1]["content"] for c in chats]
    responses = ["I don't know.", references[1], references[0]]
    judge = LLMJudge(model, tok, scoring="probability", batch_size=3, show_progress=False)
    _, cands = score_candidates(tok, [], judge._contexts(["x"])[0][1])
    assert [len(c) for c in cands] == [1] * 10 + [2]
    metrics = judge.score(instructions, responses, references).metrics()
    assert metrics["judge_missing"] == 0 and metrics["judge_n"] == 3
    assert 0 < metrics["judge_valid_mass"] <= 1 and 0 <= metrics["judge_response"] <= 10
