"""MultipleChoiceCalibration: scores against unbatched per-prompt forwards, metrics against hf_calib.metrics."""

from __future__ import annotations

import copy
import math
import random
import re

import pytest
import torch
import torch.nn.functional as F

from hf_calib.eval import MultipleChoiceCalibration, multiple_choice_metrics, read_questions, task_key
from hf_calib.eval.prompts import continuation_ids, letter_token_ids, special_prefix_ids
from hf_calib.metrics import accuracy, brier_score, calibration_error, top_label_confidence

WORDS = "the cat dog sat ran on under mat red blue big small tree house river stone bird fish green old".split()
TASKS = ("alpha task", "Beta-Task", "gamma")
METRICS = ("accuracy", "mean_confidence", "ece", "mce", "brier", "nll")


def _corpus() -> list[str]:
    rng = random.Random(0)
    lines = [f"Answer: {c}" for c in "ABCDE"] * 300  # so that " A" .. " E" become single tokens
    lines += [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(200)]
    return lines


def _make_tokenizer(eos_after: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<pad>", "<s>", "</s>"]
    )
    backend.train_from_iterator(_corpus(), trainer)
    single = "<s> $A </s>" if eos_after else "<s> $A"
    backend.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def tok():
    return _make_tokenizer()


def _llama(vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(config).eval()


def _gpt2(vocab: int, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=512)).eval()


@pytest.fixture(scope="module")
def llama(tok):
    return _llama(len(tok))


def _questions(n: int = 18, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.randint(2, 5)
        rows.append(
            {
                "question": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 14))) + "?",
                "choices": [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(k)],
                "answer": rng.randrange(k),
                "subject": TASKS[i % 3] if i < 15 else TASKS[0],  # unequal task sizes
            }
        )
    return rows


def _letter_prompt(row: dict) -> str:
    options = [f"{'ABCDE'[j]}. {c}" for j, c in enumerate(row["choices"])]
    return "\n".join([row["question"], *options, "Answer:"])


def _forward_one(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def _manual_letter_logits(model, tok, rows) -> list[torch.Tensor]:
    letter_ids = [tok.encode(" " + c, add_special_tokens=False) for c in "ABCDE"]
    assert all(len(t) == 1 for t in letter_ids), "the test tokenizer must have single-token ' A' .. ' E'"
    out = []
    for row in rows:
        last = _forward_one(model, tok(_letter_prompt(row))["input_ids"])[-1]
        out.append(last[[t[0] for t in letter_ids[: len(row["choices"])]]])
    return out


def _manual_cloze(model, tok, rows, normalize: bool) -> list[torch.Tensor]:
    out = []
    for row in rows:
        context = tok(row["question"] + "\nAnswer:")["input_ids"]
        scores = []
        for option in row["choices"]:
            cont = tok.encode(" " + option, add_special_tokens=False)
            log_probs = torch.log_softmax(_forward_one(model, context + cont), dim=-1)
            total = sum(log_probs[len(context) - 1 + t, cont[t]] for t in range(len(cont)))
            scores.append(total / len(cont) if normalize else total)
        out.append(torch.stack(scores))
    return out


def _check_scores(details, expected, rows):
    assert details.logits.shape == (len(rows), max(len(r["choices"]) for r in rows))
    for i, (row, exp) in enumerate(zip(rows, expected, strict=True)):
        c = len(row["choices"])
        torch.testing.assert_close(details.logits[i, :c], exp, atol=2e-5, rtol=1e-5)
        assert torch.isneginf(details.logits[i, c:]).all()


# --------------------------------------------------------------------------------------------- scores


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_letter_scores_equal_unbatched_forward(tok, arch):
    model = _llama(len(tok)) if arch == "llama" else _gpt2(len(tok))
    rows = _questions()
    ev = MultipleChoiceCalibration(rows, scoring="letter", batch_size=4, show_progress=False)
    _, details = ev.evaluate(model, tok, return_details=True)
    _check_scores(details, _manual_letter_logits(model, tok, rows), rows)
    assert details.labels.tolist() == [r["answer"] for r in rows]
    assert [details.tasks[t] for t in details.task_ids] == [r["subject"] for r in rows]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("normalize", [True, False])
def test_cloze_scores_equal_manual_log_softmax(tok, arch, normalize):
    model = _llama(len(tok)) if arch == "llama" else _gpt2(len(tok))
    rows = _questions(9)
    ev = MultipleChoiceCalibration(rows, scoring="cloze", length_normalize=normalize, batch_size=5, show_progress=False)
    _, details = ev.evaluate(model, tok, return_details=True)
    _check_scores(details, _manual_cloze(model, tok, rows, normalize), rows)


def test_batch_size_does_not_change_scores(tok, llama):
    rows = _questions()
    results = []
    for batch_size in (1, 3, 64):
        ev = MultipleChoiceCalibration(rows, scoring="cloze", batch_size=batch_size, show_progress=False)
        results.append(ev.evaluate(llama, tok, return_details=True)[1].logits)
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], atol=2e-5, rtol=1e-5)


