"""``CalibrationState``: a streaming, mergeable, checkpointable accumulator for the calibration metrics."""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import _distributed, _state_batches, _state_io
from ._checks import (
    ArrayLike,
    check_n_bins,
    labels_1d,
    logits_2d,
    probs_2d,
    same_length,
    scores_1d,
)
from ._state_io import OPTIONAL, SAMPLE_DTYPES, SAMPLE_KEYS, sum_keys
from .calibration import (
    bin_sums,
    calibration_error_from_sums,
    quantile_bin_index,
    top1,
    uniform_bin_index,
)
from .ranking import aurc, misclassification_auprc, misclassification_auroc
from .scores import DEFAULT_MIN_PROB, brier_per_sample, check_min_prob, nll_per_sample


class CalibrationState:
    """Streaming accumulator of top-label confidences and correctness; ``compute()`` gives all metrics.

    What is kept, and what it costs:

    * Always: per equal-width bin the count (int64) and the float64 sums of confidences and of correct
      predictions, plus float64 sums of per-sample NLL and Brier when given. O(n_bins) memory; ECE, RMS-CE,
      MCE, accuracy, NLL and Brier are exact from these sums, and merging adds them (float64, so the merge
      order changes results by ~1e-15 at most).
    * With ``num_classes``: the same three sums per (class, bin) cell for top-label ECE and class-wise ECE,
      O(num_classes * n_bins). Only ``update_from_probs`` / ``update_from_logits`` can feed them.
    * With ``keep_samples=True`` (default): every sample's confidence (``sample_dtype``, float32 by default)
      and correctness (bool), i.e. 5 bytes per sample (+4 when an ``uncertainty`` is given; double the
      float part with float64). Adaptive (equal-mass) ECE, misclassification AUROC / AUPRC and AURC are then
      computed at ``compute()`` time from these samples by the same functions as the one-shot API, at
      O(N log N) time; they are exact for the stored values (float32-rounded confidences by default). With
      ``keep_samples=False`` these keys are absent from ``compute()`` and ``samples()`` raises.

    Merging (``merge``) is in place and returns ``self``; ``sync`` returns a new state holding the union
    over all ranks and leaves this one untouched, so it can be called again after more updates.
    Everything lives on CPU; inputs on other devices are reduced on their device and the small results
    copied over.

    Args:
        n_bins: number of equal-width bins (also the number of equal-mass bins of ``adaptive_ece``).
        num_classes: track top-label and class-wise ECE and the normalised Brier score for this many classes.
        keep_samples: keep per-sample values (see above).
        sample_dtype: ``torch.float32`` or ``torch.float64`` for stored confidences and uncertainties.
    """

    def __init__(
        self,
        n_bins: int = 15,
        *,
        num_classes: int | None = None,
        keep_samples: bool = True,
        sample_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.n_bins = check_n_bins(n_bins)
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
            raise ValueError(f"num_classes must be None or an integer >= 1; got {num_classes!r}.")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be None or an integer >= 1; got {num_classes!r}.")
        if not isinstance(keep_samples, bool):
            raise ValueError(f"keep_samples must be True or False; got {keep_samples!r}.")
        if sample_dtype not in SAMPLE_DTYPES:
            raise ValueError(f"sample_dtype must be torch.float32 or torch.float64; got {sample_dtype!r}.")
        self.num_classes = num_classes
        self.keep_samples = keep_samples
        self.sample_dtype = sample_dtype
        self.reset()

    # ------------------------------------------------------------------ accumulation
    def reset(self) -> None:
        """Forget every sample."""
        self._sums: dict[str, torch.Tensor] = _state_io.empty_sums(self.n_bins, self.num_classes)
        self._samples: dict[str, list[torch.Tensor]] = {key: [] for key in SAMPLE_KEYS}

    @property
    def n_samples(self) -> int:
        return int(self._sums["bin_count"].sum().item())

    def _tracks(self, name: str) -> bool | None:
        """Whether every sample so far came with ``name`` (None while the state is empty)."""
        if self.n_samples == 0:
            return None
        if name == "uncertainty":
            return bool(self._samples["sample_uncertainty"]) if self.keep_samples else False
        return int(self._sums[f"{name}_count"].item()) > 0

    def update(
        self,
        confidences: ArrayLike,
        correct: ArrayLike,
        *,
        uncertainty: ArrayLike | None = None,
        nll: ArrayLike | None = None,
        brier: ArrayLike | None = None,
    ) -> None:
        """Add a batch of top-label confidences [N] in [0, 1] and 0/1 correctness [N].

        Optional per-sample values, each [N]: ``uncertainty`` (any finite score, used for AUROC / AUPRC /
        AURC instead of the default ``1 - confidence``), ``nll`` (>= 0) and ``brier`` (in [0, 2]). Each
        optional value must be given for every batch or for none. Empty batches are allowed and ignored.
        Not available with ``num_classes`` (use ``update_from_probs``).
        """
        if self.num_classes is not None:
            raise ValueError(
                "CalibrationState(num_classes=...) needs full probability rows: use update_from_probs or "
                "update_from_logits instead of update."
            )
        conf, hit, extra = _state_batches.check_batch(confidences, correct, uncertainty, nll, brier)
        self._add(conf, hit, **extra)

    def update_from_probs(
        self,
        probs: ArrayLike,
        labels: ArrayLike,
        *,
        uncertainty: ArrayLike | None = None,
        ignore_index: int | None = None,
        min_prob: float = DEFAULT_MIN_PROB,
    ) -> None:
        """Add probability rows [..., C] with integer labels [...] (e.g. [batch, seq, vocab] and [batch, seq]).

        Derives the top-1 confidence and correctness, per-sample NLL ``-log(max(p_y, min_prob))`` and Brier
        score, and the per-class sums when ``num_classes`` is set. Positions whose label equals
        ``ignore_index`` (e.g. -100) are dropped, together with their ``uncertainty`` (shape [...]).
        """
        rows, labels, uncertainty = _state_batches.flatten_rows(
            probs, labels, uncertainty, ignore_index, "probs", self.num_classes
        )
        p = probs_2d(rows, allow_empty=True)
        y = labels_1d(labels, p.shape[1])
        self._add_rows(p, y, uncertainty, nll=nll_per_sample(p, y, check_min_prob(min_prob)))

    def update_from_logits(
        self,
        logits: ArrayLike,
        labels: ArrayLike,
        *,
        uncertainty: ArrayLike | None = None,
        ignore_index: int | None = None,
    ) -> None:
        """Like :meth:`update_from_probs` from logits [..., C]: softmax in float32 (float64 for float64
        logits) and NLL ``logsumexp(z) - z_y`` without clamping."""
        rows, labels, uncertainty = _state_batches.flatten_rows(
            logits, labels, uncertainty, ignore_index, "logits", self.num_classes
        )
        log_p = torch.log_softmax(logits_2d(rows, allow_empty=True), dim=1)
        y = labels_1d(labels, log_p.shape[1])
        nll = -log_p.gather(1, y[:, None]).squeeze(1).double()
        self._add_rows(log_p.exp(), y, uncertainty, nll=nll)

    def _add_rows(self, p: torch.Tensor, y: torch.Tensor, u: torch.Tensor | None, *, nll: torch.Tensor) -> None:
        same_length(("probs", p), ("labels", y))
        conf, pred, hit = top1(p, y)
        extra = {"nll": nll, "brier": brier_per_sample(p, y)}
        if u is not None:
            extra["uncertainty"] = scores_1d(u, "uncertainty", allow_empty=True)
        class_sums: dict[str, torch.Tensor] = {}
        if self.num_classes is not None:
            class_sums = _state_batches.class_sums(p, y, conf, pred, hit, self.num_classes, self.n_bins)
        self._add(conf, hit, class_sums=class_sums, **extra)

    def _add(
        self,
        conf: torch.Tensor,
        hit: torch.Tensor,
        *,
        uncertainty: torch.Tensor | None = None,
        nll: torch.Tensor | None = None,
        brier: torch.Tensor | None = None,
        class_sums: dict[str, torch.Tensor] | None = None,
    ) -> None:
        if uncertainty is not None and not self.keep_samples:
            raise ValueError("uncertainty is only used by AUROC / AUPRC / AURC, which need keep_samples=True.")
        if conf.numel() == 0:
            return
        for name, value in (("uncertainty", uncertainty), ("nll", nll), ("brier", brier)):
            tracked = self._tracks(name)
            if tracked is not None and tracked != (value is not None):
                given = "given" if tracked else "not given"
                raise ValueError(f"{name} was {given} for earlier batches; give it for every batch or for none.")
        index = uniform_bin_index(conf, self.n_bins)
        sums = dict(zip(sum_keys("bin"), bin_sums(index, conf, hit, self.n_bins), strict=True))
        sums.update(class_sums or {})
        for name, value in (("nll", nll), ("brier", brier)):
            if value is not None:
                sums[f"{name}_sum"] = value.sum()
                sums[f"{name}_count"] = torch.tensor(value.numel())
        for key, value in sums.items():
            self._sums[key] += value.cpu().to(self._sums[key].dtype)
        if self.keep_samples:
            self._samples["sample_confidence"].append(conf.to(self.sample_dtype).cpu())
            self._samples["sample_correct"].append(hit.cpu())
            if uncertainty is not None:
                self._samples["sample_uncertainty"].append(uncertainty.to(self.sample_dtype).cpu())

    # ------------------------------------------------------------------ merging
    def _check_compatible(self, other: CalibrationState) -> None:
        if not isinstance(other, CalibrationState):
            raise ValueError(f"other must be a CalibrationState; got {type(other).__name__}.")
        for attr in ("n_bins", "num_classes", "keep_samples", "sample_dtype"):
            if getattr(self, attr) != getattr(other, attr):
                raise ValueError(
                    f"cannot merge states with different {attr}: {getattr(self, attr)!r} vs {getattr(other, attr)!r}."
                )
        for name in ("uncertainty", *OPTIONAL):
            mine, theirs = self._tracks(name), other._tracks(name)
            if mine is not None and theirs is not None and mine != theirs:
                raise ValueError(f"cannot merge a state with {name} into one without it (or the reverse).")

    def merge(self, other: CalibrationState) -> CalibrationState:
        """Add ``other``'s samples to this state, in place; returns ``self``. ``other`` is not modified.

        The result equals one state fed with both streams (binned sums up to float64 rounding; the samples
        are concatenated, and every sample-based metric is independent of sample order).
        """
        self._check_compatible(other)
        for key, value in other._sums.items():
            self._sums[key] = self._sums[key] + value
        for key, chunks in other._samples.items():
            self._samples[key] = self._samples[key] + list(chunks)
        return self

    def samples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The kept samples: ``(confidence [N] sample_dtype, correct [N] bool, uncertainty [N] or None)``.

        Raises:
            ValueError: with ``keep_samples=False``.
        """
        if not self.keep_samples:
            raise ValueError(
                "this CalibrationState was built with keep_samples=False, so per-sample metrics (adaptive ECE, "
                "AUROC, AUPRC, AURC) are unavailable; build it with keep_samples=True (5 bytes per sample)."
            )
        for key, chunks in self._samples.items():
            if len(chunks) > 1:
                self._samples[key] = [torch.cat(chunks)]
        conf, hit, unc = (chunks[0] if chunks else None for chunks in self._samples.values())
        if conf is None:
            conf, hit = torch.zeros(0, dtype=self.sample_dtype), torch.zeros(0, dtype=torch.bool)
        return conf, hit, unc

    # ------------------------------------------------------------------ results
    def compute(self) -> dict[str, float]:
        """All metrics of the samples seen so far, as Python numbers.

        Keys: ``n_samples``, ``accuracy``, ``mean_confidence``, ``ece``, ``rms_ce``, ``mce`` (equal-width bins);
        ``nll`` and ``brier`` when they were given (always with ``update_from_probs`` / ``_logits``);
        ``top_label_ece``, ``classwise_ece``, ``brier_normalized`` (= brier / C) with ``num_classes``;
        with ``keep_samples``: ``adaptive_ece`` (equal-mass bins), ``aurc``, ``misclassification_auprc``
        (absent when there is no error) and ``misclassification_auroc`` (absent when all predictions are
        correct or all wrong), all using ``uncertainty`` if given, else ``1 - confidence``. A key is left out
        rather than set to NaN, so every reported value is a number.

        Raises:
            ValueError: if no sample was added.
        """
        n = self.n_samples
        if n == 0:
            raise ValueError("CalibrationState is empty: add samples with update() before compute().")
        s = self._sums
        bins = tuple(s[k] for k in sum_keys("bin"))
        out: dict[str, float] = {
            "n_samples": n,
            "accuracy": s["bin_correct_sum"].sum().item() / n,
            "mean_confidence": s["bin_confidence_sum"].sum().item() / n,
            "ece": calibration_error_from_sums(*bins, "l1"),
            "rms_ce": calibration_error_from_sums(*bins, "l2"),
            "mce": calibration_error_from_sums(*bins, "max"),
        }
        for name in OPTIONAL:
            if self._tracks(name):
                out[name] = s[f"{name}_sum"].item() / n
        if self.num_classes is not None:
            tl = tuple(s[k] for k in sum_keys("top_label"))
            cw = tuple(s[k] for k in sum_keys("classwise"))
            out["top_label_ece"] = calibration_error_from_sums(*tl, "l1")
            out["classwise_ece"] = calibration_error_from_sums(*cw, "l1", n_total=n) / self.num_classes
            out["brier_normalized"] = out["brier"] / self.num_classes
        if self.keep_samples:
            conf, hit, unc = self.samples()
            conf = conf.double()
            index = quantile_bin_index(conf, self.n_bins)
            out["adaptive_ece"] = calibration_error_from_sums(*bin_sums(index, conf, hit, self.n_bins), "l1")
            errors = ~hit
            unc = 1 - conf if unc is None else unc
            out["aurc"] = aurc(unc, errors)
            n_errors = int(errors.sum().item())
            if n_errors:
                out["misclassification_auprc"] = misclassification_auprc(unc, errors)
            if 0 < n_errors < n:
                out["misclassification_auroc"] = misclassification_auroc(unc, errors)
        return out

    # ------------------------------------------------------------------ packed form
    # One float row of 3 * n_bins + 3 numbers per group of samples (layout: :meth:`pack_rows`, ``_state_io``).
    @staticmethod
    def packed_width(n_bins: int) -> int:
        """Length ``3 * n_bins + 3`` of one packed row (layout: :meth:`pack_rows`)."""
        return 3 * check_n_bins(n_bins) + 3

    @staticmethod
    def pack_rows(
        confidence: torch.Tensor,
        correct: torch.Tensor,
        nll: torch.Tensor,
        brier: torch.Tensor,
        group: torch.Tensor,
        n_groups: int,
        *,
        n_bins: int = 15,
    ) -> torch.Tensor:
        """Packed statistics ``[n_groups, 3 * n_bins + 3]`` of samples ``i`` (1-D tensors ``confidence``,
        ``correct``, ``nll``, ``brier``), each added to the row ``group[i]``; groups without samples are zeros.

        Row layout: bin counts [0, B), bin confidence sums [B, 2B), bin correctness sums [2B, 3B), then the sums
        of nll and Brier and the sample count. Sums are float64 (float32 on MPS, which has no float64) on the
        inputs' device; no device-to-host copy. :meth:`from_packed` turns summed rows back into a state.
        """
        return _state_io.pack_rows(confidence, correct, nll, brier, group, n_groups, n_bins)

    @classmethod
    def from_packed(cls, packed: torch.Tensor, *, n_bins: int = 15) -> CalibrationState:
        """The state (``keep_samples=False``, with NLL and Brier) of packed rows ``[N, 3 * n_bins + 3]``, summed.

        Raises:
            ValueError: if ``packed`` is not such rows (wrong shape, NaN/inf, negative, fractional or
                inconsistent counts).
        """
        n_bins = check_n_bins(n_bins)
        sums = _state_io.packed_sums(packed, n_bins)
        state = cls(n_bins, keep_samples=False)
        state._sums.update(sums)
        return state

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain CPU tensors (safetensors-compatible): the configuration as 0-dim tensors (``n_bins``,
        ``num_classes`` with 0 for None, ``keep_samples``), the sums (``bin_count`` [B] int64,
        ``bin_confidence_sum`` / ``bin_correct_sum`` [B] float64, ``nll_sum`` / ``brier_sum`` float64 and
        ``nll_count`` / ``brier_count`` int64; with num_classes ``top_label_*`` and ``classwise_*`` [C, B],
        where ``classwise_confidence_sum`` sums ``p_k`` and ``classwise_correct_sum`` counts ``y = k``) and,
        with keep_samples, ``sample_confidence`` [N], ``sample_correct`` [N] bool and ``sample_uncertainty``
        [N] (only when given)."""
        samples = self.samples() if self.keep_samples else None
        return _state_io.to_state_dict(self.n_bins, self.num_classes, self.keep_samples, self._sums, samples)

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Replace this state's contents by ``state_dict`` (from :meth:`state_dict`); the configuration must match."""
        self._sums, self._samples = _state_io.from_state_dict_contents(
            state_dict,
            self._sums,
            n_bins=self.n_bins,
            num_classes=self.num_classes,
            keep_samples=self.keep_samples,
            sample_dtype=self.sample_dtype,
        )

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> CalibrationState:
        """Build a state with the configuration stored in ``state_dict`` and load it."""
        n_bins, num_classes, keep_samples, dtype = _state_io.state_dict_config(state_dict)
        state = cls(n_bins, num_classes=num_classes, keep_samples=keep_samples, sample_dtype=dtype)
        state.load_state_dict(state_dict)
        return state

    # ------------------------------------------------------------------ distributed
    def sync(self, group: dist.ProcessGroup | None = None) -> CalibrationState:
        """A new state holding the union of this state over all ranks of ``group`` (collective: every rank
        must call it). Sums travel by ``all_reduce(SUM)``, samples by a padded ``all_gather`` in rank order;
        NCCL groups use the current CUDA device, others CPU. Without an initialised process group it returns
        a copy. This state is left unchanged.
        """
        result = CalibrationState(
            self.n_bins, num_classes=self.num_classes, keep_samples=self.keep_samples, sample_dtype=self.sample_dtype
        )
        if not _distributed.is_initialized():
            return result.merge(self)
        codes = [self.n_bins, self.num_classes or 0, int(self.keep_samples), SAMPLE_DTYPES.index(self.sample_dtype)]
        codes += [-1 if self._tracks(name) is None else int(self._tracks(name)) for name in ("uncertainty", *OPTIONAL)]
        samples = self.samples() if self.keep_samples else None
        result._sums, gathered = _state_io.sync_contents(self._sums, samples, codes, self.sample_dtype, group)
        result._samples.update(gathered)
        return result
