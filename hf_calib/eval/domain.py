"""In-domain vs out-of-domain evaluation of fine-tuned models on datasets of the same task (Yang et al., NAACL 2024).

Every model is scored on every dataset with the prompts it was trained on (:mod:`hf_calib.data`: the task
template, the same chat-template choice, and for FTICL models the same demonstrations in front):

- **classification**: accuracy of ``argmax_j z[t_j]``, where ``z`` is the next-token logit vector right after
  the prompt and ``t_j`` the first token of the completion of class ``j`` (e.g. ``" positive"``) -- the
  label tokens' first-step logits;
- **generation**: mean ROUGE-L F1 between the greedy continuation and the rendered completion.

:func:`domain_report` returns a :class:`DomainReport` whose :meth:`~DomainReport.table` is a Markdown table
(models as rows, datasets as columns, the training domain marked). Protocol and differences from the paper:
``docs/data_and_eval.md``, section "In-domain vs out-of-domain".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from hf_calib.data.chat import IGNORE_INDEX, encode_prompt, tokenize_prompt_completion, uses_chat_template
from hf_calib.data.fticl import DEMONSTRATION_SEPARATOR, demonstration_context, with_context
from hf_calib.data.templates import TaskTemplate, Template, check_template

from .._model_utils import eval_mode, pad_token_id
from .decoding import generate_from_ids
from .reference import rouge_l
from .scoring import _batches, _Forward

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

__all__ = ["DomainModel", "DomainReport", "domain_report", "evaluate_domains", "format_domain_table", "label_token_ids"]

TASKS = ("classification", "generation")


def label_token_ids(
    template: TaskTemplate, row: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, *, chat: bool
) -> list[int]:
    """The first supervised token of each class's completion, as training sees it after ``row``'s prompt.

    ``ValueError`` if two classes share that token (their first-step logits could not tell them apart).
    """
    column = template.label_column()
    prompt, _ = template.render(row)
    ids = []
    for j in range(len(template.label_words())):
        _, completion = template.render({**row, column: j})
        labels = tokenize_prompt_completion(prompt, completion, tokenizer, chat=chat)["labels"]
        ids.append(next(t for t in labels if t != IGNORE_INDEX))
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"the label words {list(template.label_words())} do not start with distinct tokens ({ids}); choose "
            "words whose first tokens differ."
        )
    return ids


def _prompt_ids(
    dataset: Dataset, template: Template, tokenizer: PreTrainedTokenizerBase, context: str, chat: bool
) -> tuple[list[list[int]], list[str]]:
    prompts, completions = [], []
    for row in dataset:
        prompt, completion = template.render(row)
        prompts.append(encode_prompt(tokenizer, with_context(context, prompt), chat=chat))
        completions.append(completion.strip())
    return prompts, completions


@torch.no_grad()
def _first_step_logits(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    classes: Sequence[int],
    pad_id: int,
    batch_size: int,
    show_progress: bool,
    name: str,
) -> torch.Tensor:
    """``[N, C]`` next-token logits of the class tokens after each prompt (left-padded batches, longest first)."""
    forward = _Forward(model, pad_id)
    columns = torch.tensor(list(classes), dtype=torch.long, device=forward.device)
    out = torch.empty((len(prompts), len(classes)), dtype=torch.float32)
    batches = _batches([len(p) for p in prompts], batch_size)
    with eval_mode(model):
        for batch in tqdm(batches, desc=f"classifying ({name})", disable=not show_progress):
            out[batch] = forward([prompts[i] for i in batch], keep=1)[:, -1].index_select(-1, columns).cpu()
    return out


@torch.no_grad()
def evaluate_domains(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    datasets: Mapping[str, Dataset],
    template: Template,
    *,
    task: str = "classification",
    demonstrations: Sequence[Mapping[str, Any]] = (),
    max_examples: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    use_chat_template: bool | None = None,
    separator: str = DEMONSTRATION_SEPARATOR,
    show_progress: bool = True,
) -> dict[str, float]:
    """``{dataset name: score}`` of one model: accuracy (classification) or mean ROUGE-L F1 (generation).

    Only the first ``max_examples`` rows of each dataset are used (``None``: all); shuffle beforehand for a
    random sample. ``demonstrations`` go in front of every prompt, as in :func:`hf_calib.data.fticl_dataset`.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}.")
    if not datasets:
        raise ValueError("datasets is empty; pass {name: Dataset} with at least one dataset.")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be positive or None; got {max_examples}.")
    if task == "classification" and not isinstance(template, TaskTemplate):
        raise TypeError("task='classification' needs a TaskTemplate with a verbalized completion, e.g. ' {label}'.")
    chat = uses_chat_template(tokenizer, use_chat_template)
    context = demonstration_context(template, demonstrations, separator)
    scores = {}
    for name, dataset in datasets.items():
        check_template(template, dataset.column_names, f"datasets[{name!r}]")
        if max_examples is not None:
            dataset = dataset.select(range(min(max_examples, len(dataset))))
        if len(dataset) == 0:
            raise ValueError(f"datasets[{name!r}] is empty.")
        prompts, completions = _prompt_ids(dataset, template, tokenizer, context, chat)
        if task == "classification":
            classes = label_token_ids(template, dataset[0], tokenizer, chat=chat)
            pad_id = pad_token_id(tokenizer, strict=True)
            logits = _first_step_logits(model, prompts, classes, pad_id, batch_size, show_progress, name)
            labels = torch.tensor(dataset[template.label_column()])
            scores[name] = (logits.argmax(-1) == labels).float().mean().item()
        else:
            replies = generate_from_ids(
                model,
                tokenizer,
                prompts,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                show_progress=show_progress,
                desc=f"generating ({name})",
            )
            scores[name] = rouge_l(replies, completions)
    return scores


