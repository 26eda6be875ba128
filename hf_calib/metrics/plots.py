"""Reliability diagrams (Guo et al., 2017) drawn from the same equal-width bins as the metrics.

Top panel: for each non-empty bin ``b`` of ``(b/B, (b+1)/B]``, a bar of height ``acc_b`` (the accuracy of
the samples in the bin), a hatched red bar spanning ``acc_b`` to ``conf_b`` (the mean confidence in the bin:
the calibration gap) and the diagonal ``acc = conf`` of perfect calibration; the legend box reports ECE and
MCE. Bottom panel: the number of samples per bin, with the overall accuracy and mean confidence as vertical
lines. Empty bins draw nothing.

Figures are built with ``matplotlib.figure.Figure`` directly, never with ``pyplot``: nothing touches a
display, no global figure registry fills up, and PNGs are rendered by the Agg canvas. matplotlib is an
optional dependency, imported only when a diagram is drawn.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._checks import ArrayLike, binary_1d, check_n_bins, confidences_1d, same_length
from .calibration import bin_sums, calibration_error_from_sums, uniform_bin_index
from .state import CalibrationState

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ACCURACY_LABEL = "Accuracy"
GAP_LABEL = "Gap (accuracy to confidence)"
COUNT_LABEL = "Samples"
DEFAULT_DPI = 120
_FIGSIZE = (6.0, 6.0)
_ACCURACY_COLOR = "#3b6fb6"
_GAP_COLOR = "#d62728"
_CONFIDENCE_COLOR = "#444444"


def _matplotlib() -> Any:
    try:
        import matplotlib
        import matplotlib.axes
        import matplotlib.colors
        import matplotlib.figure
        import matplotlib.patches
    except ImportError as err:
        raise ImportError(
            "reliability diagrams need matplotlib: pip install matplotlib (or pip install 'hf-calib[demo]')."
        ) from err
    return matplotlib


def reliability_diagram(
    confidences: ArrayLike,
    correct: ArrayLike,
    *,
    n_bins: int = 15,
    title: str | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    log_counts: bool = False,
) -> Figure:
    """Reliability diagram of top-label confidences [N] in [0, 1] against 0/1 correctness [N].

    The bins and per-bin values are those of :func:`hf_calib.metrics.calibration_error`: bin ``b`` is
    ``(b/B, (b+1)/B]`` (0 goes to the first bin), ``acc_b = sum(correct)/n_b``, ``conf_b = sum(c)/n_b``, and
    the reported ``ECE = sum_b (n_b/N) |acc_b - conf_b|``, ``MCE = max_b |acc_b - conf_b|``.

    Args:
        confidences: top-1 probabilities, shape [N].
        correct: 1 (or True) where the prediction was right, shape [N].
        n_bins: number of equal-width bins B >= 1.
        title: first line of the figure title (default "Reliability diagram").
        ax: draw into existing axes instead of a new 6x6-inch figure: one Axes gets the reliability panel
            only, a pair ``(top, bottom)`` gets both panels.
        log_counts: use a log scale for the per-bin sample counts of the bottom panel.

    Returns:
        The matplotlib ``Figure`` holding the axes.

    Raises:
        ValueError: on empty or mismatched inputs, NaN/inf, confidences outside [0, 1] or non-0/1 ``correct``.
        ImportError: if matplotlib is not installed.
    """
    n_bins = check_n_bins(n_bins)
    conf = confidences_1d(confidences)
    hit = binary_1d(correct, "correct")
    same_length(("confidences", conf), ("correct", hit))
    sums = bin_sums(uniform_bin_index(conf, n_bins), conf, hit, n_bins)
    return _draw(*sums, title=title, ax=ax, log_counts=log_counts)


def reliability_diagram_from_state(
    state: CalibrationState,
    *,
    title: str | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    log_counts: bool = False,
) -> Figure:
    """Reliability diagram from a :class:`CalibrationState`'s per-bin sums (``state.n_bins`` equal-width bins).

    Needs no stored samples (works with ``keep_samples=False``) and draws the same figure as
    :func:`reliability_diagram` on the samples the state was fed. Arguments as there.

    Raises:
        ValueError: if ``state`` is not a CalibrationState or holds no sample.
    """
    if not isinstance(state, CalibrationState):
        raise ValueError(f"state must be a hf_calib.metrics.CalibrationState; got {type(state).__name__}.")
    if state.n_samples == 0:
        raise ValueError("CalibrationState is empty: add samples with update() before drawing its diagram.")
    sd = state.state_dict()
    return _draw(
        sd["bin_count"], sd["bin_confidence_sum"], sd["bin_correct_sum"], title=title, ax=ax, log_counts=log_counts
    )


def save_reliability_diagram(
    source: Figure | CalibrationState | ArrayLike,
    correct: ArrayLike | None = None,
    *,
    path: str | os.PathLike[str],
    n_bins: int = 15,
    title: str | None = None,
    log_counts: bool = False,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Draw a reliability diagram and write it to ``path`` as a PNG, atomically.

    ``source`` is either confidences [N] (then ``correct`` [N] is required), a :class:`CalibrationState`
    (``correct`` must be None; ``n_bins`` is the state's) or an already drawn ``Figure`` (saved as it is).
    The PNG is written to a temporary file in the destination folder and moved into place with ``os.replace``,
    so ``path`` holds either its old content or the complete new image, never a partial file, and no
    temporary file is left behind on error. The file gets the usual permissions (``0o666`` minus the umask).

    Returns:
        ``path`` as a ``Path``.
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png (the diagram is written as a PNG); got {str(path)!r}.")
    if not target.parent.is_dir():
        raise ValueError(f"path's folder {str(target.parent)!r} does not exist; create it first.")
    mpl = _matplotlib()
    if isinstance(source, mpl.figure.Figure):
        if correct is not None:
            raise ValueError("correct must be None when source is a Figure (it is already drawn).")
        figure = source
    elif isinstance(source, CalibrationState):
        if correct is not None:
            raise ValueError("correct must be None when source is a CalibrationState (it holds the bins).")
        figure = reliability_diagram_from_state(source, title=title, log_counts=log_counts)
    else:
        if correct is None:
            raise ValueError("correct is required when source is an array of confidences.")
        figure = reliability_diagram(source, correct, n_bins=n_bins, title=title, log_counts=log_counts)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".png.tmp", dir=target.parent)
    try:
        # mkstemp creates the file readable by its owner only; give it what open() would have.
        os.chmod(tmp_name, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, format="png", dpi=dpi)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _axes(ax: Axes | Sequence[Axes] | None, mpl: Any) -> tuple[Figure, Axes, Axes | None]:
    """``(figure, reliability axes, count axes or None)``, creating a two-panel figure when ``ax`` is None."""
    if ax is None:
        figure = mpl.figure.Figure(figsize=_FIGSIZE, layout="constrained")
        top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
        return figure, top, bottom
    if isinstance(ax, mpl.axes.Axes):
        return ax.figure, ax, None
    # A pair may come as a list, a tuple or the numpy array that ``Figure.subplots(2, 1)`` returns.
    pair = list(ax) if isinstance(ax, Iterable) and not isinstance(ax, str) else []
    if len(pair) == 2 and all(isinstance(a, mpl.axes.Axes) for a in pair):
        return pair[0].figure, pair[0], pair[1]
    raise ValueError(f"ax must be None, a matplotlib Axes or a pair (top, bottom) of Axes; got {type(ax).__name__}.")


def _draw(
    count: torch.Tensor,
    conf_sum: torch.Tensor,
    correct_sum: torch.Tensor,
    *,
    title: str | None,
    ax: Axes | Sequence[Axes] | None,
    log_counts: bool,
) -> Figure:
    """Draw both panels from per-bin sums of shape [B] (count int64, sums float64)."""
    mpl = _matplotlib()
    figure, top, bottom = _axes(ax, mpl)
    n_bins = count.numel()
    n_total = int(count.sum().item())
    nonempty = count > 0
    n = count[nonempty].to(torch.float64)
    left = (torch.arange(n_bins, dtype=torch.float64)[nonempty] / n_bins).tolist()
    acc = (correct_sum[nonempty] / n).tolist()
    conf = (conf_sum[nonempty] / n).tolist()
    ece = calibration_error_from_sums(count, conf_sum, correct_sum, "l1")
    mce = calibration_error_from_sums(count, conf_sum, correct_sum, "max")
    _draw_reliability(top, mpl, left, acc, conf, n_bins=n_bins)
    metrics_handle = mpl.patches.Patch(visible=False, label=f"ECE = {ece:.3f}   MCE = {mce:.3f}")
    handles, _ = top.get_legend_handles_labels()
    top.legend(handles=[*handles, metrics_handle], loc="upper left", fontsize=9, framealpha=0.95)
    heading = title if title is not None else "Reliability diagram"
    bins = f"{n_bins} equal-width bin" + ("s" if n_bins > 1 else "")
    top.set_title(f"{heading}\nN = {n_total:,}, {bins}", fontsize=11)

    if bottom is None:
        top.set_xlabel("Confidence")
        return figure
    accuracy = float(correct_sum.sum().item()) / n_total
    mean_conf = float(conf_sum.sum().item()) / n_total
    _draw_counts(bottom, left, n.tolist(), accuracy, mean_conf, n_bins=n_bins, log_counts=log_counts)
    return figure


def _draw_reliability(
    top: Axes, mpl: Any, left: list[float], acc: list[float], conf: list[float], *, n_bins: int
) -> None:
    """Top panel without its legend and title: the diagonal, accuracy bars and hatched gap bars per bin."""
    width = 1.0 / n_bins
    top.plot([0, 1], [0, 1], linestyle="--", color="#222222", linewidth=1.2, label="Perfect calibration", zorder=4)
    top.bar(
        left,
        acc,
        width=width,
        align="edge",
        color=_ACCURACY_COLOR,
        edgecolor="#1f3f6e",
        linewidth=0.8,
        label=ACCURACY_LABEL,
        zorder=2,
    )
    top.bar(
        left,
        [c - a for a, c in zip(acc, conf, strict=True)],
        bottom=acc,
        width=width,
        align="edge",
        color=(*mpl.colors.to_rgb(_GAP_COLOR), 0.25),
        edgecolor=_GAP_COLOR,
        hatch="//",
        linewidth=0.8,
        label=GAP_LABEL,
        zorder=3,
    )
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="Accuracy")
    top.grid(True, color="#e5e5e5", linewidth=0.6, zorder=0)
    top.set_axisbelow(True)


def _draw_counts(
    bottom: Axes,
    left: list[float],
    counts: list[float],
    accuracy: float,
    mean_conf: float,
    *,
    n_bins: int,
    log_counts: bool,
) -> None:
    """Bottom panel: samples per non-empty bin, with the overall accuracy and mean confidence as vertical lines."""
    bottom.bar(
        left,
        counts,
        width=1.0 / n_bins,
        align="edge",
        color="#9aa9bd",
        edgecolor="#4a5a70",
        linewidth=0.8,
        label=COUNT_LABEL,
        zorder=2,
        log=log_counts,
    )
    bottom.axvline(accuracy, color=_ACCURACY_COLOR, linewidth=2, label=f"Accuracy {accuracy:.3f}", zorder=3)
    bottom.axvline(
        mean_conf,
        color=_CONFIDENCE_COLOR,
        linewidth=2,
        linestyle="--",
        label=f"Mean confidence {mean_conf:.3f}",
        zorder=3,
    )
    for line in bottom.get_lines():
        line.set_clip_on(False)
    bottom.set(xlim=(0, 1), xlabel="Confidence", ylabel="Samples")
    bottom.grid(True, axis="y", color="#e5e5e5", linewidth=0.6, zorder=0)
    bottom.set_axisbelow(True)
    bottom.legend(loc="best", fontsize=8, framealpha=0.95)