def test_details_probabilities(tok, llama):
    rows = _questions()
    _, details = MultipleChoiceCalibration(rows, show_progress=False).evaluate(llama, tok, return_details=True)
    probs = details.probs
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(rows)))
    assert details.num_choices.tolist() == [len(r["choices"]) for r in rows]
    assert (probs[~torch.isfinite(details.logits)] == 0).all()
    assert details.indices.tolist() == list(range(len(rows))) and details.scoring == "letter"


# --------------------------------------------------------------------------------------------- metrics


def _reference_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    probs = torch.softmax(logits, dim=-1)
    conf, _, correct = top_label_confidence(probs, labels)
    return {
        "accuracy": accuracy(probs, labels),
        "mean_confidence": conf.double().mean().item(),
        "ece": calibration_error(conf, correct, n_bins=10),
        "mce": calibration_error(conf, correct, n_bins=10, norm="max"),
        "brier": brier_score(probs, labels),
        "nll": F.cross_entropy(logits.double(), labels).item(),  # -inf logits of absent options drop out
    }


@pytest.mark.parametrize("scoring", ["letter", "cloze"])
def test_metrics_equal_metric_functions(tok, llama, scoring):
    rows = _questions()
    ev = MultipleChoiceCalibration(rows, scoring=scoring, n_bins=10, show_progress=False)
    metrics, details = ev.evaluate(llama, tok, return_details=True)
    assert details.tasks == list(TASKS)
    per_task = []
    for t, task in enumerate(details.tasks):
        rows_t = details.task_ids == t
        ref = _reference_metrics(details.logits[rows_t], details.labels[rows_t])
        per_task.append(ref)
        for m in METRICS:
            assert metrics[f"mc/{task_key(task)}/{m}"] == pytest.approx(ref[m], abs=1e-6), (task, m)
    pooled = _reference_metrics(details.logits, details.labels)
    for m in METRICS:
        assert metrics[f"mc/macro/{m}"] == pytest.approx(sum(r[m] for r in per_task) / len(per_task), abs=1e-6)
        assert metrics[f"mc/micro/{m}"] == pytest.approx(pooled[m], abs=1e-6)
    # Unequal task sizes: macro and micro differ (so the test can tell them apart).
    assert metrics["mc/macro/nll"] != pytest.approx(metrics["mc/micro/nll"], abs=1e-9)
    assert len(metrics) == (len(TASKS) + 2) * len(METRICS)
    assert all(re.fullmatch(r"mc/[a-z0-9_]+/[a-z_]+", k) for k in metrics)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


