"""Calibrator files that cannot lie: tampered configs, header/dtype mismatches, non-finite tensors, honest numerics.

Covers ``temperature.json`` (TemperatureScaler), ``thermometer_config.json`` + ``thermometer.safetensors``
(Thermometer) and ``adue_config.json`` + ``adue_head.safetensors`` (AdUE head). A tampered size must fail before
any module is built or tensor read: the tests make building a ``torch.nn.Linear`` (and reading tensors) fail.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from scipy.optimize import minimize_scalar
from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

import hf_calib.adue.io as adue_io
import hf_calib.scaling.thermometer as thermometer_module
from hf_calib.adue import attach_adue_head, get_adue_head, load_adue_head, save_adue_head
from hf_calib.scaling import TemperatureScaler, Thermometer, ThermometerConfig, fit_temperature
from hf_calib.scaling.temperature import TemperatureAtBoundWarning
from hf_calib.scaling.thermometer import expected_tensor_shapes


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_allocation(monkeypatch):
    """Building any ``nn.Linear``, reading a tensor or attaching an AdUE head now fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a module was built or a tensor read before the config was checked")

    monkeypatch.setattr(torch.nn.Linear, "__init__", forbidden)
    monkeypatch.setattr(thermometer_module, "load_file", forbidden)
    monkeypatch.setattr(adue_io, "load_file", forbidden)
    monkeypatch.setattr(adue_io, "attach_adue_head", forbidden)


def _edit_json(path, **changes) -> None:
    content = json.loads(path.read_text())
    for key, value in changes.items():
        target = content
        *parents, leaf = key.split("__")
        for parent in parents:
            target = target[parent]
        if value is _DELETE:
            del target[leaf]
        else:
            target[leaf] = value
    path.write_text(json.dumps(content))  # json.dumps writes NaN / Infinity literals, which json.load accepts


_DELETE = object()


# ============================================================================================ Thermometer
def _thermometer(d: int = 8, h: int = 4, **kw) -> Thermometer:
    torch.manual_seed(0)
    return Thermometer(ThermometerConfig(input_size=d, hidden_size=h, **kw))


def _reference_temperature(model: Thermometer, x: torch.Tensor) -> float:
    """``1 / mean softplus(mix(branches(x)))`` in float64 from the raw weights (independent of forward)."""
    s = {k: v.double() for k, v in model.state_dict().items()}
    x = x.double()
    outs = [
        torch.relu(x @ s[f"branches.{b}.0.weight"].T + s[f"branches.{b}.0.bias"]) @ s[f"branches.{b}.2.weight"].T
        + s[f"branches.{b}.2.bias"]
        for b in range(model.config.num_branches)
    ]
    beta = F.softplus(torch.cat(outs, dim=1) @ s["mix.weight"].T + s["mix.bias"]).squeeze(1)
    return 1.0 / max(float(beta.mean()), 1e-12)


@pytest.mark.parametrize("d,h,k", [(8, 4, 3), (5, 7, 1), (3, 2, 4)])
def test_expected_shapes_are_those_of_the_built_network(d, h, k):
    config = ThermometerConfig(input_size=d, hidden_size=h, num_branches=k)
    shapes, why = expected_tensor_shapes(config)
    built = {name: tuple(t.shape) for name, t in Thermometer(config).state_dict().items()}
    assert shapes == built and set(why) == set(built)


@pytest.fixture
def saved_thermometer(tmp_path):
    model = _thermometer()
    model.save_pretrained(tmp_path)
    return tmp_path, model


def test_huge_hidden_size_in_thermometer_config_fails_before_allocating(saved_thermometer, monkeypatch):
    folder, _ = saved_thermometer
    _edit_json(folder / "thermometer_config.json", config__hidden_size=200_000_000)

    def forbidden(*args, **kwargs):
        raise AssertionError("Linear built / tensors read before the header check")

    monkeypatch.setattr(torch.nn.Linear, "__init__", forbidden)
    monkeypatch.setattr(thermometer_module, "load_file", forbidden)
    with pytest.raises(
        ValueError, match=r"thermometer_config\.json.*config\.hidden_size is 200000000 but the weights have 4"
    ):
        Thermometer.from_pretrained(folder)


