"""``hf-calib sft`` on the user's own data, with Trainer's flags and a config file, on the offline SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_calib import cli


def _chats(n: int) -> list[dict]:
    return [
        {"prompt": f"What is {i} plus {i}?", "completion": f"{i} plus {i} is {2 * i}."}
        if i % 2
        else {
            "messages": [
                {"role": "user", "content": f"Name a colour for item {i}."},
                {"role": "assistant", "content": "Blue is a colour." if i % 4 else "Red is a colour."},
            ]
        }
        for i in range(n)
    ]


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: dict[str, list[float]] = {}
    for events in run_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            tags.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return tags


@pytest.mark.integration
@pytest.mark.parametrize("form", ["jsonl", "saved"])
def test_sft_trains_on_a_local_dataset_and_reports_calibration(tmp_path, capsys, form):
    pytest.importorskip("tensorboard")
    import datasets

    if form == "jsonl":
        rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in _chats(12) if "prompt" in r]
        rows += [{"prompt": f"Say hi number {i}.", "completion": f"Hi number {i}!"} for i in range(6)]
        data = tmp_path / "chats.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        chats = [r for r in _chats(24) if "messages" in r]
        data = tmp_path / "saved"
        datasets.Dataset.from_list(chats).save_to_disk(str(data))
    (tmp_path / "run.yaml").write_text("lora_r: 4\nmax_length: 48\ncalibration_n_bins: 10\nlogging_steps: 1\n")
    out = tmp_path / "sft"
    argv = [
        "sft", "--dataset", str(data), "--config", str(tmp_path / "run.yaml"),
        "--turns", "8", "--eval-turns", "4", "--batch-size", "4", "--max_steps", "2",
        "--report_to", "tensorboard", "--label_smoothing_factor", "0.1", "--output-dir", str(out),
        "--eval_strategy", "steps", "--eval_steps", "1", "--disable_tqdm", "true",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "loss path: fused" in printed and "label smoothing 0.1" in printed
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4  # from the config file
    scalars = _scalars(out / "run")
    assert "eval/token_ece" in scalars and "train/loss" in scalars, " ".join(sorted(scalars))
    assert all(0.0 <= v <= 1.0 for v in scalars["eval/token_ece"])


def test_flags_on_the_command_line_win_over_the_config_file(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"learning_rate": 0.01, "lora_r": 2, "seed": 5}))
    args = cli._parse_sft(cli.build_parser(), ["--config", str(tmp_path / "run.json"), "--lr", "0.002"], debug=False)
    assert args.training.learning_rate == 0.002 and args.lora_r == 2 and args.seed == 5
    assert args.training.label_smoothing_factor == 0.1  # the command's default


def test_config_file_with_unknown_settings_is_one_line(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("learning_rat: 0.01\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["sft", "--config", str(tmp_path / "run.yaml")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown settings ['learning_rat']" in err[0]


def test_dataset_columns_are_checked(tmp_path):
    from hf_calib.recipes.sft import load_chat_dataset

    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nq,a\n")
    with pytest.raises(ValueError, match="expected 'messages' \\(chat\\) or 'prompt' and 'completion'"):
        load_chat_dataset(bad)
    good = tmp_path / "good.csv"
    good.write_text("prompt,completion\nWhat is 1+1?,2\n")
    assert load_chat_dataset(good)[0]["messages"] == [
        {"role": "user", "content": "What is 1+1?"},
        {"role": "assistant", "content": "2"},
    ]
