"""Where the callbacks' images and progress bars go.

* The token-level reliability diagram reaches every image-taking ``report_to`` integration: MLflow (a local
  file store, read back with ``MlflowClient``), W&B (an offline run, read back from its files) and
  TensorBoard (a writer of the callback's own; the trainer's writer is checked in
  ``test_token_calibration.py``), plus the PNG in ``output_dir``.
* An integration whose package is missing, that has no active run or that fails is skipped with one
  warning; other processes than the main one send nothing.
* The progress bars of the generation and multiple-choice callbacks honour ``disable_tqdm`` and are drawn
  on the main process only.
"""

from __future__ import annotations

import io
import logging
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerControl, TrainerState, TrainingArguments

from hf_calib.callbacks import GenerationEvalCallback, MultipleChoiceCalibrationCallback, ReliabilityDiagramCallback
from hf_calib.callbacks._images import ImageLogger
from hf_calib.eval import GenerationTask, LLMJudge, MultipleChoiceCalibration
from hf_calib.loss import token_calibration_metrics
from hf_calib.trainer import CalibratedTrainer

PNG = b"\x89PNG\r\n\x1a\n"
VOCAB, SEQ = 64, 8
KEY = "eval_token_reliability_diagram"


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config)


class Rows(torch.utils.data.Dataset):
    """``n`` random sequences; the first two positions of each are not supervised."""

    def __init__(self, n: int = 8, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        labels[:2] = -100
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": labels}


def train_args(path, report_to, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(path),
        report_to=report_to,
        use_cpu=True,
        save_strategy="no",
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=2,
        eval_strategy="steps",
        eval_steps=1,
        logging_steps=1,
        disable_tqdm=True,
    )
    return TrainingArguments(**(kwargs | overrides))


def train_calibrated(path, report_to) -> CalibratedTrainer:
    """Two training steps with an evaluation after each: diagrams at global steps 1 and 2."""
    pytest.importorskip("matplotlib", reason="matplotlib draws the diagrams (pip install 'hf-calib[plots]')")
    data = Rows()
    trainer = CalibratedTrainer(
        model=tiny_llama(), args=train_args(path, report_to), train_dataset=data, eval_dataset=data
    )
    trainer.train()
    return trainer


def assert_png(data: bytes) -> tuple[int, int]:
    """``data`` is a PNG that decodes; its (width, height)."""
    from PIL import Image

    assert data[:8] == PNG
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


# ---- MLflow ----------------------------------------------------------------------------------
def test_mlflow_run_holds_the_diagrams(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="mlflow (or mlflow-skinny) is not installed")
    from mlflow.tracking import MlflowClient

    uri = "file:" + str(tmp_path / "mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # read by mlflow and by transformers' MLflowCallback
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow >= 3.x refuses the file store otherwise
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hf_calib_images")
    assert mlflow.active_run() is None
    train_calibrated(tmp_path / "out", ["mlflow"])
    assert mlflow.active_run() is None  # MLflowCallback ended the run it started

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("hf_calib_images")
    (run,) = client.search_runs([experiment.experiment_id])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval_token_ece")]
    assert steps == [1, 2]  # the metrics of the same run
    pngs = sorted(
        (a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")),
        key=lambda p: int(p.split("+step+")[1].split("+")[0]),
    )
    assert [p.split("/")[-1].split("+")[:3] for p in pngs] == [[KEY, "step", "1"], [KEY, "step", "2"]]
    for path in pngs:
        local = client.download_artifacts(run.info.run_id, path, dst_path=str(tmp_path / "download"))
        with open(local, "rb") as file:
            width, height = assert_png(file.read())
        assert width > 100 and height > 100
    assert sorted(p.name for p in (tmp_path / "out" / "calibration").iterdir()) == [
        "eval_token_step1.png",
        "eval_token_step2.png",
    ]


# ---- W&B -------------------------------------------------------------------------------------
def test_wandb_offline_run_holds_the_diagrams(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "hf_calib_images")
    assert wandb.run is None
    try:
        train_calibrated(tmp_path / "out", ["wandb"])
        run_dir = wandb.run.dir
    finally:
        if wandb.run is not None:
            wandb.finish()
    (offline,) = (tmp_path / "wandb").glob("offline-run-*")  # one run: the one WandbCallback started
    assert str(offline) in run_dir
    images = sorted((offline / "files" / "media" / "images" / "eval").glob("token_reliability_diagram_*.png"))
    assert len(images) == 2  # one per evaluation
    for image in images:
        width, height = assert_png(image.read_bytes())
        assert width > 100 and height > 100


# ---- TensorBoard (the callback's own writer) -------------------------------------------------
def test_tensorboard_image_without_trainer_writer(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    pytest.importorskip("matplotlib", reason="matplotlib draws the diagrams (pip install 'hf-calib[plots]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logdir))
    data = Rows()
    pair = token_calibration_metrics()
    preprocess, compute = pair
    args = train_args(tmp_path / "out", ["tensorboard"])
    trainer = Trainer(
        model=tiny_llama(),
        args=args,
        eval_dataset=data,
        preprocess_logits_for_metrics=preprocess,
        compute_metrics=compute,
    )
    own = ReliabilityDiagramCallback(pair)  # no trainer: a writer of its own
    quiet = ReliabilityDiagramCallback(pair, tensorboard=False, folder="quiet")
    trainer.add_callback(own)
    trainer.add_callback(quiet)
    trainer.evaluate()
    own.on_train_end(args, trainer.state, TrainerControl())  # closes its writer
    events = EventAccumulator(str(logdir), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("eval/token_reliability_diagram")
    assert [i.step for i in images] == [0]  # once: the tensorboard=False callback logged none
    assert images[0].encoded_image_string[:8] == PNG and images[0].width > 100
    assert [p.name for p in own.written] == [p.name for p in quiet.written] == ["eval_token_step0.png"]


# ---- skips and failures ----------------------------------------------------------------------
def fake_args(tmp_path, report_to) -> SimpleNamespace:
    return SimpleNamespace(report_to=report_to, output_dir=str(tmp_path))


IMAGE = np.zeros((12, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["mlflow", "wandb", "tensorboard"])
def test_missing_package_is_skipped_with_one_warning(tmp_path, monkeypatch, caplog, name):
    module = {"tensorboard": "torch.utils.tensorboard"}.get(name, name)
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    images = ImageLogger(what="the diagram")
    with caplog.at_level(logging.WARNING, logger="hf_calib.callbacks._images"):
        for _ in range(3):
            assert images.log(fake_args(tmp_path, [name]), TrainerState(global_step=1), KEY, IMAGE) == []
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and f"not logged to {name}" in warnings[0] and "not installed" in warnings[0]


def test_no_active_run_is_skipped_with_one_warning(tmp_path, monkeypatch, caplog):
    fake_mlflow = SimpleNamespace(active_run=lambda: None, log_image=pytest.fail)
    fake_wandb = SimpleNamespace(run=None, Image=pytest.fail)
    monkeypatch.setitem(sys.modules, "mlflow", fake_mlflow)
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    images = ImageLogger()
    with caplog.at_level(logging.WARNING, logger="hf_calib.callbacks._images"):
        for _ in range(2):
            assert images.log(fake_args(tmp_path, ["mlflow", "wandb"]), TrainerState(), KEY, IMAGE) == []
    warnings = sorted(r.getMessage() for r in caplog.records)
    assert len(warnings) == 2
    assert "no active MLflow run" in warnings[0] and "no active W&B run" in warnings[1]


def test_failing_integration_does_not_stop_the_others(tmp_path, monkeypatch, caplog):
    logged = []

    def broken(*args, **kwargs):
        raise RuntimeError("server unreachable")

    class Run:
        def log(self, row):
            logged.append(row)

    fake_mlflow = SimpleNamespace(active_run=lambda: object(), log_image=broken)
    fake_wandb = SimpleNamespace(run=Run(), Image=lambda image: ("image", image.shape))
    monkeypatch.setitem(sys.modules, "mlflow", fake_mlflow)
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    images = ImageLogger()
    with caplog.at_level(logging.WARNING, logger="hf_calib.callbacks._images"):
        sent = images.log(fake_args(tmp_path, ["mlflow", "wandb"]), TrainerState(global_step=7), KEY, IMAGE)
    assert sent == ["wandb"]
    assert logged == [{"eval/token_reliability_diagram": ("image", (12, 16, 3)), "train/global_step": 7}]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "mlflow" in warning and "RuntimeError: server unreachable" in warning


def test_other_processes_send_nothing(tmp_path, monkeypatch):
    calls = []
    fake_wandb = SimpleNamespace(run=SimpleNamespace(log=calls.append), Image=lambda image: image)
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    state = TrainerState(global_step=3, is_world_process_zero=False)
    assert ImageLogger().log(fake_args(tmp_path, ["wandb", "tensorboard"]), state, KEY, IMAGE) == []
    assert calls == [] and not (tmp_path / "runs").exists()


# ---- progress bars ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    from test_multiple_choice import _make_tokenizer

    return _make_tokenizer()


@pytest.fixture(scope="module")
def small_model(tok):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config).eval()


def fake_trainer(model, tok) -> SimpleNamespace:
    """What the callbacks use of a Trainer: its model, tokenizer and ``log``."""
    return SimpleNamespace(model=model, processing_class=tok, log=lambda logs: None)


def bar_output(capsys, callback, tmp_path, *, disable_tqdm: bool, main: bool) -> str:
    """stderr of one ``on_evaluate`` call."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=disable_tqdm)
    state = TrainerState(global_step=1, is_world_process_zero=main)
    capsys.readouterr()
    callback.on_evaluate(args, state, TrainerControl(), metrics={"eval_runtime": 0.1})
    assert callback.last_metrics  # it did evaluate
    return capsys.readouterr().err


def test_generation_callback_bars_honour_disable_tqdm_and_main_process(tmp_path, capsys, tok, small_model):
    judge = LLMJudge(small_model, tok, max_new_tokens=2)  # a model judge draws a bar of its own
    task = GenerationTask("t", ["the cat sat on", "red"], ["the mat", "blue"], judge=judge, max_new_tokens=2)
    callback = GenerationEvalCallback([task], trainer=fake_trainer(small_model, tok), max_new_tokens=2)
    shown = bar_output(capsys, callback, tmp_path, disable_tqdm=False, main=True)
    assert "generating (t)" in shown and "judging" in shown  # the bars exist, so their absence below counts
    for disable_tqdm, main in ((True, True), (False, False)):
        err = bar_output(capsys, callback, tmp_path, disable_tqdm=disable_tqdm, main=main)
        assert "generating" not in err and "judging" not in err and "%|" not in err
    assert judge.show_progress  # the caller's judge keeps its own setting


def test_multiple_choice_callback_bars_honour_disable_tqdm_and_main_process(tmp_path, capsys, tok, small_model):
    from test_multiple_choice import _questions

    evaluator = MultipleChoiceCalibration(_questions(6), tokenizer=tok, batch_size=4, show_progress=True)
    callback = MultipleChoiceCalibrationCallback(evaluator, trainer=fake_trainer(small_model, tok))
    assert "MC letters" in bar_output(capsys, callback, tmp_path, disable_tqdm=False, main=True)
    for disable_tqdm, main in ((True, True), (False, False)):
        err = bar_output(capsys, callback, tmp_path, disable_tqdm=disable_tqdm, main=main)
        assert "MC letters" not in err and "%|" not in err
    assert evaluator.show_progress  # unchanged for direct evaluate() calls
