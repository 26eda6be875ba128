"""In-domain vs out-of-domain evaluation of fine-tuned models on datasets of the same task (Yang et al., NAACL 2024).

Every model is scored on every dataset with the prompts it was trained on (:mod:`hf_calib.data`: the task
template, the same chat-template choice, and for FTICL models the same demonstrations in front):

- **classification**: accuracy of ``argmax_j z[t_j]``, where ``z`` is the next-token logit vector right after
  the prompt and ``t_j`` the first token of the completion of class ``j`` (e.g. ``" positive"``) -- the
  label tokens' first-step logits;
- **generation**: mean ROUGE-L F1 and corpus BLEU between the greedy continuations and the rendered
  completions (:func:`domain_scores`; :func:`evaluate_domains` keeps the first metric only).

:func:`domain_report` returns a :class:`DomainReport` whose :meth:`~DomainReport.table` is a Markdown table
(models as rows, datasets as columns, the training domain marked); given one list of models per seed it
reports the mean and the standard error over seeds of every cell. Protocol and differences from the paper:
``docs/data_and_eval.md``, section "In-domain vs out-of-domain". Cross-task tables (train on task A,
evaluate on A and B): :mod:`hf_calib.eval.cross_task`.
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
from .reference import bleu, rouge_l
from .report_tables import _summary, format_cell, format_domain_table, mean_se
from .scoring import _batches, _Forward

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "TASK_METRICS",
    "DomainModel",
    "DomainReport",
    "domain_report",
    "domain_scores",
    "evaluate_domains",
    "format_cell",
    "format_domain_table",
    "label_token_ids",
    "mean_se",
]

# The metrics each task reports, the first being the headline one (``evaluate_domains``, ``DomainReport.metric``).
TASK_METRICS: dict[str, tuple[str, ...]] = {"classification": ("accuracy",), "generation": ("rougeL", "bleu")}
TASKS = tuple(TASK_METRICS)
_GENERATION_METRICS = {"rougeL": rouge_l, "bleu": bleu}


def _check_metrics(task: str, metrics: Sequence[str] | None) -> tuple[str, ...]:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}.")
    if metrics is None:
        return TASK_METRICS[task]
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if not metrics or any(m not in TASK_METRICS[task] for m in metrics) or len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics for task={task!r} must be distinct names from {TASK_METRICS[task]}; got {metrics}.")
    return metrics


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
def domain_scores(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    datasets: Mapping[str, Dataset],
    template: Template,
    *,
    task: str = "classification",
    metrics: Sequence[str] | None = None,
    demonstrations: Sequence[Mapping[str, Any]] = (),
    max_examples: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    use_chat_template: bool | None = None,
    separator: str = DEMONSTRATION_SEPARATOR,
    show_progress: bool = True,
    replies: dict[str, list[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """``{dataset name: {metric: score}}`` of one model.

    ``metrics`` (default :data:`TASK_METRICS` ``[task]``): ``"accuracy"`` for classification; ``"rougeL"``
    (mean ROUGE-L F1, ``[0, 1]``) and ``"bleu"`` (corpus BLEU, ``[0, 100]``) of the greedy replies for
    generation. Only the first ``max_examples`` rows of each dataset are used (``None``: all); shuffle
    beforehand for a random sample. ``demonstrations`` go in front of every prompt, as in
    :func:`hf_calib.data.fticl_dataset`. Pass a dict as ``replies`` to receive the generated texts
    (``{dataset name: [reply, ...]}``; generation only).
    """
    metrics = _check_metrics(task, metrics)
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
            scores[name] = {"accuracy": (logits.argmax(-1) == labels).float().mean().item()}
            continue
        texts = generate_from_ids(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            show_progress=show_progress,
            desc=f"generating ({name})",
        )
        scores[name] = {m: _GENERATION_METRICS[m](texts, completions) for m in metrics}
        if replies is not None:
            replies[name] = list(texts)
    return scores


def evaluate_domains(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    datasets: Mapping[str, Dataset],
    template: Template,
    *,
    task: str = "classification",
    **kwargs: Any,
) -> dict[str, float]:
    """``{dataset name: score}`` of one model: accuracy (classification) or mean ROUGE-L F1 (generation).

    The headline metric of :func:`domain_scores` (same arguments; ``metrics=`` picks another single one).
    """
    metrics = _check_metrics(task, kwargs.pop("metrics", None))[:1]
    scores = domain_scores(model, tokenizer, datasets, template, task=task, metrics=metrics, **kwargs)
    return {name: row[metrics[0]] for name, row in scores.items()}


@dataclass
class DomainModel:
    """A model to compare: its tokenizer and the demonstrations it is prompted with (FTICL; ``()`` otherwise)."""

    name: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    demonstrations: Sequence[Mapping[str, Any]] = ()


@dataclass
class DomainReport:
    """``scores[model][dataset]``: the headline ``metric`` (mean over seeds); ``in_domain``: the training dataset.

    ``seed_scores[model][dataset][metric]`` holds one value per seed for every metric of ``metrics``.
    """

    metric: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    in_domain: str | None = None
    metrics: tuple[str, ...] = ()
    seed_scores: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)

    def table(self, digits: int = 3, metric: str | None = None) -> str:
        """One metric (default the headline one) as a Markdown table (see :func:`format_domain_table`)."""
        metric = metric or self.metric
        if not self.seed_scores:
            return format_domain_table(self.scores, metric=metric, in_domain=self.in_domain, digits=digits)
        if metric not in (self.metrics or (self.metric,)):
            raise ValueError(f"metric must be one of {self.metrics}; got {metric!r}.")
        cells = {m: {d: v[metric] for d, v in row.items()} for m, row in self.seed_scores.items()}
        return format_domain_table(cells, metric=metric, in_domain=self.in_domain, digits=digits)

    def tables(self, digits: int = 3) -> str:
        """One table per metric, separated by a blank line."""
        return "\n\n".join(self.table(digits, m) for m in self.metrics or (self.metric,))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{metrics, in_domain, scores: {model: {dataset: {metric: {mean, se, n, values}}}}}``."""
        return {
            "metrics": list(self.metrics or (self.metric,)),
            "in_domain": self.in_domain,
            "scores": {
                model: {d: {m: _summary(v) for m, v in cell.items()} for d, cell in row.items()}
                for model, row in self.seed_scores.items()
            },
        }