@dataclass
class DomainModel:
    """A model to compare: its tokenizer and the demonstrations it is prompted with (FTICL; ``()`` otherwise)."""

    name: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    demonstrations: Sequence[Mapping[str, Any]] = ()


@dataclass
class DomainReport:
    """``scores[model][dataset]`` for one ``metric``; ``in_domain`` names the training dataset (or ``None``)."""

    metric: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    in_domain: str | None = None

    def table(self, digits: int = 3) -> str:
        """The scores as a Markdown table (see :func:`format_domain_table`)."""
        return format_domain_table(self.scores, metric=self.metric, in_domain=self.in_domain, digits=digits)


def format_domain_table(
    scores: Mapping[str, Mapping[str, float]], *, metric: str, in_domain: str | None = None, digits: int = 3
) -> str:
    """Markdown table: one row per model, one column per dataset (``name (in-domain)`` for the training one).

    With two or more out-of-domain datasets an ``out-of-domain mean`` column is added. A model missing a
    dataset shows ``-``.
    """
    if not scores:
        raise ValueError("scores is empty; nothing to tabulate.")
    datasets = list(dict.fromkeys(d for row in scores.values() for d in row))
    if in_domain is not None and in_domain not in datasets:
        raise ValueError(f"in_domain={in_domain!r} is not one of the datasets {datasets}.")
    out_domain = [d for d in datasets if d != in_domain] if in_domain is not None else []
    headers = [f"{d} (in-domain)" if d == in_domain else d for d in datasets]
    if len(out_domain) >= 2:
        headers.append("out-of-domain mean")
    lines = [f"| model ({metric}) | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    for model, row in scores.items():
        cells = [f"{row[d]:.{digits}f}" if d in row else "-" for d in datasets]
        if len(out_domain) >= 2:
            values = [row[d] for d in out_domain if d in row]
            cells.append(f"{sum(values) / len(values):.{digits}f}" if len(values) == len(out_domain) else "-")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def domain_report(
    models: Sequence[DomainModel],
    datasets: Mapping[str, Dataset],
    template: Template,
    *,
    task: str = "classification",
    in_domain: str | None = None,
    print_table: bool = True,
    **kwargs: Any,
) -> DomainReport:
    """Score every model on every dataset (:func:`evaluate_domains`; ``kwargs`` go there) and tabulate.

    Prints the Markdown table unless ``print_table=False``.
    """
    if not models or not all(isinstance(m, DomainModel) for m in models):
        raise ValueError("models must be a non-empty list of DomainModel(name, model, tokenizer, demonstrations).")
    if len({m.name for m in models}) != len(models):
        raise ValueError("two models share a name; name each DomainModel uniquely.")
    if in_domain is not None and in_domain not in datasets:
        raise ValueError(f"in_domain={in_domain!r} is not a key of datasets ({list(datasets)}).")
    report = DomainReport(metric="accuracy" if task == "classification" else "rougeL", in_domain=in_domain)
    for entry in models:
        report.scores[entry.name] = evaluate_domains(
            entry.model, entry.tokenizer, datasets, template, task=task, demonstrations=entry.demonstrations, **kwargs
        )
    if print_table:
        print(report.table())
    return report
