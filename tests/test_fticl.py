"""FTICL and task templates: masks checked token by token, demonstrations, validation, training with both trainers."""

from __future__ import annotations

import math

import pytest
from datasets import Dataset
from test_multiple_choice import _llama, _make_tokenizer

from hf_calib.data import (
    IGNORE_INDEX,
    MultipleChoiceTemplate,
    TaskTemplate,
    demonstration_context,
    encode_prompt,
    fticl_dataset,
    instruction_template,
    task_dataset,
    tokenize_prompt_completion,
)

BOS, EOS = 1, 2


class CharTokenizer:
    """One id per character (``ord``), ``<s>`` in front with special tokens, optional ChatML-like template."""

    eos_token_id = EOS
    pad_token_id = 0

    def __init__(self, chat: bool = False) -> None:
        self.chat_template = "chatml" if chat else None

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}</>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def _one(self, text: str, add_special_tokens: bool) -> list[int]:
        return ([BOS] if add_special_tokens else []) + [ord(c) for c in text]

    def __call__(self, text, add_special_tokens=True):
        if isinstance(text, list):
            return {"input_ids": [self._one(t, add_special_tokens) for t in text]}
        return {"input_ids": self._one(text, add_special_tokens)}


def ords(text: str) -> list[int]:
    return [ord(c) for c in text]


TEMPLATE = TaskTemplate("Q: {q}\nA:", " {a}")
ROWS = {"q": ["one", "two", "three", "four", "five"], "a": ["1", "2", "3", "4", "5"]}
SENTIMENT = TaskTemplate("Review: {text}\nSentiment:", " {label}", verbalizers={"label": ["negative", "positive"]})


def test_plain_fticl_masks_token_by_token():
    data, demos = fticl_dataset(Dataset.from_dict(ROWS), TEMPLATE, 2, CharTokenizer())
    assert demos == [{"q": "one", "a": "1"}, {"q": "two", "a": "2"}]
    context = "Q: one\nA: 1\n\nQ: two\nA: 2"
    assert demonstration_context(TEMPLATE, demos) == context
    assert len(data) == 3  # the two demonstrations are not trained on
    for row, (q, a) in zip(data, [("three", "3"), ("four", "4"), ("five", "5")], strict=True):
        prompt = f"{context}\n\nQ: {q}\nA:"
        target = ords(f" {a}") + [EOS]
        assert row["input_ids"] == [BOS] + ords(prompt) + target
        assert row["labels"] == [IGNORE_INDEX] * (1 + len(prompt)) + target
        assert row["attention_mask"] == [1] * len(row["input_ids"])


def test_chat_fticl_masks_token_by_token():
    data, _ = fticl_dataset(Dataset.from_dict(ROWS), TEMPLATE, 1, CharTokenizer(chat=True))
    assert len(data) == 4
    row = data[0]  # "two": prompt and completion are stripped into the two chat turns
    prompt = "<user>Q: one\nA: 1\n\nQ: two\nA:</><assistant>"
    assert row["input_ids"] == ords(prompt + "2</>")
    assert row["labels"] == [IGNORE_INDEX] * len(prompt) + ords("2</>")


def test_same_demonstrations_on_every_row_and_excluded_from_training():
    tok = CharTokenizer()
    data, demos = fticl_dataset(Dataset.from_dict(ROWS), TEMPLATE, 2, tok)
    context = [BOS] + ords(demonstration_context(TEMPLATE, demos) + "\n\n")
    texts = []
    for row in data:
        assert row["input_ids"][: len(context)] == context
        supervised = [t for t in row["labels"] if t != IGNORE_INDEX]
        texts.append("".join(chr(t) for t in supervised if t != EOS))
        query = "".join(chr(t) for t in row["input_ids"][len(context) :])
        assert not any(query.startswith(f"Q: {d['q']}\n") for d in demos)
    assert texts == [" 3", " 4", " 5"]


def test_pool_supplies_demonstrations_and_keeps_every_row():
    pool = [{"q": "zero", "a": "0"}, {"q": "nine", "a": "9"}, {"q": "ten", "a": "10"}]
    data, demos = fticl_dataset(Dataset.from_dict(ROWS), TEMPLATE, 2, CharTokenizer(), pool=pool)
    assert demos == pool[:2] and len(data) == 5
    assert data[0]["input_ids"][:20] == [BOS] + ords("Q: zero\nA: 0\n\nQ: nine\nA: 9")[:19]


