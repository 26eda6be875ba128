"""The specialization sweep: the data mix, the target-task scores, the report files, argument errors, end to end."""

from __future__ import annotations

import json
import math
import shlex

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from test_multiple_choice import _make_tokenizer

from hf_calib import cli
from hf_calib.eval import evaluate_domains
from hf_calib.eval.specialization import SpecializationPoint, SpecializationReport, label_scores, standard_error
from hf_calib.recipes import specialization, specialization_cli
from hf_calib.recipes.specialization import (
    SENTIMENT_TEMPLATE,
    SweepData,
    SweepSettings,
    check_n_values,
    mix_with_target,
    specialization_sweep,
)

WORDS = ["great", "awful", "fine", "boring", "lovely", "dull", "superb", "bad", "good", "poor", "moving", "flat"]
TOPICS = ["cats", "dogs", "trees", "rivers", "stones", "clouds", "birds", "fish", "roads", "cars", "ships", "books"]


#: A small chat template: each message is ``<|role|>content</s>``, then ``<|assistant|>`` opens the reply.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    """The tiny byte-level BPE tokenizer of the multiple-choice tests, with a chat template."""
    tokenizer = _make_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _tiny_llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config)


def _reviews(n: int, offset: int = 0) -> Dataset:
    return Dataset.from_list(
        [{"text": f"The film was {WORDS[(i + offset) % len(WORDS)]} {'!' * (i % 3)}", "label": (i + offset) % 2}
         for i in range(n)]
    )  # fmt: skip


