"""Feature extraction (padding, cache, PEFT) and inference helpers on a tiny random Llama."""

from __future__ import annotations

import math
import random

import pytest
import torch

from hf_calib.eval import MultipleChoiceCalibration
from hf_calib.eval.prompts import letter_token_ids
from hf_calib.scaling import (
    TemperatureLogitsProcessor,
    TemperatureScaledLM,
    TemperatureScaler,
    Thermometer,
    ThermometerConfig,
    extract_features,
    extract_features_and_logits,
    model_cache_key,
    rouge_l_correct,
    score_yes_no,
    thermometer_temperature,
    verification_prompt,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread avoids OpenMP contention on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


WORDS = "the cat dog sat ran on under mat red blue big small tree house river stone bird fish green old".split()


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [f"Answer: {c}" for c in "ABCD"] * 200 + [" ".join(rng.choices(WORDS, k=8)) for _ in range(200)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<pad>", "<s>", "</s>"]
    )
    backend.train_from_iterator(corpus, trainer)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _llama(vocab: int, seed: int = 0, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def llama(tok):
    return _llama(len(tok))


def _prompts(n: int = 7, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) + "\nAnswer:" for _ in range(n)]


def _single(model, tok, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpadded forward of one prompt through the base transformer: (last hidden state, next-token logits)."""
    ids = torch.tensor([[tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[0, -1]
        return hidden, model.lm_head(hidden)


def test_left_padded_batches_equal_single_unpadded_prompts(llama, tok):
    prompts = _prompts()
    features = extract_features(llama, tok, prompts, batch_size=3, show_progress=False)
    assert features.shape == (7, 32) and features.dtype == torch.float32
    for i, prompt in enumerate(prompts):
        hidden, _ = _single(llama, tok, prompt)
        assert torch.allclose(features[i], hidden, atol=1e-5)


def test_option_logits_come_from_the_same_position_as_multiple_choice_scoring(llama, tok):
    data = [
        {"question": " ".join(WORDS[i : i + 3 + i % 4]), "choices": ["cat", "dog", "red", "tree"], "answer": i % 4}
        for i in range(6)
    ]
    mc = MultipleChoiceCalibration(data, scoring="letter", task_column=None, batch_size=4, show_progress=False)
    _, details = mc.evaluate(llama, tok, return_details=True)
    ids, _ = letter_token_ids(tok, "ABCD", "auto")
    out = extract_features_and_logits(llama, tok, mc.prompts(tok), ids, batch_size=4, show_progress=False)
    assert torch.allclose(out["logits"], details.logits, atol=1e-5)
    for i, prompt in enumerate(mc.prompts(tok)):
        _, logits = _single(llama, tok, prompt)
        assert torch.allclose(out["logits"][i], logits[ids], atol=1e-5)


def test_train_mode_is_restored(llama, tok):
    llama.train()
    extract_features(llama, tok, _prompts(2), show_progress=False)
    assert llama.training
    llama.eval()


class _Counter:
    def __init__(self, model):
        self.calls = 0
        model.register_forward_hook(self)

    def __call__(self, *args):
        self.calls += 1


def test_cache_is_reused_and_refreshed(tok, tmp_path):
    model = _llama(len(tok), seed=1)
    counter = _Counter(model)
    prompts = _prompts(5)
    first = extract_features(
        model, tok, prompts, batch_size=2, cache_dir=tmp_path, cache_key="task-a", show_progress=False
    )
    assert counter.calls == 3
    again = extract_features(
        model, tok, prompts, batch_size=2, cache_dir=tmp_path, cache_key="task-a", show_progress=False
    )
    assert counter.calls == 3  # read from disk: no forward
    assert torch.equal(first, again)
    files = list(tmp_path.rglob("*"))
    assert [f.name for f in files if f.is_file()] == ["task-a.safetensors"]
    assert files[0].name == model_cache_key(model)
    # Other prompts under the same key: recomputed, with a warning.
    with pytest.warns(UserWarning, match="recomputing"):
        extract_features(model, tok, prompts[:4], cache_dir=tmp_path, cache_key="task-a", show_progress=False)
    assert counter.calls == 4
    # Changed weights (e.g. after fine-tuning): another model key, so no stale features.
    key = model_cache_key(model)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    assert model_cache_key(model) != key
    changed = extract_features(model, tok, prompts, cache_dir=tmp_path, cache_key="task-a", show_progress=False)
    assert counter.calls == 5
    assert not torch.allclose(changed, first)


def test_peft_model(llama, tok, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = _llama(len(tok), seed=2)
    prompts = _prompts(4)
    plain = extract_features(base, tok, prompts, show_progress=False)
    key = model_cache_key(base)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    # LoRA starts as the identity (B = 0): the same features.
    assert torch.allclose(extract_features(peft_model, tok, prompts, show_progress=False), plain, atol=1e-5)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    assert model_cache_key(peft_model) != key
    adapted = extract_features(peft_model, tok, prompts, cache_dir=tmp_path, cache_key="t", show_progress=False)
    assert not torch.allclose(adapted, plain, atol=1e-3)
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([[tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            hidden = peft_model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
        assert torch.allclose(adapted[i], hidden, atol=1e-5)


def test_bad_arguments(llama, tok, tmp_path):
    with pytest.raises(ValueError, match="cache_dir and cache_key"):
        extract_features(llama, tok, ["a"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="cache_key"):
        extract_features(llama, tok, ["a"], cache_dir=tmp_path, cache_key="../up")
    with pytest.raises(ValueError, match="non-empty list"):
        extract_features(llama, tok, [])
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(llama, tok, ["a"], batch_size=0)
    with pytest.raises(ValueError, match="encodes to no token"):
        extract_features(llama, tok, [[]])


def test_scaled_model_and_logits_processor(llama, tok):
    data = [{"question": "the cat sat", "choices": ["red", "blue", "tree"], "answer": 1}] * 3
    mc = MultipleChoiceCalibration(data, scoring="letter", task_column=None, show_progress=False)
    _, raw = mc.evaluate(llama, tok, return_details=True)
    wrapped = TemperatureScaledLM(llama, TemperatureScaler(2.0))
    _, scaled = mc.evaluate(wrapped, tok, return_details=True)
    assert torch.allclose(scaled.logits, raw.logits / 2.0, atol=1e-6)
    processor = TemperatureLogitsProcessor(4.0)
    scores = torch.randn(2, 10)
    assert torch.allclose(processor(torch.zeros(2, 3, dtype=torch.long), scores), scores / 4.0)
    with pytest.raises(ValueError, match="temperature"):
        TemperatureLogitsProcessor(0.0)
    with pytest.raises(ValueError, match="temperature"):
        TemperatureScaledLM(llama, -1.0)


def test_thermometer_temperature_checks_the_model(llama, tok, tmp_path):
    thermometer = Thermometer(ThermometerConfig(input_size=32, hidden_size=4))
    thermometer.save_pretrained(tmp_path, model=llama)
    loaded = Thermometer.from_pretrained(tmp_path, model=llama)
    prompts = _prompts(3)
    t = thermometer_temperature(loaded, llama, tok, prompts, show_progress=False)
    assert t == pytest.approx(
        thermometer.predict_temperature(extract_features(llama, tok, prompts, show_progress=False))
    )
    assert t > 0
    other = _llama(len(tok), hidden=48)
    with pytest.raises(ValueError, match="different base model"):
        thermometer_temperature(loaded, other, tok, prompts, show_progress=False)
    with pytest.raises(ValueError, match="different base model"):
        Thermometer.from_pretrained(tmp_path, model=other)
    unsaved = Thermometer(ThermometerConfig(input_size=32, hidden_size=4))
    with pytest.raises(ValueError, match="input_size=32"):
        unsaved.predict_temperature(extract_features(other, tok, prompts, show_progress=False))


def test_free_form_recipe(llama, tok):
    prompt = verification_prompt("Where is the cat?", "on the mat")
    assert prompt == "Where is the cat?\nAnswer: on the mat\nIs the above answer correct?\nA. Yes\nB. No\nAnswer:"
    logits = score_yes_no(llama, tok, [prompt, verification_prompt("q", "a")], show_progress=False)
    ids, _ = letter_token_ids(tok, "AB", "auto")
    _, single = _single(llama, tok, prompt)
    assert logits.shape == (2, 2)
    assert torch.allclose(logits[0], single[ids], atol=1e-5)
    assert rouge_l_correct("on the mat", "the mat") and not rouge_l_correct("blue", "the mat")
    assert math.isfinite(float(logits.sum()))


@pytest.mark.integration
def test_smollm2_mmlu_features_and_letter_logits(tmp_path):
    from hf_calib.assets import load_smollm2

    model, tokenizer = load_smollm2()
    mc = MultipleChoiceCalibration.from_mmlu(["anatomy", "virology"], 3, scoring="letter", show_progress=False)
    _, details = mc.evaluate(model, tokenizer, return_details=True)
    ids, _ = letter_token_ids(tokenizer, "ABCD", "auto")
    out = extract_features_and_logits(
        model, tokenizer, mc.prompts(tokenizer), ids, batch_size=6, cache_dir=tmp_path, cache_key="mmlu"
    )
    assert out["features"].shape == (6, model.config.hidden_size)
    assert torch.allclose(out["logits"], details.logits, atol=1e-3)
    thermometer = Thermometer(ThermometerConfig(input_size=model.config.hidden_size))
    thermometer.save_pretrained(tmp_path / "adapter", model=model)
    loaded = Thermometer.from_pretrained(tmp_path / "adapter", model=model)
    t = thermometer_temperature(loaded, model, tokenizer, mc.prompts(tokenizer), show_progress=False)
    assert t == pytest.approx(thermometer.predict_temperature(out["features"]), rel=1e-5)
