"""TemperatureScaler: the fitted temperature against scipy's bounded scalar search of the NLL, scaling, I/O, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from hf_calib.scaling import TemperatureScaler, fit_temperature
from hf_calib.scaling.temperature import TemperatureAtBoundWarning


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread avoids OpenMP contention on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _reference_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """argmin_T of NLL(T) by scipy's bounded Brent search over log T, in float64 and numpy-free torch math."""
    z = logits.double()
    finite = torch.isfinite(z)

    def nll(log_t: float) -> float:
        scaled = torch.where(finite, z / math.exp(log_t), torch.tensor(-math.inf, dtype=torch.float64))
        return float(F.cross_entropy(scaled, labels))

    return math.exp(
        minimize_scalar(nll, bounds=(math.log(1e-2), math.log(1e2)), method="bounded", options={"xatol": 1e-10}).x
    )


def _data(n: int = 300, c: int = 4, true_t: float = 2.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(z / true_t): the NLL minimiser is near true_t."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 3
    y = torch.multinomial(torch.softmax(z / true_t, dim=1), 1, generator=g).squeeze(1)
    return z, y


@pytest.mark.parametrize("true_t", [0.3, 1.0, 2.5, 7.0])
def test_fit_matches_scipy_reference(true_t):
    z, y = _data(true_t=true_t, seed=int(true_t * 10))
    scaler = TemperatureScaler().fit(z, y)
    ref = _reference_temperature(z, y)
    assert scaler.temperature == pytest.approx(ref, rel=1e-4)
    # The fitted value is a minimum: the NLL is no lower 1% to either side.
    at = F.cross_entropy(z.double() / scaler.temperature, y)
    for factor in (0.99, 1.01):
        assert F.cross_entropy(z.double() / (scaler.temperature * factor), y) >= at


def test_fit_from_any_initial_temperature_and_float64():
    z, y = _data(true_t=3.0, seed=5)
    ref = _reference_temperature(z, y)
    for init in (0.05, 1.0, 50.0):
        assert TemperatureScaler(init).fit(z.double(), y).temperature == pytest.approx(ref, rel=1e-4)


def test_absent_options_marked_minus_inf():
    z, y = _data(n=200, c=4, true_t=2.0, seed=3)
    z[:50, 3] = -math.inf  # the first 50 questions have three options
    y[:50] = y[:50] % 3
    scaler = TemperatureScaler().fit(z, y)
    assert scaler.temperature == pytest.approx(_reference_temperature(z, y), rel=1e-4)
    probs = scaler.predict_proba(z)
    assert torch.all(probs[:50, 3] == 0)
    assert torch.allclose(probs.sum(dim=1), torch.ones(200))
    assert torch.equal(scaler.scale(z)[:50, 3], torch.full((50,), -math.inf))


def test_scale_and_predict_proba_keep_argmax():
    z, y = _data(seed=1)
    scaler = TemperatureScaler(2.5)
    assert torch.allclose(scaler.scale(z), z / 2.5)
    assert torch.allclose(scaler.predict_proba(z), torch.softmax(z / 2.5, dim=-1))
    assert torch.equal(scaler.predict_proba(z).argmax(1), z.argmax(1))
    # Works on any leading shape, e.g. [B, L, V] LM logits.
    assert scaler.scale(torch.ones(2, 3, 5)).shape == (2, 3, 5)


def test_separable_data_gives_smallest_allowed_positive_temperature():
    z = torch.tensor([[5.0, 0.0], [0.0, 5.0], [4.0, -1.0]])
    y = torch.tensor([0, 1, 0])
    # NLL -> 0 as T -> 0: the constrained minimum is min_temperature, returned with a warning.
    with pytest.warns(TemperatureAtBoundWarning, match="min_temperature"):
        t = fit_temperature(z, y)
    assert t == 1e-2
    assert F.cross_entropy(z / t, y) < 1e-6
    with pytest.warns(TemperatureAtBoundWarning, match="min_temperature"):
        assert fit_temperature(z, y, min_temperature=0.5) == pytest.approx(0.5, rel=1e-6)


def test_uniform_logits_any_temperature_is_optimal_and_positive():
    # Constant logits: NLL = log C for every T, so the optimiser must not move (and never reach T <= 0).
    t = fit_temperature(torch.zeros(10, 3), torch.arange(10) % 3)
    assert t == pytest.approx(1.0)


def test_save_load_round_trip_with_fingerprint(tmp_path):
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    scaler = TemperatureScaler(1.2345678901234)
    path = scaler.save_pretrained(tmp_path / "adapter", model=config)
    assert path == tmp_path / "adapter" / "temperature.json"
    content = json.loads(path.read_text())
    assert content["model_fingerprint"]["hidden_size"] == 16
    assert sorted(p.name for p in path.parent.iterdir()) == ["temperature.json"]  # no temporary file left
    loaded = TemperatureScaler.from_pretrained(tmp_path / "adapter", model=config)
    assert loaded.temperature == scaler.temperature
    assert TemperatureScaler.from_pretrained(tmp_path / "adapter").temperature == scaler.temperature
    other = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(ValueError, match="different (base )?model.*hidden_size"):
        TemperatureScaler.from_pretrained(tmp_path / "adapter", model=other)


def test_save_without_model_loads_anywhere(tmp_path):
    from transformers import LlamaConfig

    TemperatureScaler(0.7).save_pretrained(tmp_path)
    config = LlamaConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    assert TemperatureScaler.from_pretrained(tmp_path, model=config).temperature == 0.7


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, True, "2"])
def test_temperature_must_be_positive_finite(value):
    with pytest.raises((ValueError, TypeError), match="temperature"):
        TemperatureScaler(value)
    scaler = TemperatureScaler()
    with pytest.raises((ValueError, TypeError), match="temperature"):
        scaler.temperature = value


