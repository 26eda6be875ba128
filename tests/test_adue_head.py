"""AdUE head: predictions unchanged, U formula, pooling, freezing (tiny random BERT/RoBERTa/Llama models)."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from hf_calib.adue import (
    AdUEHead,
    adue_uncertainty,
    attach_adue_head,
    detach_adue_head,
    extract_adue_features,
    get_adue_head,
    normalized_softmax_response,
    smoothmax,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (no synchronisation); other test files keep their setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PAD = 0


def _bert(num_labels: int = 3, hidden: int = 32) -> BertForSequenceClassification:
    config = BertConfig(
        vocab_size=120,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


def _roberta() -> RobertaForSequenceClassification:
    config = RobertaConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        pad_token_id=1,
        max_position_embeddings=40,
    )
    return RobertaForSequenceClassification(config).eval()


def _llama_config(**kw: object) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        pad_token_id=PAD,
        **kw,
    )


def _batch(vocab: int = 120, left_pad: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (5, 9), generator=g)
    mask = torch.ones_like(ids)
    lengths = [9, 6, 4, 9, 2]
    for row, n in enumerate(lengths):
        if left_pad:
            ids[row, : 9 - n], mask[row, : 9 - n] = PAD, 0
        else:
            ids[row, n:], mask[row, n:] = PAD, 0
    return {"input_ids": ids, "attention_mask": mask}


def _peft_seq_cls(model: torch.nn.Module, targets: list[str]) -> torch.nn.Module:
    return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=targets))


def _perturb_lora(model: torch.nn.Module) -> None:
    """LoRA's B starts at zero; make the adapter matter so the tests see a real adapted model."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)


def _reference_u(logits: torch.Tensor, lam: float = 100.0) -> torch.Tensor:
    """U written out in float64 with an explicit max-shifted logsumexp."""
    p = torch.softmax(logits.double(), -1)
    m = p.max(-1, keepdim=True).values
    smooth = m.squeeze(-1) + torch.log(torch.exp(lam * (p - m)).sum(-1)) / lam
    c = logits.shape[-1]
    return ((1 - smooth) / (1 - 1 / c)).clamp(1e-8, 1 - 1e-8)


# --- formulas ---------------------------------------------------------------------------------------------------


def test_smoothmax_bounds_and_reference() -> None:
    p = torch.softmax(torch.randn(50, 4, dtype=torch.float64) * 3, -1)
    s = smoothmax(p, 100.0)
    assert torch.allclose(s, torch.log(torch.exp(100 * p).sum(-1)) / 100)
    assert (s >= p.max(-1).values - 1e-12).all() and (s <= p.max(-1).values + math.log(4) / 100 + 1e-12).all()
    assert torch.allclose(smoothmax(p, 1e6), p.max(-1).values, atol=1e-5)  # lambda -> inf gives the max
    with pytest.raises(ValueError, match="smoothmax_lambda"):
        smoothmax(p, 0.0)


@pytest.mark.parametrize("lam", [1.0, 100.0])
def test_uncertainty_matches_plain_reimplementation(lam: float) -> None:
    logits = torch.randn(64, 5, dtype=torch.float64) * 4
    logits[0] = torch.tensor([50.0, 0, 0, 0, 0])  # p = one-hot: U clamps to 1e-8
    u = adue_uncertainty(logits, lam)
    assert torch.allclose(u, _reference_u(logits, lam), atol=1e-12)
    assert u[0].item() == pytest.approx(1e-8)
    assert ((u >= 1e-8) & (u <= 1 - 1e-8)).all()


def test_uncertainty_half_precision_and_shape_errors() -> None:
    logits = torch.randn(16, 3)
    assert torch.allclose(adue_uncertainty(logits.bfloat16()), _reference_u(logits.bfloat16()).float(), atol=1e-6)
    with pytest.raises(ValueError, match="logits"):
        adue_uncertainty(torch.randn(4))
    with pytest.raises(ValueError, match="C >= 2"):
        adue_uncertainty(torch.randn(4, 1))


