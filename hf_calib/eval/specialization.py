"""Results of a specialization sweep (Faysse et al., EMNLP 2023): one point per number of target examples.

:func:`label_scores` measures the target task of a classification template (accuracy, its standard error, ECE).

:func:`hf_calib.recipes.specialization.specialization_sweep` fine-tunes one LoRA adapter per ``n`` (general
instruction data plus ``n`` target-task examples) and scores each model on the target task, on general
instruction following and on calibration. This module holds the results and writes them:

- :class:`SpecializationPoint`: one model (``"base"`` or ``"n=10"``) with a flat ``metrics`` dict
  (``target_accuracy``, ``target_accuracy_se``, ``general_rougeL``, ``token_ece``, ...) and its training facts;
- :class:`SpecializationReport`: the points in sweep order, the settings, and :meth:`~SpecializationReport.table`
  (Markdown), :meth:`~SpecializationReport.to_dict` (JSON), :meth:`~SpecializationReport.plot` (the trade-off:
  target score against general score, one labelled point per model, calibration in a second panel) and
  :meth:`~SpecializationReport.write` (all three files, each written to a temporary file then renamed).

Metric names, as the sweep fills them (a metric that was not measured is absent, shown as ``-``):

- ``target_accuracy`` (label tokens' first-step logits), ``target_accuracy_se`` = ``sqrt(p (1 - p) / N)``,
  ``target_ece`` (of the softmax over the label tokens), ``target_exact_match`` (greedy reply equals the label word);
- ``general_rougeL`` (greedy replies vs the references of held-out chats) and ``general_rougeL_se`` (standard
  deviation of the per-reply scores over ``sqrt(N)``), ``general_judge_*`` (an optional judge's metrics);
- ``token_ece``, ``token_nll``, ``token_accuracy``, ``loss`` (``CalibratedTrainer.evaluate()`` on held-out chats);
- ``mc_accuracy``, ``mc_ece``, ... (optional multiple-choice calibration, macro over tasks).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from hf_calib.data import TaskTemplate, encode_prompt, uses_chat_template

from .._model_utils import eval_mode, input_device, pad_token_id

__all__ = ["SpecializationPoint", "SpecializationReport", "TABLE_COLUMNS", "label_scores", "standard_error"]

#: Table columns in order: (metric key, header). Columns with no value in any point are left out.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("target_accuracy", "target acc"),
    ("target_accuracy_se", "± se"),
    ("target_ece", "target ECE"),
    ("target_exact_match", "target EM"),
    ("general_rougeL", "general ROUGE-L"),
    ("general_rougeL_se", "± se"),
    ("general_judge_response", "judge response"),
    ("general_judge_ratio", "judge ratio"),
    ("token_ece", "token ECE"),
    ("token_nll", "token NLL"),
    ("token_accuracy", "token acc"),
    ("mc_accuracy", "MMLU acc"),
    ("mc_ece", "MMLU ECE"),
)


@dataclass
class SpecializationPoint:
    """One evaluated model: ``label`` ("base" or "n=<n>"), ``n`` (None for the base model), its metrics and training.

    ``training`` holds ``steps``, ``train_seconds`` (training only), ``seconds`` (with the evaluations),
    ``final_loss``, ``mix_rows`` and ``target_rows`` (empty for the base).
    """

    label: str
    n: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "n": self.n, "metrics": dict(self.metrics), "training": dict(self.training)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpecializationPoint:
        return cls(str(data["label"]), data["n"], dict(data.get("metrics", {})), dict(data.get("training", {})))


@dataclass
class SpecializationReport:
    """The points of a sweep (base first, then each ``n`` in sweep order) and the settings that produced them.

    ``target_metric`` and ``general_metric`` name the metrics the trade-off plot puts on its axes.
    """

    points: list[SpecializationPoint] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    target_metric: str = "target_accuracy"
    general_metric: str = "general_rougeL"
    title: str = "Specialization trade-off"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: title, the axis metrics, settings and points."""
        return {
            "title": self.title,
            "target_metric": self.target_metric,
            "general_metric": self.general_metric,
            "settings": self.settings,
            "points": [p.to_dict() for p in self.points],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpecializationReport:
        """The report saved by :meth:`to_dict` (e.g. read back from ``specialization.json`` to redraw the plot)."""
        return cls(
            points=[SpecializationPoint.from_dict(p) for p in data["points"]],
            settings=dict(data.get("settings", {})),
            target_metric=data.get("target_metric", "target_accuracy"),
            general_metric=data.get("general_metric", "general_rougeL"),
            title=data.get("title", "Specialization trade-off"),
        )

    def table(self, digits: int = 3) -> str:
        """Markdown table: one row per model, the metrics of :data:`TABLE_COLUMNS` that any point has."""
        if not self.points:
            raise ValueError("the report has no points; run the sweep first.")
        columns = [(k, h) for k, h in TABLE_COLUMNS if any(k in p.metrics for p in self.points)]
        headers = ["model", "target rows in mix"] + [h for _, h in columns] + ["train s"]
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for p in self.points:
            cells = [p.label, "-" if p.n is None else f"{int(p.training.get('target_rows', p.n))}"]
            cells += [_cell(p.metrics.get(k), digits) for k, _ in columns]
            cells.append(_cell(p.training.get("train_seconds"), 0))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The table with a title, the command (``settings["command"]``) and the settings."""
        out = [f"# {self.title}", ""]
        if self.settings.get("command"):
            out += [f"Command: `{self.settings['command']}`", ""]
        out += [self.table(), ""]
        shown = {k: v for k, v in self.settings.items() if k != "command"}
        if shown:
            out += ["Settings: " + ", ".join(f"{k}={v}" for k, v in shown.items()), ""]
        return "\n".join(out)

    def plot(self, path: str | os.PathLike[str] | None = None, *, dpi: int = 120) -> Any:
        """The trade-off figure; saved as PNG to ``path`` when given (written to a temporary file, then renamed).

        Left: ``target_metric`` (x) against ``general_metric`` (y), one labelled point per model, error bars
        from their ``*_se`` metrics, the trained points joined in sweep order. Right: calibration errors per
        model (token ECE on held-out chats, and the target and MMLU ECE when measured) as grouped bars.
        Returns the ``matplotlib.figure.Figure``.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as err:
            raise ImportError(
                "the trade-off plot needs matplotlib: pip install matplotlib (or 'hf-calib[plots]')."
            ) from err
        if not self.points:
            raise ValueError("the report has no points; run the sweep first.")
        figure = Figure(figsize=(11.0, 4.6))
        left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1.0]})
        self._trade_off_panel(left)
        self._calibration_panel(right)
        figure.suptitle(self.title)
        figure.tight_layout()
        if path is not None:
            _write_atomic(Path(path), lambda handle: figure.savefig(handle, format="png", dpi=dpi), binary=True)
        return figure

    def _trade_off_panel(self, ax: Any) -> None:
        xs, ys, labels = [], [], []
        for p in self.points:
            x, y = p.metrics.get(self.target_metric), p.metrics.get(self.general_metric)
            if x is None or y is None:
                continue
            xerr, yerr = p.metrics.get(f"{self.target_metric}_se"), p.metrics.get(f"{self.general_metric}_se")
            base = p.n is None
            ax.errorbar(
                x,
                y,
                xerr=xerr,
                yerr=yerr,
                fmt="s" if base else "o",
                color="#444444" if base else "#3b6fb6",
                ecolor="#999999",
                capsize=3,
                markersize=7,
            )
            ax.annotate(p.label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
            if not base:
                xs.append(x)
                ys.append(y)
            labels.append(p.label)
        if len(xs) > 1:
            ax.plot(xs, ys, linestyle="--", color="#3b6fb6", alpha=0.5)
        ax.set_xlabel(f"target: {self.target_metric}")
        ax.set_ylabel(f"general: {self.general_metric}")
        ax.set_title("target vs general (one point per model)")
        ax.grid(alpha=0.3)
        if not labels:
            ax.text(0.5, 0.5, "no point has both metrics", ha="center", va="center", transform=ax.transAxes)

    def _calibration_panel(self, ax: Any) -> None:
        series = [
            (k, h)
            for k, h in (("token_ece", "token ECE (general)"), ("target_ece", "target ECE"), ("mc_ece", "MMLU ECE"))
            if any(k in p.metrics for p in self.points)
        ]
        if not series:
            ax.text(0.5, 0.5, "no calibration metric", ha="center", va="center", transform=ax.transAxes)
            return
        width = 0.8 / len(series)
        for j, (key, header) in enumerate(series):
            positions = [i + (j - (len(series) - 1) / 2) * width for i in range(len(self.points))]
            values = [p.metrics.get(key, math.nan) for p in self.points]
            ax.bar(positions, values, width=width, label=header)
        ax.set_xticks(range(len(self.points)), [p.label for p in self.points])
        ax.set_ylabel("ECE (lower is better)")
        ax.set_title("calibration")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)

    def write(self, folder: str | os.PathLike[str], stem: str = "specialization") -> dict[str, Path]:
        """Write ``{stem}.json``, ``{stem}.md`` and ``{stem}.png`` into ``folder``; return their paths by suffix."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {suffix: folder / f"{stem}.{suffix}" for suffix in ("json", "md", "png")}
        text = json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n"
        _write_atomic(paths["json"], lambda handle: handle.write(text))
        _write_atomic(paths["md"], lambda handle: handle.write(self.markdown()))
        self.plot(paths["png"])
        return paths


def _cell(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _write_atomic(path: Path, write: Any, *, binary: bool = False) -> None:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean, ``std(values, ddof=1) / sqrt(N)`` (0 for fewer than two values)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


@torch.no_grad()
def label_scores(
    model: nn.Module, tokenizer: Any, rows: Any, template: TaskTemplate, *, batch_size: int = 8, show_progress=True
) -> dict[str, float]:
    """``target_accuracy``, its standard error and ``target_ece`` from the label tokens' first-step logits.

    Each prompt is encoded as in training (:func:`hf_calib.data.encode_prompt`); the logits of the first token of
    each class's completion (:func:`hf_calib.eval.domain.label_token_ids`) right after the prompt give the class
    probabilities (softmax over the classes). Batches are right-padded and read at each prompt's last token, so
    padding never changes a score.
    """
    from ..metrics import calibration_error
    from .domain import label_token_ids

    if len(rows) == 0:
        raise ValueError("the target evaluation rows are empty.")
    chat = uses_chat_template(tokenizer)
    classes = label_token_ids(template, rows[0], tokenizer, chat=chat)
    prompts = [encode_prompt(tokenizer, template.render(row)[0], chat=chat) for row in rows]
    labels = torch.tensor(rows[template.label_column()])
    device, pad = input_device(model), pad_token_id(tokenizer, strict=True)
    columns = torch.tensor(classes, device=device)
    logits = []
    with eval_mode(model):
        for start in tqdm(range(0, len(prompts), batch_size), desc="target labels", disable=not show_progress):
            batch = prompts[start : start + batch_size]
            width = max(len(p) for p in batch)
            ids = torch.tensor([p + [pad] * (width - len(p)) for p in batch], device=device)
            mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in batch], device=device)
            out = model(input_ids=ids, attention_mask=mask).logits
            last = torch.tensor([len(p) - 1 for p in batch], device=device)
            logits.append(out[torch.arange(len(batch), device=device), last].index_select(-1, columns).float().cpu())
    probs = torch.cat(logits).softmax(-1)
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).float()
    accuracy = float(correct.mean())
    return {
        "target_accuracy": accuracy,
        "target_accuracy_se": math.sqrt(accuracy * (1.0 - accuracy) / len(prompts)),
        "target_ece": calibration_error(confidence, correct, n_bins=10),
    }
