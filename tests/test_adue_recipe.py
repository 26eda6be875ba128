"""The ``hf-calib adue`` recipe: device checks before any model loads, and the LoRA fine-tune through ``Trainer``.

The fine-tune runs on a random tiny BERT (the offline MiniLM tokenizer, the offline Rotten Tomatoes snippets);
``hf-calib adue`` runs end to end with that model in place of the offline MiniLM.
"""

from __future__ import annotations

import json
from functools import cached_property, partial

import accelerate
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from hf_calib import cli
from hf_calib.recipes import adue
from hf_calib.recipes.checks import UsageError

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
NO_MPS = pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")


def _forbidden(what: str):
    def fail(*args, **kwargs):
        pytest.fail(f"{what} was called: the device mistake must be reported before it")

    return fail


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a model or the reviews, and running the recipe, fail the test."""
    import transformers

    monkeypatch.setattr(
        transformers.AutoModelForSequenceClassification, "from_pretrained", _forbidden("from_pretrained")
    )
    for name in ("load_encoder", "review_splits", "run_encoder", "finetune_lora"):
        monkeypatch.setattr(adue, name, _forbidden(name))


@pytest.fixture
def one_fake_gpu(monkeypatch):
    """A machine with exactly one CUDA device, as far as the device check can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


BAD_DEVICES = [
    pytest.param("cuda", "CUDA is not available", marks=NO_CUDA, id="cuda-without-cuda"),
    pytest.param("cuda:0", "CUDA is not available", marks=NO_CUDA, id="cuda0-without-cuda"),
    pytest.param("mps", "MPS (Apple GPU) is not available", marks=NO_MPS, id="mps-without-mps"),
    pytest.param("toaster", "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", id="malformed"),
    pytest.param("cuda:x", "device must be", id="malformed-index"),
    pytest.param("tpu", "device must be", id="unsupported-type"),
]


