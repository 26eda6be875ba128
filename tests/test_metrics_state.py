"""``CalibrationState``: streaming and merging equal the one-shot functions; checkpoints; torch.distributed sync."""

from __future__ import annotations

import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from hf_calib.metrics import (
    CalibrationState,
    accuracy,
    aurc,
    brier_score,
    calibration_error,
    classwise_calibration_error,
    misclassification_auprc,
    misclassification_auroc,
    nll,
    nll_from_logits,
    top_label_calibration_error,
    top_label_confidence,
)

N_BINS = 10
N_CLASSES = 4


def _data(n, seed, c=N_CLASSES, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * scale
    labels = torch.randint(0, c, (n,), generator=g)
    return torch.softmax(logits, dim=1), labels, logits


def _one_shot(probs, labels, uncertainty=None):
    """Every metric of ``compute()`` from the pure functions."""
    conf, _, correct = top_label_confidence(probs, labels)
    unc = 1 - conf if uncertainty is None else uncertainty
    errors = ~correct
    out = {
        "n_samples": len(labels),
        "accuracy": accuracy(probs, labels),
        "mean_confidence": conf.mean().item(),
        "ece": calibration_error(conf, correct, n_bins=N_BINS),
        "rms_ce": calibration_error(conf, correct, n_bins=N_BINS, norm="l2"),
        "mce": calibration_error(conf, correct, n_bins=N_BINS, norm="max"),
        "adaptive_ece": calibration_error(conf, correct, n_bins=N_BINS, binning="quantile"),
        "nll": nll(probs, labels),
        "brier": brier_score(probs, labels),
        "brier_normalized": brier_score(probs, labels, normalize=True),
        "top_label_ece": top_label_calibration_error(probs, labels, n_bins=N_BINS),
        "classwise_ece": classwise_calibration_error(probs, labels, n_bins=N_BINS),
        "aurc": aurc(unc, errors),
    }
    if errors.any():
        out["misclassification_auprc"] = misclassification_auprc(unc, errors)
    if errors.any() and correct.any():
        out["misclassification_auroc"] = misclassification_auroc(unc, errors)
    return out


def _assert_same(got, expected, tol=1e-12):
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=tol), key