def test_normalized_softmax_response() -> None:
    logits = torch.randn(20, 3)
    p = torch.softmax(logits.double(), -1)
    expected = (1 - p.max(-1).values) / (2 / 3)
    assert torch.allclose(normalized_softmax_response(logits).double(), expected, atol=1e-7)
    assert normalized_softmax_response(torch.zeros(2, 3)).tolist() == pytest.approx([1.0, 1.0])


# --- predictions unchanged ---------------------------------------------------------------------------------------


def _check_bit_identical(model: torch.nn.Module, batch: dict[str, torch.Tensor], **attach: object) -> torch.Tensor:
    with torch.no_grad():
        before = model(**batch).logits.clone()
    attach_adue_head(model, **attach)
    with torch.no_grad():
        out = model(**batch)
    assert torch.equal(out.logits, before)
    assert out.uncertainty.shape == (batch["input_ids"].shape[0],)
    return out.uncertainty


def test_bert_lora_predictions_identical_and_u_from_pooler() -> None:
    torch.manual_seed(0)
    model = _peft_seq_cls(_bert(), ["query", "value"])
    _perturb_lora(model)
    batch = _batch()
    u = _check_bit_identical(model, batch)
    base = model.get_base_model()
    with torch.no_grad():
        hidden = base.bert(**batch).pooler_output  # BERT's classifier reads the pooler output
        logits = model.base_model.model.classifier.modules_to_save["default"](hidden)
    assert torch.allclose(u, _reference_u(logits).float(), atol=1e-6)
    # The copy is of the adapted classifier (modules_to_save), not the original one.
    head = get_adue_head(model).head
    assert torch.equal(head.weight, base.classifier.modules_to_save["default"].weight)
    assert not torch.equal(head.weight, base.classifier.original_module.weight)


def test_roberta_head_copy_reads_cls_token() -> None:
    torch.manual_seed(0)
    model = _peft_seq_cls(_roberta(), ["query", "value"])
    _perturb_lora(model)
    batch = _batch()
    batch["input_ids"][batch["attention_mask"] == 0] = 1
    u = _check_bit_identical(model, batch)
    head = get_adue_head(model).head
    assert type(head).__name__ == "RobertaClassificationHead"  # dense-tanh-dropout-out_proj, deep-copied
    with torch.no_grad():
        seq = model.get_base_model().roberta(**batch).last_hidden_state
        ref = head.out_proj(torch.tanh(head.dense(seq[:, 0])))
    assert torch.allclose(u, _reference_u(ref).float(), atol=1e-6)


@pytest.mark.parametrize("left_pad", [False, True])
def test_llama_score_head_pools_last_non_pad_token(left_pad: bool) -> None:
    torch.manual_seed(0)
    model = _peft_seq_cls(LlamaForSequenceClassification(_llama_config(num_labels=4)).eval(), ["q_proj", "v_proj"])
    _perturb_lora(model)
    batch = _batch(300, left_pad=left_pad)
    u = _check_bit_identical(model, batch)
    with torch.no_grad():
        hidden = model.get_base_model().model(**batch).last_hidden_state
    last = batch["attention_mask"].shape[1] - 1 - batch["attention_mask"].flip(-1).argmax(-1)
    logits = get_adue_head(model).head(hidden[torch.arange(5), last])
    assert torch.allclose(u, _reference_u(logits).float(), atol=1e-6)