# ------------------------------------------------------------------------------------------------ device checks
@pytest.mark.parametrize(("device", "message"), BAD_DEVICES)
def test_cli_refuses_a_missing_device_in_one_line(device, message, no_loading, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["adue", "--device", device, "--output-dir", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("hf-calib adue: error: --device") and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_gpu_index_beyond_the_count(one_fake_gpu, no_loading, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["adue", "--device", "cuda:3", "--output-dir", str(tmp_path / "out")])
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    message = "device 'cuda:3' does not exist: this machine has cuda:0 to cuda:0."
    assert lines == [f"hf-calib adue: error: --device: {message}"]


def test_recipe_checks_the_device_itself_before_loading(no_loading, tmp_path):
    """Without the pre-flight (``adue.cli`` called directly), the recipe still refuses before any loading."""
    args = cli.build_parser().parse_args(["adue", "--device", "toaster", "--output-dir", str(tmp_path / "out")])
    with pytest.raises(UsageError, match=r"^--device: device must be"):
        adue.cli(args)


@pytest.mark.parametrize(("device", "message"), BAD_DEVICES)
def test_api_raises_value_error_naming_the_device(device, message):
    with pytest.raises(ValueError, match="device") as info:
        adue.EncoderSettings(device=device)
    assert message in str(info.value)


def test_api_refuses_a_gpu_index_beyond_the_count(one_fake_gpu):
    with pytest.raises(ValueError, match=r"device 'cuda:3' does not exist"):
        adue.EncoderSettings(device="cuda:3")
    assert adue.EncoderSettings(device="cuda:0").device == "cuda:0"


def test_finetune_checks_settings_changed_after_they_were_built():
    settings = adue.EncoderSettings(device="cpu")
    settings.device = "toaster"
    with pytest.raises(ValueError, match="device must be"):
        adue.finetune_lora(object(), [], object(), settings)  # refused before the model or data are touched


@pytest.mark.parametrize(
    ("field", "value"), [("max_grad_norm", -1.0), ("epochs", 0.0), ("batch_size", 0), ("label_smoothing", 1.0)]
)
def test_settings_refuse_bad_numbers(field, value):
    with pytest.raises(ValueError, match=field):
        adue.EncoderSettings(device="cpu", **{field: value})


def test_cuda_index_pins_trainer_to_one_gpu(monkeypatch, tmp_path):
    """``cuda:N`` trains on GPU N alone (Trainer itself picks cuda:0 and DataParallel over all GPUs), faked here."""
    pinned = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", pinned.append)

    def trainers_choice(self):
        self._n_gpu = 4
        return torch.device("cuda:0")

    monkeypatch.setattr(TrainingArguments, "_setup_devices", cached_property(trainers_choice))
    args = adue.lora_training_arguments(adue.EncoderSettings(device="cuda:2"), 10, tmp_path)
    assert (args.device, args.n_gpu, args.use_cpu) == (torch.device("cuda:2"), 1, False)
    assert pinned == [torch.device("cuda:2")]
    args = adue.lora_training_arguments(adue.EncoderSettings(device="cuda"), 10, tmp_path)
    assert (args.device, args.n_gpu) == (torch.device("cuda:1"), 1)  # "cuda": the current device


# ------------------------------------------------------------------------------------------------ Trainer
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from hf_calib.recipes.common import encoder_path

    return AutoTokenizer.from_pretrained(encoder_path("minilm"))


@pytest.fixture(scope="module")
def splits():
    return adue.review_splits("rotten_tomatoes", (64, 16, 32))


def _tiny_encoder(vocab_size: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def test_lora_finetune_runs_through_trainer_with_clipping(tokenizer, splits, monkeypatch, tmp_path):
    clipped = []
    original = accelerate.Accelerator.clip_grad_norm_

    def spy(self, parameters, max_norm, *args, **kwargs):
        clipped.append(max_norm)
        return original(self, parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(accelerate.Accelerator, "clip_grad_norm_", spy)
    # 64 reviews in batches of 8 = 8 batches; 1.25 epochs = 10 steps, 1 of them warm-up.
    settings = adue.EncoderSettings(device="cpu", batch_size=8, epochs=1.25, show_progress=False)
    model = _tiny_encoder(len(tokenizer))
    trainer = adue.finetune_lora(model, splits["train"], tokenizer, settings, output_dir=tmp_path)

    assert isinstance(trainer, Trainer)
    args = trainer.args
    assert args.max_grad_norm == 1.0 and clipped == [1.0] * 10
    assert args.use_cpu and args.device.type == "cpu" and args.n_gpu == 0
    assert args.report_to == [] and args.save_strategy == "no" and args.disable_tqdm
    assert args.learning_rate == settings.learning_rate and args.seed == settings.seed
    assert args.output_dir == str(tmp_path)
    state = trainer.state
    assert state.global_step == 10 and state.max_steps == 10
    logs = [entry for entry in state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == list(range(1, 11))
    assert all(entry["grad_norm"] > 0 for entry in logs)
    # The old loop's schedule: linear, int(0.1 * steps) warm-up steps from 0; step s uses the rate after s - 1 steps.
    expected = [0.0] + [2e-3 * (10 - k) / 9 for k in range(1, 10)]
    assert [entry["learning_rate"] for entry in logs] == pytest.approx(expected, abs=1e-12)
    # Only the log is written to the output folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer_state.json"]
    saved = json.loads((tmp_path / "trainer_state.json").read_text())
    assert saved["global_step"] == 10 and any("grad_norm" in entry for entry in saved["log_history"])
    # LoRA on query/key/value with the classifier trained too; the model comes back in eval mode.
    model = trainer.model
    assert not model.training
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in name and "query" in name for name in trained)
    assert any("classifier.modules_to_save" in name for name in trained)


def test_batch_order_and_steps_follow_the_recipe(tokenizer, splits):
    """The Trainer sees the recipe's own batches (text_loader with the seed), in the same order."""
    settings = adue.EncoderSettings(device="cpu", batch_size=16, show_progress=False, seed=3)
    trainer = adue.finetune_lora(_tiny_encoder(len(tokenizer)), splits["train"], tokenizer, settings)
    seen = [batch["input_ids"].shape for batch in trainer.get_train_dataloader()]
    generator = torch.Generator().manual_seed(3)
    expected = [batch["input_ids"].shape for batch in adue.text_loader(splits["train"], tokenizer, 64, 16, generator)]
    assert seen == expected and trainer.state.global_step == 4


@pytest.mark.filterwarnings("ignore:The fitted temperature")  # a random tiny encoder is at chance
def test_cli_adue_runs_through_trainer(tokenizer, monkeypatch, tmp_path, capsys):
    """``hf-calib adue`` (the test_cli sizes: 64 train / 32 test reviews) with a random tiny encoder and a one-point
    AdUE grid of 3 epochs (the head's training is tested in test_adue_train.py)."""
    monkeypatch.setattr(adue, "load_encoder", lambda name, seed: (tokenizer, _tiny_encoder(len(tokenizer), seed)))
    small_grid = partial(adue.AdUEConfig, learning_rates=(1e-4,), alphas=(0.1,), betas=(0.1,), max_epochs=3)
    monkeypatch.setattr(adue, "AdUEConfig", small_grid)
    out = tmp_path / "adue"
    argv = ["adue", "--train-size", "64", "--test-size", "32", "--device", "cpu", "--output-dir", str(out)]
    assert cli.main(argv) == 0
    assert (out / "bundle" / "adue_head.safetensors").is_file()
    state = json.loads((out / "lora" / "trainer_state.json").read_text())
    assert state["global_step"] == 2  # 64 reviews in batches of 32, one epoch
    assert all(entry["grad_norm"] > 0 for entry in state["log_history"] if "loss" in entry)
    printed = capsys.readouterr().out
    assert "2 Trainer steps on cpu" in printed and "misclassification AUROC" in printed
