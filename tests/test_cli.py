"""The ``hf-calib`` command: argument handling, the recipes' shared helpers, and the bench hand-off."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hf_calib import cli
from hf_calib.recipes import run
from hf_calib.recipes.common import format_table, resolve_device, staged_dir
from hf_calib.recipes.report import Report


def _parse(*argv: str):
    if argv[:1] == ("sft",):  # hf-calib sft parses its own flags (HfArgumentParser over TrainingArguments)
        return cli._parse_sft(cli.build_parser(), list(argv[1:]), debug=False)
    return cli.build_parser().parse_args(list(argv))


def test_demo_defaults_to_quick():
    args = _parse("demo")
    assert args.full is False and args.model == "smollm2" and args.encoder == "minilm" and args.seed == 0
    assert _parse("demo", "--full").full is True
    assert _parse("demo", "--quick").full is False


def test_demo_quick_and_full_are_exclusive(capsys):
    with pytest.raises(SystemExit) as info:
        _parse("demo", "--quick", "--full")
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("sft", "--label-smoothing", "1.0"), "--label_smoothing_factor (--label-smoothing) must be in [0, 1)"),
        (("sft", "--label-smoothing", "abc"), "argument --label_smoothing_factor"),
        (("sft", "--turns", "0"), "--turns must be a positive integer; got 0"),
        (("eval", "--scoring", "logits"), "invalid choice: 'logits'"),
        (("push", "some/folder"), "the following arguments are required: --repo-id"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_name_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        _parse(*argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_every_subcommand_has_a_recipe():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    from hf_calib.recipes import _MODULES

    assert set(sub.choices) - {"bench"} == set(_MODULES)
    with pytest.raises(ValueError, match="unknown command 'nope'"):
        run("nope", None)


def test_bench_forwards_its_arguments(tmp_path, capsys):
    out_json = tmp_path / "runs.json"
    argv = ["bench", "--shapes", "64,8,16", "--methods", "fused", "--repeats", "1", "--out", str(out_json)]
    assert cli.main(argv) == 0
    assert "V64_H8_N16" in capsys.readouterr().out
    (run_record,) = json.loads(out_json.read_text())["runs"]
    assert run_record["method"] == "fused" and (run_record["V"], run_record["H"], run_record["N"]) == (64, 8, 16)
    assert "error" not in run_record


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "hf_calib", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: hf-calib" in proc.stdout and "thermometer" in proc.stdout


def test_user_errors_exit_2_with_the_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["eval", "--model", str(tmp_path / "no-model")])
    assert info.value.code == 2
    assert "is not an existing folder" in capsys.readouterr().err


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("toaster")


def test_staged_dir_publishes_only_complete_folders(tmp_path):
    final = tmp_path / "bundle"
    with staged_dir(final) as out:
        (out / "a.json").write_text("{}")
        assert not final.exists()
    assert (final / "a.json").read_text() == "{}"

    with pytest.raises(KeyboardInterrupt), staged_dir(final) as out:
        (out / "b.json").write_text("{}")
        raise KeyboardInterrupt
    assert sorted(p.name for p in final.iterdir()) == ["a.json"]  # old content kept
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging folder left

    with staged_dir(final) as out:
        (out / "c.json").write_text("{}")
    assert sorted(p.name for p in final.iterdir()) == ["c.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]

    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"), staged_dir(tmp_path / "file"):
        pass
    with pytest.raises(ValueError, match="overwrite=True"), staged_dir(final, overwrite=False):
        pass


def test_format_table():
    text = format_table([{"a": 0.12345, "b": "x"}, {"a": None, "b": 3}])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 0.123 | x |", "| - | 3 |"]
    assert format_table([]) == ""


def test_report_writes_markdown_and_json(tmp_path):
    report = Report("Demo")
    report.section("Numbers", "Some prose.")
    report.table([{"ece": 0.5}])
    (tmp_path / "plots").mkdir()
    report.figure(tmp_path / "plots" / "d.png", "a diagram", root=tmp_path)
    report.results["ece"] = 0.5
    path = report.write(tmp_path)
    text = path.read_text()
    assert text.startswith("# Demo\n") and "## Numbers" in text and "| 0.500 |" in text
    assert "![a diagram](plots/d.png)" in text
    assert json.loads((tmp_path / "results.json").read_text()) == {"ece": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots", "report.md", "results.json"]


def test_push_refuses_what_is_not_a_bundle_in_one_line(tmp_path, capsys):
    # Uploads through a fake Hub, dry runs and scrubbed errors: tests/test_bundle_faults.py.
    (tmp_path / "notes.txt").write_text("not a bundle")
    for folder, message in ((tmp_path / "missing", "is not a folder"), (tmp_path, "calibration.json is missing")):
        with pytest.raises(SystemExit) as info:
            cli.main(["push", str(folder), "--repo-id", "me/bundle"])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.integration
def test_real_subcommands_write_their_outputs(tmp_path, capsys):
    assert (
        cli.main(
            ["sft", "--turns", "16", "--eval-turns", "8", "--max-length", "64", "--output-dir", str(tmp_path / "sft")]
        )
        == 0
    )
    assert (tmp_path / "sft" / "adapter" / "adapter_model.safetensors").is_file()
    args = ["eval", "--adapter", str(tmp_path / "sft" / "adapter"), "--subjects", "management", "--limit", "4"]
    assert cli.main([*args, "--scoring", "letter", "--output-dir", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["mc/micro/accuracy"] <= 1.0 and (tmp_path / "eval" / "reliability_diagram.png").is_file()
    subjects = ["world religions", "management", "global facts"]
    args = ["thermometer", "--subjects", *subjects, "--limit", "8", "--steps", "20", "--scoring", "letter"]
    assert cli.main([*args, "--output-dir", str(tmp_path / "th")]) == 0
    assert (tmp_path / "th" / "thermometer" / "thermometer.safetensors").is_file()
    rows = json.loads((tmp_path / "th" / "leave_one_out.json").read_text())["rows"]
    assert {r["task"] for r in rows} == {"global facts"}  # the default held-out subject: the last one
    assert cli.main(["adue", "--train-size", "64", "--test-size", "32", "--output-dir", str(tmp_path / "adue")]) == 0
    assert (tmp_path / "adue" / "bundle" / "adue_head.safetensors").is_file()
    out = capsys.readouterr().out
    assert "adapter saved to" in out and "Thermometer (best step" in out and "misclassification AUROC" in out
