"""Per-seed report math (mean, SE), ROUGE-L + BLEU domain reports, cross-task tables, the chatterbot loaders,
and a tiny end-to-end run of examples/fticl_generation.py."""

from __future__ import annotations

import argparse
import gc
import json
import math
from pathlib import Path

import numpy as np
import pytest
from _launch import load_script
from datasets import Dataset
from test_generation_eval import _one_by_one
from test_multiple_choice import _llama, _make_tokenizer

from hf_calib import assets
from hf_calib.data import TaskTemplate
from hf_calib.eval import (
    CrossTaskModel,
    CrossTaskReport,
    DomainModel,
    EvalTask,
    bleu,
    cross_task_report,
    domain_report,
    domain_scores,
    evaluate_cross_task,
    evaluate_domains,
    format_domain_table,
    rouge_l,
)
from hf_calib.eval.reference import rouge_l_scores
from hf_calib.eval.report_tables import format_cell, mean_se

REPO = Path(__file__).resolve().parents[1]
QA = TaskTemplate("Q: {q}\nA:", " {a}")
ECHO = TaskTemplate("Say: {text}\n", "{reply}")
QA_ROWS = {"q": ["the cat sat on", "red", "big small tree", "dog ran"], "a": ["the mat", "blue", "bird fish", "on"]}
ECHO_ROWS = {"text": ["river stone", "the dog", "small red"], "reply": ["stone river", "dog the", "red small"]}


@pytest.fixture(scope="module")
def tok():
    return _make_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return _llama(len(tok), seed=1)


def _se(values):
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


# ---------------------------------------------------------------------------------------------
# Mean and standard error over seeds
# ---------------------------------------------------------------------------------------------


def test_mean_se_matches_numpy_and_edge_cases():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7):
        values = rng.normal(size=n).tolist()
        mean, se = mean_se(values)
        assert mean == pytest.approx(np.mean(values)) and se == pytest.approx(_se(values))
    assert mean_se([0.25, 0.25, 0.25]) == (0.25, 0.0)  # constant: no spread
    mean, se = mean_se([0.4])
    assert mean == 0.4 and math.isnan(se)  # one seed: nothing to estimate the SE from
    with pytest.raises(ValueError, match="empty"):
        mean_se([])
    assert format_cell([0.5]) == "0.500"
    assert format_cell([0.1, 0.3], digits=2) == f"0.20 ± {_se([0.1, 0.3]):.2f}"


def test_domain_table_with_seeds_matches_numpy():
    seeds = {"FT": {"in": [0.5, 0.7, 0.6], "a": [0.1, 0.2, 0.3], "b": [0.3, 0.2, 0.7]}, "base": {"in": 0.4, "a": 0.2}}
    lines = format_domain_table(seeds, metric="rougeL", in_domain="in").splitlines()
    assert lines[0] == "| model (rougeL; mean ± SE over 3 seeds) | in (in-domain) | a | b | out-of-domain mean |"
    ood = (np.array(seeds["FT"]["a"]) + np.array(seeds["FT"]["b"])) / 2  # per seed, then over seeds
    cells = [f"{np.mean(v):.3f} ± {_se(v):.3f}" for v in (seeds["FT"]["in"], seeds["FT"]["a"], seeds["FT"]["b"], ood)]
    assert lines[2] == "| FT | " + " | ".join(cells) + " |"
    assert lines[3] == "| base | 0.400 | 0.200 | - | - |"
    # Plain floats keep the old layout.
    assert format_domain_table({"m": {"x": 0.5}}, metric="accuracy").splitlines()[0] == "| model (accuracy) | x |"


# ---------------------------------------------------------------------------------------------
# Generation domain reports: ROUGE-L and BLEU, seeds
# ---------------------------------------------------------------------------------------------


def test_domain_scores_generation_reports_rouge_l_and_bleu(model, tok):
    sets = {"qa": Dataset.from_dict(QA_ROWS)}
    replies = {}
    scores = domain_scores(
        model, tok, sets, QA, task="generation", max_new_tokens=4, show_progress=False, replies=replies
    )
    prompts = [QA.render(r)[0] for r in sets["qa"]]
    expected = _one_by_one(model, tok, prompts, max_new_tokens=4)
    assert replies == {"qa": expected}
    assert scores == {
        "qa": {
            "rougeL": pytest.approx(rouge_l(expected, QA_ROWS["a"])),
            "bleu": pytest.approx(bleu(expected, QA_ROWS["a"])),
        }
    }
    only = evaluate_domains(model, tok, sets, QA, task="generation", max_new_tokens=4, show_progress=False)
    assert only == {"qa": scores["qa"]["rougeL"]}  # evaluate_domains keeps the headline metric
    bleu_only = evaluate_domains(model, tok, sets, QA, task="generation", metrics=["bleu"], max_new_tokens=4)
    assert bleu_only == {"qa": scores["qa"]["bleu"]}
    with pytest.raises(ValueError, match="metrics for task='generation'"):
        domain_scores(model, tok, sets, QA, task="generation", metrics=["accuracy"])