def test_k_zero_is_plain_fine_tuning():
    tok = CharTokenizer()
    data, demos = fticl_dataset(Dataset.from_dict(ROWS), TEMPLATE, 0, tok)
    plain = task_dataset(Dataset.from_dict(ROWS), TEMPLATE, tok)
    assert demos == [] and data["input_ids"] == plain["input_ids"] and data["labels"] == plain["labels"]
    assert plain[0]["labels"] == [IGNORE_INDEX] * len([BOS] + ords("Q: one\nA:")) + ords(" 1") + [EOS]


def test_verbalizer_and_truncation_dropping_rows():
    rows = Dataset.from_dict({"text": ["good", "a very long and rather dull review"], "label": [1, 0]})
    tok = CharTokenizer()
    full = task_dataset(rows, SENTIMENT, tok)
    assert [t for t in full[1]["labels"] if t != IGNORE_INDEX] == ords(" negative") + [EOS]
    short = task_dataset(rows, SENTIMENT, tok, max_length=30)  # only "good" keeps a target token
    assert len(short) == 1 and all(len(r) <= 30 for r in short["input_ids"])


def test_real_bpe_tokenizer_prompt_ids_match_evaluation():
    tok = _make_tokenizer()
    out = tokenize_prompt_completion("the cat sat\nAnswer:", " A", tok, chat=False)
    prompt = encode_prompt(tok, "the cat sat\nAnswer:", chat=False)
    assert out["input_ids"][: len(prompt)] == prompt and prompt[0] == tok.bos_token_id
    assert out["labels"][len(prompt) :] == tok(" A", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert out["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)


def test_multiple_choice_template_reuses_eval_prompts():
    from hf_calib.eval.prompts import DEFAULT_LETTERS, build_prompt, read_questions

    row = {"question": "Which is red? ", "choices": ["sky", "blood", "grass"], "answer": 1}
    prompt, completion = MultipleChoiceTemplate().render(row)
    item = read_questions([row], task_column=None)[0]
    assert prompt == build_prompt(item, [], scoring="letter", letters=DEFAULT_LETTERS)
    assert prompt == "Which is red?\nA. sky\nB. blood\nC. grass\nAnswer:" and completion == " B"
    cloze_prompt, cloze = MultipleChoiceTemplate(scoring="cloze").render(row)
    assert cloze_prompt == "Which is red?\nAnswer:" and cloze == " blood"
    with pytest.raises(ValueError, match="answer_column"):
        MultipleChoiceTemplate().render({**row, "answer": 5})


def test_instruction_template():
    tmpl = instruction_template(input_column="input")
    assert tmpl.render({"instruction": "Add.", "input": "2+2", "output": "4"}) == ("Add.\n\n2+2\n\n", "4")
    assert tmpl.columns() == {"instruction", "input", "output"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt": "", "completion": " {a}"}, "prompt must be a non-empty"),
        ({"prompt": "Q: {q}", "completion": "  "}, "completion must be a non-empty"),
        ({"prompt": "Q: {}", "completion": " {a}"}, "positional field"),
        ({"prompt": "Q: {0}", "completion": " {a}"}, "positional field"),
        ({"prompt": "Q: {q", "completion": " {a}"}, "not a valid str.format"),
        ({"prompt": "Q: no field", "completion": " {a}"}, "no \\{column\\} field"),
        ({"prompt": "{q}", "completion": " {a}", "verbalizers": {"a": []}}, "verbalizers\\['a'\\]"),
        ({"prompt": "{q}", "completion": " {a}", "verbalizers": {"z": ["x"]}}, "neither template uses"),
    ],
)
def test_template_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TaskTemplate(**kwargs)


def test_dataset_validation():
    data, tok = Dataset.from_dict(ROWS), CharTokenizer()
    with pytest.raises(ValueError, match=r"reads columns \['text'\]"):
        fticl_dataset(data, TaskTemplate("{text}", " {a}"), 1, tok)
    with pytest.raises(ValueError, match="k must be a non-negative int"):
        fticl_dataset(data, TEMPLATE, -1, tok)
    with pytest.raises(ValueError, match="k must be a non-negative int"):
        fticl_dataset(data, TEMPLATE, True, tok)
    with pytest.raises(ValueError, match="all 5 rows"):
        fticl_dataset(data, TEMPLATE, 5, tok)
    with pytest.raises(ValueError, match="pool has 1 rows"):
        fticl_dataset(data, TEMPLATE, 2, tok, pool=[{"q": "x", "a": "y"}])
    with pytest.raises(ValueError, match="demonstrations lacks"):
        task_dataset(data, TEMPLATE, tok, demonstrations=[{"q": "x"}])
    with pytest.raises(TypeError, match="template must be"):
        task_dataset(data, "Q: {q}", tok)
    with pytest.raises(ValueError, match="class ids in \\[0, 2\\)"):
        SENTIMENT.render({"text": "x", "label": 2})
    with pytest.raises(ValueError, match="use_chat_template=True"):
        task_dataset(data, TEMPLATE, tok, use_chat_template=True)
    with pytest.raises(ValueError, match="no row keeps a supervised token"):
        task_dataset(data, TEMPLATE, tok, max_length=3)


def _tiny_training_data():
    tok = _make_tokenizer()
    words = "the cat dog sat ran on mat red blue big small tree".split()
    rows = {"text": [" ".join(words[i : i + 4]) for i in range(8)], "label": [i % 2 for i in range(8)]}
    template = TaskTemplate("{text}\nAnswer:", " {label}", verbalizers={"label": ["A", "B"]})
    data, demos = fticl_dataset(Dataset.from_dict(rows), template, 2, tok)
    return tok, data


def test_collated_batch_trains_with_calibrated_trainer(tmp_path):
    from transformers import DataCollatorForSeq2Seq, TrainingArguments

    from hf_calib.trainer import CalibratedTrainer

    tok, data = _tiny_training_data()
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE_INDEX)
    batch = collator([data[i] for i in range(len(data))])
    for i in range(len(data)):  # padding adds -100 labels only; real positions keep their labels
        n = len(data[i]["labels"])
        assert batch["labels"][i, :n].tolist() == data[i]["labels"]
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=3,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
    )
    trainer = CalibratedTrainer(model=_llama(len(tok)).train(), args=args, train_dataset=data, data_collator=collator)
    trainer.train()
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    assert trainer.state.global_step == 2 and len(losses) == 2
    assert all(math.isfinite(x) and x > 0 for x in losses)