def test_metric_keys_prefix_and_per_task(tok, llama):
    rows = _questions()
    metrics = MultipleChoiceCalibration(rows, prefix="mmlu", per_task=False, show_progress=False).evaluate(llama, tok)
    assert sorted(metrics) == sorted(f"mmlu/{g}/{m}" for g in ("macro", "micro") for m in METRICS)
    single = MultipleChoiceCalibration(rows, task_column=None, show_progress=False).evaluate(llama, tok)
    for m in METRICS:
        assert single[f"mc/all/{m}"] == single[f"mc/macro/{m}"] == single[f"mc/micro/{m}"]


def test_multiple_choice_metrics_checks_its_input():
    logits = torch.tensor([[0.0, 1.0, -torch.inf], [2.0, -torch.inf, 0.0]])
    with pytest.raises(ValueError, match="-inf only after"):
        multiple_choice_metrics(logits, torch.tensor([0, 1]), torch.tensor([0, 0]), ["t"])
    with pytest.raises(ValueError, match="share the metric key"):
        multiple_choice_metrics(logits[:1], torch.tensor([0]), torch.tensor([0]), ["a b", "a-b"])
    with pytest.raises(ValueError, match="has no question"):
        multiple_choice_metrics(logits[:1], torch.tensor([0]), torch.tensor([0]), ["a", "b"])


# --------------------------------------------------------------------------------------------- PEFT, modes