def test_domain_report_over_seeds(tok):
    sets = {
        "in": Dataset.from_dict(QA_ROWS),
        "out": Dataset.from_dict({"q": ["tree", "blue sky"], "a": ["leaf", "sky"]}),
    }
    models = {s: _llama(len(tok), seed=s) for s in (3, 4, 5)}
    runs = [[DomainModel("FT", models[s], tok)] for s in models]
    kwargs = {"task": "generation", "max_new_tokens": 3, "show_progress": False}
    report = domain_report(runs, sets, QA, in_domain="in", print_table=False, **kwargs)
    per_seed = [domain_scores(m, tok, sets, QA, **kwargs) for m in models.values()]
    assert report.metrics == ("rougeL", "bleu") and report.metric == "rougeL"
    for d in sets:
        for metric in report.metrics:
            values = [p[d][metric] for p in per_seed]
            assert report.seed_scores["FT"][d][metric] == pytest.approx(values)
            summary = report.to_dict()["scores"]["FT"][d][metric]
            assert summary["mean"] == pytest.approx(np.mean(values)) and summary["se"] == pytest.approx(_se(values))
        assert report.scores["FT"][d] == pytest.approx(np.mean([p[d]["rougeL"] for p in per_seed]))
    assert "mean ± SE over 3 seeds" in report.table(metric="bleu")
    assert report.tables().count("| model (") == 2
    json.dumps(report.to_dict())
    with pytest.raises(ValueError, match="same model names"):
        domain_report([[DomainModel("a", models[3], tok)], [DomainModel("b", models[4], tok)]], sets, QA, **kwargs)


# ---------------------------------------------------------------------------------------------
# Cross-task report
# ---------------------------------------------------------------------------------------------


def _filled_report():
    report = CrossTaskReport(tasks=["A", "B"], metrics=("rougeL", "bleu"))
    values = {
        ("base", None): {0: {"A": 0.2, "B": 0.1}},
        ("FT", "A"): {0: {"A": 0.6, "B": 0.15}, 1: {"A": 0.5, "B": 0.05}, 2: {"A": 0.7, "B": 0.1}},
        ("FT", "B"): {0: {"A": 0.3, "B": 0.4}, 1: {"A": 0.1, "B": 0.6}, 2: {"A": 0.2, "B": 0.5}},
    }
    for (method, trained_on), by_seed in values.items():
        for seed, cells in by_seed.items():
            report.add(method, trained_on, {t: {"rougeL": v, "bleu": 100 * v} for t, v in cells.items()}, seed)
    return report, values


def test_cross_task_table_layout_and_summary_math():
    report, values = _filled_report()
    lines = report.table().splitlines()
    ft_a = [values[("FT", "A")][s] for s in range(3)]
    ft_b = [values[("FT", "B")][s] for s in range(3)]

    def cell(rows, task):
        v = [r[task] for r in rows]
        return f"{np.mean(v):.3f} ± {_se(v):.3f}"

    assert lines == [
        "| model (rougeL; mean ± SE over 3 seeds) | trained on | eval: A | eval: B |",
        "|---|---|---|---|",
        "| base | - | 0.200 | 0.100 |",
        f"| FT | A | **{cell(ft_a, 'A')}** | {cell(ft_a, 'B')} |",
        f"| FT | B | {cell(ft_b, 'A')} | **{cell(ft_b, 'B')}** |",
    ]
    in_task = [(a["A"] + b["B"]) / 2 for a, b in zip(ft_a, ft_b, strict=True)]
    cross = [(a["B"] + b["A"]) / 2 for a, b in zip(ft_a, ft_b, strict=True)]
    summary = report.summary()
    assert list(summary["FT"]["in-task"].values()) == pytest.approx(in_task)
    assert list(summary["FT"]["cross-task"].values()) == pytest.approx(cross)
    assert summary["base"] == {"in-task": {0: pytest.approx(0.15)}, "cross-task": {0: pytest.approx(0.15)}}
    assert report.summary_table().splitlines()[2:] == [
        "| base | 0.150 | 0.150 | 1 |",
        f"| FT | {np.mean(in_task):.3f} ± {_se(in_task):.3f} | {np.mean(cross):.3f} ± {_se(cross):.3f} | 3 |",
    ]
    assert "eval: A" in report.table("bleu") and "| method (bleu) |" in report.markdown()
    data = json.loads(json.dumps(report.to_dict()))
    record = next(
        c for c in data["cells"] if c == {**c, "method": "FT", "trained_on": "B", "task": "A", "metric": "bleu"}
    )
    assert record["mean"] == pytest.approx(20.0) and record["se"] == pytest.approx(_se([30, 10, 20]))
    assert data["summary"]["rougeL"]["base"]["in-task"]["se"] is None  # one seed: no SE