def test_the_no_allocation_guard_catches_an_honest_load(saved_thermometer, saved_head, target_bert, no_allocation):
    """The guard is live: untampered files pass every check and then reach the forbidden constructors."""
    folder, _ = saved_thermometer
    with pytest.raises(AssertionError, match="before the config was checked"):
        Thermometer.from_pretrained(folder)
    folder, _ = saved_head
    with pytest.raises(AssertionError, match="before the config was checked"):
        load_adue_head(target_bert, folder)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"config__hidden_size": 200_000_000}, "hidden_size"),
        ({"config__input_size": 3}, "input_size"),
        ({"config__num_branches": 5}, "num_branches"),
        ({"config__num_branches": 10**30}, "num_branches"),
        ({"config__hidden_size": "4"}, "hidden_size"),
        ({"config__hidden_size": 4.0}, "hidden_size"),
        ({"config__hidden_size": True}, "hidden_size"),
        ({"config__hidden_size": -4}, "hidden_size"),
        ({"config__hidden_size": None}, "hidden_size"),
        ({"config__input_size": _DELETE}, "input_size"),
        ({"config__hidden_size": _DELETE}, "hidden_size"),
        ({"config__num_branches": _DELETE}, "num_branches"),
        ({"config__lambda_reg": "0.01"}, "lambda_reg"),
        ({"config__gamma_scale": math.nan}, "gamma_scale"),
        ({"config__learning_rate": math.inf}, "learning_rate"),
        ({"config__seed": 1.5}, "seed"),
        ({"config__hiden_size": 4}, "hiden_size"),
        ({"dtype": "F99"}, "dtype"),
        ({"dtype": 32}, "dtype"),
        ({"model_fingerprint": [1, 2]}, "model_fingerprint"),
    ],
)
def test_tampered_thermometer_config_names_the_field(saved_thermometer, no_allocation, change, field):
    folder, _ = saved_thermometer
    _edit_json(folder / "thermometer_config.json", **change)
    with pytest.raises(ValueError, match=field) as info:
        Thermometer.from_pretrained(folder)
    assert "thermometer_config.json" in str(info.value)


def test_weights_of_another_shape_or_dtype_are_refused(saved_thermometer, no_allocation):
    folder, model = saved_thermometer
    weights = folder / "thermometer.safetensors"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_file({**state, "branches.1.0.bias": torch.zeros(6)}, str(weights))
    with pytest.raises(ValueError, match=r"'branches\.1\.0\.bias': expected shape \(4,\) from config hidden_size=4"):
        Thermometer.from_pretrained(folder)
    save_file({k: v.double() for k, v in state.items()}, str(weights))
    with pytest.raises(
        ValueError, match=r"expected dtype F32 from field 'dtype' of thermometer_config\.json, found F64"
    ):
        Thermometer.from_pretrained(folder)
    save_file({**state, "mix.bias": torch.zeros(1, dtype=torch.int64)}, str(weights))
    with pytest.raises(ValueError, match=r"'mix\.bias'.*found I64"):
        Thermometer.from_pretrained(folder)
    del state["branches.2.2.bias"]
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"missing tensor 'branches\.2\.2\.bias'"):
        Thermometer.from_pretrained(folder)
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Thermometer.from_pretrained(folder)


def test_old_config_without_dtype_loads_any_float_dtype(saved_thermometer):
    folder, model = saved_thermometer
    _edit_json(folder / "thermometer_config.json", dtype=_DELETE)
    save_file({k: v.double() for k, v in model.state_dict().items()}, str(folder / "thermometer.safetensors"))
    loaded = Thermometer.from_pretrained(folder)
    assert loaded.mix.weight.dtype == torch.float64
    assert all(torch.equal(loaded.state_dict()[k], v.double()) for k, v in model.state_dict().items())
    x = torch.randn(5, 8)
    assert loaded.predict_temperature(x) == pytest.approx(_reference_temperature(model, x), rel=1e-6)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("tensor", ["branches.1.0.weight", "mix.bias"])
