"""Storage layout, packed form, checkpoints and distributed sync of ``CalibrationState``, as plain functions.

``CalibrationState`` (``state.py``) delegates to these; they work on the state's raw contents (dicts of
tensors and its configuration), never on the state itself, so this module does not import ``state.py``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import _distributed
from ._checks import check_n_bins
from .calibration import uniform_bin_index

SAMPLE_DTYPES = (torch.float32, torch.float64)
SAMPLE_KEYS = ("sample_confidence", "sample_correct", "sample_uncertainty")
OPTIONAL = ("nll", "brier")


def sum_keys(prefix: str) -> tuple[str, str, str]:
    return f"{prefix}_count", f"{prefix}_confidence_sum", f"{prefix}_correct_sum"


def empty_sums(n_bins: int, num_classes: int | None) -> dict[str, torch.Tensor]:
    """Zeroed sums: per equal-width bin (and per (class, bin) cell with ``num_classes``), plus NLL / Brier."""
    shapes = {"bin": (n_bins,)}
    if num_classes is not None:
        shapes.update(top_label=(num_classes, n_bins), classwise=(num_classes, n_bins))
    sums: dict[str, torch.Tensor] = {}
    for prefix, shape in shapes.items():
        sums[f"{prefix}_count"] = torch.zeros(shape, dtype=torch.int64)
        sums[f"{prefix}_confidence_sum"] = torch.zeros(shape, dtype=torch.float64)
        sums[f"{prefix}_correct_sum"] = torch.zeros(shape, dtype=torch.float64)
    for name in OPTIONAL:
        sums[f"{name}_sum"] = torch.zeros((), dtype=torch.float64)
        sums[f"{name}_count"] = torch.zeros((), dtype=torch.int64)
    return sums


# ---------------------------------------------------------------------- packed form
# One float row of 3 * n_bins + 3 numbers holds a group of samples' sufficient statistics, so per-sample
# (or per-sequence) rows travel through Trainer's gathering like predictions and add up to a state:
#   [0, B)    sample count of equal-width confidence bin b = (b/B, (b+1)/B]
#   [B, 2B)   sum of the confidences in bin b
#   [2B, 3B)  sum of the correctness in bin b
#   3B        sum of nll        3B + 1   sum of brier        3B + 2   number of samples
def pack_rows(
    confidence: torch.Tensor,
    correct: torch.Tensor,
    nll: torch.Tensor,
    brier: torch.Tensor,
    group: torch.Tensor,
    n_groups: int,
    n_bins: int,
) -> torch.Tensor:
    """``CalibrationState.pack_rows``: packed rows ``[n_groups, 3 * n_bins + 3]`` on the inputs' device."""
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


def packed_sums(packed: torch.Tensor, n_bins: int) -> dict[str, torch.Tensor]:
    """The state sums (bins, NLL and Brier) of packed rows ``[N, 3 * n_bins + 3]`` added up, after validation."""
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
    return dict(
        bin_count=count.round().to(torch.int64),
        bin_confidence_sum=total[n_bins : 2 * n_bins].clone(),
        bin_correct_sum=total[2 * n_bins : 3 * n_bins].clone(),
        nll_sum=total[3 * n_bins].clone(),
        nll_count=tracked.clone(),
        brier_sum=total[3 * n_bins + 1].clone(),
        brier_count=tracked.clone(),
    )


# ---------------------------------------------------------------------- checkpointing
def to_state_dict(
    n_bins: int,
    num_classes: int | None,
    keep_samples: bool,
    sums: dict[str, torch.Tensor],
    samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None,
) -> dict[str, torch.Tensor]:
    """``CalibrationState.state_dict`` of the configuration, the sums and (with keep_samples) the samples."""
    out = {
        "n_bins": torch.tensor(n_bins),
        "num_classes": torch.tensor(num_classes or 0),
        "keep_samples": torch.tensor(keep_samples),
    }
    out.update({key: value.clone() for key, value in sums.items()})
    if samples is not None:
        conf, hit, unc = samples
        out.update(sample_confidence=conf.clone(), sample_correct=hit.clone())
        if unc is not None:
            out["sample_uncertainty"] = unc.clone()
    return out


def _check_config(state_dict: dict[str, torch.Tensor], config: dict[str, int | bool], reference: set[str]) -> None:
    """Raise unless ``state_dict`` has the configuration ``config`` and exactly the expected keys."""
    for key, expected in config.items():
        if key not in state_dict:
            raise ValueError(f"state_dict lacks {key!r}; it must come from CalibrationState.state_dict().")
        if state_dict[key].item() != expected:
            raise ValueError(
                f"state_dict has {key}={state_dict[key].item()} but this state has {key}={expected}; "
                "build the state with the same settings (or use CalibrationState.from_state_dict)."
            )
    keep_samples = bool(config["keep_samples"])
    allowed = set(config) | reference | (set(SAMPLE_KEYS) if keep_samples else set())
    required = set(config) | reference | ({"sample_confidence", "sample_correct"} if keep_samples else set())
    if unknown := sorted(set(state_dict) - allowed):
        raise ValueError(f"state_dict has unexpected keys {unknown}.")
    if missing := sorted(required - set(state_dict)):
        raise ValueError(f"state_dict lacks keys {missing}.")


