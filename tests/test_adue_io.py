"""Saving and loading AdUE heads: round trips, PEFT folders, refusals on mismatched models."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from hf_calib.adue import attach_adue_head, detach_adue_head, get_adue_head, load_adue_head, save_adue_head


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (no synchronisation); other test files keep their setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _bert(num_labels: int = 2, hidden: int = 32, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=120,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


def _llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


BATCH = {"input_ids": torch.randint(3, 120, (4, 8), generator=torch.Generator().manual_seed(3))}


def _trained_peft(seed: int = 0) -> torch.nn.Module:
    """A LoRA BERT classifier whose adapter and head weights differ from initialisation, with a moved AdUE head."""
    model = get_peft_model(_bert(seed=seed), LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    attach_adue_head(model)
    with torch.no_grad():
        for p in get_adue_head(model).parameters():
            p.add_(torch.randn(p.shape, generator=g))
    return model


def _uncertainty(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**BATCH).uncertainty


def test_round_trip_identical_uncertainties(tmp_path) -> None:
    model = _trained_peft()
    save_adue_head(model, tmp_path)
    config = json.loads((tmp_path / "adue_config.json").read_text())
    assert config["head_kind"] == "encoder" and config["num_labels"] == 2 and config["hidden_size"] == 32
    assert config["smoothmax_lambda"] == 100.0 and config["verbaliser_token_ids"] is None
    assert config["fingerprint"]["model_type"] == "bert" and config["fingerprint"]["num_labels"] == 2
    assert sorted(load_file(str(tmp_path / "adue_head.safetensors"))) == ["head.bias", "head.weight"]
    # A fresh copy of the same adapted model: its new head starts from the classifier, the loaded one matches.
    other = _trained_peft()
    detach_adue_head(other)
    attach_adue_head(other)
    assert not torch.equal(_uncertainty(other), _uncertainty(model))
    load_adue_head(other, tmp_path)
    assert torch.equal(_uncertainty(other), _uncertainty(model))


def test_peft_save_pretrained_carries_the_head(tmp_path) -> None:
    model = _trained_peft()
    expected = _uncertainty(model)
    with torch.no_grad():
        expected_logits = model(**BATCH).logits
    model.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "adue_head.safetensors", "adue_config.json"} <= names
    # PEFT itself drops the head: the adapter file holds no adue_head tensor.
    assert not any("adue" in k for k in load_file(str(tmp_path / "adapter_model.safetensors")))
    restored = PeftModel.from_pretrained(_bert(seed=0), tmp_path).eval()
    assert not hasattr(restored.get_base_model(), "adue_head")
    load_adue_head(restored, tmp_path)
    with torch.no_grad():
        out = restored(**BATCH)
    assert torch.equal(out.logits, expected_logits)
    assert torch.equal(out.uncertainty, expected)


def test_verbaliser_round_trip(tmp_path) -> None:
    model = attach_adue_head(_llama(), verbaliser_token_ids=[11, 42], smoothmax_lambda=30.0)
    with torch.no_grad():
        get_adue_head(model).head.weight.mul_(3.0)
    save_adue_head(model, tmp_path)
    restored = load_adue_head(_llama(), tmp_path)
    head = get_adue_head(restored)
    assert head.verbaliser_token_ids == [11, 42] and head.smoothmax_lambda == 30.0
    assert torch.equal(_uncertainty(restored), _uncertainty(model))


def test_mismatched_label_count_and_hidden_size_are_refused(tmp_path) -> None:
    save_adue_head(attach_adue_head(_bert(num_labels=2)), tmp_path)
    three = _bert(num_labels=3)
    with pytest.raises(ValueError, match="num_labels: saved 2, model 3"):
        load_adue_head(three, tmp_path)
    assert not hasattr(three, "adue_head")  # refused before anything was attached
    with pytest.raises(ValueError, match="hidden_size: saved 32, model 48"):
        load_adue_head(_bert(hidden=48), tmp_path)
    with pytest.raises(ValueError, match="different (base )?model"):
        load_adue_head(_llama(), tmp_path)


def test_tampered_files_are_refused_without_side_effects(tmp_path) -> None:
    save_adue_head(attach_adue_head(_bert()), tmp_path)
    weights = tmp_path / "adue_head.safetensors"
    state = load_file(str(weights))
    save_file({"head.weight": state["head.weight"][:, :16].contiguous(), "extra": state["head.bias"]}, str(weights))
    target = _bert()
    # The weights file is compared with adue_config.json (header only) before anything is attached.
    with pytest.raises(ValueError, match=r"missing tensor 'head.bias'.*unexpected tensor 'extra'"):
        load_adue_head(target, tmp_path)
    assert not hasattr(target, "adue_head")
    save_file({"head.weight": state["head.weight"][:, :16].contiguous(), "head.bias": state["head.bias"]}, str(weights))
    with pytest.raises(
        ValueError, match=r"'head.weight': expected shape \(2, 32\) from field 'parameters'.*found \(2, 16\)"
    ):
        load_adue_head(target, tmp_path)
    # A head already attached keeps its weights when a load is refused.
    attach_adue_head(target)
    before = {k: v.clone() for k, v in get_adue_head(target).state_dict().items()}
    with pytest.raises(ValueError, match="head.weight"):
        load_adue_head(target, tmp_path)
    assert all(torch.equal(v, before[k]) for k, v in get_adue_head(target).state_dict().items())
    config = json.loads((tmp_path / "adue_config.json").read_text())
    (tmp_path / "adue_config.json").write_text(json.dumps({**config, "format": "other"}))
    with pytest.raises(ValueError, match="not an AdUE head config"):
        load_adue_head(_bert(), tmp_path)


def test_missing_folder_and_model_without_head(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no AdUE head"):
        load_adue_head(_bert(), tmp_path)
    with pytest.raises(ValueError, match="attach_adue_head"):
        save_adue_head(_bert(), tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written