def _random_splits(n, rng, max_parts=8):
    cuts = sorted(rng.sample(range(n + 1), rng.randint(1, max_parts)))  # repeated cuts give empty batches
    bounds = [0, *cuts, n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# ---------------------------------------------------------------- streaming == one shot
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_batches_equal_one_shot(seed):
    probs, labels, _ = _data(513, seed)
    rng = random.Random(seed)
    state = CalibrationState(N_BINS, num_classes=N_CLASSES)
    for a, b in _random_splits(513, rng):
        state.update_from_probs(probs[a:b], labels[a:b])
    _assert_same(state.compute(), _one_shot(probs, labels))


@pytest.mark.parametrize("seed", [0, 1])
def test_random_merge_orders_equal_one_shot(seed):
    probs, labels, _ = _data(700, seed + 10)
    rng = random.Random(seed)
    shards = []
    for a, b in _random_splits(700, rng, max_parts=7):
        shard = CalibrationState(N_BINS, num_classes=N_CLASSES)
        for c, d in _random_splits(b - a, rng, max_parts=3):
            shard.update_from_probs(probs[a + c : a + d], labels[a + c : a + d])
        shards.append(shard)
    expected = _one_shot(probs, labels)
    for _ in range(4):
        pool = [CalibrationState(N_BINS, num_classes=N_CLASSES).merge(s) for s in shards]
        while len(pool) > 1:  # random pairwise (tree) merges
            i, j = rng.sample(range(len(pool)), 2)
            merged = pool[i].merge(pool[j])
            pool = [s for k, s in enumerate(pool) if k not in (i, j)] + [merged]
        _assert_same(pool[0].compute(), expected)
    # Merging never changed the shards themselves.
    assert sum(s.n_samples for s in shards) == 700


def test_update_with_confidences_and_optional_values():
    probs, labels, _ = _data(300, 3)
    conf, _, correct = top_label_confidence(probs, labels)
    per_nll = -torch.log(probs.double().gather(1, labels[:, None]).squeeze(1))
    per_brier = ((probs.double() - F.one_hot(labels, N_CLASSES)) ** 2).sum(1)
    g = torch.Generator().manual_seed(0)
    unc = torch.rand(300, generator=g)
    state = CalibrationState(N_BINS)
    for a, b in [(0, 100), (100, 100), (100, 300)]:
        state.update(conf[a:b], correct[a:b], uncertainty=unc[a:b], nll=per_nll[a:b], brier=per_brier[a:b])
    expected = _one_shot(probs, labels, uncertainty=unc)
    for key in ("brier_normalized", "top_label_ece", "classwise_ece"):
        expected.pop(key)
    _assert_same(state.compute(), expected)


def test_update_from_logits_with_ignore_index_and_sequence_shape():
    _, labels, logits = _data(2 * 9, 4, c=11)
    logits, labels = logits.view(2, 9, 11), labels.view(2, 9).clone()
    labels[0, :3] = -100
    labels[1, 7:] = -100
    keep = labels != -100
    state = CalibrationState(N_BINS, num_classes=11)
    state.update_from_logits(logits, labels, ignore_index=-100)
    got = state.compute()
    flat_logits, flat_labels = logits[keep], labels[keep]
    assert got["n_samples"] == int(keep.sum())
    assert got["nll"] == pytest.approx(F.cross_entropy(flat_logits, flat_labels).item(), abs=1e-6)
    assert got["nll"] == pytest.approx(nll_from_logits(flat_logits, flat_labels), abs=1e-12)
    by_probs = CalibrationState(N_BINS, num_classes=11)
    by_probs.update_from_probs(torch.softmax(flat_logits, dim=1), flat_labels)
    _assert_same(got, by_probs.compute(), tol=1e-6)


def test_without_kept_samples_only_binned_metrics():
    probs, labels, _ = _data(200, 5)
    full, lean = (
        CalibrationState(N_BINS, num_classes=N_CLASSES),
        CalibrationState(N_BINS, num_classes=N_CLASSES, keep_samples=False),
    )
    full.update_from_probs(probs, labels)
    lean.update_from_probs(probs, labels)
    got = lean.compute()
    sample_keys = {"adaptive_ece", "aurc", "misclassification_auroc", "misclassification_auprc"}
    assert set(got) == set(full.compute()) - sample_keys
    _assert_same(got, {k: v for k, v in full.compute().items() if k not in sample_keys})
    with pytest.raises(ValueError, match="keep_samples=False"):
        lean.samples()
    with pytest.raises(ValueError, match="need keep_samples=True"):
        lean.update_from_probs(probs, labels, uncertainty=torch.rand(200))


def test_float64_samples_keep_float64_confidences():
    g = torch.Generator().manual_seed(1)
    conf = torch.rand(100, generator=g, dtype=torch.float64)
    correct = torch.rand(100, generator=g) < conf
    state = CalibrationState(N_BINS, sample_dtype=torch.float64)
    state.update(conf, correct)
    assert torch.equal(state.samples()[0], conf)
    assert state.compute()["adaptive_ece"] == pytest.approx(
        calibration_error(conf, correct, n_bins=N_BINS, binning="quantile"), abs=1e-15
    )


# ---------------------------------------------------------------- degenerate streams
def test_degenerate_streams_are_nan_free():
    state = CalibrationState(N_BINS)
    state.update([0.9, 0.8, 1.0], [1, 1, 1])
    got = state.compute()
    assert "misclassification_auroc" not in got and "misclassification_auprc" not in got
    assert got["aurc"] == 0.0 and got["accuracy"] == 1.0
    state = CalibrationState(N_BINS)
    state.update([0.9, 0.8], [0, 0])
    got = state.compute()
    assert "misclassification_auroc" not in got
    assert got["misclassification_auprc"] == 1.0 and got["aurc"] == 1.0
    state = CalibrationState(N_BINS)
    state.update([0.3], [0])
    got = state.compute()
    assert (
        got["ece"] == pytest.approx(0.3)
        and got["mce"] == pytest.approx(0.3)
        and got["adaptive_ece"] == pytest.approx(0.3)
    )
    assert all(value == value for value in got.values())  # no NaN anywhere


def test_empty_state_and_empty_batches():
    state = CalibrationState(N_BINS)
    state.update([], [])
    with pytest.raises(ValueError, match="CalibrationState is empty"):
        state.compute()
    state.update([0.5], [1])
    state.update(torch.zeros(0), torch.zeros(0, dtype=torch.bool))
    assert state.compute()["n_samples"] == 1


# ---------------------------------------------------------------- bad input and misuse
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.update([0.5, 1.2], [1, 0]), r"confidences must lie in \[0, 1\]"),
        (lambda s: s.update([0.5, 0.2], [1]), "correct has 1 entries but confidences has 2"),
        (lambda s: s.update([0.5], [1], nll=[-1.0]), "nll must be >= 0"),
        (lambda s: s.update([0.5], [1], brier=[2.5]), r"brier must lie in \[0, 2\]"),
        (lambda s: s.update([0.5], [1], uncertainty=[float("nan")]), "uncertainty contains NaN"),
        (lambda s: s.update_from_probs(torch.full((2, 3), 1 / 3), torch.tensor([0, 3])), r"labels must lie in"),
        (lambda s: s.update_from_probs(torch.full((2, 3), 1 / 3), torch.tensor([0])), "labels must have shape"),
        (lambda s: s.update_from_logits(torch.randn(2, 3), torch.tensor([0, -100])), r"labels must lie in"),
        (
            lambda s: s.update_from_logits(torch.randn(2, 3), torch.tensor([0, 1]), uncertainty=torch.rand(3)),
            "uncertainty must have the shape of labels",
        ),
    ],
)
def test_state_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(CalibrationState(N_BINS))


