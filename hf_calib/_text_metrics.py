"""Text-overlap scores shared by the evaluation and calibration code (no model involved)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["rouge_l_f1"]


def rouge_l_f1(predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool) -> list[float]:
    """Per-pair ROUGE-L F-measure of ``rouge-score`` (``RougeScorer(["rougeL"]).score(reference, prediction)``)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]
