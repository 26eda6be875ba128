"""``hf-calib`` reports a mistake in the arguments as one line with exit code 2, before any long work.

Model loading, MMLU question preparation and every training loop are replaced by functions that fail the test:
a mistake must be caught before any of them runs. ``--help`` must not import torch or transformers, and every
public name of the lazily importing ``hf_calib`` package must resolve.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

import hf_calib
from hf_calib import cli
from hf_calib.recipes.checks import UsageError


def _forbidden(what: str):
    def fail(*args, **kwargs):
        pytest.fail(f"{what} was called: the mistake must be reported before it")

    return fail


@pytest.fixture(scope="session")
def converted_smollm2():
    """The offline SmolLM2 converted once to safetensors (on a fresh machine the first use converts it, which
    loads the model: done here, before the loaders are forbidden)."""
    from hf_calib.assets import smollm2_path

    return smollm2_path()


@pytest.fixture
def no_long_work(monkeypatch, converted_smollm2):
    """Loading a model, preparing MMLU questions and every training loop fail the test when called."""
    import peft
    import transformers

    from hf_calib.recipes import adue, demo, mc_cli, sft, thermometer

    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModelForSequenceClassification, peft.PeftModel):
        monkeypatch.setattr(auto, "from_pretrained", _forbidden(f"{auto.__name__}.from_pretrained"))
    for module, name in [
        (demo.Demo, "run"),
        (sft, "finetune_chat_lora"),
        (mc_cli, "mmlu_benchmark"),
        (mc_cli, "measure_mc"),
        (thermometer, "subject_task"),
        (thermometer, "leave_one_task_out"),
        (thermometer, "train_thermometer"),
        (adue, "run_encoder"),
    ]:
        monkeypatch.setattr(module, name, _forbidden(name))
    # No network: a Hub id that is not cached is refused at once.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def paths(tmp_path):
    """Placeholders of the table: a file, an empty folder, model folders with unusable configs, a broken adapter."""
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "vision").mkdir()
    (tmp_path / "vision" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (tmp_path / "unknown_type").mkdir()
    (tmp_path / "unknown_type" / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("someone's files")
    (tmp_path / "broken_adapter").mkdir()
    (tmp_path / "broken_adapter" / "adapter_config.json").write_text("{not json")
    return {
        "{file}": str(tmp_path / "file.txt"),
        "{empty}": str(tmp_path / "empty"),
        "{vision}": str(tmp_path / "vision"),
        "{unknown_type}": str(tmp_path / "unknown_type"),
        "{broken_adapter}": str(tmp_path / "broken_adapter"),
        "{notes}": str(tmp_path / "notes"),
    }


def _run(argv, capsys) -> str:
    """Run ``hf-calib argv`` in-process; assert exit code 2 and exactly one line on stderr; return that line."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
NO_MPS = pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")