def test_state_constructor_and_mixing_checks():
    for kwargs, match in [
        ({"n_bins": 0}, "n_bins"),
        ({"num_classes": 0}, "num_classes"),
        ({"keep_samples": 1}, "keep_samples"),
        ({"sample_dtype": torch.float16}, "sample_dtype"),
    ]:
        with pytest.raises(ValueError, match=match):
            CalibrationState(**kwargs)
    with pytest.raises(ValueError, match="use update_from_probs"):
        CalibrationState(num_classes=3).update([0.5], [1])
    with pytest.raises(ValueError, match="num_classes=3"):
        CalibrationState(num_classes=3).update_from_probs(torch.full((1, 4), 0.25), torch.tensor([0]))
    state = CalibrationState(N_BINS)
    state.update([0.5], [1], nll=[0.7])
    with pytest.raises(ValueError, match="nll was given for earlier batches"):
        state.update([0.5], [1])
    with pytest.raises(ValueError, match="uncertainty was not given for earlier batches"):
        state.update([0.5], [1], nll=[0.7], uncertainty=[0.2])
    other = CalibrationState(N_BINS)
    other.update([0.5], [1])
    with pytest.raises(ValueError, match="cannot merge a state with nll"):
        state.merge(other)
    with pytest.raises(ValueError, match="different n_bins"):
        state.merge(CalibrationState(N_BINS + 1))


# ---------------------------------------------------------------- checkpoints
def test_state_dict_round_trip_through_safetensors(tmp_path):
    probs, labels, _ = _data(400, 7)
    unc = torch.rand(400, generator=torch.Generator().manual_seed(3))
    state = CalibrationState(N_BINS, num_classes=N_CLASSES)
    state.update_from_probs(probs[:250], labels[:250], uncertainty=unc[:250])
    path = tmp_path / "calibration_state.safetensors"
    save_file(state.state_dict(), str(path))
    restored = CalibrationState.from_state_dict(load_file(str(path)))
    same_config = CalibrationState(N_BINS, num_classes=N_CLASSES)
    same_config.load_state_dict(state.state_dict())
    for resumed in (state, restored, same_config):
        resumed.update_from_probs(probs[250:], labels[250:], uncertainty=unc[250:])
        _assert_same(resumed.compute(), _one_shot(probs, labels, uncertainty=unc))
    assert all(isinstance(v, torch.Tensor) for v in state.state_dict().values())


def test_empty_and_lean_state_dicts_round_trip(tmp_path):
    for kwargs in ({}, {"keep_samples": False}, {"num_classes": 2, "keep_samples": False}):
        path = tmp_path / "state.safetensors"
        save_file(CalibrationState(N_BINS, **kwargs).state_dict(), str(path))
        restored = CalibrationState.from_state_dict(load_file(str(path)))
        assert restored.n_samples == 0 and restored.keep_samples == kwargs.get("keep_samples", True)