def test_non_finite_weights_in_the_file_are_refused(saved_thermometer, bad, tensor):
    folder, model = saved_thermometer
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state[tensor].view(-1)[0] = bad
    save_file(state, str(folder / "thermometer.safetensors"))
    with pytest.raises(ValueError, match=rf"thermometer\.safetensors: tensor '{tensor}' holds 1 non-finite"):
        Thermometer.from_pretrained(folder)


def test_saving_a_non_finite_thermometer_is_refused(tmp_path):
    model = _thermometer()
    with torch.no_grad():
        model.branches[2][2].weight[0, 1] = math.nan
    with pytest.raises(ValueError, match=r"branches\.2\.2\.weight.*NaN"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with torch.no_grad():
        model.branches[2][2].weight[0, 1] = math.inf
    with pytest.raises(ValueError, match=r"branches\.2\.2\.weight.*inf"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_round_trip_records_the_dtype_and_stays_exact(tmp_path):
    model = _thermometer(d=6, h=3, num_branches=2)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "thermometer_config.json").read_text())["dtype"] == "F32"
    loaded = Thermometer.from_pretrained(tmp_path)
    x = torch.randn(9, 6)
    assert loaded.predict_temperature(x) == model.predict_temperature(x)
    assert loaded.predict_temperature(x) == pytest.approx(_reference_temperature(model, x), rel=1e-6)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_predict_temperature_refuses_non_finite_features(bad):
    model = _thermometer()
    x = torch.randn(4, 8)
    x[2, 5] = bad
    with pytest.raises(ValueError, match=r"features contain NaN or inf \(first in row 2\)"):
        model.predict_temperature(x)


def test_predict_temperature_refuses_non_finite_weights_and_overflow():
    model = _thermometer()
    x = torch.randn(4, 8)
    with torch.no_grad():
        model.branches[1][0].weight[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"not finite for .*\['branches\.1\.0\.weight'\]"):
        model.predict_temperature(x)
    model = _thermometer()
    with torch.no_grad():  # finite weights whose sum overflows float32: beta = softplus(inf) = inf
        for branch in model.branches:
            branch[2].bias.fill_(3e38)
        model.mix.weight.fill_(1.0)
    with pytest.raises(ValueError, match="overflowed"):
        model.predict_temperature(x)


def test_predict_temperature_is_finite_positive_and_clamped():
    model = _thermometer()
    x = torch.randn(6, 8)
    t = model.predict_temperature(x)
    assert math.isfinite(t) and t > 0 and t == pytest.approx(_reference_temperature(model, x), rel=1e-6)
    with torch.no_grad():
        model.mix.bias.fill_(-1e4)  # every softplus output underflows to 0: the documented clamp gives T = 1e12
    assert model.predict_temperature(x) == pytest.approx(1e12)


# ============================================================================================ temperature.json
def _nll(z: torch.Tensor, y: torch.Tensor, t: float) -> float:
    return float(F.cross_entropy(z.double() / t, y))


def _scipy_temperature(z, y, low=1e-2, high=1e2) -> float:
    result = minimize_scalar(
        lambda u: _nll(z, y, math.exp(u)),
        bounds=(math.log(low), math.log(high)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return math.exp(result.x)


def _write_temperature(folder, **fields) -> None:
    content = {"format": "hf_calib.temperature_scaler", "temperature": 1.5, "at_bound": None}
    content.update(fields)
    content = {k: v for k, v in content.items() if v is not _DELETE}
    (folder / "temperature.json").write_text(json.dumps(content))


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"temperature": True}, "temperature"),
        ({"temperature": "1.5"}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": None}, "temperature"),
        ({"temperature": [1.5]}, "temperature"),
        ({"at_bound": "low"}, "at_bound"),
        ({"at_bound": 1}, "at_bound"),
        ({"at_bound": True}, "at_bound"),
        ({"model_fingerprint": [1]}, "model_fingerprint"),
        ({"model_fingerprint": "llama"}, "model_fingerprint"),
    ],
)
def test_tampered_temperature_json_names_the_field(tmp_path, fields, field):
    _write_temperature(tmp_path, **fields)
    with pytest.raises(ValueError, match=rf"temperature\.json: field '{field}'"):
        TemperatureScaler.from_pretrained(tmp_path)