@pytest.mark.parametrize("bad", [-2.0, 0.0, "x", None])
def test_loading_a_nonpositive_or_broken_temperature_fails(tmp_path, bad):
    (tmp_path / "temperature.json").write_text(
        json.dumps({"format": "hf_calib.temperature_scaler", "temperature": bad})
    )
    with pytest.raises(ValueError, match="temperature"):
        TemperatureScaler.from_pretrained(tmp_path)


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="temperature.json"):
        TemperatureScaler.from_pretrained(tmp_path)
    (tmp_path / "temperature.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TemperatureScaler.from_pretrained(tmp_path)
    (tmp_path / "temperature.json").write_text(json.dumps({"temperature": 2.0}))
    with pytest.raises(ValueError, match="not a TemperatureScaler file"):
        TemperatureScaler.from_pretrained(tmp_path)


def test_bad_logits_and_labels():
    z, y = _data(n=10)
    scaler = TemperatureScaler()
    bad = z.clone()
    bad[3, 1] = math.nan
    with pytest.raises(ValueError, match="NaN.*row 3"):
        scaler.fit(bad, y)
    bad = z.clone()
    bad[0, 0] = math.inf
    with pytest.raises(ValueError, match=r"\+inf"):
        scaler.fit(bad, y)
    with pytest.raises(ValueError, match="at least 2"):
        scaler.fit(z[:1], y[:1])
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        scaler.fit(z[:, 0], y)
    with pytest.raises(ValueError, match="labels must have shape"):
        scaler.fit(z, y[:5])
    with pytest.raises(ValueError, match="class indices"):
        scaler.fit(z, torch.full((10,), 7))
    with pytest.raises(TypeError, match="integer"):
        scaler.fit(z, torch.full((10,), 0.5))
    absent = z.clone()
    absent[:, 3] = -math.inf
    with pytest.raises(ValueError, match="absent option"):
        scaler.fit(absent, torch.full((10,), 3))
    with pytest.raises(ValueError, match="NaN"):
        scaler.predict_proba(bad.fill_(math.nan))
    with pytest.raises(ValueError, match="min_temperature"):
        fit_temperature(z, y, min_temperature=5.0, max_temperature=1.0)