def test_peft_lora_with_zero_b_matches_base_and_merged(tok, llama):
    from peft import LoraConfig, get_peft_model

    rows = _questions(9)
    ev = MultipleChoiceCalibration(rows, scoring="cloze", show_progress=False)
    _, base = ev.evaluate(llama, tok, return_details=True)
    peft_model = get_peft_model(
        copy.deepcopy(llama), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    _, wrapped = ev.evaluate(peft_model, tok, return_details=True)
    torch.testing.assert_close(wrapped.logits, base.logits, atol=1e-6, rtol=1e-6)

    with torch.no_grad():  # a non-zero B must change the scores, so the adapter is on the path
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    _, adapted = ev.evaluate(peft_model, tok, return_details=True)
    assert not torch.allclose(adapted.logits, base.logits, atol=1e-3)
    _, merged = ev.evaluate(peft_model.merge_and_unload(), tok, return_details=True)
    torch.testing.assert_close(merged.logits, adapted.logits, atol=1e-4, rtol=1e-4)


def test_modes_restored_and_eval_during_scoring(tok):
    model = _llama(len(tok)).train()
    model.model.layers[0].eval()  # a mixed state must come back as it was
    before = {name: m.training for name, m in model.named_modules()}
    seen = []
    hook = model.model.layers[1].register_forward_pre_hook(
        lambda module, args: seen.append((module.training, torch.is_grad_enabled()))
    )
    ev = MultipleChoiceCalibration(_questions(4), show_progress=False)
    ev.evaluate(model, tok)
    hook.remove()
    assert seen and not any(training or grad for training, grad in seen)  # eval mode, under no_grad
    assert {name: m.training for name, m in model.named_modules()} == before


# --------------------------------------------------------------------------------------------- prompts, tokens


def test_letter_token_choice(tok):
    ids, space = letter_token_ids(tok, "ABCD", "auto")
    assert space and ids == [tok.encode(" " + c, add_special_tokens=False)[0] for c in "ABCD"]
    assert len(tok.encode(" V", add_special_tokens=False)) == 2  # " V" never occurs in the corpus
    ids, space = letter_token_ids(tok, "VWQ", "auto")
    assert not space and ids == [tok.convert_tokens_to_ids(c) for c in "VWQ"]
    with pytest.raises(ValueError, match="letter_token='space'"):
        letter_token_ids(tok, "VWQ", "space")
    ids, space = letter_token_ids(tok, "AB", "no_space")
    assert not space and ids == [tok.convert_tokens_to_ids(c) for c in "AB"]


def test_special_prefix_keeps_bos_and_drops_eos():
    tok2 = _make_tokenizer(eos_after=True)
    assert special_prefix_ids(tok2) == [tok2.bos_token_id]
    rows = _questions(3)
    ev = MultipleChoiceCalibration(rows, task_column=None, show_progress=False)
    prompts = ev._encode(tok2).prompts
    for ids, row in zip(prompts, rows, strict=True):
        assert ids == tok2(_letter_prompt(row))["input_ids"][:-1]  # BOS kept, trailing EOS dropped
    assert continuation_ids(tok2, [" red cat"]) == [tok2.encode(" red cat", add_special_tokens=False)]


def test_fewshot_prompts(tok):
    rows = _questions()
    ev = MultipleChoiceCalibration(rows, num_fewshot=1, header="About {task}.", show_progress=False)
    assert len(ev) == len(rows) - 3 and ev.indices[:3] == [3, 4, 5]
    prompt = ev.prompts(tok)[0]  # row 3, task TASKS[0], demonstration row 0
    shot = rows[0]
    expected = f"About {TASKS[0]}.\n\n{_letter_prompt(shot)} {'ABCDE'[shot['answer']]}\n\n{_letter_prompt(rows[3])}"
    assert prompt == expected

    pool = [{"question": "q one?", "choices": ["x", "y"], "answer": 1}]
    ev = MultipleChoiceCalibration(rows, scoring="cloze", num_fewshot=1, fewshot_data=pool, show_progress=False)
    assert len(ev) == len(rows)
    assert ev.prompts(tok)[0] == f"q one?\nAnswer: y\n\n{rows[0]['question']}\nAnswer:"
    with pytest.raises(ValueError, match="num_fewshot=2 needs 2"):
        MultipleChoiceCalibration(rows, num_fewshot=2, fewshot_data=pool)
    with pytest.raises(ValueError, match="every question of task"):
        MultipleChoiceCalibration(_questions(3), num_fewshot=1)


def test_chat_template(tok, llama):
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    rows = _questions(6)
    ev = MultipleChoiceCalibration(rows, use_chat_template=True, show_progress=False)
    body = _letter_prompt(rows[0])[: -len("\nAnswer:")]
    assert ev.prompts(chat_tok)[0] == f"<|user|>{body}\n<|assistant|>Answer:"
    _, details = ev.evaluate(llama, chat_tok, return_details=True)
    ids = chat_tok(ev.prompts(chat_tok)[0], add_special_tokens=False)["input_ids"]  # no BOS added
    letter = chat_tok.encode(" " + "ABCDE"[0], add_special_tokens=False)[0]
    assert details.logits[0, 0].item() == pytest.approx(_forward_one(llama, ids)[-1, letter].item(), abs=2e-5)
    with pytest.raises(ValueError, match="no chat_template"):
        ev.evaluate(llama, tok)


def test_max_length_truncates_from_the_left(tok, llama):
    rows = _questions(6)
    ev = MultipleChoiceCalibration(rows, max_length=12, show_progress=False)
    with pytest.warns(UserWarning, match="exceed max_length=12"):
        _, details = ev.evaluate(llama, tok, return_details=True)
    letter_ids = [tok.encode(" " + c, add_special_tokens=False)[0] for c in "ABCDE"]
    for i, row in enumerate(rows):
        last = _forward_one(llama, tok(_letter_prompt(row))["input_ids"][-12:])[-1]
        torch.testing.assert_close(details.logits[i, : len(row["choices"])], last[letter_ids[: len(row["choices"])]])


def test_dataset_input_and_tokenizer_cache(tok, llama):
    from datasets import Dataset

    rows = _questions(6)
    data = Dataset.from_list(rows).rename_column("choices", "options")
    ev = MultipleChoiceCalibration(data, choices_column="options", tokenizer=tok, show_progress=False)
    from_list = MultipleChoiceCalibration(rows, show_progress=False).evaluate(llama, tok)
    assert ev.evaluate(llama) == pytest.approx(from_list, abs=1e-6)
    assert ev._encode(tok) is ev._encode(tok)
    assert [q.choices for q in read_questions(data, choices_column="options")] == [tuple(r["choices"]) for r in rows]


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "edit", "match"),
    [
        ({}, lambda rows: [], "data is empty"),
        ({}, lambda rows: [{**rows[0], "answer": 7}], "answer_column"),
        ({}, lambda rows: [{**rows[0], "answer": -1}], "answer_column"),
        ({}, lambda rows: [{**rows[0], "answer": True}], "answer_column"),
        ({}, lambda rows: [{**rows[0], "answer": "A"}], "answer_column"),
        ({}, lambda rows: [{**rows[0], "choices": ["only"], "answer": 0}], "at least 2"),
        ({}, lambda rows: [{**rows[0], "choices": "ab"}], "choices_column"),
        ({}, lambda rows: [{k: v for k, v in rows[0].items() if k != "subject"}], "task_column=None"),
        ({"question_column": "q"}, lambda rows: rows, "question_column='q'"),
        ({"scoring": "logprob"}, lambda rows: rows, "scoring must be"),
        ({"letter_token": "spaced"}, lambda rows: rows, "letter_token must be"),
        ({"batch_size": 0}, lambda rows: rows, "batch_size"),
        ({"num_fewshot": -1}, lambda rows: rows, "num_fewshot"),
        ({"letters": "AB"}, lambda rows: rows, "add letters"),
        ({"prefix": "mc eval"}, lambda rows: rows, "prefix must be"),
        ({}, lambda rows: [{**rows[0], "subject": "micro"}], "clash"),
    ],
)
def test_bad_input_raises(kwargs, edit, match):
    with pytest.raises(ValueError, match=match):
        MultipleChoiceCalibration(edit(_questions()), **kwargs)


