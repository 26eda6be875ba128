"""``CalibrationState``: a streaming, mergeable, checkpointable accumulator for the calibration metrics."""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import _distributed
from ._checks import (
    ArrayLike,
    as_tensor,
    binary_1d,
    check_n_bins,
    confidences_1d,
    labels_1d,
    logits_2d,
    probs_2d,
    same_length,
    scores_1d,
)
from .calibration import (
    bin_sums,
    calibration_error_from_sums,
    classwise_bin_sums,
    quantile_bin_index,
    top1,
    top_label_bin_sums,
    uniform_bin_index,
)
from .ranking import aurc, misclassification_auprc, misclassification_auroc
from .scores import DEFAULT_MIN_PROB, brier_per_sample, check_min_prob, nll_per_sample

_SAMPLE_DTYPES = (torch.float32, torch.float64)
_SAMPLE_KEYS = ("sample_confidence", "sample_correct", "sample_uncertainty")
_OPTIONAL = ("nll", "brier")


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
        if sample_dtype not in _SAMPLE_DTYPES:
            raise ValueError(f"sample_dtype must be torch.float32 or torch.float64; got {sample_dtype!r}.")
        self.num_classes = num_classes
        self.keep_samples = keep_samples
        self.sample_dtype = sample_dtype
        self.reset()

    # ------------------------------------------------------------------ accumulation
    def reset(self) -> None:
        """Forget every sample."""
        shapes = {"bin": (self.n_bins,)}
        if self.num_classes is not None:
            shapes.update(top_label=(self.num_classes, self.n_bins), classwise=(self.num_classes, self.n_bins))
        self._sums: dict[str, torch.Tensor] = {}
        for prefix, shape in shapes.items():
            self._sums[f"{prefix}_count"] = torch.zeros(shape, dtype=torch.int64)
            self._sums[f"{prefix}_confidence_sum"] = torch.zeros(shape, dtype=torch.float64)
            self._sums[f"{prefix}_correct_sum"] = torch.zeros(shape, dtype=torch.float64)
        for name in _OPTIONAL:
            self._sums[f"{name}_sum"] = torch.zeros((), dtype=torch.float64)
            self._sums[f"{name}_count"] = torch.zeros((), dtype=torch.int64)
        self._samples: dict[str, list[torch.Tensor]] = {key: [] for key in _SAMPLE_KEYS}

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
        conf = confidences_1d(confidences, allow_empty=True)
        hit = binary_1d(correct, "correct", allow_empty=True)
        named = [("confidences", conf), ("correct", hit)]
        extra = {}
        for name, value in (("uncertainty", uncertainty), ("nll", nll), ("brier", brier)):
            if value is not None:
                extra[name] = scores_1d(value, name, allow_empty=True)
                named.append((name, extra[name]))
        same_length(*named)
        if "nll" in extra and bool((extra["nll"] < 0).any()):
            raise ValueError("nll must be >= 0 (a negative log-probability of the true class).")
        if "brier" in extra and bool(((extra["brier"] < 0) | (extra["brier"] > 2)).any()):
            raise ValueError("brier must lie in [0, 2] (per-sample sum over classes of squared errors).")
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
        rows, labels, uncertainty = self._flatten(probs, labels, uncertainty, ignore_index, "probs")
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
        rows, labels, uncertainty = self._flatten(logits, labels, uncertainty, ignore_index, "logits")
        log_p = torch.log_softmax(logits_2d(rows, allow_empty=True), dim=1)
        y = labels_1d(labels, log_p.shape[1])
        nll = -log_p.gather(1, y[:, None]).squeeze(1).double()
        self._add_rows(log_p.exp(), y, uncertainty, nll=nll)

    def _flatten(
        self, rows: ArrayLike, labels: ArrayLike, uncertainty: ArrayLike | None, ignore_index: int | None, name: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Flatten [..., C] / [...] to [N, C] / [N] and drop ``ignore_index`` positions."""
        x, y = as_tensor(rows, name), as_tensor(labels, "labels")
        if x.ndim < 1 or tuple(x.shape[:-1]) != tuple(y.shape):
            raise ValueError(f"labels must have shape {name}.shape[:-1] = {tuple(x.shape[:-1])}; got {tuple(y.shape)}.")
        if self.num_classes is not None and x.shape[-1] != self.num_classes:
            raise ValueError(f"{name} has {x.shape[-1]} classes but the state has num_classes={self.num_classes}.")
        u = None if uncertainty is None else as_tensor(uncertainty, "uncertainty")
        if u is not None and tuple(u.shape) != tuple(y.shape):
            raise ValueError(f"uncertainty must have the shape of labels {tuple(y.shape)}; got {tuple(u.shape)}.")
        x, y, u = x.reshape(-1, x.shape[-1]), y.reshape(-1), (None if u is None else u.reshape(-1))
        if ignore_index is not None:
            keep = y != ignore_index
            x, y, u = x[keep], y[keep], (None if u is None else u[keep])
        return x, y, u

    def _add_rows(self, p: torch.Tensor, y: torch.Tensor, u: torch.Tensor | None, *, nll: torch.Tensor) -> None:
        same_length(("probs", p), ("labels", y))
        conf, pred, hit = top1(p, y)
        extra = {"nll": nll, "brier": brier_per_sample(p, y)}
        if u is not None:
            extra["uncertainty"] = scores_1d(u, "uncertainty", allow_empty=True)
        class_sums: dict[str, torch.Tensor] = {}
        if self.num_classes is not None:
            for prefix, sums in (
                ("top_label", top_label_bin_sums(conf, pred, hit, self.num_classes, self.n_bins)),
                ("classwise", classwise_bin_sums(p, y, self.n_bins)),
            ):
                class_sums.update(zip(_sum_keys(prefix), sums, strict=True))
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
        sums = dict(zip(_sum_keys("bin"), bin_sums(index, conf, hit, self.n_bins), strict=True))
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
        for name in ("uncertainty", *_OPTIONAL):
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
        bins = tuple(s[k] for k in _sum_keys("bin"))
        out: dict[str, float] = {
            "n_samples": n,
            "accuracy": s["bin_correct_sum"].sum().item() / n,
            "mean_confidence": s["bin_confidence_sum"].sum().item() / n,
            "ece": calibration_error_from_sums(*bins, "l1"),
            "rms_ce": calibration_error_from_sums(*bins, "l2"),
            "mce": calibration_error_from_sums(*bins, "max"),
        }
        for name in _OPTIONAL:
            if self._tracks(name):
                out[name] = s[f"{name}_sum"].item() / n
        if self.num_classes is not None:
            tl = tuple(s[k] for k in _sum_keys("top_label"))
            cw = tuple(s[k] for k in _sum_keys("classwise"))
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
    # One float row of 3 * n_bins + 3 numbers holds a group of samples' sufficient statistics, so per-sample
    # (or per-sequence) rows travel through Trainer's gathering like predictions and add up to a state:
    #   [0, B)    sample count of equal-width confidence bin b = (b/B, (b+1)/B]
    #   [B, 2B)   sum of the confidences in bin b
    #   [2B, 3B)  sum of the correctness in bin b
    #   3B        sum of nll        3B + 1   sum of brier        3B + 2   number of samples
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
        n_bins = check_n_bins(n_bins)
        device = confidence.device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        width = 3 * n_bins + 3
        out = torch.zeros(n_groups * width, dtype=dtype, device=device)
        if group.numel() == 0:
            return out.view(n_groups, width)
        base = group.to(device) * width
        bins = uniform_bin_index(confidence, n_bins).to(device)
        ones = torch.ones(group.numel(), dtype=dtype, device=device)
        out.index_add_(0, base + bins, ones)
        out.index_add_(0, base + n_bins + bins, confidence.to(dtype))
        out.index_add_(0, base + 2 * n_bins + bins, correct.to(dtype))
        out.index_add_(0, base + 3 * n_bins, nll.to(dtype))
        out.index_add_(0, base + 3 * n_bins + 1, brier.to(dtype))
        out.index_add_(0, base + 3 * n_bins + 2, ones)
        return out.view(n_groups, width)

    @classmethod
    def from_packed(cls, packed: torch.Tensor, *, n_bins: int = 15) -> CalibrationState:
        """The state (``keep_samples=False``, with NLL and Brier) of packed rows ``[N, 3 * n_bins + 3]``, summed.

        Raises:
            ValueError: if ``packed`` is not such rows (wrong shape, NaN/inf, negative, fractional or
                inconsistent counts).
        """
        n_bins = check_n_bins(n_bins)
        width = 3 * n_bins + 3
        if packed.ndim != 2 or packed.shape[1] != width or not packed.is_floating_point():
            raise ValueError(
                f"packed statistics must be float rows of shape [N, {width}] (n_bins={n_bins}); got "
                f"{tuple(packed.shape)} {packed.dtype}."
            )
        total = packed.detach().to(torch.float64).sum(dim=0).cpu()
        count = total[:n_bins]
        if not bool(torch.isfinite(total).all()) or bool((count < 0).any()):
            raise ValueError("packed statistics hold NaN, inf or negative counts; they are not packed statistics.")
        if bool((count != count.round()).any()) or float(count.sum()) != float(total[3 * n_bins + 2]):
            raise ValueError(
                "packed statistics are inconsistent (bin counts are not integers or do not add up to the sample "
                "count); they must come from CalibrationState.pack_rows with the same n_bins."
            )
        tracked = count.sum().round().to(torch.int64)
        state = cls(n_bins, keep_samples=False)
        state._sums.update(
            bin_count=count.round().to(torch.int64),
            bin_confidence_sum=total[n_bins : 2 * n_bins].clone(),
            bin_correct_sum=total[2 * n_bins : 3 * n_bins].clone(),
            nll_sum=total[3 * n_bins].clone(),
            nll_count=tracked.clone(),
            brier_sum=total[3 * n_bins + 1].clone(),
            brier_count=tracked.clone(),
        )
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
        out = {
            "n_bins": torch.tensor(self.n_bins),
            "num_classes": torch.tensor(self.num_classes or 0),
            "keep_samples": torch.tensor(self.keep_samples),
        }
        out.update({key: value.clone() for key, value in self._sums.items()})
        if self.keep_samples:
            conf, hit, unc = self.samples()
            out.update(sample_confidence=conf.clone(), sample_correct=hit.clone())
            if unc is not None:
                out["sample_uncertainty"] = unc.clone()
        return out

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Replace this state's contents by ``state_dict`` (from :meth:`state_dict`); the configuration must match."""
        config = {"n_bins": self.n_bins, "num_classes": self.num_classes or 0, "keep_samples": self.keep_samples}
        for key, expected in config.items():
            if key not in state_dict:
                raise ValueError(f"state_dict lacks {key!r}; it must come from CalibrationState.state_dict().")
            if state_dict[key].item() != expected:
                raise ValueError(
                    f"state_dict has {key}={state_dict[key].item()} but this state has {key}={expected}; "
                    "build the state with the same settings (or use CalibrationState.from_state_dict)."
                )
        allowed = set(config) | set(self._sums) | (set(_SAMPLE_KEYS) if self.keep_samples else set())
        required = (
            set(config) | set(self._sums) | ({"sample_confidence", "sample_correct"} if self.keep_samples else set())
        )
        if unknown := sorted(set(state_dict) - allowed):
            raise ValueError(f"state_dict has unexpected keys {unknown}.")
        if missing := sorted(required - set(state_dict)):
            raise ValueError(f"state_dict lacks keys {missing}.")
        sums = {}
        for key, reference in self._sums.items():
            value = state_dict[key]
            if tuple(value.shape) != tuple(reference.shape):
                raise ValueError(
                    f"state_dict[{key!r}] has shape {tuple(value.shape)}, expected {tuple(reference.shape)}."
                )
            sums[key] = value.detach().cpu().to(reference.dtype).clone()
        n = int(sums["bin_count"].sum().item())
        for name in _OPTIONAL:
            if int(sums[f"{name}_count"].item()) not in (0, n):
                raise ValueError(f"state_dict[{name + '_count'!r}] must be 0 or the number of samples {n}.")
        samples: dict[str, list[torch.Tensor]] = {key: [] for key in _SAMPLE_KEYS}
        for key in _SAMPLE_KEYS:
            if key in state_dict and self.keep_samples:
                value = state_dict[key].detach().cpu()
                if tuple(value.shape) != (n,):
                    raise ValueError(
                        f"state_dict[{key!r}] must have shape [{n}] (the bin counts' total); got {tuple(value.shape)}."
                    )
                dtype = torch.bool if key == "sample_correct" else self.sample_dtype
                samples[key] = [value.to(dtype).clone()] if n else []
        self._sums, self._samples = sums, samples

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> CalibrationState:
        """Build a state with the configuration stored in ``state_dict`` and load it."""
        num_classes = int(state_dict["num_classes"].item()) or None
        conf = state_dict.get("sample_confidence")
        dtype = conf.dtype if conf is not None and conf.dtype in _SAMPLE_DTYPES else torch.float32
        state = cls(
            int(state_dict["n_bins"].item()),
            num_classes=num_classes,
            keep_samples=bool(state_dict["keep_samples"].item()),
            sample_dtype=dtype,
        )
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
        device = _distributed.collective_device(group)
        codes = [self.n_bins, self.num_classes or 0, int(self.keep_samples), _SAMPLE_DTYPES.index(self.sample_dtype)]
        codes += [-1 if self._tracks(name) is None else int(self._tracks(name)) for name in ("uncertainty", *_OPTIONAL)]
        table = torch.stack(_distributed.all_gather_rows(torch.tensor(codes), group, device))
        if bool((table[:, :4] != table[0, :4]).any()):
            raise ValueError(
                f"CalibrationState.sync: ranks disagree on (n_bins, num_classes, keep_samples, "
                f"sample_dtype): {table[:, :4].tolist()}."
            )
        for column, name in enumerate(("uncertainty", *_OPTIONAL), start=4):
            flags = set(table[:, column].tolist()) - {-1}
            if len(flags) > 1:
                raise ValueError(f"CalibrationState.sync: some ranks tracked {name} and others did not.")
        result._sums = {key: _distributed.all_reduce_sum(value, group, device) for key, value in self._sums.items()}
        if self.keep_samples:
            for key, local in zip(_SAMPLE_KEYS, self.samples(), strict=True):
                if key == "sample_uncertainty" and 1 not in table[:, 4].tolist():
                    continue
                local = torch.zeros(0, dtype=self.sample_dtype) if local is None else local
                result._samples[key] = [
                    part for part in _distributed.all_gather_rows(local, group, device) if part.numel()
                ]
        return result


def _sum_keys(prefix: str) -> tuple[str, str, str]:
    return f"{prefix}_count", f"{prefix}_confidence_sum", f"{prefix}_correct_sum"