def _seed_lists(models: Sequence[DomainModel] | Sequence[Sequence[DomainModel]]) -> list[list[DomainModel]]:
    """``models`` as one list per seed, each with the same unique names."""
    if models and all(isinstance(m, DomainModel) for m in models):
        runs = [list(models)]
    elif models and all(isinstance(r, Sequence) and r and all(isinstance(m, DomainModel) for m in r) for r in models):
        runs = [list(r) for r in models]
    else:
        raise ValueError(
            "models must be a non-empty list of DomainModel(name, model, tokenizer, demonstrations), or one such "
            "list per seed."
        )
    for run in runs:
        if len({m.name for m in run}) != len(run):
            raise ValueError("two models share a name; name each DomainModel uniquely.")
        if {m.name for m in run} != {m.name for m in runs[0]}:
            raise ValueError("every seed's list must hold the same model names.")
    return runs


def domain_report(
    models: Sequence[DomainModel] | Sequence[Sequence[DomainModel]],
    datasets: Mapping[str, Dataset],
    template: Template,
    *,
    task: str = "classification",
    metrics: Sequence[str] | None = None,
    in_domain: str | None = None,
    print_table: bool = True,
    **kwargs: Any,
) -> DomainReport:
    """Score every model on every dataset (:func:`domain_scores`; ``kwargs`` go there) and tabulate.

    ``models`` is a list of :class:`DomainModel`, or one such list per seed (the same names in each): every
    cell is then the mean over seeds with its standard error. Prints the tables unless ``print_table=False``.
    """
    runs = _seed_lists(models)
    metrics = _check_metrics(task, metrics)
    if in_domain is not None and in_domain not in datasets:
        raise ValueError(f"in_domain={in_domain!r} is not a key of datasets ({list(datasets)}).")
    report = DomainReport(metric=metrics[0], in_domain=in_domain, metrics=metrics)
    for run in runs:
        for entry in run:
            scores = domain_scores(
                entry.model,
                entry.tokenizer,
                datasets,
                template,
                task=task,
                metrics=metrics,
                demonstrations=entry.demonstrations,
                **kwargs,
            )
            row = report.seed_scores.setdefault(entry.name, {})
            for name, cell in scores.items():
                for metric, value in cell.items():
                    row.setdefault(name, {}).setdefault(metric, []).append(value)
    for model in (m.name for m in runs[0]):
        report.scores[model] = {d: mean_se(v[metrics[0]])[0] for d, v in report.seed_scores[model].items()}
    if print_table:
        print(report.tables())
    return report