def test_missing_tokenizer_raises(llama):
    with pytest.raises(ValueError, match="tokenizer"):
        MultipleChoiceCalibration(_questions(3)).evaluate(llama)


# --------------------------------------------------------------------------------------------- integration


@pytest.mark.integration
def test_real_smollm2_on_mmlu():
    from hf_calib.assets import load_smollm2

    model, tokenizer = load_smollm2()
    subjects = ["marketing", "high school geography"]
    evaluators = {
        scoring: MultipleChoiceCalibration.from_mmlu(subjects, 8, scoring=scoring, show_progress=False)
        for scoring in ("letter", "cloze")
    }
    letter_ids, space = letter_token_ids(tokenizer, "ABCD", "auto")
    assert space and letter_ids == [tokenizer.encode(" " + c, add_special_tokens=False)[0] for c in "ABCD"]
    prompt = evaluators["letter"].prompts(tokenizer)[0]
    assert prompt.startswith("The following are multiple choice questions (with answers) about marketing.\n\n")
    assert prompt.endswith("\nD. " + evaluators["letter"].questions[0].choices[3].strip() + "\nAnswer:")

    for scoring, ev in evaluators.items():
        metrics, details = ev.evaluate(model, tokenizer, return_details=True)
        assert details.logits.shape == (16, 4) and torch.isfinite(details.logits).all()
        torch.testing.assert_close(details.probs.sum(-1), torch.ones(16))
        for group in ("macro", "micro", "marketing", "high_school_geography"):
            assert 0 <= metrics[f"mc/{group}/accuracy"] <= 1 and 0 <= metrics[f"mc/{group}/ece"] <= 1
        assert metrics["mc/micro/accuracy"] == pytest.approx(
            (details.probs.argmax(-1) == details.labels).double().mean().item()
        )
        if scoring == "letter":  # left padding with the real model: batched == one prompt at a time
            encoded = ev._encode(tokenizer)
            for i in (0, 11):
                last = _forward_one(model, encoded.prompts[i])[-1]
                torch.testing.assert_close(details.logits[i], last[letter_ids], atol=1e-3, rtol=1e-4)
