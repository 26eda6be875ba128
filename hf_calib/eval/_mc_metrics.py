"""Calibration metrics of multiple-choice option scores, per task, macro-averaged and pooled.

The metric half of :mod:`hf_calib.eval.multiple_choice` (which re-exports :func:`task_key`,
:func:`multiple_choice_metrics` and ``REPORTED_METRICS``); definitions in ``docs/metrics.md``,
section "Conventions and formulas".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from ..metrics import CalibrationState

REPORTED_METRICS = ("accuracy", "mean_confidence", "ece", "mce", "brier", "nll")
_KEY_PART = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")


def task_key(task: str) -> str:
    """A short, TensorBoard-safe key part of a task name: lower case, runs of other characters -> ``_``.

    ``"high school biology"`` -> ``"high_school_biology"``.
    """
    return re.sub(r"[^a-z0-9]+", "_", task.lower()).strip("_") or "task"


def multiple_choice_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    task_ids: torch.Tensor,
    tasks: Sequence[str],
    *,
    n_bins: int = 15,
    prefix: str = "mc",
    per_task: bool = True,
) -> dict[str, float]:
    """Calibration metrics of option scores, per task, macro-averaged and pooled.

    ``p_i = softmax(logits_i)`` over question i's options (entries equal to ``-inf`` are absent options);
    then per group of questions: ``accuracy``, ``mean_confidence`` (mean top-1 probability), ``ece`` and
    ``mce`` (``n_bins`` equal-width bins), ``brier`` (``sum_c (p_ic - 1[y_i = c])^2``, not divided by C)
    and ``nll`` (``-log p_iy`` from the logits), as in :class:`hf_calib.metrics.CalibrationState`.

    Keys: ``{prefix}/{task_key(task)}/{metric}`` per task (if ``per_task``), ``{prefix}/macro/{metric}``
    (unweighted mean over tasks) and ``{prefix}/micro/{metric}`` (all questions pooled).

    Args:
        logits: [N, C] option scores, finite for each question's options, ``-inf`` after them.
        labels: [N] correct option indices.
        task_ids: [N] indices into ``tasks``; every task must have at least one question.
        tasks: task names.
    """
    logits = torch.as_tensor(logits).detach().float().cpu()
    labels = torch.as_tensor(labels).long().cpu()
    task_ids = torch.as_tensor(task_ids).long().cpu()
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or task_ids.shape != labels.shape:
        raise ValueError(
            f"logits must be [N, C] with labels and task_ids [N]; got {tuple(logits.shape)}, {tuple(labels.shape)} "
            f"and {tuple(task_ids.shape)}."
        )
    if logits.shape[0] == 0:
        raise ValueError("logits is empty; there are no questions to score.")
    keys = _task_keys(tasks, prefix)
    num_choices = torch.isfinite(logits).sum(dim=-1)
    present = torch.arange(logits.shape[1])[None, :] < num_choices[:, None]
    if not bool((torch.isfinite(logits) == present).all()) or bool((logits[~present] != -torch.inf).any()):
        raise ValueError("logits must be finite for each question's options and -inf only after them.")
    if bool(((task_ids < 0) | (task_ids >= len(tasks))).any()):
        raise ValueError(f"task_ids must index tasks (0 .. {len(tasks) - 1}).")

    out: dict[str, float] = {}
    per_task_values: list[dict[str, float]] = []
    pooled = CalibrationState(n_bins, keep_samples=False)
    for t, key in enumerate(keys):
        state = CalibrationState(n_bins, keep_samples=False)
        rows = task_ids == t
        if not bool(rows.any()):
            raise ValueError(f"task {tasks[t]!r} has no question; drop it from tasks.")
        # Questions with different numbers of options are fed separately (full rows, no padding).
        for c in torch.unique(num_choices[rows]).tolist():
            group = rows & (num_choices == c)
            state.update_from_logits(logits[group, :c], labels[group])
        values = _reported(state)
        per_task_values.append(values)
        if per_task:
            out.update({f"{prefix}/{key}/{m}": v for m, v in values.items()})
        pooled.merge(state)
    out.update({f"{prefix}/macro/{m}": sum(v[m] for v in per_task_values) / len(keys) for m in REPORTED_METRICS})
    out.update({f"{prefix}/micro/{m}": v for m, v in _reported(pooled).items()})
    return out


def _reported(state: CalibrationState) -> dict[str, float]:
    computed = state.compute()
    return {m: float(computed[m]) for m in REPORTED_METRICS}


def _task_keys(tasks: Sequence[str], prefix: str) -> list[str]:
    if not isinstance(prefix, str) or not _KEY_PART.fullmatch(prefix):
        raise ValueError(f"prefix must be a non-empty key made of letters, digits, '_', '.', '-', '/'; got {prefix!r}.")
    keys = [task_key(t) for t in tasks]
    seen: dict[str, str] = {}
    for task, key in zip(tasks, keys, strict=True):
        if key in ("macro", "micro"):
            raise ValueError(f"task {task!r} would clash with the {key!r} metrics; rename it in the task column.")
        if key in seen:
            raise ValueError(f"tasks {seen[key]!r} and {task!r} share the metric key {key!r}; rename one of them.")
        seen[key] = task
    return keys