def test_sft_trainer_keeps_the_fticl_labels(tmp_path):
    trl = pytest.importorskip("trl")

    tok, data = _tiny_training_data()
    config = trl.SFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=3,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
    )
    trainer = trl.SFTTrainer(model=_llama(len(tok)).train(), args=config, train_dataset=data, processing_class=tok)
    prepared = trainer.train_dataset
    assert prepared["labels"] == data["labels"] and prepared["input_ids"] == data["input_ids"]
    batch = trainer.data_collator([prepared[i] for i in range(3)])
    for i in range(3):
        n = len(data[i]["labels"])
        assert batch["labels"][i, :n].tolist() == data[i]["labels"]
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert trainer.state.global_step == 2 and len(losses) == 2
    assert all(math.isfinite(float(x)) and float(x) > 0 for x in losses)


@pytest.mark.integration
def test_smollm2_chat_fticl_supervises_only_the_label():
    from transformers import AutoTokenizer

    from hf_calib.assets import smollm2_path
    from hf_calib.eval.domain import label_token_ids

    tok = AutoTokenizer.from_pretrained(smollm2_path(), local_files_only=True)
    rows = Dataset.from_dict({"text": ["Loved it.", "Dull.", "A gem!"], "label": [1, 0, 1]})
    data, demos = fticl_dataset(rows, SENTIMENT, 2, tok)
    ids, labels = data[0]["input_ids"], data[0]["labels"]
    first = labels.index(next(t for t in labels if t != IGNORE_INDEX))
    assert tok.decode(ids[first:]) == "positive<|im_end|>\n"
    assert labels[first:] == ids[first:] and set(labels[:first]) == {IGNORE_INDEX}
    prompt = tok.decode(ids[:first])
    assert "Review: Loved it.\nSentiment: positive\n\nReview: Dull.\nSentiment: negative\n\nReview: A gem!" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert label_token_ids(SENTIMENT, rows[0], tok, chat=True) == [
        tok("negative", add_special_tokens=False)["input_ids"][0],
        tok("positive", add_special_tokens=False)["input_ids"][0],
    ]
