"""Reference-based scores of generated text, offline: ROUGE-L (``rouge-score``) and BLEU (``sacrebleu``).

Both compare a prediction with one reference per example. Faysse et al. (EMNLP 2023) show they track
instruction following poorly; they are the cheap, deterministic baseline next to the LLM judge
(:mod:`hf_calib.eval.judge`) and the usual metrics for generation tasks (Yang et al., NAACL 2024). See
``docs/data_and_eval.md``, sections "Reference metrics" and "LLM judge".
"""

from __future__ import annotations

from collections.abc import Sequence

from .._text_metrics import rouge_l_f1

__all__ = ["REFERENCE_METRICS", "bleu", "exact_match", "reference_scores", "rouge_l", "rouge_l_scores"]

REFERENCE_METRICS = ("rougeL", "bleu", "exact_match")


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    for name, texts in (("predictions", predictions), ("references", references)):
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"{name} must be a list of strings (one per example).")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must pair up one to one; got {len(predictions)} and {len(references)}."
        )
    if not predictions:
        raise ValueError("predictions is empty; score at least one example.")


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool = True) -> list[float]:
    """Per-example ROUGE-L F1 in ``[0, 1]``.

    With ``L = LCS(prediction tokens, reference tokens)``, ``P = L / |prediction|``, ``R = L / |reference|``
    and ``F1 = 2PR / (P + R)``; tokens are ``rouge-score``'s lowercased alphanumeric words (Porter-stemmed
    when ``use_stemmer``). An empty prediction or reference scores 0.
    """
    _check_pairs(predictions, references)
    return rouge_l_f1(predictions, references, use_stemmer=use_stemmer)


def rouge_l(predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool = True) -> float:
    """Mean ROUGE-L F1 over the examples, in ``[0, 1]`` (see :func:`rouge_l_scores`)."""
    scores = rouge_l_scores(predictions, references, use_stemmer=use_stemmer)
    return sum(scores) / len(scores)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU in ``[0, 100]`` (``sacrebleu.corpus_bleu`` with its default 13a tokenizer, one reference).

    ``BLEU = BP * exp(mean_{n=1..4} log p_n)``, with ``p_n`` the clipped n-gram precisions pooled over the
    corpus and ``BP = min(1, exp(1 - r / c))`` the brevity penalty.
    """
    import sacrebleu

    _check_pairs(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after stripping and lowercasing."""
    _check_pairs(predictions, references)
    hits = [p.strip().lower() == r.strip().lower() for p, r in zip(predictions, references, strict=True)]
    return sum(hits) / len(hits)


def reference_scores(
    predictions: Sequence[str], references: Sequence[str], metrics: Sequence[str] = ("rougeL", "bleu")
) -> dict[str, float]:
    """``{metric: value}`` for the requested ``metrics`` (names in :data:`REFERENCE_METRICS`)."""
    functions = {"rougeL": rouge_l, "bleu": bleu, "exact_match": exact_match}
    unknown = [m for m in metrics if m not in functions]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(REFERENCE_METRICS)}.")
    return {metric: functions[metric](predictions, references) for metric in metrics}