#: (argv, text the message must contain: the offending argument).
BAD_ARGUMENTS = [
    # demo
    (["demo", "--model", "/nonexistent/model"], "--model '/nonexistent/model' is not an existing folder"),
    (["demo", "--encoder", "/nonexistent/encoder"], "--encoder '/nonexistent/encoder' is not an existing folder"),
    (["demo", "--encoder", "smollm2"], "--encoder 'smollm2' is the offline SmolLM2 causal LM"),
    (["demo", "--model", "{empty}"], "has no config.json"),
    (["demo", "--device", "gpu7"], "--device: device must be"),
    pytest.param(["demo", "--device", "cuda:0"], "--device: device 'cuda:0'", marks=NO_CUDA),
    (["demo", "--seed", "-1"], "argument --seed"),
    (["demo", "--output-dir", "{file}"], "--output-dir"),
    (["demo", "--quick", "--full"], "argument --full"),
    # sft
    (["sft", "--model", "nobody/no-such-model"], "--model 'nobody/no-such-model' is neither a local folder"),
    (["sft", "--model", "not a valid id!"], "--model 'not a valid id!'"),
    (["sft", "--model", "minilm"], "--model 'minilm' is the offline MiniLM encoder"),
    (["sft", "--model", "{vision}"], "'vit' model, which transformers cannot load as a causal LM"),
    (["sft", "--model", "{unknown_type}"], "its config.json does not load"),
    (["sft", "--epochs", "inf"], "--num_train_epochs (--epochs) must be a finite number in (0, 1000]"),
    (["sft", "--epochs", "0"], "--num_train_epochs (--epochs) must be a finite number"),
    (["sft", "--lr", "nan"], "--learning_rate (--lr) must be a finite number in (0, 1]"),
    (["sft", "--lr", "-1"], "--learning_rate (--lr) must be"),
    (["sft", "--lr", "fast"], "argument --learning_rate"),
    (["sft", "--seed", "99999999999"], "--seed must be an integer in [0, 4294967295]"),
    (["sft", "--turns", "0"], "--turns must be a positive integer; got 0"),
    (["sft", "--batch-size", "-3"], "--per_device_train_batch_size (--batch-size) must be a positive integer"),
    (["sft", "--max-length", "abc"], "argument --max_length"),
    (["sft", "--label-smoothing", "nan"], "--label_smoothing_factor (--label-smoothing) must be in [0, 1)"),
    (["sft", "--dataset", "{file}"], "--dataset"),
    (["sft", "--dataset", "/nonexistent/chats.jsonl"], "--dataset '/nonexistent/chats.jsonl' does not exist"),
    (["sft", "--config", "/nonexistent/run.yaml"], "--config '/nonexistent/run.yaml' is not a file"),
    (["sft", "--no-such-flag", "1"], "unrecognized arguments: --no-such-flag 1"),
    (["sft", "--batch-size", "64", "--turns", "16"], "--batch-size 64 is larger than --turns 16"),
    (["sft", "--output-dir", "{file}/sub"], "--output-dir"),
    pytest.param(["sft", "--device", "mps"], "--device: device 'mps'", marks=NO_MPS),
    # eval
    (["eval", "--adapter", "/nonexistent/adapter"], "--adapter '/nonexistent/adapter' is not a folder"),
    (["eval", "--adapter", "{empty}"], "has no adapter_config.json"),
    (["eval", "--subjects", "astrology"], "--subjects: 'astrology' is not an MMLU subject"),
    (["eval", "--subjects", "managment"], "did you mean 'management'"),
    (["eval", "--subjects", "management", "Management"], "--subjects names 'management' twice"),
    (["eval", "--limit", "0"], "argument --limit"),
    (["eval", "--output-dir", "{notes}"], "--output-dir '{notes}' is not empty and holds no earlier output"),
    (["eval", "--scoring", "logits"], "argument --scoring"),
    # thermometer
    (["thermometer", "--held-out", "astrology"], "--held-out: 'astrology' is not an MMLU subject"),
    (["thermometer", "--subjects", "management"], "--subjects needs at least 2 subjects"),
    (
        ["thermometer", "--subjects", "management", "global facts", "--held-out", "global_facts", "management"],
        "--held-out",
    ),
    (["thermometer", "--adapter", "{broken_adapter}"], "--adapter"),
    (["thermometer", "--steps", "0"], "argument --steps"),
    (["thermometer", "--model", "/nonexistent/model"], "--model"),
    # adue
    (["adue", "--model", "smollm2"], "--model 'smollm2' is the offline SmolLM2 causal LM"),
    (["adue", "--train-size", "0"], "argument --train-size"),
    (["adue", "--source", "yelp"], "argument --source"),
    (["adue", "--device", "toaster"], "--device"),
    # specialize (more cases: tests/test_specialization.py)
    (["specialize", "--n", "0", "-5"], "argument --n: expected a whole number >= 0; got -5"),
    (["specialize", "--model", "{vision}"], "'vit' model, which transformers cannot load as a causal LM"),
    # push (the lead's recipe: the generic handling of main())
    (["push", "{file}", "--repo-id", "me/bundle"], "is not a folder"),
    (["push", "{empty}"], "--repo-id"),
    # no such command
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize(("argv", "expected"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2_with_one_line(argv, expected, paths, no_long_work, capsys):
    for placeholder, path in paths.items():
        argv = [arg.replace(placeholder, path) for arg in argv]
        expected = expected.replace(placeholder, path)
    line = _run(argv, capsys)
    assert line.startswith(f"hf-calib {argv[0]}: error: ") or argv == ["frobnicate"], line
    assert expected in line


#: Mistakes that only the data reveals: found while preparing it (progress bars may come first), before the model.
DATA_MISTAKES = [
    # 1-token turns have no supervised token: no usable turn.
    (["sft", "--turns", "1", "--eval-turns", "1", "--batch-size", "1", "--max-length", "1"], "--turns/--eval-turns"),
    (["adue", "--train-size", "100000"], "--train-size/--test-size"),
]


@pytest.mark.parametrize(("argv", "expected"), DATA_MISTAKES)
def test_mistakes_found_in_the_data_stop_before_the_model(argv, expected, tmp_path, no_long_work, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--output-dir", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"hf-calib {argv[0]}: error: {expected}")
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(no_long_work, capsys):
    for argv in (["--debug", "sft", "--model", "/nonexistent"], ["sft", "--model", "/nonexistent", "--debug"]):
        with pytest.raises(UsageError, match="is not an existing folder"):
            cli.main(argv)
    assert cli.build_parser().parse_args(["sft"]).debug is False


def test_other_errors(monkeypatch, capsys):
    """Unchecked ValueError/OSError: one line with a pointer to --debug; a bug (RuntimeError) keeps its traceback."""
    import hf_calib.recipes as recipes

    def raising(error):
        def run(command, args):
            raise error

        return run

    monkeypatch.setattr(recipes, "run", raising(OSError("No space left on device\nwhile writing")))
    line = _run(["sft"], capsys)
    assert line.startswith("hf-calib sft: error: No space left on device while writing (run 'hf-calib --debug sft")
    monkeypatch.setattr(recipes, "run", raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["sft"])
    monkeypatch.setattr(recipes, "run", raising(KeyboardInterrupt()))
    assert cli.main(["sft"]) == 130


def test_valid_arguments_reach_the_recipe_canonicalized(monkeypatch, tmp_path):
    """The checks pass good arguments through, MMLU subjects in their canonical spelling."""
    from hf_calib.recipes import mc_cli, thermometer

    seen = {}

    def record(args):
        seen[args.command] = args
        return 0

    monkeypatch.setattr(mc_cli, "cli", record)
    monkeypatch.setattr(thermometer, "cli", record)
    out = tmp_path / "out"  # an earlier output of eval: replaced when the new one is complete
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    (out / "reliability_diagram.png").write_bytes(b"")
    out = str(out)
    assert cli.main(["eval", "--subjects", "World_Religions", "MANAGEMENT", "--output-dir", out]) == 0
    assert seen["eval"].subjects == ["world religions", "management"]
    args = ["thermometer", "--subjects", "management", "global facts", "--held-out", "human_aging", "--device", "cpu"]
    assert cli.main([*args, "--output-dir", str(tmp_path / "new" / "out")]) == 0
    assert seen["thermometer"].subjects == ["management", "global facts", "human aging"]
    assert seen["thermometer"].held_out == ["human aging"]


def test_cached_hub_id_is_checked_offline(monkeypatch, tmp_path, capsys):
    """A Hub id in the local cache passes without network; its config decides whether it fits the role."""
    from hf_calib.recipes import sft_cli

    for repo, model_type in (("someone/tiny-llama", "llama"), ("someone/vision", "vit")):
        folder = tmp_path / f"models--{repo.replace('/', '--')}"
        (folder / "snapshots" / "abc123").mkdir(parents=True)
        (folder / "snapshots" / "abc123" / "config.json").write_text(json.dumps({"model_type": model_type}))
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(sft_cli, "cli", lambda args: 0)
    out = str(tmp_path / "out")
    assert cli.main(["sft", "--model", "someone/tiny-llama", "--output-dir", out]) == 0
    line = _run(["sft", "--model", "someone/vision", "--output-dir", out], capsys)
    assert "--model 'someone/vision' is a 'vit' model, which transformers cannot load as a causal LM" in line


def test_unreachable_hub_is_one_line(monkeypatch, no_long_work, capsys):
    """Not cached and the Hub cannot be reached: one metadata request, no retries, one line."""
    import huggingface_hub

    calls = []

    def unreachable(url, **kwargs):
        calls.append(url)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    line = _run(["sft", "--model", "nobody/no-such-model"], capsys)
    assert "the Hub cannot be reached (ConnectionError)" in line and len(calls) == 1


HELP_WITHOUT_TORCH = """
import contextlib, io, sys
from hf_calib import cli
# sft is left out: its flags are TrainingArguments', so its --help imports transformers (test_sft_help below).
subcommands = ("demo", "eval", "thermometer", "adue", "push", "bench", "specialize")
for argv in (["--help"], *([sub, "--help"] for sub in subcommands)):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            cli.main(argv)
        except SystemExit as exit:
            assert exit.code == 0, (argv, exit.code)
    assert "usage:" in out.getvalue(), argv
print(sorted(m for m in ("torch", "transformers", "peft", "datasets", "trl") if m in sys.modules))
"""


def test_help_imports_no_heavy_library():
    proc = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_sft_help_lists_trainer_and_calibration_flags(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["sft", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--dataset", "--report_to", "--gradient_accumulation_steps", "--calibration_n_bins", "--config"):
        assert flag in out, flag


def test_every_public_name_resolves():
    from hf_calib import _EXPORTS

    assert set(hf_calib.__all__) == set(_EXPORTS) and len(hf_calib.__all__) == len(set(hf_calib.__all__))
    assert hf_calib.__version__ == "0.1.0"
    for name in hf_calib.__all__:
        if name == "CalibratedSFTTrainer" and find_spec("trl") is None:
            continue  # TRL is optional
        value = getattr(hf_calib, name)
        exec(f"from hf_calib import {name} as imported", namespace := {})
        assert namespace["imported"] is value
        assert value.__module__.startswith("hf_calib"), name
    assert set(hf_calib.__all__) <= set(dir(hf_calib))
    assert hf_calib.scaling.TemperatureScaler is hf_calib.TemperatureScaler  # subpackages stay reachable
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = hf_calib.nope


def test_type_checking_imports_match_the_exports():
    """The TYPE_CHECKING block (for type checkers and IDEs) imports each name from the module _EXPORTS names."""
    from hf_calib import _EXPORTS

    tree = ast.parse(Path(hf_calib.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    imported = {alias.name: "." * node.level + node.module for node in block.body for alias in node.names}
    assert imported == _EXPORTS


def test_error_lines_carry_no_token_like_text(capsys, monkeypatch) -> None:
    secret = "hf_" + "Ab1" * 12
    monkeypatch.setenv("HF_TOKEN", "a-token-from-the-environment")
    for model in (f"/nonexistent/{secret}", "/nonexistent/a-token-from-the-environment"):
        with pytest.raises(SystemExit) as info:
            cli.main(["eval", "--model", model])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "error:" in err and "***" in err
        assert secret not in err and "a-token-from-the-environment" not in err