def test_load_state_dict_rejects_mismatches():
    state = CalibrationState(N_BINS)
    state.update([0.4, 0.9], [0, 1])
    sd = state.state_dict()
    with pytest.raises(ValueError, match="state_dict has n_bins=10 but this state has n_bins=15"):
        CalibrationState(15).load_state_dict(sd)
    with pytest.raises(ValueError, match="unexpected keys"):
        CalibrationState(N_BINS).load_state_dict({**sd, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="lacks keys"):
        CalibrationState(N_BINS).load_state_dict({k: v for k, v in sd.items() if k != "bin_count"})
    with pytest.raises(ValueError, match="must have shape \\[2\\]"):
        CalibrationState(N_BINS).load_state_dict({**sd, "sample_confidence": torch.zeros(3)})


# ---------------------------------------------------------------- torch.distributed
def _shard_bounds(n, world, rank, empty_rank):
    if rank == empty_rank:
        return 0, 0
    cut = n // 3
    return (0, cut) if rank == 0 else (cut, n)


def _sync_worker(rank, world, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        probs, labels, _ = _data(301, 21)
        unc = torch.rand(301, generator=torch.Generator().manual_seed(5))
        for empty_rank in (None, 1):  # uneven shards, then rank 1 without any sample
            a, b = _shard_bounds(301, world, rank, empty_rank)
            local = CalibrationState(N_BINS, num_classes=N_CLASSES)
            local.update_from_probs(probs[a:b], labels[a:b], uncertainty=unc[a:b])
            synced = local.sync()
            assert local.n_samples == b - a  # the local state is untouched
            s = slice(0, 301) if empty_rank is None else slice(*_shard_bounds(301, world, 0, empty_rank))
            _assert_same(synced.compute(), _one_shot(probs[s], labels[s], uncertainty=unc[s]))
        with pytest.raises(ValueError, match="ranks disagree"):
            CalibrationState(N_BINS + rank).sync()
        lean = CalibrationState(N_BINS)
        lean.update([0.3, 0.8], [rank, 1], **({"nll": [0.1, 0.2]} if rank == 0 else {}))
        with pytest.raises(ValueError, match="some ranks tracked nll"):
            lean.sync()
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_sync_across_two_gloo_ranks_equals_single_process(tmp_path):
    mp.spawn(_sync_worker, args=(2, str(tmp_path / "dist_init")), nprocs=2, join=True)


def test_sync_without_process_group_returns_a_copy():
    state = CalibrationState(N_BINS)
    state.update([0.2, 0.9], [0, 1])
    copy = state.sync()
    copy.update([0.5], [1])
    assert state.n_samples == 2 and copy.n_samples == 3


def test_packed_rows_sum_to_the_state_fed_the_same_samples() -> None:
    g = torch.Generator().manual_seed(7)
    n, n_bins = 500, 15
    confidence = torch.rand(n, generator=g, dtype=torch.float64)
    confidence[:5] = torch.tensor([0.0, 1.0, 1 / 15, 2 / 15, 0.5])  # bin edges
    correct = torch.rand(n, generator=g) < confidence
    nll = torch.rand(n, generator=g, dtype=torch.float64) * 3
    brier = torch.rand(n, generator=g, dtype=torch.float64) * 2
    group = torch.randint(0, 7, (n,), generator=g)
    packed = CalibrationState.pack_rows(confidence, correct, nll, brier, group, 9, n_bins=n_bins)
    assert packed.shape == (9, CalibrationState.packed_width(n_bins)) == (9, 48)
    assert packed[7:].abs().sum() == 0, "groups without samples are rows of zeros"
    state = CalibrationState.from_packed(packed, n_bins=n_bins)
    reference = CalibrationState(n_bins, keep_samples=False)
    reference.update(confidence, correct, nll=nll, brier=brier)
    got, want = state.compute(), reference.compute()
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key
    assert CalibrationState.from_packed(packed[:0], n_bins=n_bins).n_samples == 0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p[:, :-1], "shape"),
        (lambda p: p.index_fill(1, torch.tensor([0]), float("nan")), "NaN"),
        (lambda p: p.index_fill(1, torch.tensor([0]), 0.5), "inconsistent"),
        (lambda p: p.index_fill(1, torch.tensor([47]), 1e6), "inconsistent"),
    ],
)
def test_packed_rows_are_validated(edit, message) -> None:
    confidence = torch.tensor([0.2, 0.9], dtype=torch.float64)
    packed = CalibrationState.pack_rows(
        confidence, torch.tensor([True, False]), confidence, confidence, torch.tensor([0, 1]), 2, n_bins=15
    )
    with pytest.raises(ValueError, match=message):
        CalibrationState.from_packed(edit(packed), n_bins=15)
