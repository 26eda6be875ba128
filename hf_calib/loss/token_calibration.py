"""Token-level calibration of a causal LM in ``Trainer.evaluate``, in O(samples x bins) memory.

Every non-ignored label position ``t`` of a sample (targets shifted as for the causal-LM loss:
the logits at ``t`` predict ``labels[t + 1]``) is one prediction over the vocabulary, with
``p = softmax(z_t)``, confidence ``c = max_v p_v``, correctness ``h = 1[argmax_v p_v = y]``,
``nll = -log p_y`` and Brier ``sum_v p_v^2 - 2 p_y + 1``. Each batch's ``[B, T, V]`` logits are
reduced at once to one float64 row of :func:`stats_width` ``(n_bins) = 3 * n_bins + 3`` numbers per
sample (its sufficient statistics)::

    [0,  B)   count of the sample's tokens in equal-width confidence bin b = (b/B, (b+1)/B]
    [B, 2B)   sum of their confidences
    [2B, 3B)  sum of their correctness
    3B        sum of nll          3B + 1   sum of brier          3B + 2   number of tokens

These rows travel through Trainer like per-sample predictions (so ``gather_for_metrics`` drops
the samples that distributed evaluation pads the last batch with) and their sum over samples is
a :class:`hf_calib.metrics.CalibrationState` giving ECE, RMS-CE, MCE, NLL, Brier and accuracy.
(``CalibratedTrainer`` gathers each batch's rows the same way and adds them to a running sum.)

Plain ``Trainer``: ``preprocess, compute = token_calibration_metrics()``. ``CalibratedTrainer``
reports the same metrics by itself (:class:`TokenCalibrationConfig`), with no full logits on the
fused path. Conventions and numerics: ``docs/token_calibration.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hf_calib_kernels.row_stats import RowStats
from hf_calib_kernels.token_stats import logits_row_stats

from .._model_utils import IGNORE_INDEX
from ..metrics import CalibrationState, logged_metrics

DEFAULT_PREFIX = "token_"

__all__ = [
    "TokenCalibrationConfig",
    "TokenCalibrationMetrics",
    "pack_token_stats",
    "stats_width",
    "token_calibration_metrics",
    "token_calibration_state",
    "token_calibration_stats",
]


def stats_width(n_bins: int) -> int:
    """Length ``3 * n_bins + 3`` of one sample's row of sufficient statistics."""
    return CalibrationState.packed_width(n_bins)


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string such as 'token_'; got {prefix!r}.")
    return prefix


def _check_n_bins(n_bins: int) -> int:
    CalibrationState.packed_width(n_bins)  # validates n_bins with the metrics' message
    return int(n_bins)


def pack_token_stats(
    row_stats: RowStats, sample_index: torch.Tensor, n_samples: int, *, n_bins: int = 15
) -> torch.Tensor:
    """Per-sample sufficient statistics ``[n_samples, 3 * n_bins + 3]`` (float64) of per-token statistics.

    ``row_stats`` holds ``N`` tokens (:class:`hf_calib_kernels.row_stats.RowStats`) and
    ``sample_index [N]`` the sample (``0 <= i < n_samples``) each token belongs to. Layout in the module
    docstring. Samples without tokens get a row of zeros.

    Raises:
        ValueError: if any token's statistics are NaN or inf (its logits held NaN or +inf).
    """
    n_bad = int((~row_stats.finite()).sum().item())
    if n_bad:
        raise ValueError(
            f"logits contain NaN or inf at {n_bad} supervised position(s) (labels != ignore_index); the model "
            "diverged or its output was corrupted. Token calibration needs finite logits: fix the model, or set "
            "those labels to the ignore index."
        )
    return CalibrationState.pack_rows(
        row_stats.confidence,
        row_stats.correct,
        row_stats.nll,
        row_stats.brier,
        sample_index,
        n_samples,
        n_bins=n_bins,
    )


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, tuple | list) and x and not isinstance(x[0], int | float):
        x = x[0]  # a model returning several outputs: the logits come first
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor or numpy array; got {type(x).__name__}.")
    return x.detach()


