"""Batched generation vs one-prompt-at-a-time generation, GenerationEvalCallback in log_history, domain report."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from test_multiple_choice import _llama, _make_tokenizer

from hf_calib.callbacks import GenerationEvalCallback
from hf_calib.data import TaskTemplate, encode_prompt, task_dataset, with_context
from hf_calib.eval import (
    DomainModel,
    GenerationTask,
    LLMJudge,
    domain_report,
    evaluate_domains,
    evaluate_generation,
    format_domain_table,
    generate_texts,
    rouge_l,
)
from hf_calib.eval.generation import generate_from_ids

PROMPTS = ["the cat sat on", "red", "big small tree house river stone", "dog ran"]
REFERENCES = ["the mat", "blue", "bird fish", "on the mat"]


@pytest.fixture(scope="module")
def tok():
    return _make_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return _llama(len(tok), seed=1)


def _one_by_one(model, tok, prompts, max_new_tokens):
    """Reference: each prompt alone (no padding), greedy, decoded the same way."""
    out = []
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(tok, prompt, chat=False)])
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        assert gen.shape[1] - ids.shape[1] <= max_new_tokens
        out.append(tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return out


def test_batched_left_padded_generation_matches_unbatched(model, tok):
    expected = _one_by_one(model, tok, PROMPTS, max_new_tokens=6)
    got = generate_texts(model, tok, PROMPTS, max_new_tokens=6, batch_size=3, show_progress=False)
    assert got == expected
    assert any(g for g in got)  # the model did write something
    model.train()
    generate_texts(model, tok, PROMPTS[:1], max_new_tokens=1, show_progress=False)
    assert model.training  # the train/eval flag is restored
    model.eval()


def test_generation_input_errors(model, tok):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_texts(model, tok, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size"):
        generate_texts(model, tok, PROMPTS, batch_size=0)
    with pytest.raises(TypeError, match="list of strings"):
        generate_texts(model, tok, "one prompt")
    with pytest.raises(ValueError, match="at least one token"):
        generate_from_ids(model, tok, [[]])


def test_evaluate_generation_scores_the_generations(model, tok):
    task = GenerationTask("target", PROMPTS, REFERENCES, metrics=("rougeL", "exact_match"), max_samples=3)
    scores = evaluate_generation(model, tok, task, max_new_tokens=5, show_progress=False)
    replies = _one_by_one(model, tok, PROMPTS[:3], max_new_tokens=5)
    assert task.last_generations == replies
    assert scores["gen/target/rougeL"] == pytest.approx(rouge_l(replies, REFERENCES[:3]))
    assert set(scores) == {"gen/target/rougeL", "gen/target/exact_match"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "a/b"}, ValueError, "without '/'"),
        ({"references": REFERENCES[:2]}, ValueError, "equal length"),
        ({"prompts": "x"}, TypeError, "lists of strings"),
        ({"metrics": ("meteor",)}, ValueError, "unknown metrics"),
        ({"max_samples": 0}, ValueError, "max_samples"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
    ],
)
def test_generation_task_validation(kwargs, error, match):
    args = {"name": "t", "prompts": PROMPTS, "references": REFERENCES, **kwargs}
    with pytest.raises(error, match=match):
        GenerationTask(**args)


def _trainer(tmp_path, model, tok, trainer_cls=None):
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    rows = Dataset.from_dict({"q": PROMPTS, "a": REFERENCES})
    data = task_dataset(rows, TaskTemplate("{q}", " {a}"), tok)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True, disable_tqdm=True
    )
    cls = trainer_cls or Trainer
    return cls(
        model=model,
        args=args,
        eval_dataset=data,
        processing_class=tok,
        data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100),
    )


@pytest.mark.parametrize("calibrated", [False, True])
def test_callback_logs_into_log_history(tmp_path, model, tok, calibrated):
    from hf_calib.trainer import CalibratedTrainer

    trainer = _trainer(tmp_path, model, tok, CalibratedTrainer if calibrated else None)
    target = GenerationTask("target", PROMPTS, REFERENCES, metrics=("rougeL", "bleu"))
    general = GenerationTask(
        "general", PROMPTS[::-1], REFERENCES[::-1], max_samples=2, judge=LLMJudge(lambda p: "6,8", show_progress=False)
    )
    callback = GenerationEvalCallback([target, general], trainer=trainer, max_new_tokens=4, show_progress=False)
    trainer.add_callback(callback)
    metrics = trainer.evaluate()
    expected_target = evaluate_generation(model, tok, target, max_new_tokens=4, show_progress=False)
    keys = {f"eval_{k}" for k in expected_target} | {
        "eval_gen/general/rougeL",
        "eval_gen/general/judge_response",
        "eval_gen/general/judge_ratio",
        "eval_gen/general/judge_missing",
    }
    assert keys <= set(metrics)  # returned by evaluate() ...
    logged = [e for e in trainer.state.log_history if "eval_gen/target/rougeL" in e]
    assert len(logged) == 1 and keys <= set(logged[0])  # ... and logged once
    assert logged[0]["eval_gen/target/rougeL"] == pytest.approx(expected_target["gen/target/rougeL"])
    assert logged[0]["eval_gen/general/judge_ratio"] == pytest.approx(6 / 8)
    assert logged[0]["eval_gen/general/judge_n"] == 2
    assert callback.last_metrics == {k: v for k, v in logged[0].items() if k.startswith("eval_gen/")}
    trainer.evaluate(metric_key_prefix="test")
    assert any("test_gen/target/bleu" in e for e in trainer.state.log_history)


def test_callback_validation(tmp_path, model, tok):
    trainer = _trainer(tmp_path, model, tok)
    task = GenerationTask("t", PROMPTS, REFERENCES)
    with pytest.raises(ValueError, match="share a name"):
        GenerationEvalCallback([task, task], trainer=trainer)
    with pytest.raises(ValueError, match="non-empty list"):
        GenerationEvalCallback([], trainer=trainer)
    with pytest.raises(ValueError, match="trainer must be"):
        GenerationEvalCallback(task, trainer=None)
    trainer.processing_class = None
    with pytest.raises(ValueError, match="tokenizer="):
        GenerationEvalCallback(task, trainer=trainer)


# ---- in-domain vs out-of-domain --------------------------------------------------------------------

TEMPLATE = TaskTemplate("{text}\nAnswer:", " {label}", verbalizers={"label": ["A", "B"]})


def _reviews(seed: int, n: int = 6) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    words = "the cat dog sat ran on mat red blue big small tree house".split()
    texts = [" ".join(words[i] for i in torch.randint(len(words), (5,), generator=g).tolist()) for _ in range(n)]
    return Dataset.from_dict({"text": texts, "label": torch.randint(2, (n,), generator=g).tolist()})


def _accuracy_reference(model, tok, data, demos=()):
    """Each prompt alone: argmax of the last position's logits over the tokens " A" / " B"."""
    context = "\n\n".join("".join(TEMPLATE.render(r)) for r in demos)
    classes = [tok(" A", add_special_tokens=False)["input_ids"][0], tok(" B", add_special_tokens=False)["input_ids"][0]]
    hits = 0
    for row in data:
        ids = torch.tensor([encode_prompt(tok, with_context(context, TEMPLATE.render(row)[0]), chat=False)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1, classes]
        hits += int(logits.argmax()) == row["label"]
    return hits / len(data)


def test_evaluate_domains_classification_matches_unbatched(model, tok):
    sets = {"in": _reviews(0), "out": _reviews(1, n=5)}
    demos = [{"text": "big red tree", "label": 1}]
    for shots in ((), demos):
        scores = evaluate_domains(model, tok, sets, TEMPLATE, demonstrations=shots, batch_size=4, show_progress=False)
        assert scores == {k: pytest.approx(_accuracy_reference(model, tok, v, shots)) for k, v in sets.items()}
    limited = evaluate_domains(model, tok, sets, TEMPLATE, max_examples=2, show_progress=False)
    assert limited["in"] == pytest.approx(_accuracy_reference(model, tok, sets["in"].select(range(2))))


def test_evaluate_domains_generation_is_rouge_l(model, tok):
    sets = {"a": Dataset.from_dict({"q": PROMPTS, "a": REFERENCES})}
    template = TaskTemplate("{q}", " {a}")
    scores = evaluate_domains(model, tok, sets, template, task="generation", max_new_tokens=5, show_progress=False)
    replies = _one_by_one(model, tok, PROMPTS, max_new_tokens=5)
    assert scores["a"] == pytest.approx(rouge_l(replies, REFERENCES))


def test_domain_report_table(model, tok, capsys):
    sets = {"in": _reviews(0), "out1": _reviews(1), "out2": _reviews(2)}
    other = _llama(len(tok), seed=7)
    report = domain_report(
        [DomainModel("FT", model, tok), DomainModel("FTICL", other, tok, demonstrations=[{"text": "red", "label": 0}])],
        sets,
        TEMPLATE,
        in_domain="in",
        show_progress=False,
    )
    printed = capsys.readouterr().out
    assert report.table() in printed
    lines = report.table().splitlines()
    assert lines[0] == "| model (accuracy) | in (in-domain) | out1 | out2 | out-of-domain mean |"
    ft = report.scores["FT"]
    assert (
        lines[2]
        == f"| FT | {ft['in']:.3f} | {ft['out1']:.3f} | {ft['out2']:.3f} | {(ft['out1'] + ft['out2']) / 2:.3f} |"
    )
    assert report.scores["FTICL"]["out1"] == pytest.approx(
        _accuracy_reference(other, tok, sets["out1"], [{"text": "red", "label": 0}])
    )


def test_format_domain_table_and_errors(model, tok):
    table = format_domain_table({"m": {"x": 0.5}, "n": {"x": 0.25, "y": 1.0}}, metric="rougeL", in_domain="x", digits=2)
    assert table.splitlines() == [
        "| model (rougeL) | x (in-domain) | y |",
        "|---|---|---|",
        "| m | 0.50 | - |",
        "| n | 0.25 | 1.00 |",
    ]
    with pytest.raises(ValueError, match="in_domain"):
        format_domain_table({"m": {"x": 1.0}}, metric="a", in_domain="z")
    with pytest.raises(ValueError, match="task must be"):
        evaluate_domains(model, tok, {"a": _reviews(0)}, TEMPLATE, task="regression")
    with pytest.raises(ValueError, match="reads columns"):
        evaluate_domains(model, tok, {"a": Dataset.from_dict({"q": ["x"]})}, TEMPLATE)
    with pytest.raises(ValueError, match="distinct tokens"):
        same = TaskTemplate("{text}", " {label}", verbalizers={"label": ["Answer yes", "Answer no"]})
        evaluate_domains(model, tok, {"a": _reviews(0)}, same, show_progress=False)
    with pytest.raises(ValueError, match="share a name"):
        domain_report([DomainModel("a", model, tok)] * 2, {"a": _reviews(0)}, TEMPLATE)