@pytest.mark.parametrize("left_pad", [False, True])
def test_causal_lm_verbaliser_head(left_pad: bool) -> None:
    torch.manual_seed(0)
    lm = LlamaForCausalLM(_llama_config()).eval()
    model = get_peft_model(lm, LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"]))
    _perturb_lora(model)
    batch = _batch(300, left_pad=left_pad)
    ids = [17, 5, 230]
    u = _check_bit_identical(model, batch, verbaliser_token_ids=ids)
    head = get_adue_head(model)
    assert head.kind == "verbaliser" and head.num_labels == 3
    assert torch.equal(head.head.weight, lm.lm_head.weight[ids])
    with torch.no_grad():
        full = model(**batch).logits
    last = batch["attention_mask"].shape[1] - 1 - batch["attention_mask"].flip(-1).argmax(-1)
    class_logits = full[torch.arange(5), last][:, ids]
    # At initialisation the head reproduces the verbaliser logits, so U is the SmoothMax of the model's own softmax.
    assert torch.allclose(u, _reference_u(class_logits).float(), atol=1e-5)
    feats = extract_adue_features(model, [{**batch, "labels": torch.zeros(5, dtype=torch.long)}], progress=False)
    assert torch.allclose(feats.logits, class_logits, atol=1e-6)
    assert feats.features.shape == (5, 32)


def test_predictions_unchanged_after_head_training_step() -> None:
    """Updating the head must never move the classifier's logits (the head is a copy, not a view)."""
    torch.manual_seed(0)
    model = _peft_seq_cls(_bert(), ["query", "value"])
    batch = _batch()
    with torch.no_grad():
        before = model(**batch).logits.clone()
    attach_adue_head(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("adue_head" in n for n in trainable)
    model.train()
    out = model(**batch)
    out.uncertainty.sum().backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    model.eval()
    with torch.no_grad():
        after = model(**batch)
    assert torch.equal(after.logits, before)
    assert not torch.allclose(after.uncertainty, out.uncertainty.detach())


def test_tuple_outputs_detach_and_errors() -> None:
    torch.manual_seed(0)
    model = _bert()
    batch = _batch()
    attach_adue_head(model)
    with torch.no_grad():
        out = model(**batch, return_dict=False)
    assert isinstance(out, tuple) and out[-1].shape == (5,)
    with pytest.raises(ValueError, match="already has an AdUE head"):
        attach_adue_head(model)
    detach_adue_head(model)
    assert not hasattr(model, "adue_head")
    with torch.no_grad():
        assert "uncertainty" not in model(**batch)
    with pytest.raises(ValueError, match="attach_adue_head"):
        get_adue_head(model)
    with pytest.raises(TypeError, match="verbaliser_token_ids"):
        attach_adue_head(LlamaForCausalLM(_llama_config()))
    with pytest.raises(ValueError, match="distinct"):
        attach_adue_head(LlamaForCausalLM(_llama_config()), verbaliser_token_ids=[3, 3])
    with pytest.raises(TypeError, match="transformers model"):
        attach_adue_head(torch.nn.Linear(2, 2))


def test_lora_on_head_is_rejected() -> None:
    model = get_peft_model(_bert(), LoraConfig(r=4, target_modules=["query", "classifier"]))
    with pytest.raises(TypeError, match="modules_to_save"):
        attach_adue_head(model)


def test_adue_head_validation() -> None:
    with pytest.raises(ValueError, match="kind"):
        AdUEHead(torch.nn.Linear(4, 2), kind="other", num_labels=2, hidden_size=4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="verbaliser_token_ids"):
        AdUEHead(torch.nn.Linear(4, 2), kind="verbaliser", num_labels=2, hidden_size=4)


@pytest.mark.integration
def test_minilm_lora_predictions_identical_on_real_reviews() -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_calib.assets import load_movie_reviews, minilm_path

    torch.manual_seed(0)
    folder = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, local_files_only=True)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "key", "value"], modules_to_save=["classifier"])
    model = get_peft_model(model, config).eval()
    _perturb_lora(model)
    texts = list(load_movie_reviews("rotten_tomatoes").select(range(8))["text"])
    batch = dict(tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt"))
    u = _check_bit_identical(model, batch)
    assert ((u > 0) & (u < 1)).all()