def test_cross_task_summary_keeps_only_complete_seeds():
    report, _ = _filled_report()
    report.add("FT", "A", {"A": {"rougeL": 0.9}}, seed=3)  # seed 3 lacks FT trained on B
    assert list(report.summary()["FT"]["in-task"]) == [0, 1, 2]
    assert "| FT | A | **0.675 ± " in report.table()  # the table itself uses every seed of a cell


def test_cross_task_errors():
    report, _ = _filled_report()
    with pytest.raises(ValueError, match="trained_on='C'"):
        report.add("FT", "C", {})
    with pytest.raises(ValueError, match="task 'C'"):
        report.add("FT", "A", {"C": {"rougeL": 1.0}})
    with pytest.raises(ValueError, match="metric must be one of"):
        report.table("accuracy")
    with pytest.raises(ValueError, match="task must be one of"):
        EvalTask("x", Dataset.from_dict(QA_ROWS), QA, task="regression")


def test_evaluate_cross_task_uses_each_tasks_template_and_demonstrations(model, tok):
    qa, echo = Dataset.from_dict(QA_ROWS), Dataset.from_dict(ECHO_ROWS)
    tasks = [EvalTask("qa", qa, QA), EvalTask("echo", echo, ECHO)]
    demos = {"echo": [{"text": "a b", "reply": "b a"}]}
    kwargs = {"max_new_tokens": 3, "show_progress": False}
    scores = evaluate_cross_task(CrossTaskModel("FTICL", "qa", model, tok, demos), tasks, **kwargs)
    assert scores == {
        "qa": domain_scores(model, tok, {"qa": qa}, QA, task="generation", **kwargs)["qa"],
        "echo": domain_scores(
            model, tok, {"echo": echo}, ECHO, task="generation", demonstrations=demos["echo"], **kwargs
        )["echo"],
    }
    other = _llama(len(tok), seed=2)
    runs = [
        [CrossTaskModel("FT", "qa", model, tok), CrossTaskModel("FT", "echo", other, tok)],
        [CrossTaskModel("FT", "qa", other, tok), CrossTaskModel("FT", "echo", model, tok)],
    ]
    report = cross_task_report(runs, tasks, print_table=False, **kwargs)
    assert report.values[("FT", "qa")]["qa"]["rougeL"] == {
        0: scores["qa"]["rougeL"],
        1: pytest.approx(domain_scores(other, tok, {"qa": qa}, QA, task="generation", **kwargs)["qa"]["rougeL"]),
    }
    with pytest.raises(ValueError, match="not evaluated"):
        evaluate_cross_task(CrossTaskModel("x", None, model, tok, {"nope": []}), tasks, **kwargs)
    with pytest.raises(ValueError, match="same \\(method, trained_on\\)"):
        cross_task_report([[runs[0][0], runs[0][0]]], tasks, **kwargs)


# ---------------------------------------------------------------------------------------------
# Chatterbot loaders
# ---------------------------------------------------------------------------------------------

TRIVIA_YML = """categories:
- trivia
conversations:
- - Who wrote Hamlet?
  - William Shakespeare
- In a game of bingo, which number is "two little ducks"?
  - '22'
- - How many legs has a spider?
  - '8'
- - Who wrote Hamlet?
  - William Shakespeare
"""
GREETINGS_YML = """categories:
- greetings
conversations:
- - Hello
  - Hi
  - How are you?
- - Hello
  - Hi
"""


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "trivia.yml").write_text(TRIVIA_YML, encoding="utf-8")
    (tmp_path / "greetings.yml").write_text(GREETINGS_YML, encoding="utf-8")
    return tmp_path


