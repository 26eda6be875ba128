"""Cross-task tables: train on task A, evaluate on A and on B; train on B, evaluate on B and on A.

Yang et al. (NAACL 2024) compare fine-tuned models across *tasks* as well as across domains of one task.
A :class:`CrossTaskReport` holds one score per (method, training task, evaluated task, metric, seed):

- :meth:`CrossTaskReport.table`: rows are the models (method and training task; the base model has none),
  columns the evaluated tasks; the in-task cell (trained and evaluated on the same task) is in bold;
- :meth:`CrossTaskReport.summary_table`: per method, the in-task score (mean over the training tasks of
  the score on the task trained on) and the cross-task score (mean over the training tasks of the mean
  score on the other tasks). A model without a training task (the base model) gets its mean over all
  tasks in both columns.

Every cell is the mean over seeds with its standard error (:func:`hf_calib.eval.report_tables.mean_se`);
summary cells average within a seed first. Each task is scored with its own template and, for
in-context models (FTICL, base + ICL), its own demonstrations (:func:`evaluate_cross_task`). Protocol:
``docs/data_and_eval.md``, section "Example: FT vs FTICL on generation, across tasks".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from hf_calib.data.templates import Template

from .domain import TASK_METRICS, domain_scores
from .report_tables import _summary, format_cell

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

__all__ = ["CrossTaskModel", "CrossTaskReport", "EvalTask", "cross_task_report", "evaluate_cross_task"]


@dataclass(frozen=True)
class EvalTask:
    """A task to evaluate on: its held-out rows, their template and the kind of task (see ``TASK_METRICS``)."""

    name: str
    dataset: Dataset
    template: Template
    task: str = "generation"

    def __post_init__(self) -> None:
        if self.task not in TASK_METRICS:
            raise ValueError(f"EvalTask {self.name!r}: task must be one of {tuple(TASK_METRICS)}; got {self.task!r}.")


@dataclass
class CrossTaskModel:
    """One model of one seed: ``method`` (e.g. ``"FT"``), the task it was ``trained_on`` (``None``: base model).

    ``demonstrations[task name]`` are put in front of that task's prompts (FTICL and ICL models: the task's
    own ``k`` demonstrations); tasks not in it are prompted without demonstrations.
    """

    method: str
    trained_on: str | None
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    demonstrations: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)


def evaluate_cross_task(entry: CrossTaskModel, tasks: Sequence[EvalTask], **kwargs: Any) -> dict[str, dict[str, float]]:
    """``{task name: {metric: score}}`` of one model on every task (:func:`~hf_calib.eval.domain.domain_scores`
    with the task's template and the model's demonstrations for it; ``kwargs`` go there)."""
    _check_tasks(tasks)
    unknown = set(entry.demonstrations) - {t.name for t in tasks}
    if unknown:
        raise ValueError(f"demonstrations name tasks that are not evaluated: {sorted(unknown)}.")
    scores = {}
    for t in tasks:
        shots = entry.demonstrations.get(t.name, ())
        one = domain_scores(
            entry.model, entry.tokenizer, {t.name: t.dataset}, t.template, task=t.task, demonstrations=shots, **kwargs
        )
        scores[t.name] = one[t.name]
    return scores


def _check_tasks(tasks: Sequence[EvalTask]) -> None:
    if not tasks or not all(isinstance(t, EvalTask) for t in tasks):
        raise ValueError("tasks must be a non-empty list of EvalTask(name, dataset, template, task).")
    if len({t.name for t in tasks}) != len(tasks):
        raise ValueError("two tasks share a name; name each EvalTask uniquely.")


Key = tuple[str, str | None]


@dataclass
class CrossTaskReport:
    """``values[(method, trained_on)][task][metric][seed]``; ``tasks``: evaluated task names, in column order."""

    tasks: list[str]
    metrics: tuple[str, ...]
    values: dict[Key, dict[str, dict[str, dict[int, float]]]] = field(default_factory=dict)

    def add(
        self, method: str, trained_on: str | None, scores: Mapping[str, Mapping[str, float]], seed: int = 0
    ) -> None:
        """Record one model's ``{task: {metric: score}}`` for ``seed`` (a repeated seed overwrites)."""
        if trained_on is not None and trained_on not in self.tasks:
            raise ValueError(f"trained_on={trained_on!r} is not one of the tasks {self.tasks} (or None for base).")
        row = self.values.setdefault((method, trained_on), {})
        for task, cell in scores.items():
            if task not in self.tasks:
                raise ValueError(f"scores name task {task!r}, which is not one of {self.tasks}.")
            for metric, value in cell.items():
                row.setdefault(task, {}).setdefault(metric, {})[seed] = float(value)

    def _cell(self, key: Key, task: str, metric: str) -> dict[int, float]:
        return self.values.get(key, {}).get(task, {}).get(metric, {})

    def table(self, metric: str | None = None, digits: int = 3) -> str:
        """Markdown: one row per (method, training task), one column per evaluated task; in-task in bold."""
        metric = self._metric(metric)
        seeds = max((len(self._cell(k, t, metric)) for k in self.values for t in self.tasks), default=0)
        label = f"{metric}; mean ± SE over {seeds} seeds" if seeds > 1 else metric
        lines = [
            f"| model ({label}) | trained on | " + " | ".join(f"eval: {t}" for t in self.tasks) + " |",
            "|---" * (len(self.tasks) + 2) + "|",
        ]
        for (method, trained_on), _ in self.values.items():
            cells = []
            for t in self.tasks:
                seed_values = self._cell((method, trained_on), t, metric)
                text = format_cell(list(seed_values.values()), digits) if seed_values else "-"
                cells.append(f"**{text}**" if t == trained_on and seed_values else text)
            lines.append(f"| {method} | {trained_on or '-'} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def summary(self, metric: str | None = None) -> dict[str, dict[str, dict[int, float]]]:
        """``{method: {"in-task" | "cross-task": {seed: score}}}`` (see the module docs); only seeds that have
        every cell the average needs are kept."""
        metric = self._metric(metric)
        out: dict[str, dict[str, dict[int, float]]] = {}
        for method in dict.fromkeys(m for m, _ in self.values):
            trained = [k for k in self.values if k[0] == method]
            parts: dict[str, list[tuple[Key, list[str]]]] = {"in-task": [], "cross-task": []}
            for key in trained:
                own = [key[1]] if key[1] is not None else list(self.tasks)
                others = [t for t in self.tasks if t != key[1]] if key[1] is not None else list(self.tasks)
                parts["in-task"].append((key, own))
                parts["cross-task"].append((key, others))
            out[method] = {name: self._per_seed(groups, metric) for name, groups in parts.items()}
        return out

    def _per_seed(self, groups: list[tuple[Key, list[str]]], metric: str) -> dict[int, float]:
        cells = [[self._cell(key, t, metric) for t in tasks] for key, tasks in groups if tasks]
        if not cells:
            return {}
        common = set.intersection(*(set(c) for group in cells for c in group))
        return {
            s: math.fsum(math.fsum(c[s] for c in group) / len(group) for group in cells) / len(cells)
            for s in sorted(common)
        }

    def summary_table(self, metric: str | None = None, digits: int = 3) -> str:
        """Markdown: per method, the in-task and the cross-task score (mean ± SE over seeds)."""
        metric = self._metric(metric)
        lines = [f"| method ({metric}) | in-task | cross-task | seeds |", "|---|---|---|---|"]
        for method, parts in self.summary(metric).items():
            cells = [format_cell(list(parts[p].values()), digits) if parts[p] else "-" for p in parts]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {len(parts['in-task'])} |")
        return "\n".join(lines)

    def markdown(self, digits: int = 3) -> str:
        """Every metric's full table and summary table."""
        return "\n\n".join(f"{self.table(m, digits)}\n\n{self.summary_table(m, digits)}" for m in self.metrics)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tasks, metrics, one record per (method, trained_on, task, metric), and the summaries."""
        cells = [
            {
                "method": m,
                "trained_on": t,
                "task": task,
                "metric": metric,
                **_summary(list(v.values())),
                "seeds": list(v),
            }
            for (m, t), row in self.values.items()
            for task, by_metric in row.items()
            for metric, v in by_metric.items()
        ]
        summary = {
            metric: {
                method: {p: {**_summary(list(v.values())), "seeds": list(v)} for p, v in parts.items() if v}
                for method, parts in self.summary(metric).items()
            }
            for metric in self.metrics
        }
        return {"tasks": list(self.tasks), "metrics": list(self.metrics), "cells": cells, "summary": summary}

    def _metric(self, metric: str | None) -> str:
        if metric is None:
            return self.metrics[0]
        if metric not in self.metrics:
            raise ValueError(f"metric must be one of {self.metrics}; got {metric!r}.")
        return metric


def cross_task_report(
    runs: Sequence[Sequence[CrossTaskModel]],
    tasks: Sequence[EvalTask],
    *,
    print_table: bool = True,
    **kwargs: Any,
) -> CrossTaskReport:
    """Score every model of every seed on every task (``runs[seed]``: that seed's models; ``kwargs`` go to
    :func:`evaluate_cross_task`) and tabulate. Prints :meth:`CrossTaskReport.markdown` unless told not to.

    For models too large to hold at once, build the report yourself: ``report.add(method, trained_on,
    evaluate_cross_task(model, tasks), seed)`` one model at a time.
    """
    _check_tasks(tasks)
    if not runs or not all(isinstance(r, Sequence) and all(isinstance(m, CrossTaskModel) for m in r) for r in runs):
        raise ValueError("runs must be a non-empty list (one per seed) of lists of CrossTaskModel.")
    metrics = tuple(dict.fromkeys(m for t in tasks for m in TASK_METRICS[t.task]))
    report = CrossTaskReport(tasks=[t.name for t in tasks], metrics=metrics)
    for seed, run in enumerate(runs):
        keys = [(m.method, m.trained_on) for m in run]
        if len(set(keys)) != len(keys):
            raise ValueError(f"runs[{seed}] has two models with the same (method, trained_on).")
        for entry in run:
            report.add(entry.method, entry.trained_on, evaluate_cross_task(entry, tasks, **kwargs), seed)
    if print_table:
        print(report.markdown())
    return report
