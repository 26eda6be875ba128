"""Calibration of the training tokens, from the statistics the loss kernels return with the loss.

Each training micro-batch adds its non-ignored tokens' statistics (:class:`hf_calib_kernels.row_stats.RowStats`)
to one small device tensor: the ``3 * n_bins + 3`` sums of :meth:`hf_calib.metrics.CalibrationState.pack_rows`
(bin counts, bin confidence and correctness sums, NLL and Brier sums, token count) plus the entropy sum. Adding
is a few ``index_add_`` calls on the device (no host sync, no ``[tokens, vocab]`` tensor); memory is O(n_bins)
whatever the number of micro-batches, gradient-accumulation steps or tokens. At a logging step the sums are
added up over processes (exact under DDP: sums, not averages), turned into metrics once, and reset, so each
logged value covers the tokens trained on since the previous logging step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from hf_calib_kernels.row_stats import RowStats

from ..metrics import CalibrationState, logged_metrics
from .token_calibration import DEFAULT_PREFIX, metric_summary, stats_width

__all__ = ["TrainTokenCalibration", "pack_sample_stats"]


def pack_sample_stats(stats: RowStats, valid: torch.Tensor, *, n_bins: int = 15) -> torch.Tensor:
    """Per-sample sufficient statistics ``[B, 3 * n_bins + 3]`` of token statistics shaped ``[B, T]`` (as the loss
    returns them), over the positions where ``valid [B, T]`` holds; masked rather than selected.

    Raises:
        ValueError: if a valid token's statistics are NaN or inf (its logits held NaN or +inf).
    """
    n_samples = valid.shape[0]
    valid = valid.to(stats.confidence.device)
    n_bad = int((valid & ~stats.finite()).sum().item())
    if n_bad:
        raise ValueError(
            f"logits contain NaN or inf at {n_bad} supervised position(s) (labels != ignore_index); the model "
            "diverged or its output was corrupted. Token calibration needs finite logits: fix the model, or set "
            "those labels to the ignore index."
        )
    sample = torch.arange(n_samples, device=valid.device).unsqueeze(1).expand_as(valid)
    group = torch.where(valid, sample, n_samples).reshape(-1)  # ignored tokens: an extra group, dropped
    zero = torch.zeros((), dtype=stats.confidence.dtype, device=valid.device)
    confidence, nll, brier = (
        torch.where(valid, t, zero).reshape(-1) for t in (stats.confidence, stats.nll, stats.brier)
    )
    correct = (stats.correct & valid).reshape(-1)
    packed = CalibrationState.pack_rows(confidence, correct, nll, brier, group, n_samples + 1, n_bins=n_bins)
    return packed[:n_samples]


class TrainTokenCalibration:
    """Running calibration sums of the training tokens between two logging steps.

    Keys of :meth:`compute` (with the default prefix): ``token_count`` and, when at least one token was seen,
    ``token_ece``, ``token_rms_ce``, ``token_mce``, ``token_brier``, ``token_nll``, ``token_accuracy``,
    ``token_mean_confidence`` (the metrics of :mod:`hf_calib.metrics.catalog` that are logged) and
    ``token_entropy`` (mean entropy of the predicted distribution, nats).
    """

    def __init__(self, n_bins: int = 15, prefix: str = DEFAULT_PREFIX) -> None:
        self.width = stats_width(n_bins)
        self.n_bins = int(n_bins)
        self.prefix = prefix
        self._sums: torch.Tensor | None = None
        self._warned = False

    @property
    def pending(self) -> bool:
        """Whether tokens were added since the last :meth:`compute`."""
        return self._sums is not None

    def add(self, stats: RowStats, valid: torch.Tensor) -> None:
        """Add the tokens where ``valid`` (bool, the shape of the statistics) holds."""
        valid = valid.reshape(-1).to(stats.confidence.device)
        zero = torch.zeros((), dtype=stats.confidence.dtype, device=valid.device)
        confidence, nll, entropy, brier = (
            torch.where(valid, field.reshape(-1), zero)
            for field in (stats.confidence, stats.nll, stats.entropy, stats.brier)
        )
        correct = stats.correct.reshape(-1) & valid
        # Ignored tokens go to a second group that is dropped: a masked sum, no data-dependent shape.
        group = (~valid).long()
        packed = CalibrationState.pack_rows(confidence, correct, nll, brier, group, 2, n_bins=self.n_bins)[0]
        row = torch.cat((packed, entropy.sum().to(packed.dtype).reshape(1)))
        self._sums = row if self._sums is None else self._sums.add_(row)

    def compute(
        self, device: torch.device | str, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, float]:
        """Metrics of the tokens since the last call (then reset). ``reduce`` sums a tensor over processes
        (every process must call this at the same logging step, as Trainer's ``log`` does)."""
        sums, self._sums = self._sums, None
        if sums is None:
            dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
            sums = torch.zeros(self.width + 1, dtype=dtype, device=device)
        if reduce is not None:
            sums = reduce(sums)
        sums = sums.detach().to("cpu", torch.float64)
        count = float(sums[self.width - 1])
        if count == 0:
            return {f"{self.prefix}count": 0}
        if not bool(torch.isfinite(sums).all()):
            if not self._warned:
                self._warned = True
                warnings.warn(
                    "hf_calib: training-token calibration saw NaN or inf statistics (non-finite logits, as with a "
                    "NaN loss); it is logged as NaN.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            names = (*logged_metrics(), "entropy")  # the keys of a finite result, from the metric catalogue
            return {f"{self.prefix}count": int(count)} | {f"{self.prefix}{name}": math.nan for name in names}
        state = CalibrationState.from_packed(sums[: self.width].unsqueeze(0), n_bins=self.n_bins)
        out = metric_summary(state, self.prefix)
        out[f"{self.prefix}entropy"] = float(sums[self.width]) / count
        return out
