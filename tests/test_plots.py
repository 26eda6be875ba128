"""Reliability diagrams: bars read back from the figure against the binned sums of hf_calib.metrics and numpy."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

import matplotlib.image
from matplotlib.figure import Figure

from hf_calib.metrics import CalibrationState, calibration_error
from hf_calib.metrics.plots import (
    ACCURACY_LABEL,
    COUNT_LABEL,
    GAP_LABEL,
    reliability_diagram,
    reliability_diagram_from_state,
    save_reliability_diagram,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _numpy_bins(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> dict[int, tuple[int, float, float]]:
    """Independent reference: {bin: (count, accuracy, mean confidence)} over bins (b/B, (b+1)/B], 0 in bin 0."""
    index = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    return {
        b: (int((index == b).sum()), float(hit[index == b].mean()), float(conf[index == b].mean()))
        for b in np.unique(index)
    }


def _container(ax, label: str):
    (found,) = [c for c in ax.containers if c.get_label() == label]
    return found


def _bars(ax, label: str) -> list[tuple[float, float, float, float]]:
    return [(p.get_x(), p.get_width(), p.get_y(), p.get_height()) for p in _container(ax, label)]


@pytest.fixture
def sample() -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    # Confidences only in [0.3, 1]: the first bins are empty and must draw nothing.
    conf = 0.3 + 0.7 * torch.rand(2000, generator=g, dtype=torch.float64)
    hit = torch.rand(2000, generator=g, dtype=torch.float64) < conf**2  # over-confident
    return conf.numpy(), hit.numpy()


def test_bars_are_the_per_bin_accuracies_and_gaps(sample):
    conf, hit = sample
    n_bins = 15
    figure = reliability_diagram(conf, hit, n_bins=n_bins)
    top, bottom = figure.axes
    reference = _numpy_bins(conf, hit, n_bins)
    assert min(reference) > 0  # the fixture leaves low bins empty

    accuracy_bars = _bars(top, ACCURACY_LABEL)
    assert len(accuracy_bars) == len(reference)  # one bar per non-empty bin, nothing for empty bins
    for (x, width, y, height), (b, (_, acc, _)) in zip(accuracy_bars, sorted(reference.items()), strict=True):
        assert x == pytest.approx(b / n_bins) and width == pytest.approx(1 / n_bins)
        assert y == 0 and height == pytest.approx(acc, abs=1e-12)

    gap_bars = _bars(top, GAP_LABEL)
    for (_, _, y, height), (_, acc, mean_conf) in zip(gap_bars, [reference[b] for b in sorted(reference)], strict=True):
        assert y == pytest.approx(acc, abs=1e-12) and y + height == pytest.approx(mean_conf, abs=1e-12)

    counts = [height for *_, height in _bars(bottom, COUNT_LABEL)]
    assert counts == [reference[b][0] for b in sorted(reference)]

    legend = " ".join(t.get_text() for t in top.get_legend().get_texts())
    ece, mce = calibration_error(conf, hit), calibration_error(conf, hit, norm="max")
    assert f"ECE = {ece:.3f}" in legend and f"MCE = {mce:.3f}" in legend
    lines = {line.get_label(): line.get_xdata()[0] for line in bottom.get_lines()}
    assert lines[f"Accuracy {hit.mean():.3f}"] == pytest.approx(hit.mean())
    assert lines[f"Mean confidence {conf.mean():.3f}"] == pytest.approx(conf.mean())


def test_from_state_draws_the_same_figure_as_from_samples(sample):
    conf, hit = sample
    state = CalibrationState(n_bins=12, keep_samples=False)
    for start in range(0, len(conf), 300):
        state.update(conf[start : start + 300], hit[start : start + 300])
    from_state = reliability_diagram_from_state(state, title="t", log_counts=True)
    from_samples = reliability_diagram(conf, hit, n_bins=12, title="t", log_counts=True)
    assert len(from_state.axes) == len(from_samples.axes) == 2
    for a, b in zip(from_state.axes, from_samples.axes, strict=True):
        assert a.get_title() == b.get_title()
        assert a.get_yscale() == b.get_yscale()
        for label in {c.get_label() for c in b.containers}:
            np.testing.assert_allclose(_bars(a, label), _bars(b, label), rtol=0, atol=1e-12)
        assert [t.get_text() for t in a.get_legend().get_texts()] == [t.get_text() for t in b.get_legend().get_texts()]
    assert from_samples.axes[1].get_yscale() == "log"


def test_all_confidences_one_fill_only_the_last_bin():
    hit = np.array([1, 1, 1, 0, 1, 0, 1, 1])
    figure = reliability_diagram(np.ones(8), hit, n_bins=10)
    ((x, width, _, height),) = _bars(figure.axes[0], ACCURACY_LABEL)
    assert x == pytest.approx(0.9) and width == pytest.approx(0.1) and height == pytest.approx(0.75)
    assert "ECE = 0.250" in " ".join(t.get_text() for t in figure.axes[0].get_legend().get_texts())


def test_draws_into_given_axes(sample):
    conf, hit = sample
    figure = Figure()
    ax = figure.add_subplot()
    assert reliability_diagram(conf, hit, ax=ax) is figure
    assert len(figure.axes) == 1 and len(_bars(ax, ACCURACY_LABEL)) == len(_numpy_bins(conf, hit, 15))
    pair = Figure().subplots(2, 1)
    reliability_diagram(conf, hit, ax=pair)
    assert _bars(pair[1], COUNT_LABEL)
    with pytest.raises(ValueError, match="ax must be None, a matplotlib Axes or a pair"):
        reliability_diagram(conf, hit, ax="top")


def test_bad_input_raises_the_metrics_errors():
    with pytest.raises(ValueError, match="confidences is empty"):
        reliability_diagram([], [])
    with pytest.raises(ValueError, match="NaN"):
        reliability_diagram([0.5, float("nan")], [1, 0])
    with pytest.raises(ValueError, match="correct has 1 entries"):
        reliability_diagram([0.5, 0.7], [1])
    with pytest.raises(ValueError, match="n_bins"):
        reliability_diagram([0.5], [1], n_bins=0)
    with pytest.raises(ValueError, match="CalibrationState is empty"):
        reliability_diagram_from_state(CalibrationState())
    with pytest.raises(ValueError, match="state must be"):
        reliability_diagram_from_state({"bin_count": torch.ones(3)})


def test_saved_file_is_a_png_of_the_expected_size(sample, tmp_path):
    conf, hit = sample
    path = save_reliability_diagram(conf, hit, path=tmp_path / "diagram.png", dpi=50)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(path).shape[:2] == (300, 300)  # 6 x 6 inches at 50 dpi
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only 0o600
    state = CalibrationState()
    state.update(conf, hit)
    assert save_reliability_diagram(state, path=tmp_path / "state.png", dpi=50).read_bytes()[:8] == PNG_SIGNATURE
    figure = reliability_diagram(conf, hit)
    assert save_reliability_diagram(figure, path=tmp_path / "figure.png", dpi=50).read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diagram.png", "figure.png", "state.png"]
    with pytest.raises(ValueError, match="correct is required"):
        save_reliability_diagram(conf, path=tmp_path / "x.png")
    with pytest.raises(ValueError, match="must end in .png"):
        save_reliability_diagram(figure, path=tmp_path / "x.pdf")
    with pytest.raises(ValueError, match="does not exist"):
        save_reliability_diagram(figure, path=tmp_path / "missing" / "x.png")


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary(sample, tmp_path, monkeypatch):
    conf, hit = sample
    target = tmp_path / "diagram.png"
    target.write_bytes(b"old content")

    def broken_savefig(self, handle, **kwargs):
        handle.write(PNG_SIGNATURE + b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        save_reliability_diagram(conf, hit, path=target)
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["diagram.png"]


def test_missing_matplotlib_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        reliability_diagram([0.5], [1])