def _chats(topics: list[str]) -> Dataset:
    return Dataset.from_list(
        [{"messages": [{"role": "user", "content": f"Say something about {t}."},
                       {"role": "assistant", "content": f"{t} are nice, and {t} are fine."}]} for t in topics]
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ the mix
def _rows(prefix: str, n: int) -> Dataset:
    return Dataset.from_dict({"id": [f"{prefix}{i}" for i in range(n)], "value": list(range(n))})


def test_mix_holds_all_general_rows_and_exactly_the_first_n_target_rows():
    general, target = _rows("g", 7), _rows("t", 9)
    orders = {}
    for n in (0, 1, 4, 9):
        mix = mix_with_target(general, target, n, seed=3)
        ids = mix["id"]
        assert len(ids) == 7 + n
        assert sorted(i for i in ids if i.startswith("g")) == sorted(general["id"])  # the same general part for all n
        assert sorted(i for i in ids if i.startswith("t")) == sorted(target["id"][:n])  # nested: the first n
        assert mix_with_target(general, target, n, seed=3)["id"] == ids  # deterministic
        orders[n] = ids
    assert mix_with_target(general, target, 4, seed=4)["id"] != orders[4]  # the seed shuffles


def test_mix_and_n_values_errors():
    general, target = _rows("g", 3), _rows("t", 2)
    with pytest.raises(ValueError, match="only 2 target training examples"):
        mix_with_target(general, target, 3, seed=0)
    with pytest.raises(ValueError, match="cannot be negative"):
        mix_with_target(general, target, -1, seed=0)
    with pytest.raises(ValueError, match="general is empty"):
        mix_with_target(general.select([]), target, 1, seed=0)
    with pytest.raises(ValueError, match="same columns"):
        mix_with_target(general, target.rename_column("value", "other"), 1, seed=0)
    with pytest.raises(ValueError, match="twice"):
        check_n_values([0, 5, 5], 10)
    with pytest.raises(ValueError, match="non-empty list"):
        check_n_values([], 10)
    with pytest.raises(ValueError, match="integers"):
        check_n_values([1.5], 10)
    assert check_n_values((0, 10, 3), 10) == [0, 10, 3]


def test_settings_errors():
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        SweepSettings(steps=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        SweepSettings(label_smoothing=1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        SweepSettings(learning_rate=math.inf)


# ------------------------------------------------------------------------------------------------ target scores
def _ece_reference(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # bins (b/B, (b+1)/B]
    return sum(
        (index == b).mean() * abs(correct[index == b].mean() - confidence[index == b].mean())
        for b in range(bins)
        if (index == b).any()
    )


def test_label_scores_match_unpadded_forwards_and_evaluate_domains(tok):
    from hf_calib.data import encode_prompt
    from hf_calib.eval.domain import label_token_ids

    torch.manual_seed(0)
    model = _tiny_llama(len(tok)).eval()
    rows = _reviews(11)
    got = label_scores(model, tok, rows, SENTIMENT_TEMPLATE, batch_size=4, show_progress=False)
    # Reference: one prompt at a time (no padding), softmax over the two label tokens' logits.
    classes = label_token_ids(SENTIMENT_TEMPLATE, rows[0], tok, chat=True)
    probs = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([encode_prompt(tok, SENTIMENT_TEMPLATE.render(row)[0], chat=True)])
            probs.append(model(input_ids=ids).logits[0, -1, classes].softmax(-1).numpy())
    probs = np.array(probs)
    correct = (probs.argmax(1) == np.array(rows["label"])).astype(float)
    accuracy = correct.mean()
    assert got["target_accuracy"] == pytest.approx(accuracy)
    assert got["target_accuracy_se"] == pytest.approx(math.sqrt(accuracy * (1 - accuracy) / len(rows)))
    assert got["target_ece"] == pytest.approx(_ece_reference(probs.max(1), correct, 10), abs=1e-6)
    domains = evaluate_domains(model, tok, {"t": rows}, SENTIMENT_TEMPLATE, batch_size=3, show_progress=False)
    assert got["target_accuracy"] == pytest.approx(domains["t"])  # the left-padded implementation agrees


def test_standard_error_matches_numpy():
    values = [0.1, 0.4, 0.4, 0.9, 0.0]
    assert standard_error(values) == pytest.approx(np.std(values, ddof=1) / math.sqrt(len(values)))
    assert standard_error([0.3]) == 0.0 and standard_error([]) == 0.0
    assert standard_error([0.5, 0.5, 0.5]) == 0.0


# ------------------------------------------------------------------------------------------------ report files
def _report() -> SpecializationReport:
    points = [
        SpecializationPoint("base", None, {"target_accuracy": 0.5, "target_accuracy_se": 0.05,
                                           "general_rougeL": 0.20, "token_ece": 0.03}),
        SpecializationPoint("n=0", 0, {"target_accuracy": 0.55, "general_rougeL": 0.22, "token_ece": 0.02,
                                       "mc_ece": 0.1}, {"train_seconds": 12.0, "target_rows": 0}),
        SpecializationPoint("n=10", 10, {"target_accuracy": 0.8, "general_rougeL": 0.18, "token_ece": 0.04,
                                         "mc_ece": 0.2}, {"train_seconds": 13.0, "target_rows": 10}),
    ]  # fmt: skip
    return SpecializationReport(points, settings={"command": "hf-calib specialize --n 0 10", "steps": 5})


def test_report_writes_table_json_and_plot(tmp_path):
    report = _report()
    paths = report.write(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"specialization.{s}" for s in ("json", "md", "png")
    ]
    data = json.loads(paths["json"].read_text())
    assert [p["label"] for p in data["points"]] == ["base", "n=0", "n=10"]
    assert SpecializationReport.from_dict(data).to_dict() == report.to_dict()
    lines = paths["md"].read_text().splitlines()
    assert "Command: `hf-calib specialize --n 0 10`" in lines
    rows = [line for line in lines if line.startswith("| n=10 ")]
    assert rows == ["| n=10 | 10 | 0.800 | - | 0.180 | 0.040 | 0.200 | 13 |"]  # absent metrics show as '-'
    assert "| base | - | 0.500 | 0.050 | 0.200 | 0.030 | - | - |" in lines
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure = report.plot()
    assert len(figure.axes) == 2
    assert {t.get_text() for t in figure.axes[0].texts} == {"base", "n=0", "n=10"}  # one labelled point per model
    with pytest.raises(ValueError, match="no points"):
        SpecializationReport().table()


# ------------------------------------------------------------------------------------------------ end to end
class _CountingJudge:
    """A pluggable judge: anything with score(instructions, responses, references) -> object with metrics()."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, instructions, responses, references):
        self.calls += 1
        n = len(responses)

        class Result:
            def metrics(self):
                return {"judge_response": float(sum(len(r) for r in responses) % 11), "judge_n": float(n)}

        return Result()


class _FakeMC:
    def evaluate(self, model, tokenizer, show_progress=None):
        return {"mc/macro/accuracy": 0.25, "mc/macro/ece": 0.1, "mc/micro/accuracy": 0.3}


def test_sweep_end_to_end_on_a_tiny_llama(tok, tmp_path):
    data = SweepData(_chats(TOPICS[:8]), _chats(TOPICS[8:11]), _reviews(6), _reviews(4, offset=6))
    settings = SweepSettings(steps=2, batch_size=4, max_length=200, max_new_tokens=4, exact_match_prompts=2,
                             learning_rate=1e-2, show_progress=False)  # fmt: skip
    judge = _CountingJudge()
    report = specialization_sweep(
        lambda: _tiny_llama(len(tok)), tok, data, (0, 2), settings=settings, judge=judge, mc_eval=_FakeMC(),
        output_dir=tmp_path / "runs", adapter_dir=tmp_path / "adapters", command="test",
    )  # fmt: skip
    assert [p.label for p in report.points] == ["base", "n=0", "n=2"]
    assert judge.calls == 3
    for point in report.points:
        for key in ("target_accuracy", "target_ece", "target_exact_match", "general_rougeL", "token_ece",
                    "token_nll", "general_judge_response", "mc_accuracy", "mc_ece"):  # fmt: skip
            assert math.isfinite(point.metrics[key]), (point.label, key)
        assert "mc_micro" not in " ".join(point.metrics)
    assert [p.training["mix_rows"] for p in report.points[1:]] == [8, 10]
    assert [p.training["steps"] for p in report.points[1:]] == [2, 2]
    data_json = json.loads(report.write(tmp_path / "report")["json"].read_text())
    assert [p["n"] for p in data_json["points"]] == [None, 0, 2]
    assert data_json["settings"]["command"] == "test" and data_json["settings"]["n_values"] == [0, 2]
    a0 = load_file(str(tmp_path / "adapters" / "n0" / "adapter_model.safetensors"))
    a2 = load_file(str(tmp_path / "adapters" / "n2" / "adapter_model.safetensors"))
    assert a0.keys() == a2.keys() and any("lora_B" in k for k in a0)
    assert any(not torch.equal(a0[k], a2[k]) for k in a0 if "lora_B" in k)  # different data, different adapter
    assert all(a0[k].abs().sum() > 0 for k in a0 if "lora_B" in k)  # trained (LoRA B starts at zero)


def test_sweep_argument_errors(tok):
    data = SweepData(_chats(TOPICS[:8]), _chats(TOPICS[8:10]), _reviews(3), _reviews(2))
    with pytest.raises(ValueError, match="only 3 target training examples"):
        specialization_sweep(lambda: pytest.fail("no model is loaded"), tok, data, (0, 4))
    with pytest.raises(ValueError, match="cannot be negative"):
        specialization_sweep(lambda: pytest.fail("no model is loaded"), tok, data, (-1,))
    empty = SweepData(data.general_train, data.general_eval, data.target_train, data.target_eval.select([]))
    with pytest.raises(ValueError, match="data.target_eval is empty"):
        specialization_sweep(lambda: pytest.fail("no model is loaded"), tok, empty, (0,))


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture
def no_sweep(monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail("the mistake must be reported before the sweep starts")

    monkeypatch.setattr(specialization, "specialization_sweep", fail)
    monkeypatch.setattr(specialization, "offline_sweep_data", fail)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--n", "-1"], "argument --n: expected a whole number >= 0; got -1"),
        (["--n", "ten"], "argument --n"),
        (["--n", "0", "10", "10"], "--n lists a count twice"),
        (["--n", "9000"], "--n 9000 is more than the 8330 rotten_tomatoes reviews left after --target-eval 200"),
        (["--batch-size", "64", "--general-examples", "16"], "--batch-size 64 is larger than --general-examples 16"),
        (["--steps", "0"], "argument --steps"),
        (["--lr", "nan"], "argument --lr"),
        (["--label-smoothing", "1"], "argument --label-smoothing"),
        (["--target", "yelp"], "argument --target"),
        (["--model", "minilm"], "--model 'minilm' is the offline MiniLM encoder"),
        (["--judge", "/nonexistent/judge"], "--judge '/nonexistent/judge' is not an existing folder"),
        (["--mmlu-subjects", "astrology"], "--mmlu-subjects: 'astrology' is not an MMLU subject"),
        (["--device", "toaster"], "--device"),
        (["--output-dir", "{file}"], "--output-dir"),
    ],
)
def test_cli_errors_are_one_line_before_any_work(argv, expected, tmp_path, capsys, no_sweep):
    (tmp_path / "file.txt").write_text("x")
    argv = [a.replace("{file}", str(tmp_path / "file.txt")) for a in argv]
    with pytest.raises(SystemExit) as info:
        cli.main(["specialize", *argv])
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hf-calib specialize: error: "), lines
    assert expected in lines[0]


def test_command_line_reproduces_the_arguments():
    args = cli.build_parser().parse_args(["specialize", "--n", "0", "5", "--steps", "7", "--mmlu-subjects", "a b"])
    again = cli.build_parser().parse_args(shlex.split(specialization_cli.command_line(args))[1:])
    assert vars(again) | {"output_dir": None} == vars(args) | {"output_dir": None}


def test_cli_builds_the_offline_data_and_writes_the_report(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_sweep(model_loader, tokenizer, data, n_values, **kwargs):
        seen.update(n=n_values, data=data, settings=kwargs["settings"], command=kwargs["command"])
        kwargs["output_dir"].mkdir(parents=True)  # Trainer's scratch folder: removed at the end
        return _report()

    monkeypatch.setattr(specialization, "specialization_sweep", fake_sweep)
    out = tmp_path / "spec"
    argv = ["specialize", "--n", "0", "3", "--steps", "2", "--general-examples", "8", "--general-eval", "2",
            "--target-eval", "4", "--output-dir", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["specialization.json", "specialization.md", "specialization.png"]
    assert seen["n"] == [0, 3] and seen["settings"].steps == 2
    assert [len(seen["data"].general_train), len(seen["data"].general_eval)] == [8, 2]
    assert [len(seen["data"].target_train), len(seen["data"].target_eval)] == [3, 4]
    assert seen["command"].startswith("hf-calib specialize --n 0 3 --target rotten_tomatoes")
    assert "| n=10 |" in capsys.readouterr().out
