"""Training-token vs held-out-token calibration over a fine-tune: the per-step numbers, their figure, the report.

``CalibratedTrainer`` adds to every training log (the ``log_history`` entries with ``loss``) the calibration of
the tokens trained on since the previous log (``token_ece``, ``token_accuracy``, ``token_mean_confidence``, ...,
from the loss's own softmax) and to every evaluation that of the held-out tokens (``eval_token_ece``, ...).
:func:`calibration_curves` reads both out of a ``log_history``; :func:`plot_calibration_curves` draws the ECE
and the mean confidence minus accuracy of both against the global step, one colour per fine-tune.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: The two curves of one fine-tune, and how their points are labelled and drawn.
SPLITS = {
    "train": ("training tokens", {"linestyle": "-", "marker": "o", "markersize": 3.5}),
    "held_out": ("held-out tokens", {"linestyle": "--", "marker": "s", "markersize": 5}),
}
_COLORS = ("#3b6fb6", "#d9771e", "#2a9d4b", "#b63b8f")


def calibration_curves(log_history: Iterable[Mapping[str, Any]], *, prefix: str = "token_") -> dict[str, list]:
    """Per-step token calibration of a fine-tune from Trainer's ``log_history``.

    Returns ``{"train": [...], "held_out": [...]}``, each a list in log order of points ``{"step", "ece",
    "accuracy", "mean_confidence", "confidence_minus_accuracy", "nll", "tokens"}``: ``train`` from the training
    logs (entries with ``loss``; keys ``{prefix}ece`` ...), ``held_out`` from the evaluations (``eval_{prefix}ece``
    ...). Logs that saw no supervised token (no ``ece`` key) give no point. ``prefix`` is the trainer's
    ``calibration_prefix``.
    """
    curves: dict[str, list] = {"train": [], "held_out": []}
    for entry in log_history:
        if "loss" in entry and f"{prefix}ece" in entry:
            curves["train"].append(_point(entry, prefix))
        if f"eval_{prefix}ece" in entry:
            curves["held_out"].append(_point(entry, f"eval_{prefix}"))
    return curves


def _point(entry: Mapping[str, Any], keys: str) -> dict[str, float]:
    if "step" not in entry:
        raise ValueError(f"a log_history entry has no 'step' (keys {sorted(entry)}); pass Trainer's log_history.")
    accuracy, confidence = float(entry[f"{keys}accuracy"]), float(entry[f"{keys}mean_confidence"])
    return {
        "step": int(entry["step"]),
        "ece": float(entry[f"{keys}ece"]),
        "accuracy": accuracy,
        "mean_confidence": confidence,
        "confidence_minus_accuracy": confidence - accuracy,
        "nll": float(entry[f"{keys}nll"]),
        "tokens": int(entry[f"{keys}count"]),
    }


def draw_calibration_curves(curves: Mapping[str, Mapping[str, list]], *, title: str | None = None) -> Any:
    """A two-panel ``matplotlib.figure.Figure``: token ECE (left) and mean confidence minus accuracy (right)
    against the global step, a solid line for the training tokens and a dashed one for the held-out tokens of
    each fine-tune in ``curves`` (``{name: calibration_curves(...)}``, 1 to 4 names)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not curves or len(curves) > len(_COLORS):
        raise ValueError(f"curves must hold 1 to {len(_COLORS)} fine-tunes; got {len(curves)}.")
    figure = Figure(figsize=(11.0, 5.0), layout="constrained")
    ece_ax, gap_ax = figure.subplots(1, 2)
    for color, (name, curve) in zip(_COLORS, curves.items(), strict=False):
        for split, (what, style) in SPLITS.items():
            points = curve[split]
            steps = [p["step"] for p in points]
            label = f"{name}, {what}"
            ece_ax.plot(steps, [p["ece"] for p in points], color=color, label=label, **style)
            gap_ax.plot(steps, [p["confidence_minus_accuracy"] for p in points], color=color, label=label, **style)
    gap_ax.axhline(0.0, color="#222222", linewidth=0.8, zorder=1.5)
    ece_ax.set(xlabel="global step", ylabel="ECE", title="Token ECE")
    gap_ax.set(
        xlabel="global step",
        ylabel="mean confidence - accuracy",
        title="Mean confidence - accuracy (> 0: over-confident)",
    )
    for ax in (ece_ax, gap_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, color="#e5e5e5", linewidth=0.6)
        ax.set_axisbelow(True)
    handles, labels = gap_ax.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=len(curves), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title)
    return figure


def plot_calibration_curves(
    curves: Mapping[str, Mapping[str, list]], path: str | Path, *, title: str | None = None
) -> Path:
    """Draw :func:`draw_calibration_curves` and write it to ``path`` as a PNG, atomically. Returns ``path``."""
    from ..metrics.plots import save_reliability_diagram

    figure = draw_calibration_curves(curves, title=title)
    return save_reliability_diagram(figure, path=path)  # an already drawn Figure: saved as it is


def report_curves(report: Any, outcomes: Mapping[str, Any], path: Path, *, root: Path) -> dict[str, dict]:
    """Add the figure of ``outcomes`` (``{name: SFTOutcome}``) and how to read it to ``report``; return the curves."""
    curves = {name: calibration_curves(outcome.log_history) for name, outcome in outcomes.items()}
    plot_calibration_curves(curves, path, title="Token calibration over the fine-tune")
    caption = "Training-token vs held-out-token calibration over the fine-tune, " + " vs ".join(curves)
    report.figure(path, caption, root=root)
    tokens = [p["tokens"] for curve in curves.values() for p in curve["train"]]
    held_out = next((c["held_out"][0]["tokens"] for c in curves.values() if c["held_out"]), 0)
    fewer = bool(tokens) and max(tokens) < held_out
    report.paragraph(
        "How to read the figure. A solid point at step s pools the training tokens of the batches since the "
        "previous point, each scored with the weights of its own step, before that step's update: the "
        "statistics come from the softmax the loss already computes, at no extra cost. The fine-tune runs one "
        "epoch, so every training token is scored once, before the model has been updated on it. A dashed point "
        f"is the held-out set ({held_out} tokens, the same at every point) scored after the update of step s; "
        "step 0 is the evaluation before fine-tuning. ECE uses the trainer's 15 equal-width confidence bins; "
        f"a training point pools {min(tokens, default=0)} to {max(tokens, default=0)} tokens (`tokens` in "
        "results.json)"
        + (
            ", fewer than the held-out set, so its ECE is noisier and tends to be higher (binned ECE is biased "
            "upward on few tokens): read its trend, and the right panel"
            if fewer
            else ""
        )
        + ". In the right panel, mean confidence minus accuracy above 0 is over-confidence. Label smoothing "
        "trains towards a target that keeps part of the probability off the label, so its lines are expected "
        "to sit below those of plain cross-entropy, on the training and the held-out tokens alike."
    )
    return curves