def test_trivia_and_chatterbot_loaders(corpus):
    trivia = assets.load_trivia(path=corpus)
    assert trivia.column_names == ["question", "answer"]
    # The merged entry (missing "-") is skipped, the exact duplicate dropped, quoted numbers stay strings.
    assert trivia.to_list() == [
        {"question": "Who wrote Hamlet?", "answer": "William Shakespeare"},
        {"question": "How many legs has a spider?", "answer": "8"},
    ]
    chat = assets.load_chatterbot(path=corpus)
    assert chat.column_names == ["category", "prompt", "response"]
    assert chat.to_list()[0] == {"category": "greetings", "prompt": "Hello", "response": "Hi"}
    assert len(chat) == 3 and len(assets.load_chatterbot("greetings", path=corpus)) == 1
    with pytest.raises(ValueError, match="categories must be"):
        assets.load_chatterbot(["nope"], path=corpus)
    with pytest.raises(FileNotFoundError, match="chatterbot-corpus"):
        assets.load_chatterbot(path=corpus / "missing")
    (corpus / "bad.yml").write_text("- just a list\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a chatterbot corpus file"):
        assets.load_chatterbot("bad", path=corpus)


@pytest.mark.integration
def test_real_trivia_counts():
    trivia = assets.load_trivia()
    assert len(trivia) == 260 and len(set(trivia["question"])) == 260
    assert all(a.strip() for a in trivia["answer"])
    chat = assets.load_chatterbot()
    assert len(set(chat["category"])) == 21 and sum(c == "trivia" for c in chat["category"]) == 260


# ---------------------------------------------------------------------------------------------
# The example's core function, end to end on a tiny model
# ---------------------------------------------------------------------------------------------


def test_fticl_generation_example_end_to_end(tmp_path, tok):
    example = load_script(REPO / "examples" / "fticl_generation.py")
    rows = {"question": [f"q{i} red tree" for i in range(14)], "answer": [f"a{i} blue" for i in range(14)]}
    chat = {"prompt": [f"m{i} dog" for i in range(14)], "response": [f"r{i} cat" for i in range(14)]}
    tasks = [
        example.split_task("trivia", example.TRIVIA, Dataset.from_dict(rows), 3),
        example.split_task("chat", example.CHAT, Dataset.from_dict(chat), 3),
    ]
    args = argparse.Namespace(
        seeds=[0, 1],
        train=4,
        k=1,
        max_new_tokens=2,
        eval_batch_size=4,
        batch_size=4,
        lr=1e-3,
        lora_r=2,
        epochs=1.0,
        output_dir=tmp_path,
        argv=["--tiny"],
    )
    saved = []
    gc.freeze()  # Trainer.train() ends with gc.collect(), slow over the test session's heap (2 s per model)
    try:
        results = example.run(args, tasks, load_model=lambda: (_llama(len(tok), seed=0), tok), on_update=saved.append)
    finally:
        gc.unfreeze()
    assert len(saved) == 1 + 2 * (1 + 4)  # base, then per seed: base + ICL and 4 fine-tuned models
    cells = {(c["method"], c["trained_on"], c["task"], c["metric"]): c for c in results["report"]["cells"]}
    assert len(cells) == 6 * 2 * 2  # 6 models x 2 tasks x 2 metrics
    assert cells[("base", None, "trivia", "rougeL")]["n"] == 1
    assert cells[("FTICL (k=1)", "chat", "trivia", "bleu")]["n"] == 2
    assert all(r["steps"] == 1 for r in results["training"] if "steps" in r)
    assert [len(results["replies"]["FT / chat"][s]["trivia"]) for s in ("0", "1")] == [3, 3]
    assert results["references"]["chat"] == [
        "r" + r.split("m", 1)[1].split()[0] + " cat" for r in tasks[1].eval_rows["prompt"]
    ]
    text = example.markdown(results)
    assert "| FTICL (k=1) | chat | " in text and "mean ± SE over 2 seeds" in text
    assert "| FTICL (k=1) / chat | " in text and "(seed 0; ± SE over items)" in text
    json.dumps(results)


def test_example_item_standard_errors():
    example = load_script(REPO / "examples" / "fticl_generation.py")
    replies = ["the red cat sat", "a dog", "blue sky today", "nothing", "the mat is red"]
    references = ["the cat sat", "the dog ran", "blue sky", "something", "the red mat"]
    se = example.item_se(replies, references, boot=50)
    per_item = rouge_l_scores(replies, references)
    assert se["rougeL"] == pytest.approx((np.mean(per_item), np.std(per_item, ddof=1) / np.sqrt(5)))
    assert se["bleu"][0] == pytest.approx(bleu(replies, references)) and se["bleu"][1] > 0
    same = ["the cat sat on the mat", "a dog ran in the park"]
    assert example.item_se(same, same, boot=20)["bleu"] == (pytest.approx(100.0), 0.0)  # every resample is perfect
