"""Completion-only masking of chat data, checked token by token."""

from __future__ import annotations

import pytest

from hf_calib.data import IGNORE_INDEX, tokenize_chat_completion


class CharTokenizer:
    """One id per character and a ChatML-like template, so every position can be checked by hand."""

    chat_template = "chatml"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}</>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def test_prompt_is_masked_and_answer_supervised():
    out = tokenize_chat_completion(CHAT, CharTokenizer())
    text = "<user>hi</><assistant>yo</>"
    n_prompt = len("<user>hi</><assistant>")
    assert out["input_ids"] == [ord(c) for c in text]
    assert out["attention_mask"] == [1] * len(text)
    assert out["labels"] == [IGNORE_INDEX] * n_prompt + [ord(c) for c in "yo</>"]


def test_truncation_keeps_lengths_equal_and_can_leave_no_target():
    out = tokenize_chat_completion(CHAT, CharTokenizer(), max_length=24)
    assert len(out["input_ids"]) == len(out["labels"]) == 24
    assert out["labels"][-2:] == [ord("y"), ord("o")]
    short = tokenize_chat_completion(CHAT, CharTokenizer(), max_length=5)
    assert short["labels"] == [IGNORE_INDEX] * 5


@pytest.mark.integration
def test_real_chat_template_masks_exactly_the_prompt():
    from transformers import AutoTokenizer

    from hf_calib.assets import smollm2_path

    folder = smollm2_path()  # converted once into the cache (docs/assets.md)

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    out = tokenize_chat_completion(CHAT, tok)
    prompt = tok.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert out["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert out["labels"][n_prompt:] == out["input_ids"][n_prompt:]
    assert tok.decode(out["input_ids"][n_prompt:]).startswith("yo")


@pytest.mark.parametrize(
    ("messages", "kwargs", "match"),
    [
        (CHAT[:1], {}, "end with an assistant"),
        (CHAT[::-1], {}, "end with an assistant"),
        (CHAT, {"max_length": 0}, "max_length"),
    ],
)
def test_bad_input(messages, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tokenize_chat_completion(messages, CharTokenizer(), **kwargs)


def test_tokenizer_without_template():
    tok = CharTokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        tokenize_chat_completion(CHAT, tok)


# ---- prompt + completion pairs (hf_calib.data.chat) -----------------------------------------------


def test_prompt_completion_chat_equals_chat_completion_of_stripped_turns():
    from hf_calib.data import tokenize_prompt_completion

    out = tokenize_prompt_completion(" hi \n", " yo", CharTokenizer(), chat=True)
    assert out == tokenize_chat_completion(CHAT, CharTokenizer())


def test_prompt_completion_plain_masks_prefix_and_prompt():
    from test_fticl import BOS, EOS
    from test_fticl import CharTokenizer as SpecialCharTokenizer

    from hf_calib.data import encode_prompt, tokenize_prompt_completion

    tok = SpecialCharTokenizer()
    out = tokenize_prompt_completion("Q:", " a", tok, chat=False)
    assert out["input_ids"] == [BOS, ord("Q"), ord(":"), ord(" "), ord("a"), EOS]
    assert out["labels"] == [IGNORE_INDEX] * 3 + [ord(" "), ord("a"), EOS]
    assert encode_prompt(tok, "Q:", chat=False) == out["input_ids"][:3]
    no_eos = tokenize_prompt_completion("Q:", " a", tok, chat=False, add_eos=False)
    assert no_eos["labels"] == [IGNORE_INDEX] * 3 + [ord(" "), ord("a")]
    cut = tokenize_prompt_completion("Q:", " a", tok, chat=False, max_length=2)
    assert cut["input_ids"] == [BOS, ord("Q")] and cut["labels"] == [IGNORE_INDEX] * 2


def test_chat_choice_and_rendering():
    from test_fticl import CharTokenizer as SpecialCharTokenizer

    from hf_calib.data import encode_prompt, render_prompt, uses_chat_template

    chat, plain = SpecialCharTokenizer(chat=True), SpecialCharTokenizer()
    assert uses_chat_template(chat) and not uses_chat_template(plain)
    assert not uses_chat_template(chat, False)
    with pytest.raises(ValueError, match="use_chat_template=True"):
        uses_chat_template(plain, True)
    assert render_prompt(chat, " hi ", chat=True) == "<user>hi</><assistant>"
    assert render_prompt(plain, " hi ", chat=False) == " hi "
    assert encode_prompt(chat, "hi", chat=True) == [ord(c) for c in "<user>hi</><assistant>"]


def test_prompt_completion_bad_input():
    from test_fticl import CharTokenizer as SpecialCharTokenizer

    from hf_calib.data import tokenize_prompt_completion

    tok = SpecialCharTokenizer()
    with pytest.raises(ValueError, match="completion is empty"):
        tokenize_prompt_completion("Q:", "  ", tok, chat=False)
    with pytest.raises(ValueError, match="max_length"):
        tokenize_prompt_completion("Q:", " a", tok, chat=False, max_length=0)


def test_missing_eos_is_reported():
    from test_fticl import CharTokenizer as SpecialCharTokenizer

    from hf_calib.data import tokenize_prompt_completion

    tok = SpecialCharTokenizer()
    tok.eos_token_id = None
    with pytest.raises(ValueError, match="eos_token"):
        tokenize_prompt_completion("Q:", " a", tok, chat=False)
