"""The shared model helpers of hf_calib._model_utils and the ROUGE-L of hf_calib._text_metrics."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_calib._model_utils import (
    IGNORE_INDEX,
    base_model,
    eval_mode,
    greedy_generate,
    input_device,
    left_pad,
    pad_token_id,
    unwrap_ddp,
    unwrap_parallel,
)
from hf_calib._text_metrics import rouge_l_f1


class _Model(nn.Module):
    """A transformers-like model: a config, input embeddings, a dropout and a ``generate`` method."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="tiny")
        self.embed = nn.Embedding(10, 4)
        self.dropout = nn.Dropout(0.1)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, pad_token_id, **kwargs):
        self.calls = dict(input_ids=input_ids, attention_mask=attention_mask, pad_token_id=pad_token_id, **kwargs)
        new = torch.arange(max_new_tokens).expand(input_ids.shape[0], max_new_tokens)
        return torch.cat([input_ids, new.to(input_ids.device)], dim=1)


class _Peft(nn.Module):
    """PEFT-like: ``get_base_model()`` returns the wrapped model; has its own ``generate`` and ``config``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.base = model
        self.config = model.config

    def get_base_model(self) -> nn.Module:
        return self.base

    def generate(self, **kwargs):
        return self.base.generate(**kwargs)


class _DDPLike(nn.Module):
    """DDP-like: the model sits under ``.module``; no ``config`` and no ``generate``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model


def test_ignore_index_is_the_transformers_value_everywhere():
    from hf_calib.data import IGNORE_INDEX as data
    from hf_calib.loss import head, token_calibration

    assert IGNORE_INDEX == head.IGNORE_INDEX == data == token_calibration.IGNORE_INDEX == -100


def test_base_model_unwraps_peft_only():
    model = _Model()
    assert base_model(_Peft(model)) is model
    assert base_model(model) is model
    assert base_model(SimpleNamespace(get_base_model="not callable")).get_base_model == "not callable"


def test_unwrap_parallel_peels_module_wrappers_until_the_attribute():
    model = _Model()
    peft = _Peft(model)
    nested = _DDPLike(_DDPLike(peft))
    assert unwrap_parallel(nested) is peft  # stops at the first object with a config
    assert unwrap_parallel(nested, until="generate") is peft
    assert base_model(unwrap_parallel(nested)) is model
    assert unwrap_parallel(model) is model
    holder = nn.Module()
    holder.module = "not a module"
    assert unwrap_parallel(holder) is holder


def test_unwrap_ddp_peels_only_data_parallel_once():
    model = _Model()
    assert unwrap_ddp(nn.DataParallel(model)) is model
    assert unwrap_ddp(_DDPLike(model)).module is model  # not a torch wrapper: left as is
    assert unwrap_ddp(model) is model


def test_eval_mode_restores_each_training_flag_even_on_exception():
    model = _Model()
    model.train()
    model.dropout.eval()  # a mixed state must come back as it was
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("boom")
    assert model.training and model.embed.training and not model.dropout.training


def test_input_device_prefers_the_input_embeddings():
    model = _Model()
    assert input_device(model) == model.embed.weight.device
    plain = nn.Linear(2, 2)
    assert input_device(plain) == plain.weight.device


def test_pad_token_id_fallbacks():
    assert pad_token_id(SimpleNamespace(pad_token_id=3, eos_token_id=2)) == 3
    assert pad_token_id(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    neither = SimpleNamespace(pad_token_id=None, eos_token_id=None)
    assert pad_token_id(neither) == 0
    with pytest.raises(ValueError, match="neither a pad_token nor an eos_token"):
        pad_token_id(neither, strict=True)


def test_left_pad_and_greedy_generate():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8]] and ids.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]] and mask.dtype == torch.long
    model = _Model()
    new = greedy_generate(
        model, [[5, 6, 7], [8]], pad_id=1, max_new_tokens=2, device=torch.device("cpu"), eos_token_id=9
    )
    assert new.tolist() == [[0, 1], [0, 1]]
    assert model.calls["input_ids"].tolist() == ids.tolist() and model.calls["eos_token_id"] == 9


PAIRS = [
    ("the cat sat on the mat", "the cat is on the mat"),
    ("cats running", "a cat runs"),
    ("", "empty prediction"),
    ("nothing shared", "completely different"),
]


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_l_f1_matches_the_rouge_score_package(use_stemmer):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    expected = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in PAIRS]
    ours = rouge_l_f1([p for p, _ in PAIRS], [r for _, r in PAIRS], use_stemmer=use_stemmer)
    assert ours == pytest.approx(expected)
    assert ours[2] == 0.0 and ours[3] == 0.0


def test_rouge_l_wrappers_keep_their_stemming():
    from hf_calib.eval.reference import rouge_l
    from hf_calib.scaling.inference import rouge_l_correct

    assert rouge_l(["cats"], ["cat"]) == 1.0  # stemmed by default
    assert not rouge_l_correct("cats", "cat")  # Thermometer's label: no stemming
    assert rouge_l_correct("a cat", "the cat")
