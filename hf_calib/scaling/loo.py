"""Leave-one-task-out evaluation of Thermometer against temperature-scaling baselines (Shen et al., ICML 2024).

For every held-out task ``t`` and seed ``s``:

* ``uncalibrated``: ``softmax(z)``;
* ``thermometer``: trained (seed ``s``) on all other tasks; ``T = 1 / mean beta`` over task ``t``'s
  features, no labels of ``t`` used;
* ``temperature_scaling``: one temperature fitted (NLL) on all other tasks' logits pooled;
* ``oracle``: temperature scaling fitted on task ``t``'s own labels (a lower bound for any single
  temperature, not a fair method).

Each is scored on all of task ``t``'s examples with :mod:`hf_calib.metrics` (``n_bins`` equal-width bins,
10 as in the paper): accuracy, ECE, MCE, top-label ECE, NLL, Brier (``sum_c``) and ``brier_mean``
(divided by C, the paper code's Brier). Only Thermometer depends on the seed; the other methods are
deterministic and evaluated once. The paper averages 5 seeds (default here: 3); see ``docs/scaling.md``,
section "Leave-one-task-out evaluation".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..metrics import accuracy as accuracy_score
from ..metrics import brier_score, calibration_error, nll, nll_from_logits, top_label_calibration_error
from ._checks import scale_logits
from .temperature import fit_temperature
from .thermometer import ThermometerConfig
from .training import ThermometerTask, check_tasks, train_thermometer

METHODS = ("uncalibrated", "thermometer", "temperature_scaling", "oracle")
METRICS = ("accuracy", "ece", "mce", "tl_ece", "nll", "brier", "brier_mean", "temperature")


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, temperature: float, n_bins: int = 10) -> dict:
    """Metrics of ``softmax(logits / temperature)`` against ``labels`` (keys: :data:`METRICS`)."""
    scaled = scale_logits(logits.double(), 1.0 / temperature)
    probs = torch.softmax(scaled, dim=-1)
    confidence, prediction = probs.max(dim=-1)
    correct = prediction == labels
    finite = bool(torch.isfinite(scaled).all())
    return {
        "accuracy": accuracy_score(probs, labels),
        "ece": calibration_error(confidence, correct, n_bins=n_bins),
        "mce": calibration_error(confidence, correct, n_bins=n_bins, norm="max"),
        "tl_ece": top_label_calibration_error(probs, labels, n_bins=n_bins),
        "nll": nll_from_logits(scaled, labels) if finite else nll(probs, labels),
        "brier": brier_score(probs, labels),
        "brier_mean": brier_score(probs, labels, normalize=True),
        "temperature": float(temperature),
    }


@dataclass
class LeaveOneOutResult:
    """Per (task, method, seed) metrics; ``seed`` is None for the seed-independent methods."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    n_bins: int = 10

    def per_task(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{task: {method: {metric: mean over seeds}}}``, plus ``{metric}_std`` over Thermometer seeds."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for task in dict.fromkeys(r["task"] for r in self.rows):
            out[task] = {}
            for method in METHODS:
                rows = [r for r in self.rows if r["task"] == task and r["method"] == method]
                if not rows:
                    continue
                values: dict[str, float] = {}
                for m in METRICS:
                    column = torch.tensor([r[m] for r in rows], dtype=torch.float64)
                    values[m] = float(column.mean())
                    values[f"{m}_std"] = float(column.std(unbiased=False))
                out[task][method] = values
        return out

    def mean(self) -> dict[str, dict[str, float]]:
        """``{method: {metric: mean over held-out tasks of the per-task (seed-averaged) value}}``."""
        table = self.per_task()
        return {
            method: {m: sum(table[t][method][m] for t in table) / len(table) for m in METRICS}
            for method in METHODS
            if all(method in table[t] for t in table)
        }

    def mean_markdown(self) -> str:
        """One row per method: every metric averaged over the held-out tasks (Thermometer: also over seeds)."""
        means = self.mean()
        lines = ["| method | " + " | ".join(METRICS) + " |", "|" + "---|" * (len(METRICS) + 1)]
        for method, values in means.items():
            cells = [f"{values[m]:.4g}" if m == "temperature" else f"{values[m]:.3f}" for m in METRICS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_markdown(self, metrics: Sequence[str] = ("ece", "mce", "tl_ece", "nll", "brier")) -> str:
        """One row per held-out task and a mean row; columns: accuracy, then each metric for each method."""
        short = {"uncalibrated": "none", "thermometer": "thermo", "temperature_scaling": "TS", "oracle": "oracle"}
        header = ["task", "N", "acc", "T thermo", "T TS", "T oracle"]
        header += [f"{m} {short[k]}" for m in metrics for k in METHODS]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        table = self.per_task()
        sizes = {r["task"]: r["n"] for r in self.rows}

        def row(name: str, values: Mapping[str, Mapping[str, float]], n: str) -> str:
            cells = [name, n, f"{values['uncalibrated']['accuracy']:.3f}"]
            cells += [f"{values[k]['temperature']:.2f}" for k in ("thermometer", "temperature_scaling", "oracle")]
            for m in metrics:
                for k in METHODS:
                    cell = f"{values[k][m]:.3f}"
                    if k == "thermometer" and f"{m}_std" in values[k]:
                        cell += f" ± {values[k][m + '_std']:.3f}"
                    cells.append(cell)
            return "| " + " | ".join(cells) + " |"

        for task, values in table.items():
            lines.append(row(task, values, str(sizes[task])))
        lines.append(row("**mean**", self.mean(), str(sum(sizes.values()))))
        return "\n".join(lines)


def leave_one_task_out(
    tasks: Sequence[ThermometerTask] | Mapping[str, ThermometerTask],
    config: ThermometerConfig | None = None,
    *,
    seeds: Iterable[int] = (0, 1, 2),
    held_out: Iterable[str] | None = None,
    n_bins: int = 10,
    show_progress: bool = True,
    **overrides: Any,
) -> LeaveOneOutResult:
    """Hold out each task in turn (all of ``held_out``, default every task) and compare the four methods.

    Args:
        tasks: at least 2 tasks with features, logits and labels.
        config: Thermometer hyperparameters (``seed`` is replaced by each of ``seeds``).
        seeds: Thermometer training seeds (the paper uses 5).
        held_out: names of the tasks to hold out; the others are always in the training pool.
        n_bins: bins of ECE, MCE and top-label ECE.
        overrides: Thermometer config fields, e.g. ``steps=2000``.
    """
    all_tasks = check_tasks(tasks, "tasks")
    if len(all_tasks) < 2:
        raise ValueError("leave-one-task-out needs at least 2 tasks (one held out, at least one to train on).")
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers; got {seeds!r}.")
    names = [t.name for t in all_tasks]
    targets = names if held_out is None else list(held_out)
    unknown = [t for t in targets if t not in names]
    if unknown or not targets:
        raise ValueError(f"held_out must name tasks among {names}; got unknown {unknown or 'nothing'}.")
    base = config.to_dict() if config is not None else {"input_size": all_tasks[0].features.shape[1]}
    result = LeaveOneOutResult(n_bins=n_bins)
    for name in targets:
        test = next(t for t in all_tasks if t.name == name)
        others = [t for t in all_tasks if t.name != name]
        pooled_logits = _pad_cat([t.logits for t in others])
        pooled_labels = torch.cat([t.labels for t in others])
        temperatures = {
            "uncalibrated": 1.0,
            "temperature_scaling": fit_temperature(pooled_logits, pooled_labels),
            "oracle": fit_temperature(test.logits, test.labels),
        }
        for method, temperature in temperatures.items():
            report = calibration_report(test.logits, test.labels, temperature, n_bins)
            result.rows.append({"task": name, "method": method, "seed": None, "n": len(test), **report})
        for seed in seeds:
            thermometer, history = train_thermometer(
                others, ThermometerConfig.from_dict({**base, **overrides, "seed": seed}), show_progress=show_progress
            )
            temperature = thermometer.predict_temperature(test.features)
            report = calibration_report(test.logits, test.labels, temperature, n_bins)
            row = {"task": name, "method": "thermometer", "seed": seed, "n": len(test), **report}
            row["best_step"] = history.best_step
            result.rows.append(row)
    return result


def _pad_cat(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate [N_t, C_t] logits, padding narrower ones with ``-inf`` (absent options)."""
    width = max(z.shape[1] for z in logits)
    padded = [torch.nn.functional.pad(z, (0, width - z.shape[1]), value=-math.inf) for z in logits]
    return torch.cat(padded)
