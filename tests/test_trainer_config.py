"""hf_calib's settings as TrainingArguments fields: CalibratedTrainingArguments, CalibratedSFTConfig, and the
trainers that read them (keyword arguments still win); CalibratedSFTTrainer's calibrated pushes."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from test_hub_push import TOKEN, FakeHub, card_errors, hub  # noqa: F401 - the fake Hub fixture
from test_multiple_choice import _llama, _make_tokenizer
from test_trainer import ListDataset, _text_dataset, _word_tokenizer, collate, make_examples, tiny_llama
from transformers import HfArgumentParser

from hf_calib import CalibratedTrainer, CalibratedTrainingArguments, TokenCalibrationConfig
from hf_calib.callbacks import ReliabilityDiagramCallback
from hf_calib.eval import MultipleChoiceCalibration
from hf_calib.trainer import MultipleChoiceSpec


def _args(tmp_path, **overrides) -> CalibratedTrainingArguments:
    kwargs = dict(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        per_device_eval_batch_size=4,
        label_smoothing_factor=0.1,
        disable_tqdm=True,
    )
    return CalibratedTrainingArguments(**(kwargs | overrides))


def _trainer(args, **kwargs) -> CalibratedTrainer:
    rows = make_examples(8)
    return CalibratedTrainer(
        model=tiny_llama(), args=args, eval_dataset=ListDataset(rows), data_collator=collate, **kwargs
    )


# ------------------------------------------------------------------------------------------- parsing
def test_command_line_yaml_and_json_give_the_same_arguments(tmp_path):
    parser = HfArgumentParser(CalibratedTrainingArguments)
    argv = [
        "--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu",
        "--calibration-n-bins", "10", "--calibration_prefix", "tok_", "--no_reliability_diagrams",
        "--multiple_choice", "mmlu:marketing,nutrition:limit=5:scoring=cloze", "mmlu:anatomy:prefix=anat",
        "--card_datasets", "me/data", "--label_smoothing_factor", "0.1",
    ]  # fmt: skip
    (from_cli,) = parser.parse_args_into_dataclasses(argv)
    values = {
        "output_dir": str(tmp_path),
        "report_to": "none",
        "use_cpu": True,
        "calibration_n_bins": 10,
        "calibration_prefix": "tok_",
        "reliability_diagrams": False,
        "multiple_choice": ["mmlu:marketing,nutrition:limit=5:scoring=cloze", "mmlu:anatomy:prefix=anat"],
        "card_datasets": ["me/data"],
        "label_smoothing_factor": 0.1,
    }
    (tmp_path / "run.json").write_text(json.dumps(values))
    (tmp_path / "run.yaml").write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in values.items()))
    (from_json,) = parser.parse_json_file(str(tmp_path / "run.json"))
    (from_yaml,) = parser.parse_yaml_file(str(tmp_path / "run.yaml"))
    for args in (from_cli, from_json, from_yaml):
        assert args.token_calibration_config() == TokenCalibrationConfig(10, "tok_", reliability_diagram=False)
        assert args.multiple_choice_specs() == [
            MultipleChoiceSpec("mmlu", ("marketing", "nutrition"), limit=5, scoring="cloze"),
            MultipleChoiceSpec("mmlu", ("anatomy",), prefix="anat"),
        ]
        assert args.card_datasets == ["me/data"] and args.label_smoothing_factor == 0.1
    # Saved and logged with the run: the settings are part of the arguments' dict and JSON.
    saved = json.loads(from_cli.to_json_string())
    assert saved["calibration_n_bins"] == 10 and saved["multiple_choice"][1] == "mmlu:anatomy:prefix=anat"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"calibration_n_bins": 0}, "calibration_n_bins"),
        ({"calibration_metrics": "yes"}, "calibration_metrics must be true or false"),
        ({"multiple_choice": ["arc:easy"]}, "unknown benchmark 'arc'"),
        ({"multiple_choice": ["mmlu:anatomy:limit=many"]}, "limit must be an integer"),
        ({"multiple_choice": ["mmlu:anatomy:depth=2"]}, "unknown key 'depth'"),
        ({"multiple_choice": ["mmlu:a:prefix=x", "mmlu:b:prefix=x"]}, "its own prefix"),
        ({"multiple_choice": [{"benchmark": "mmlu", "subject": "a"}]}, "unknown keys"),
    ],
)
def test_bad_settings_fail_when_the_arguments_are_built(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _args(tmp_path, **overrides)


def test_a_mapping_spec_equals_its_string_form():
    mapping = {"benchmark": "mmlu", "subjects": ["marketing"], "limit": 3, "scoring": "cloze", "fewshot": 2}
    assert MultipleChoiceSpec.parse(mapping) == MultipleChoiceSpec.parse(
        "mmlu:marketing:limit=3:scoring=cloze:fewshot=2"
    )


# ------------------------------------------------------------------------------------------- the trainers read them
def test_trainer_reads_token_calibration_settings(tmp_path):
    trainer = _trainer(_args(tmp_path, calibration_n_bins=10, calibration_prefix="tok_", reliability_diagrams=False))
    metrics = trainer.evaluate()
    assert "eval_tok_ece" in metrics and "eval_token_ece" not in metrics
    assert trainer.token_calibration.n_bins == 10
    assert not [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, ReliabilityDiagramCallback)]

    reference = _trainer(_args(tmp_path / "ref"), calibration_metrics=TokenCalibrationConfig(10, "tok_", False))
    assert reference.evaluate()["eval_tok_ece"] == pytest.approx(metrics["eval_tok_ece"])

    off = _trainer(_args(tmp_path / "off", calibration_metrics=False)).evaluate()
    assert not [key for key in off if "token" in key or "tok_" in key]


def test_keyword_arguments_win_over_the_arguments(tmp_path):
    args = _args(tmp_path, calibration_metrics=False, multiple_choice=["mmlu:anatomy:limit=1"])
    trainer = _trainer(args, calibration_metrics=True, multiple_choice=None)
    assert trainer.token_calibration is not None and trainer.multiple_choice == []
    assert "eval_token_ece" in trainer.evaluate()


def test_multiple_choice_specs_run_at_each_evaluation(tmp_path):
    tok = _make_tokenizer()
    model = _llama(len(tok))
    args = _args(
        tmp_path, multiple_choice=["mmlu:marketing:limit=3:scoring=cloze:prefix=mk"], calibration_metrics=False
    )
    trainer = CalibratedTrainer(model=model, args=args, processing_class=tok)
    assert [ev.prefix for ev in trainer.multiple_choice] == ["mk"]
    metrics = trainer.evaluate(eval_dataset=ListDataset([]))  # only the multiple-choice metrics
    direct = MultipleChoiceCalibration.from_mmlu(["marketing"], 3, scoring="cloze", prefix="mk").evaluate(model, tok)
    assert direct, "the evaluator reports metrics"
    for key, value in direct.items():
        assert metrics[f"eval_{key}"] == pytest.approx(value), key


# ------------------------------------------------------------------------------------------- calibrated pushes
def _lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))


def test_push_calibrated_bundle_false_leaves_pushes_to_trainer(tmp_path):
    trainer = _trainer(_args(tmp_path, push_calibrated_bundle=False))
    assert trainer.calibrated_adapter is None
    assert not [cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "CalibratedAdapterCallback"]
    trainer.create_model_card()  # Trainer's own card
    assert "hf-calib" not in (tmp_path / "README.md").read_text()


def test_card_fields_of_the_arguments_reach_the_card(tmp_path):
    args = _args(tmp_path, card_datasets=["me/chat-data"], card_license="apache-2.0", card_base_model="org/base")
    trainer = CalibratedTrainer(model=_lora(tiny_llama()), args=args, eval_dataset=ListDataset(make_examples(4)))
    trainer.evaluate()
    trainer.create_model_card()
    card = (tmp_path / "README.md").read_text()
    assert "me/chat-data" in card and "license: apache-2.0" in card and "base_model: org/base" in card
    assert card_errors(card) == []


def test_calibrated_sft_trainer_pushes_a_calibrated_bundle(hub: FakeHub, tmp_path):  # noqa: F811
    pytest.importorskip("trl")
    from hf_calib import CalibratedSFTConfig, CalibratedSFTTrainer

    args = CalibratedSFTConfig(
        output_dir=str(tmp_path / "out"),
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_steps=2,
        per_device_train_batch_size=4,
        save_strategy="no",
        disable_tqdm=True,
        label_smoothing_factor=0.1,
        push_to_hub=True,
        hub_model_id="me/sft-run",
        hub_token=TOKEN,
        hub_strategy="end",
        card_datasets=["me/chat-data"],
    )
    model = _lora(tiny_llama(eos_token_id=2, bos_token_id=3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = CalibratedSFTTrainer(
            model=model, args=args, train_dataset=_text_dataset(), eval_dataset=_text_dataset(),
            processing_class=_word_tokenizer(),
        )  # fmt: skip
    assert trainer.calibrated_adapter is not None and trainer.fused_loss_active
    trainer.train()
    metrics = trainer.evaluate()
    trainer.push_to_hub()
    final = hub.commits[-1]["files"]
    manifest = json.loads(final["calibration.json"])
    assert manifest["label_smoothing"] == 0.1
    assert manifest["report"]["metrics"]["ece"] == pytest.approx(metrics["eval_token_ece"])
    card = final["README.md"].decode()
    assert "library_name: peft" in card and "me/chat-data" in card and card_errors(card) == []
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(final)
    with torch.no_grad():  # the uploaded adapter is the trained one
        assert final["adapter_model.safetensors"] == (tmp_path / "out" / "adapter_model.safetensors").read_bytes()