def token_calibration_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_bins: int = 15,
    ignore_index: int = IGNORE_INDEX,
    shift_labels: bool = True,
    chunk_bytes: int | None = None,
) -> torch.Tensor:
    """Reduce causal-LM logits ``[B, T, V]`` and labels ``[B, T]`` to per-sample statistics ``[B, 3*n_bins+3]``.

    With ``shift_labels=True`` (the causal-LM convention) the target of position ``t`` is
    ``labels[:, t + 1]`` and the last position has none; with ``False`` the labels are already the
    targets. Positions whose target is ``ignore_index`` are skipped. The softmax runs in float32
    (float64 for float64 logits), a chunk of rows at a time (``chunk_bytes`` of float32 logits, 64 MiB by
    default); sums are float64 (float32 on MPS). The result stays on the logits' device.

    Raises:
        ValueError: on non-3-D logits, labels of another shape than ``logits.shape[:2]``, non-integer labels,
            targets outside ``[0, V)``, or NaN/inf logits at a supervised position.
    """
    n_bins = _check_n_bins(n_bins)
    z = _as_tensor(logits, "logits")
    y = _as_tensor(labels, "labels")
    if z.ndim != 3 or not z.is_floating_point():
        raise ValueError(
            f"logits must be floating-point with shape [batch, seq, vocab]; got {tuple(z.shape)} {z.dtype}."
        )
    if tuple(y.shape) != tuple(z.shape[:2]):
        raise ValueError(
            f"labels must have shape logits.shape[:2] = {tuple(z.shape[:2])}; got {tuple(y.shape)}. "
            "Pass the batch's labels unchanged (Trainer pads both the same way)."
        )
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels must hold integer token ids; got dtype {y.dtype}.")
    y = y.to(device=z.device, dtype=torch.long)
    if shift_labels:
        y = F.pad(y, (0, 1), value=ignore_index)[:, 1:]
    flat_y = y.reshape(-1)
    rows = (flat_y != ignore_index).nonzero().squeeze(1)
    vocab = z.shape[-1]
    kept = flat_y.index_select(0, rows)
    if kept.numel() and bool(((kept < 0) | (kept >= vocab)).any()):
        raise ValueError(
            f"labels must lie in [0, {vocab}) (the vocabulary) or equal ignore_index={ignore_index}; got values in "
            f"[{int(kept.min())}, {int(kept.max())}]."
        )
    stats = logits_row_stats(z.reshape(-1, vocab), flat_y, rows, chunk_bytes=chunk_bytes)
    return pack_token_stats(stats, rows // z.shape[1], z.shape[0], n_bins=n_bins)


def token_calibration_state(stats: torch.Tensor | np.ndarray, *, n_bins: int = 15) -> CalibrationState:
    """Sum per-sample statistics ``[N, 3*n_bins+3]`` (from :func:`token_calibration_stats`) into a
    ``CalibrationState(n_bins, keep_samples=False)`` (float64; an empty input gives an empty state).

    Raises:
        ValueError: if ``stats`` is not such an array (wrong width, NaN/inf, negative or inconsistent counts),
            e.g. raw logits passed without ``preprocess_logits_for_metrics``.
    """
    width = stats_width(n_bins)
    s = _as_tensor(stats, "stats")
    if s.ndim != 2 or s.shape[1] != width or not s.is_floating_point():
        raise ValueError(
            f"predictions must be per-sample token statistics of shape [N, {width}] (n_bins={n_bins}); got "
            f"{tuple(s.shape)} {s.dtype}. Pass preprocess_logits_for_metrics from the same "
            "token_calibration_metrics(...) to the Trainer, with the same n_bins."
        )
    try:
        return CalibrationState.from_packed(s, n_bins=n_bins)
    except ValueError as err:
        raise ValueError(
            f"{err} Pass preprocess_logits_for_metrics from the same token_calibration_metrics(...), same n_bins."
        ) from None


def metric_summary(state: CalibrationState, prefix: str) -> dict[str, float]:
    """``{prefix}count`` and, with at least one token, ``{prefix}`` + every logged metric of
    :mod:`hf_calib.metrics.catalog` (ece, rms_ce, mce, brier, nll, accuracy, mean_confidence)."""
    if state.n_samples == 0:
        return {f"{prefix}count": 0}
    values = state.compute()
    out: dict[str, float] = {f"{prefix}count": int(values.pop("n_samples"))}
    for key in logged_metrics():
        out[f"{prefix}{key}"] = float(values[key])
    return out


@dataclasses.dataclass(frozen=True)
class TokenCalibrationConfig:
    """What ``CalibratedTrainer`` reports at each evaluation (``calibration_metrics=`` argument).

    Args:
        n_bins: equal-width confidence bins of ECE / RMS-CE / MCE and of the reliability diagram.
        prefix: metric names are ``{metric_key_prefix}_{prefix}ece`` etc. (``eval_token_ece``).
        reliability_diagram: write ``{output_dir}/calibration/{metric_key_prefix}_{prefix}step{N}.png`` on
            the main process at each evaluation, and log it to TensorBoard when that is a ``report_to`` target.
    """

    n_bins: int = 15
    prefix: str = DEFAULT_PREFIX
    reliability_diagram: bool = True

    def __post_init__(self) -> None:
        _check_n_bins(self.n_bins)
        _check_prefix(self.prefix)
        if not isinstance(self.reliability_diagram, bool):
            raise ValueError(f"reliability_diagram must be True or False; got {self.reliability_diagram!r}.")

    @classmethod
    def resolve(cls, value: bool | TokenCalibrationConfig | None) -> TokenCalibrationConfig | None:
        """``True`` -> the defaults, ``False``/``None`` -> off, a config -> itself."""
        if isinstance(value, cls):
            return value
        if value is True:
            return cls()
        if value is False or value is None:
            return None
        raise ValueError(f"calibration_metrics must be True, False or a TokenCalibrationConfig; got {value!r}.")


class TokenCalibrationMetrics:
    """The ``(preprocess_logits_for_metrics, compute_metrics)`` pair for ``transformers.Trainer``.

    Built by :func:`token_calibration_metrics`; unpacks as that pair. ``last_state`` is the
    :class:`~hf_calib.metrics.CalibrationState` of the latest completed evaluation (``evaluations``
    counts them), which :class:`hf_calib.callbacks.ReliabilityDiagramCallback` draws.
    """

    def __init__(
        self,
        n_bins: int = 15,
        *,
        ignore_index: int = IGNORE_INDEX,
        prefix: str = DEFAULT_PREFIX,
        shift_labels: bool = True,
        compute_metrics: Callable[..., dict[str, float]] | None = None,
        preprocess_logits_for_metrics: Callable[[Any, Any], Any] | None = None,
        chunk_bytes: int | None = None,
    ) -> None:
        self.n_bins = _check_n_bins(n_bins)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an integer such as -100; got {ignore_index!r}.")
        self.ignore_index = ignore_index
        self.prefix = _check_prefix(prefix)
        self.shift_labels = bool(shift_labels)
        if compute_metrics is not None and not callable(compute_metrics):
            raise ValueError("compute_metrics must be callable (your own metrics function) or None.")
        if preprocess_logits_for_metrics is not None and not callable(preprocess_logits_for_metrics):
            raise ValueError("preprocess_logits_for_metrics must be callable or None.")
        if preprocess_logits_for_metrics is not None and compute_metrics is None:
            raise ValueError("preprocess_logits_for_metrics is only used together with your own compute_metrics.")
        self.user_compute_metrics = compute_metrics
        self.user_preprocess = preprocess_logits_for_metrics
        self.chunk_bytes = chunk_bytes
        self.last_state: CalibrationState | None = None
        self.evaluations = 0
        self._partial: CalibrationState | None = None

    def __iter__(self) -> Iterator[Callable[..., Any]]:
        yield self.preprocess_logits_for_metrics
        yield self.compute_metrics

    # ---- per batch ---------------------------------------------------------------------
    def preprocess_logits_for_metrics(self, logits: Any, labels: Any) -> torch.Tensor | tuple[Any, Any]:
        """Trainer's per-batch hook: logits ``[B, T, V]`` -> statistics ``[B, 3*n_bins+3]`` (float64).

        With your own ``compute_metrics`` it returns ``(statistics, yours)`` where ``yours`` is your
        ``preprocess_logits_for_metrics(logits, labels)`` or else the logits unchanged.
        """
        if labels is None:
            raise ValueError(
                "token calibration needs labels: the evaluation batches must carry 'labels' (Trainer's label_names)."
            )
        stats = token_calibration_stats(
            logits,
            labels,
            n_bins=self.n_bins,
            ignore_index=self.ignore_index,
            shift_labels=self.shift_labels,
            chunk_bytes=self.chunk_bytes,
        )
        if self.user_compute_metrics is None:
            return stats
        theirs = logits if self.user_preprocess is None else self.user_preprocess(logits, labels)
        return stats, theirs

    # ---- per evaluation ----------------------------------------------------------------
    def metrics_from_stats(self, stats: torch.Tensor | np.ndarray) -> dict[str, float]:
        """Metrics ``{prefix}count`` (+ ``ece``, ``rms_ce``, ``mce``, ``nll``, ``brier``, ``accuracy``,
        ``mean_confidence`` when there is at least one token) of per-sample statistics ``[N, width]``; sets
        ``last_state``."""
        return self._finish(token_calibration_state(stats, n_bins=self.n_bins))

    def _finish(self, state: CalibrationState) -> dict[str, float]:
        self.last_state = state
        self.evaluations += 1
        return metric_summary(state, self.prefix)

    def compute_metrics(self, eval_pred: Any, compute_result: bool | None = None) -> dict[str, float]:
        """Trainer's ``compute_metrics``: sums the gathered per-sample statistics over the evaluation set.

        With ``batch_eval_metrics=True`` Trainer calls it once per batch with ``compute_result``; batches
        are accumulated and the metrics returned when ``compute_result`` is True. Your own
        ``compute_metrics`` (if given) gets an ``EvalPrediction`` whose predictions are your part.
        """
        predictions = eval_pred.predictions
        theirs = None
        if self.user_compute_metrics is not None:
            if not isinstance(predictions, tuple | list) or len(predictions) < 2:
                raise ValueError(
                    "predictions lack the token statistics: pass preprocess_logits_for_metrics from the same "
                    "token_calibration_metrics(...) object to the Trainer."
                )
            predictions, theirs = predictions[0], predictions[1] if len(predictions) == 2 else tuple(predictions[1:])
        if compute_result is None:
            metrics = self.metrics_from_stats(predictions)
        else:
            state = token_calibration_state(predictions, n_bins=self.n_bins)
            self._partial = state if self._partial is None else self._partial.merge(state)
            metrics = {}
            if compute_result:
                state, self._partial = self._partial, None
                metrics = self._finish(state)
        if self.user_compute_metrics is not None:
            metrics = {**self._call_user(eval_pred, theirs, compute_result), **metrics}
        return metrics

    def _call_user(self, eval_pred: Any, predictions: Any, compute_result: bool | None) -> dict[str, float]:
        from transformers import EvalPrediction

        theirs = EvalPrediction(
            predictions=predictions,
            label_ids=eval_pred.label_ids,
            inputs=getattr(eval_pred, "inputs", None),
            losses=getattr(eval_pred, "losses", None),
        )
        if compute_result is None:
            return dict(self.user_compute_metrics(theirs) or {})
        return dict(self.user_compute_metrics(theirs, compute_result=compute_result) or {})


def token_calibration_metrics(
    n_bins: int = 15,
    *,
    ignore_index: int = IGNORE_INDEX,
    prefix: str = DEFAULT_PREFIX,
    shift_labels: bool = True,
    compute_metrics: Callable[..., dict[str, float]] | None = None,
    preprocess_logits_for_metrics: Callable[[Any, Any], Any] | None = None,
    chunk_bytes: int | None = None,
) -> TokenCalibrationMetrics:
    """Token-level calibration for a plain ``transformers.Trainer``.

    ::

        preprocess, compute = token_calibration_metrics(n_bins=15, ignore_index=-100, prefix="token_")
        trainer = Trainer(..., preprocess_logits_for_metrics=preprocess, compute_metrics=compute)
        trainer.evaluate()  # {"eval_token_ece": ..., "eval_token_nll": ..., "eval_token_count": ..., ...}

    Each batch's logits ``[B, T, V]`` become per-sample statistics ``[B, 3*n_bins+3]`` before Trainer
    gathers or stores anything, so memory is O(samples x n_bins) whatever the vocabulary. Keys (after
    Trainer's ``eval_`` prefix): ``{prefix}count`` always; ``{prefix}ece``, ``rms_ce``, ``mce`` (equal-width
    bins), ``nll`` (mean ``-log p_y``), ``brier`` (mean ``sum_v (p_v - 1[v=y])^2``), ``accuracy`` and
    ``mean_confidence`` when at least one label is not ignored.

    Args:
        n_bins: equal-width bins ``(b/B, (b+1)/B]``.
        ignore_index: label value of positions without a target.
        prefix: prepended to every metric name.
        shift_labels: targets are ``labels[:, t + 1]`` (causal LM); False if the labels are already shifted.
        compute_metrics: your own metrics function, called with your part of the predictions; its keys are
            merged into the result (ours win on a clash).
        preprocess_logits_for_metrics: your own per-batch reduction for your ``compute_metrics`` (without it,
            your function receives the full logits, which costs their memory).
        chunk_bytes: size of one float32 chunk of logits for the softmax (64 MiB by default).
    """
    return TokenCalibrationMetrics(
        n_bins,
        ignore_index=ignore_index,
        prefix=prefix,
        shift_labels=shift_labels,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        chunk_bytes=chunk_bytes,
    )