def test_temperature_json_without_temperature_is_refused(tmp_path):
    _write_temperature(tmp_path, temperature=_DELETE)
    with pytest.raises(ValueError, match="temperature"):
        TemperatureScaler.from_pretrained(tmp_path)


def test_old_temperature_json_without_at_bound_loads_as_none(tmp_path):
    _write_temperature(tmp_path, at_bound=_DELETE, temperature=2)
    scaler = TemperatureScaler.from_pretrained(tmp_path)
    assert scaler.temperature == 2.0 and isinstance(scaler.temperature, float) and scaler.at_bound is None


def test_separable_data_warns_and_records_min_bound_through_save_and_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 4, generator=g)
    y = z.argmax(1)
    z[torch.arange(50), y] += 40.0  # margins >= 40: the NLL's slope underflows to 0 long before T = min
    with pytest.warns(TemperatureAtBoundWarning, match=r"min_temperature.*separated.*min_temperature"):
        scaler = TemperatureScaler().fit(z, y)
    assert scaler.temperature == 1e-2 and scaler.at_bound == "min"
    # Independent check: the NLL does not increase towards the bound (it is 0 in float64 there).
    assert _nll(z, y, 1e-2) <= _nll(z, y, 0.05) <= _nll(z, y, 1.0)
    assert "at_bound='min'" in repr(scaler)
    path = scaler.save_pretrained(tmp_path)
    assert json.loads(path.read_text())["at_bound"] == "min"
    assert TemperatureScaler.from_pretrained(tmp_path).at_bound == "min"


def test_uninformative_logits_warn_and_record_max_bound(tmp_path):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(200, 3, generator=g) * 2
    y = z.argmin(1)  # the label is always the lowest logit: the NLL keeps falling as T grows
    with pytest.warns(TemperatureAtBoundWarning, match=r"max_temperature.*little or no information"):
        scaler = TemperatureScaler().fit(z, y)
    assert scaler.temperature == 1e2 and scaler.at_bound == "max"
    assert _scipy_temperature(z, y) == pytest.approx(1e2, rel=1e-3)  # scipy's bounded search agrees
    scaler.save_pretrained(tmp_path)
    assert TemperatureScaler.from_pretrained(tmp_path).at_bound == "max"
    with pytest.warns(TemperatureAtBoundWarning, match="max_temperature"):
        assert fit_temperature(z, y, max_temperature=5.0) == 5.0


def test_interior_fit_does_not_warn_and_matches_scipy(tmp_path):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(300, 4, generator=g) * 3
    y = torch.multinomial(torch.softmax(z / 2.0, dim=1), 1, generator=g).squeeze(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaler = TemperatureScaler().fit(z, y)
    assert scaler.at_bound is None
    assert scaler.temperature == pytest.approx(_scipy_temperature(z, y), rel=1e-4)
    scaler.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "temperature.json").read_text())["at_bound"] is None
    # A bound hit, then a hand-set temperature: at_bound describes the fit only and is reset.
    with pytest.warns(TemperatureAtBoundWarning):
        scaler.fit(z, y, max_temperature=1.5)
    assert scaler.at_bound == "max" and scaler.temperature == 1.5
    scaler.temperature = 2.0
    assert scaler.at_bound is None


