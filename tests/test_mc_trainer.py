"""MultipleChoiceCalibration at each Trainer evaluation: CalibratedTrainer(multiple_choice=...) and the callback.

The reference is the evaluator run directly on an independent copy of the model (its numbers are checked
against hf_calib.metrics / F.cross_entropy in test_multiple_choice.py); here we check that the trainer
reports exactly those values, under the right keys, in the returned dict, log_history, TensorBoard and
best-model selection.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_multiple_choice import _llama, _make_tokenizer, _questions
from transformers import Trainer, TrainingArguments

from hf_calib.callbacks import MultipleChoiceCalibrationCallback
from hf_calib.eval import MultipleChoiceCalibration
from hf_calib.trainer import CalibratedTrainer

SEQ = 12


@pytest.fixture(scope="module")
def tok():
    return _make_tokenizer()


class Rows(torch.utils.data.Dataset):
    def __init__(self, vocab: int, n: int = 8, seed: int = 3):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(3, vocab, (n, SEQ), generator=g)
        self.rows = [{"input_ids": r, "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": r} for r in ids]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def evaluators(tok=None) -> list[MultipleChoiceCalibration]:
    rows = _questions()
    return [
        MultipleChoiceCalibration(rows, tokenizer=tok, batch_size=6, show_progress=False),
        MultipleChoiceCalibration(rows[:9], scoring="cloze", prefix="cloze", batch_size=8, show_progress=False),
    ]


def direct(model, tok, evs) -> dict[str, float]:
    out: dict[str, float] = {}
    for ev in evs:
        out.update(ev.evaluate(copy.deepcopy(model), tok))
    return out


def make_args(path, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(path),
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        disable_tqdm=True,
    )
    return TrainingArguments(**(kwargs | overrides))


def train_args(path, **overrides) -> TrainingArguments:
    kwargs = dict(
        max_steps=3,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        logging_steps=1,
        learning_rate=2e-2,
        load_best_model_at_end=True,
        metric_for_best_model="mc/macro/nll",
        greater_is_better=False,
    )
    return make_args(path, **(kwargs | overrides))


def assert_same(got: dict, want: dict, prefix: str = "eval_") -> None:
    assert len(want) == 2 * 6 * 5  # 2 evaluators x 6 metrics x (3 tasks + macro + micro)
    for key, value in want.items():
        assert got[prefix + key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_calibrated_trainer_evaluate_matches_direct_evaluation(tmp_path, tok):
    model = _llama(len(tok))
    evs = evaluators()
    want = direct(model, tok, evs)
    assert {"mc/macro/ece", "mc/micro/brier", "cloze/gamma/nll", "mc/alpha_task/accuracy"} <= want.keys()
    data = Rows(len(tok))
    trainer = CalibratedTrainer(
        model=model, args=make_args(tmp_path), eval_dataset=data, processing_class=tok, multiple_choice=evs
    )
    metrics = trainer.evaluate()
    assert_same(metrics, want)
    assert "eval_loss" in metrics and "eval_token_ece" in metrics
    entry = trainer.state.log_history[-1]  # Trainer's own evaluation entry, not a separate one
    assert "eval_loss" in entry
    assert_same(entry, want)
    # Other prefixes follow metric_key_prefix; predict() does not run the questions.
    assert_same(trainer.evaluate(metric_key_prefix="val"), want, prefix="val_")
    assert not [k for k in trainer.predict(data).metrics if "mc/" in k or "cloze/" in k]


def test_dict_of_eval_datasets_runs_once(tmp_path, tok, monkeypatch):
    model = _llama(len(tok))
    evs = evaluators(tok)  # the evaluator's own tokenizer: the trainer needs none
    calls = []
    original = MultipleChoiceCalibration.evaluate
    monkeypatch.setattr(
        MultipleChoiceCalibration, "evaluate", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    want = direct(model, tok, evs)
    calls.clear()
    data = {"a": Rows(len(tok), n=4), "b": Rows(len(tok), n=5, seed=4)}
    trainer = CalibratedTrainer(model=model, args=make_args(tmp_path), eval_dataset=data, multiple_choice=evs[0])
    metrics = trainer.evaluate()
    assert len(calls) == 1 and "eval_a_loss" in metrics and "eval_b_loss" in metrics
    assert {k: v for k, v in metrics.items() if "mc/" in k} == pytest.approx(
        {f"eval_{k}": v for k, v in want.items() if k.startswith("mc/")}
    )


def test_training_tensorboard_and_best_model(tmp_path, tok, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logdir))
    model = _llama(len(tok))
    data = Rows(len(tok))
    args = train_args(tmp_path / "out", report_to=["tensorboard"])
    trainer = CalibratedTrainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=data,
        processing_class=tok,
        multiple_choice=evaluators(),
    )
    trainer.train()
    history = [(h["step"], h["eval_mc/macro/nll"]) for h in trainer.state.log_history if "eval_mc/macro/nll" in h]
    assert [s for s, _ in history] == [1, 2, 3] and len({round(v, 9) for _, v in history}) == 3
    assert all("eval_loss" in h for h in trainer.state.log_history if "eval_mc/macro/nll" in h)
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    for key in ("mc/macro/ece", "mc/micro/mce", "mc/gamma/brier", "cloze/macro/accuracy", "mc/macro/nll"):
        assert f"eval/{key}" in tags, key
    scalars = events.Scalars("eval/mc/macro/nll")
    assert [e.step for e in scalars] == [s for s, _ in history]
    assert [e.value for e in scalars] == pytest.approx([v for _, v in history], rel=1e-6)
    best_step, best = min(history, key=lambda item: item[1])
    assert trainer.state.best_metric == pytest.approx(best)
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}")
    # The loaded model is the best checkpoint's: evaluating it again gives the best value, = direct scoring.
    assert trainer.evaluate()["eval_mc/macro/nll"] == pytest.approx(best, rel=1e-6)
    assert_same(trainer.evaluate(), direct(trainer.model, tok, evaluators()))


def test_plain_trainer_callback_gives_the_same_values(tmp_path, tok, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logdir))
    data = Rows(len(tok))
    model = _llama(len(tok))
    want = direct(model, tok, evaluators())
    trainer = Trainer(model=model, args=make_args(tmp_path / "e"), eval_dataset=data, processing_class=tok)
    callback = MultipleChoiceCalibrationCallback(evaluators(), trainer=trainer)
    trainer.add_callback(callback)
    metrics = trainer.evaluate()
    assert_same(metrics, want)
    assert callback.last_metrics == {k: v for k, v in metrics.items() if "mc/" in k or "cloze/" in k}
    own, extra = trainer.state.log_history[-2:]  # Trainer's entry, then the callback's
    assert "eval_loss" in own and "eval_mc/macro/ece" not in own
    assert "eval_loss" not in extra and extra["step"] == own["step"]
    assert_same(extra, want)

    # Training: best-model selection and TensorBoard.
    trainer = Trainer(
        model=_llama(len(tok)),
        args=train_args(tmp_path / "out", report_to=["tensorboard"], metric_for_best_model="eval_mc/micro/ece"),
        train_dataset=data,
        eval_dataset=data,
        processing_class=tok,
    )
    trainer.add_callback(MultipleChoiceCalibrationCallback(evaluators()[0], trainer=trainer))  # letter only
    trainer.train()
    history = [(h["step"], h["eval_mc/micro/ece"]) for h in trainer.state.log_history if "eval_mc/micro/ece" in h]
    assert [s for s, _ in history] == [1, 2, 3]
    best_step, best = min(history, key=lambda item: item[1])
    assert trainer.state.best_metric == pytest.approx(best)
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}")
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    scalars = events.Scalars("eval/mc/micro/ece")
    assert [e.step for e in scalars] == [s for s, _ in history]
    assert [e.value for e in scalars] == pytest.approx([v for _, v in history], rel=1e-6)
    assert "eval/mc/alpha_task/nll" in events.Tags()["scalars"]
    assert math.isfinite(best)


def test_bad_arguments_raise_value_error(tmp_path, tok):
    model = _llama(len(tok))
    args = make_args(tmp_path)
    with pytest.raises(ValueError, match="multiple_choice must be"):
        CalibratedTrainer(model=model, args=args, processing_class=tok, multiple_choice=[object()])
    same = [evaluators()[0], evaluators()[0]]
    with pytest.raises(ValueError, match="share prefix='mc'"):
        CalibratedTrainer(model=model, args=args, processing_class=tok, multiple_choice=same)
    with pytest.raises(ValueError, match="processing_class"):
        CalibratedTrainer(model=model, args=args, multiple_choice=evaluators())
    with pytest.raises(ValueError, match="evaluators must"):
        MultipleChoiceCalibrationCallback([], trainer=Trainer(model=model, args=args))
    with pytest.raises(ValueError, match="trainer must"):
        MultipleChoiceCalibrationCallback(evaluators(tok), trainer=None)