def from_state_dict_contents(
    state_dict: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    *,
    n_bins: int,
    num_classes: int | None,
    keep_samples: bool,
    sample_dtype: torch.dtype,
) -> tuple[dict[str, torch.Tensor], dict[str, list[torch.Tensor]]]:
    """``(sums, samples)`` loaded from ``state_dict`` for a state of this configuration whose current sums are
    ``reference`` (for their keys, shapes and dtypes); raises ``ValueError`` on any mismatch."""
    config = {"n_bins": n_bins, "num_classes": num_classes or 0, "keep_samples": keep_samples}
    _check_config(state_dict, config, set(reference))
    sums = {}
    for key, ref in reference.items():
        value = state_dict[key]
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(f"state_dict[{key!r}] has shape {tuple(value.shape)}, expected {tuple(ref.shape)}.")
        sums[key] = value.detach().cpu().to(ref.dtype).clone()
    n = int(sums["bin_count"].sum().item())
    for name in OPTIONAL:
        if int(sums[f"{name}_count"].item()) not in (0, n):
            raise ValueError(f"state_dict[{name + '_count'!r}] must be 0 or the number of samples {n}.")
    samples: dict[str, list[torch.Tensor]] = {key: [] for key in SAMPLE_KEYS}
    for key in SAMPLE_KEYS:
        if key in state_dict and keep_samples:
            value = state_dict[key].detach().cpu()
            if tuple(value.shape) != (n,):
                raise ValueError(
                    f"state_dict[{key!r}] must have shape [{n}] (the bin counts' total); got {tuple(value.shape)}."
                )
            dtype = torch.bool if key == "sample_correct" else sample_dtype
            samples[key] = [value.to(dtype).clone()] if n else []
    return sums, samples


def state_dict_config(state_dict: dict[str, torch.Tensor]) -> tuple[int, int | None, bool, torch.dtype]:
    """``(n_bins, num_classes, keep_samples, sample_dtype)`` stored in ``state_dict``."""
    num_classes = int(state_dict["num_classes"].item()) or None
    conf = state_dict.get("sample_confidence")
    dtype = conf.dtype if conf is not None and conf.dtype in SAMPLE_DTYPES else torch.float32
    return int(state_dict["n_bins"].item()), num_classes, bool(state_dict["keep_samples"].item()), dtype


# ---------------------------------------------------------------------- distributed
def sync_contents(
    sums: dict[str, torch.Tensor],
    samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None,
    codes: list[int],
    sample_dtype: torch.dtype,
    group: dist.ProcessGroup | None,
) -> tuple[dict[str, torch.Tensor], dict[str, list[torch.Tensor]]]:
    """Collective part of ``CalibrationState.sync`` (needs an initialised process group).

    ``codes`` are ``(n_bins, num_classes or 0, keep_samples, sample_dtype index)`` followed by one tracking flag
    per ``("uncertainty", *OPTIONAL)`` (-1 while empty, else 0/1); ``samples`` is ``None`` without keep_samples.
    Returns the summed ``sums`` and the gathered samples (only the keys that travelled).
    """
    device = _distributed.collective_device(group)
    table = torch.stack(_distributed.all_gather_rows(torch.tensor(codes), group, device))
    if bool((table[:, :4] != table[0, :4]).any()):
        raise ValueError(
            f"CalibrationState.sync: ranks disagree on (n_bins, num_classes, keep_samples, "
            f"sample_dtype): {table[:, :4].tolist()}."
        )
    for column, name in enumerate(("uncertainty", *OPTIONAL), start=4):
        flags = set(table[:, column].tolist()) - {-1}
        if len(flags) > 1:
            raise ValueError(f"CalibrationState.sync: some ranks tracked {name} and others did not.")
    summed = {key: _distributed.all_reduce_sum(value, group, device) for key, value in sums.items()}
    gathered: dict[str, list[torch.Tensor]] = {}
    if samples is not None:
        for key, local in zip(SAMPLE_KEYS, samples, strict=True):
            if key == "sample_uncertainty" and 1 not in table[:, 4].tolist():
                continue
            local = torch.zeros(0, dtype=sample_dtype) if local is None else local
            gathered[key] = [part for part in _distributed.all_gather_rows(local, group, device) if part.numel()]
    return summed, gathered
