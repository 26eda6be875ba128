"""Fine-tuning datasets: plain (prompt -> completion) and FTICL (the same k demonstrations in front of every row).

FTICL (Yang et al., "Unveiling the Generalization Power of Fine-Tuned Large Language Models", NAACL 2024;
specification, choice of ``k`` and differences from the paper: ``docs/data_and_eval.md``, section "FTICL: the
same demonstrations in front of every example"). With demonstrations ``d_1..d_k`` (the first ``k`` rows of a
few-shot pool), each rendered by the task template as ``prompt_i + completion_i``, every training row ``x``
becomes::

    prompt_1 + completion_1  "\\n\\n"  ...  prompt_k + completion_k  "\\n\\n"  prompt(x)   |   completion(x)
    <------------------------------------- label -100 -------------------------------->   <- supervised ->

The context is identical for every row. When the pool is the training set itself, its first ``k`` rows
are the demonstrations and are removed from the rows trained on, so no row is its own demonstration.
``k = 0`` is plain fine-tuning. The output columns ``input_ids``, ``attention_mask``, ``labels`` suit
``CalibratedTrainer`` (with ``DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)``) and TRL's
``SFTTrainer`` (which keeps a given ``labels`` column as is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .chat import IGNORE_INDEX, tokenize_prompt_completion, uses_chat_template
from .templates import Template, check_template

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

__all__ = ["DEMONSTRATION_SEPARATOR", "demonstration_context", "fticl_dataset", "task_dataset", "with_context"]

DEMONSTRATION_SEPARATOR = "\n\n"


def _rows(data: Dataset | Sequence[Mapping[str, Any]], name: str) -> list[dict[str, Any]]:
    if isinstance(data, str | bytes | Mapping) or not hasattr(data, "__len__"):
        raise TypeError(f"{name} must be a datasets.Dataset or a list of dicts; got {type(data).__name__}.")
    return [dict(row) for row in data]


def _column_names(data: Dataset | Sequence[Mapping[str, Any]]) -> list[str]:
    if hasattr(data, "column_names"):
        return list(data.column_names)
    return list(data[0]) if len(data) else []


def demonstration_context(
    template: Template, demonstrations: Sequence[Mapping[str, Any]], separator: str = DEMONSTRATION_SEPARATOR
) -> str:
    """``prompt_1 + completion_1 + sep + ... + prompt_k + completion_k`` (``""`` for no demonstrations)."""
    return separator.join("".join(template.render(row)) for row in demonstrations)


def with_context(context: str, prompt: str, separator: str = DEMONSTRATION_SEPARATOR) -> str:
    """The prompt behind its demonstrations: ``context + separator + prompt`` (``prompt`` alone for no context)."""
    return f"{context}{separator}{prompt}" if context else prompt


def task_dataset(
    dataset: Dataset,
    template: Template,
    tokenizer: PreTrainedTokenizerBase,
    *,
    demonstrations: Sequence[Mapping[str, Any]] = (),
    max_length: int | None = None,
    use_chat_template: bool | None = None,
    add_eos: bool = True,
    separator: str = DEMONSTRATION_SEPARATOR,
    drop_unsupervised: bool = True,
) -> Dataset:
    """Tokenize every row of ``dataset`` as ``context + prompt -> completion`` with completion-only labels.

    ``context`` is :func:`demonstration_context` of ``demonstrations`` (empty: plain fine-tuning). With a
    chat template (``use_chat_template=None``: when the tokenizer has one) the context and prompt form the
    user message and the completion the assistant message. Rows that ``max_length`` cuts down to no
    supervised token are dropped when ``drop_unsupervised`` (the default), since they only add padding.

    Returns a ``Dataset`` with ``input_ids``, ``attention_mask`` and ``labels`` (other columns removed).
    """
    check_template(template, _column_names(dataset), "dataset")
    if demonstrations:
        check_template(template, _column_names(demonstrations), "demonstrations")
    chat = uses_chat_template(tokenizer, use_chat_template)
    context = demonstration_context(template, demonstrations, separator)

    def encode(row: Mapping[str, Any]) -> dict[str, list[int]]:
        prompt, completion = template.render(row)
        return tokenize_prompt_completion(
            with_context(context, prompt, separator),
            completion,
            tokenizer,
            chat=chat,
            max_length=max_length,
            add_eos=add_eos,
        )

    out = dataset.map(encode, remove_columns=dataset.column_names, desc="tokenizing")
    if drop_unsupervised:
        out = out.filter(lambda row: any(t != IGNORE_INDEX for t in row["labels"]), desc="dropping prompt-only rows")
    if len(out) == 0:
        raise ValueError("no row keeps a supervised token; raise max_length or shorten the prompts.")
    return out


def fticl_dataset(
    dataset: Dataset,
    template: Template,
    k: int,
    tokenizer: PreTrainedTokenizerBase,
    *,
    pool: Dataset | Sequence[Mapping[str, Any]] | None = None,
    max_length: int | None = None,
    use_chat_template: bool | None = None,
    add_eos: bool = True,
    separator: str = DEMONSTRATION_SEPARATOR,
) -> tuple[Dataset, list[dict[str, Any]]]:
    """FTICL training data: the same ``k`` demonstrations in front of every row (see the module docs).

    The demonstrations are the first ``k`` rows of ``pool``; without a pool they are the first ``k`` rows of
    ``dataset``, which are then left out of the returned training rows. Shuffle beforehand for a random
    choice. ``k = 0`` gives plain fine-tuning data.

    Returns ``(tokenized dataset, demonstrations)``; evaluate the model with the same demonstrations
    (e.g. ``hf_calib.eval.evaluate_domains(..., demonstrations=demos)``).

    Raises:
        ValueError: ``k`` negative or larger than the pool, or the template reads a missing column.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int (the number of demonstrations); got {k!r}.")
    check_template(template, _column_names(dataset), "dataset")
    if pool is None:
        if k >= len(dataset):
            raise ValueError(f"k={k} would use all {len(dataset)} rows as demonstrations; pass a pool or lower k.")
        demonstrations = _rows(dataset.select(range(k)), "dataset")
        train = dataset.select(range(k, len(dataset)))
    else:
        rows = _rows(pool, "pool")
        if k > len(rows):
            raise ValueError(f"k={k} but the pool has {len(rows)} rows; lower k or pass a larger pool.")
        demonstrations, train = rows[:k], dataset
    tokenized = task_dataset(
        train,
        template,
        tokenizer,
        demonstrations=demonstrations,
        max_length=max_length,
        use_chat_template=use_chat_template,
        add_eos=add_eos,
        separator=separator,
    )
    return tokenized, demonstrations