def test_non_finite_temperature_is_never_saved(tmp_path):
    scaler = TemperatureScaler(2.0)
    scaler._temperature = math.nan  # bypasses the setter's check
    with pytest.raises(ValueError, match="temperature"):
        scaler.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "temperature.json").exists()
    scaler = TemperatureScaler(2.0)
    scaler.at_bound = "lower"
    with pytest.raises(ValueError, match="at_bound"):
        scaler.save_pretrained(tmp_path / "out")


# ============================================================================================ AdUE head
def _bert(num_labels: int = 2, hidden: int = 32) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


def _roberta() -> RobertaForSequenceClassification:
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        max_position_embeddings=40,
    )
    return RobertaForSequenceClassification(config).eval()


BATCH = {"input_ids": torch.randint(3, 120, (3, 7), generator=torch.Generator().manual_seed(4))}


@pytest.fixture
def saved_head(tmp_path):
    model = attach_adue_head(_bert())
    with torch.no_grad():
        for p in get_adue_head(model).parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)))
    save_adue_head(model, tmp_path)
    return tmp_path, model


@pytest.fixture
def target_bert():
    return _bert()


def test_huge_hidden_size_in_adue_config_fails_before_allocating(saved_head, target_bert, no_allocation):
    folder, _ = saved_head
    _edit_json(folder / "adue_config.json", hidden_size=200_000_000)
    with pytest.raises(ValueError, match=r"adue_config\.json: fields 'num_labels' \(2\) / 'hidden_size' \(200000000\)"):
        load_adue_head(target_bert, folder)
    assert not hasattr(target_bert, "adue_head")


@pytest.mark.parametrize(
    "change, field",
    [
        ({"hidden_size": 200_000_000}, "hidden_size"),
        ({"num_labels": 10**9}, "num_labels"),
        ({"num_labels": "2"}, "num_labels"),
        ({"num_labels": 2.0}, "num_labels"),
        ({"num_labels": True}, "num_labels"),
        ({"num_labels": -2}, "num_labels"),
        ({"hidden_size": _DELETE}, "hidden_size"),
        ({"hidden_size": 32.5}, "hidden_size"),
        ({"parameters": _DELETE}, "parameters"),
        ({"parameters": {"head.weight": [2, -32], "head.bias": [2]}}, "parameters"),
        ({"parameters": {"head.weight": [2, "32"], "head.bias": [2]}}, "parameters"),
        ({"parameters": {"head.weight": [2, 200_000_000], "head.bias": [2]}}, "parameters"),
        ({"parameters": {"head.weight": [2, 32], "head.bias": [2], "head.extra": [10**9]}}, "parameters"),
        ({"parameters": []}, "parameters"),
        ({"smoothmax_lambda": "100"}, "smoothmax_lambda"),
        ({"smoothmax_lambda": math.nan}, "smoothmax_lambda"),
        ({"smoothmax_lambda": -1.0}, "smoothmax_lambda"),
        ({"smoothmax_lambda": True}, "smoothmax_lambda"),
        ({"head_kind": "other"}, "head_kind"),
        ({"head_kind": 1}, "head_kind"),
        ({"head_class": 5}, "head_class"),
        ({"verbaliser_token_ids": [3, 4]}, "verbaliser_token_ids"),
        ({"head_kind": "verbaliser", "verbaliser_token_ids": [3, "4"]}, "verbaliser_token_ids"),
        ({"head_kind": "verbaliser", "verbaliser_token_ids": [3]}, "verbaliser_token_ids"),
        ({"head_kind": "verbaliser", "verbaliser_token_ids": None}, "verbaliser_token_ids"),
        ({"dtypes": {"head.weight": "F32"}}, "dtypes"),
        ({"dtypes": {"head.weight": "F32", "head.bias": "float"}}, "dtypes"),
        ({"fingerprint": [1]}, "fingerprint"),
    ],
)
def test_tampered_adue_config_names_the_field(saved_head, no_allocation, change, field):
    folder, _ = saved_head
    _edit_json(folder / "adue_config.json", **change)
    with pytest.raises(ValueError, match=field) as info:
        load_adue_head(None, folder)  # the model is never reached: the files alone are refused
    assert "adue_config.json" in str(info.value)


