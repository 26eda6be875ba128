"""Multiple-choice calibration of a causal LM on MMLU subjects, with its reliability diagram."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..eval import MultipleChoiceCalibration
from ..eval.multiple_choice import MultipleChoiceDetails, multiple_choice_metrics

#: The 12 MMLU subjects with the shortest questions + options (mean characters over their first 100
#: test questions): chosen for cost on a CPU, not for accuracy.
DEFAULT_SUBJECTS = (
    "world religions",
    "elementary mathematics",
    "conceptual physics",
    "electrical engineering",
    "miscellaneous",
    "global facts",
    "abstract algebra",
    "management",
    "high school mathematics",
    "human aging",
    "medical genetics",
    "high school geography",
)


@dataclass
class MCResult:
    """Pooled metrics (accuracy, ece, mce, brier, nll, mean_confidence), the raw scores and the diagram path."""

    metrics: dict[str, float]
    details: MultipleChoiceDetails
    diagram: Path | None

    def summary(self) -> dict[str, float]:
        return {k.split("/")[-1]: v for k, v in self.metrics.items() if k.startswith("mc/micro/")}


def mmlu_benchmark(
    subjects: list[str] | tuple[str, ...], limit_per_subject: int, *, scoring: str = "cloze", tokenizer: Any = None
) -> MultipleChoiceCalibration:
    """The MMLU questions of ``subjects`` (``limit_per_subject`` each) with the given scoring."""
    return MultipleChoiceCalibration.from_mmlu(
        list(subjects), limit_per_subject, tokenizer=tokenizer, scoring=scoring, per_task=True, n_bins=10
    )


def measure_mc(
    benchmark: MultipleChoiceCalibration,
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    diagram: str | Path | None = None,
    title: str | None = None,
) -> MCResult:
    """Score ``benchmark`` with ``model``; draw the top-label reliability diagram to ``diagram`` (PNG) if given."""
    _, details = benchmark.evaluate(model, tokenizer, return_details=True)
    return mc_result(details, diagram=diagram, title=title)


def mc_result(
    details: MultipleChoiceDetails, *, diagram: str | Path | None = None, title: str | None = None
) -> MCResult:
    """Metrics (10 bins, per subject and pooled) and the reliability diagram of already computed option scores."""
    metrics = multiple_choice_metrics(
        details.logits, details.labels, details.task_ids, details.tasks, n_bins=10, prefix="mc", per_task=True
    )
    path = None
    if diagram is not None:
        from ..metrics.plots import save_reliability_diagram

        confidence, predicted = details.probs.max(dim=-1)
        correct = (predicted == details.labels).float()
        path = save_reliability_diagram(confidence, correct, path=diagram, n_bins=10, title=title)
    return MCResult(metrics=metrics, details=details, diagram=path)
