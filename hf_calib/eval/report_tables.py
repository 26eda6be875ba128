"""Per-seed scores as Markdown cells and tables: mean and standard error over seeds.

Used by :mod:`hf_calib.eval.domain` (in-domain vs out-of-domain) and :mod:`hf_calib.eval.cross_task`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Cell", "format_cell", "format_domain_table", "mean_se"]

Cell = float | Sequence[float]


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, standard error of the mean)`` of per-seed values: ``SE = sd / sqrt(n)``, ``sd`` with ``n - 1``.

    The SE is ``nan`` for a single value (nothing to estimate it from). ``ValueError`` for no value.
    """
    n = len(values)
    if n == 0:
        raise ValueError("values is empty; pass at least one per-seed score.")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _summary(values: Sequence[float]) -> dict[str, Any]:
    mean, se = mean_se(values)
    return {"mean": mean, "se": None if math.isnan(se) else se, "n": len(values), "values": list(values)}


def _seed_values(cell: Cell) -> list[float]:
    return [float(cell)] if isinstance(cell, int | float) else [float(v) for v in cell]


def format_cell(values: Sequence[float], digits: int = 3) -> str:
    """``"0.412"`` for one value, ``"0.412 ± 0.013"`` (mean ± standard error) for several."""
    mean, se = mean_se(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {se:.{digits}f}"


def format_domain_table(
    scores: Mapping[str, Mapping[str, Cell]], *, metric: str, in_domain: str | None = None, digits: int = 3
) -> str:
    """Markdown table: one row per model, one column per dataset (``name (in-domain)`` for the training one).

    A cell is a score or a list of per-seed scores, shown as ``mean ± SE`` (:func:`format_cell`). With two
    or more out-of-domain datasets an ``out-of-domain mean`` column is added (per seed, then over seeds). A
    model missing a dataset shows ``-``.
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
    seeds = max(len(_seed_values(c)) for row in scores.values() for c in row.values())
    label = f"{metric}; mean ± SE over {seeds} seeds" if seeds > 1 else metric
    lines = [f"| model ({label}) | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    for model, row in scores.items():
        values = {d: _seed_values(c) for d, c in row.items()}
        cells = [format_cell(values[d], digits) if d in values else "-" for d in datasets]
        if len(out_domain) >= 2:
            ood = [values[d] for d in out_domain if d in values]
            same_n = len(ood) == len(out_domain) and len({len(v) for v in ood}) == 1
            per_seed = [math.fsum(vs) / len(vs) for vs in zip(*ood, strict=True)] if same_n else []
            cells.append(format_cell(per_seed, digits) if same_n else "-")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