def test_consistently_tampered_config_is_caught_by_the_weights_header(saved_head, no_allocation):
    folder, _ = saved_head
    _edit_json(
        folder / "adue_config.json",
        hidden_size=200_000_000,
        parameters={"head.weight": [2, 200_000_000], "head.bias": [2]},
    )
    with pytest.raises(
        ValueError,
        match=r"adue_head\.safetensors does not match .*'head\.weight': expected shape \(2, 200000000\) from field "
        r"'parameters' of adue_config\.json, found \(2, 32\)",
    ):
        load_adue_head(None, folder)


def test_adue_weights_of_another_dtype_are_refused_and_old_files_load(saved_head):
    folder, model = saved_head
    weights = folder / "adue_head.safetensors"
    state = load_file(str(weights))
    save_file({k: v.double() for k, v in state.items()}, str(weights))
    target = _bert()
    with pytest.raises(ValueError, match=r"expected dtype F32 from field 'dtypes' of adue_config\.json, found F64"):
        load_adue_head(target, folder)
    assert not hasattr(target, "adue_head")
    _edit_json(folder / "adue_config.json", dtypes=_DELETE)  # a file written before "dtypes" existed
    load_adue_head(target, folder)
    with torch.no_grad():
        assert torch.equal(target(**BATCH).uncertainty, model(**BATCH).uncertainty)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_adue_weights_are_refused_without_side_effects(saved_head, bad):
    folder, _ = saved_head
    weights = folder / "adue_head.safetensors"
    state = load_file(str(weights))
    state["head.bias"][1] = bad
    save_file(state, str(weights))
    target = _bert()
    with pytest.raises(ValueError, match=r"adue_head\.safetensors: tensor 'head\.bias' holds 1 non-finite"):
        load_adue_head(target, folder)
    assert not hasattr(target, "adue_head")


def test_saving_a_non_finite_adue_head_is_refused(tmp_path):
    model = attach_adue_head(_bert())
    with torch.no_grad():
        get_adue_head(model).head.weight[0, 3] = math.nan
    with pytest.raises(ValueError, match=r"tensor 'head\.weight' holds 1 non-finite value\(s\) \(NaN\)"):
        save_adue_head(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with torch.no_grad():
        get_adue_head(model).head.weight[0, 3] = 0.0
    get_adue_head(model).smoothmax_lambda = math.inf
    with pytest.raises(ValueError, match="smoothmax_lambda"):
        save_adue_head(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_linear_head_round_trip_and_model_side_shape_check(tmp_path):
    model = attach_adue_head(_roberta())
    with torch.no_grad():
        for p in get_adue_head(model).parameters():
            p.mul_(1.5)
    save_adue_head(model, tmp_path)
    config = json.loads((tmp_path / "adue_config.json").read_text())
    assert config["head_class"] == "RobertaClassificationHead"
    assert config["parameters"]["head.dense.weight"] == [32, 32] and config["dtypes"]["head.dense.weight"] == "F32"
    restored = load_adue_head(_roberta(), tmp_path)
    with torch.no_grad():
        assert torch.equal(restored(**BATCH).uncertainty, model(**BATCH).uncertainty)
    # Config and weights tampered consistently: only the head built for the model can tell.
    state = load_file(str(tmp_path / "adue_head.safetensors"))
    state["head.dense.weight"] = state["head.dense.weight"][:, :16].contiguous()
    save_file(state, str(tmp_path / "adue_head.safetensors"))
    config["parameters"]["head.dense.weight"] = [32, 16]
    (tmp_path / "adue_config.json").write_text(json.dumps(config))
    target = _roberta()
    with pytest.raises(ValueError, match=r"head\.dense\.weight: saved \(32, 16\), model \(32, 32\)"):
        load_adue_head(target, tmp_path)
    assert not hasattr(target, "adue_head")
