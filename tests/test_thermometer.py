"""Thermometer: network, Gamma prior vs torch.distributions, loss, training and checkpoint selection, I/O, errors."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from hf_calib.metrics import brier_score, calibration_error, nll_from_logits, top_label_calibration_error
from hf_calib.scaling import (
    Thermometer,
    ThermometerConfig,
    ThermometerTask,
    calibration_report,
    fit_temperature,
    gamma_prior_nll,
    leave_one_task_out,
    thermometer_loss,
    train_thermometer,
)
from hf_calib.scaling.training import mean_validation_nll


@pytest.fixture(autouse=True)
def _one_thread():
    """The networks here are tiny: one thread avoids OpenMP contention on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(d: int = 8, h: int = 4, **kw) -> Thermometer:
    torch.manual_seed(0)
    return Thermometer(ThermometerConfig(input_size=d, hidden_size=h, **kw))


def _tasks(n_tasks: int = 4, n: int = 40, d: int = 6, seed: int = 0) -> list[ThermometerTask]:
    """Tasks whose best temperature grows with task index; feature 0 tells the task's temperature."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for t in range(n_tasks):
        true_t = 0.5 + t
        clean = torch.randn(n, 4, generator=g) * 3
        y = torch.multinomial(torch.softmax(clean, dim=1), 1, generator=g).squeeze(1)
        x = torch.randn(n, d, generator=g) * 0.1
        x[:, 0] += true_t
        tasks.append(ThermometerTask(f"task{t}", x, clean * true_t, y))
    return tasks


def test_paper_defaults():
    config = ThermometerConfig(input_size=4096)
    assert (config.hidden_size, config.num_branches, config.lambda_reg) == (512, 3, 1e-2)
    assert (config.gamma_shape, config.gamma_scale) == (1.25, 4.0)
    assert (config.learning_rate, config.weight_decay, config.steps) == (1e-3, 1e-4, 5000)
    assert (config.batch_size, config.eval_every) == (128, 50)
    assert ThermometerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "field,value",
    [("input_size", 0), ("hidden_size", 2.5), ("steps", True), ("lambda_reg", -1.0), ("val_fraction", 1.0)],
)
def test_config_rejects_bad_values(field, value):
    values = {"input_size": 8, field: value}
    with pytest.raises(ValueError, match=field):
        ThermometerConfig(**values)
    with pytest.raises(ValueError, match="unknown ThermometerConfig field"):
        ThermometerConfig.from_dict({"input_size": 8, "hiden_size": 4})


def test_network_is_three_branches_mixed_then_softplus():
    model = _tiny(d=8, h=5)
    assert len(model.branches) == 3
    for branch in model.branches:
        assert [type(m).__name__ for m in branch] == ["Linear", "ReLU", "Linear"]
        assert branch[0].weight.shape == (5, 8) and branch[2].weight.shape == (1, 5)
    assert model.mix.weight.shape == (1, 3)
    x = torch.randn(7, 8)
    outs = [b[2](torch.relu(b[0](x))) for b in model.branches]  # [7, 1] each
    expected = F.softplus(torch.cat(outs, dim=1) @ model.mix.weight.T + model.mix.bias).squeeze(1)
    beta = model.inverse_temperature(x)
    assert beta.shape == (7,)
    assert torch.allclose(beta, expected, atol=1e-6)
    assert bool((beta > 0).all())
    assert model.predict_temperature(x) == pytest.approx(1.0 / float(expected.detach().double().mean()), rel=1e-6)


def test_predicted_temperature_is_always_positive_and_finite():
    model = _tiny()
    with torch.no_grad():
        model.mix.bias.fill_(-1e4)  # softplus underflows to exactly 0
    t = model.predict_temperature(torch.randn(3, 8))
    assert math.isfinite(t) and t > 0


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0, 2.0, 9.0])
def test_gamma_prior_matches_torch_distribution(temperature):
    t = torch.tensor(temperature, dtype=torch.float64)
    f64 = {"dtype": torch.float64}
    ref = -torch.distributions.Gamma(torch.tensor(1.25, **f64), torch.tensor(1 / 4.0, **f64)).log_prob(t)
    assert float(gamma_prior_nll(t, 1.25, 4.0)) == pytest.approx(float(ref), rel=1e-12)
    ref = -torch.distributions.Gamma(torch.tensor(3.0, **f64), torch.tensor(0.5, **f64)).log_prob(t)
    assert float(gamma_prior_nll(t, 3.0, 2.0)) == pytest.approx(float(ref), rel=1e-12)


def test_gamma_prior_mode_is_one_for_the_defaults():
    t = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    gamma_prior_nll(t, 1.25, 4.0).backward()
    assert float(t.grad) == pytest.approx(0.0, abs=1e-12)


def test_loss_is_ce_of_batch_scaled_logits_plus_prior():
    config = ThermometerConfig(input_size=8, lambda_reg=0.3)
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(16, 4, generator=g), torch.randint(0, 4, (16,), generator=g)
    beta = torch.rand(16, generator=g, dtype=torch.float64).float() + 0.2
    beta_bar = beta.mean()
    prior = -torch.distributions.Gamma(1.25, 1 / 4.0).log_prob(1 / beta_bar)
    expected = F.cross_entropy(z * beta_bar, y) + 0.3 * prior
    assert float(thermometer_loss(z, y, beta, config)) == pytest.approx(float(expected), rel=1e-5)


def test_loss_gradient_is_finite_with_absent_options():
    model = _tiny()
    z = torch.randn(6, 4)
    z[:, 3] = -math.inf
    loss = thermometer_loss(z, torch.tensor([0, 1, 2, 0, 1, 2]), model(torch.randn(6, 8)), model.config)
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_save_load_is_bit_identical_and_checks_the_model(tmp_path):
    from transformers import LlamaConfig

    llm = LlamaConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    model = _tiny(d=8, h=4, steps=7)
    model.save_pretrained(tmp_path / "adapter", model=llm)
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "thermometer.safetensors",
        "thermometer_config.json",
    ]
    loaded = Thermometer.from_pretrained(tmp_path / "adapter", model=llm)
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    x = torch.randn(5, 8)
    assert torch.equal(loaded(x), model.eval()(x))
    other = LlamaConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(ValueError, match="different (base )?model"):
        Thermometer.from_pretrained(tmp_path / "adapter", model=other)


def test_loading_mismatched_files_fails(tmp_path):
    _tiny(d=8, h=4).save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "thermometer.safetensors"))
    state["mix.weight"] = torch.zeros(1, 5)
    save_file(state, str(tmp_path / "thermometer.safetensors"))
    with pytest.raises(ValueError, match="does not match"):
        Thermometer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        Thermometer.from_pretrained(tmp_path / "missing")


def test_bad_features():
    model = _tiny(d=8)
    with pytest.raises(ValueError, match="input_size=8"):
        model.predict_temperature(torch.randn(4, 9))
    x = torch.randn(4, 8)
    x[2, 1] = math.nan
    with pytest.raises(ValueError, match="NaN.*row 2"):
        model(x)
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        model(torch.randn(8))


def test_task_validation():
    x, z, y = torch.randn(3, 6), torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        ThermometerTask("one", x[:1], z[:1], y[:1])
    with pytest.raises(ValueError, match="features have 2 rows"):
        ThermometerTask("t", x[:2], z, y)
    bad = z.clone()
    bad[1, 1] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        ThermometerTask("t", x, bad, y)
    bad = x.clone()
    bad[0, 0] = math.inf
    with pytest.raises(ValueError, match="features of task 't'"):
        ThermometerTask("t", bad, z, y)


def test_training_learns_task_temperatures_and_is_reproducible():
    tasks = _tasks()
    options = {"steps": 300, "hidden_size": 16, "learning_rate": 1e-2, "show_progress": False}
    model, history = train_thermometer(tasks, **options)
    again, _ = train_thermometer(tasks, **options)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
    assert history.eval_steps == list(range(50, 301, 50))
    assert len(history.losses) == 300
    predicted = [model.predict_temperature(t.features) for t in tasks]
    oracle = [fit_temperature(t.logits, t.labels) for t in tasks]
    # The predicted temperatures follow the per-task optimum (which grows with the task index).
    assert predicted == sorted(predicted)
    for p, o in zip(predicted, oracle, strict=True):
        assert p == pytest.approx(o, rel=0.35)


def test_checkpoint_selection_keeps_the_lowest_validation_nll():
    train = _tasks(n_tasks=2, seed=1)
    # Validation labels contradict the training ones: the longer training goes, the worse validation gets.
    val = [ThermometerTask(t.name, t.features, t.logits, (t.logits.argmax(1) + 1) % 4) for t in train]
    model, history = train_thermometer(
        train, val_tasks=val, steps=100, eval_every=10, hidden_size=8, show_progress=False
    )
    best = min(range(len(history.val_nll)), key=history.val_nll.__getitem__)
    assert history.best_step == history.eval_steps[best]
    assert history.best_val_nll == min(history.val_nll)
    assert history.best_step < 100 and history.val_nll[-1] > history.best_val_nll
    assert mean_validation_nll(model, val) == pytest.approx(history.best_val_nll, rel=1e-6)


def test_last_step_is_validated_when_steps_is_not_a_multiple():
    _, history = train_thermometer(_tasks(n_tasks=2), steps=30, eval_every=50, hidden_size=4, show_progress=False)
    assert history.eval_steps == [30]


def test_training_errors():
    tasks = _tasks(n_tasks=2)
    with pytest.raises(ValueError, match="empty"):
        train_thermometer([])
    with pytest.raises(ValueError, match="repeated task names"):
        train_thermometer([tasks[0], tasks[0]])
    with pytest.raises(ValueError, match="input_size"):
        train_thermometer(tasks, ThermometerConfig(input_size=99))
    odd = ThermometerTask("odd", torch.randn(4, 3), torch.randn(4, 4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="one dimension"):
        train_thermometer([tasks[0], odd])


def test_calibration_report_uses_hf_calib_metrics():
    t = _tasks(n_tasks=1, n=60)[0]
    report = calibration_report(t.logits, t.labels, 2.0, n_bins=10)
    probs = torch.softmax(t.logits.double() / 2.0, dim=1)
    conf, pred = probs.max(1)
    assert report["ece"] == pytest.approx(calibration_error(conf, pred == t.labels, n_bins=10))
    assert report["mce"] == pytest.approx(calibration_error(conf, pred == t.labels, n_bins=10, norm="max"))
    assert report["tl_ece"] == pytest.approx(top_label_calibration_error(probs, t.labels, n_bins=10))
    assert report["nll"] == pytest.approx(nll_from_logits(t.logits.double() / 2.0, t.labels))
    assert report["brier"] == pytest.approx(brier_score(probs, t.labels))
    assert report["brier_mean"] == pytest.approx(report["brier"] / 4)


def test_leave_one_task_out():
    tasks = _tasks(n_tasks=3)
    result = leave_one_task_out(tasks, seeds=[0, 1], steps=30, hidden_size=8, show_progress=False)
    table = result.per_task()
    assert list(table) == ["task0", "task1", "task2"]
    assert sum(r["method"] == "thermometer" for r in result.rows) == 6
    for name, methods in table.items():
        task = next(t for t in tasks if t.name == name)
        accuracies = {m: v["accuracy"] for m, v in methods.items()}
        assert len(set(accuracies.values())) == 1  # a temperature never changes the argmax
        # The oracle temperature minimises this task's NLL, so no other single temperature beats it.
        for method in ("uncalibrated", "thermometer", "temperature_scaling"):
            assert methods["oracle"]["nll"] <= methods[method]["nll"] + 1e-9
        others = [t for t in tasks if t.name != name]
        pooled = fit_temperature(torch.cat([t.logits for t in others]), torch.cat([t.labels for t in others]))
        assert methods["temperature_scaling"]["temperature"] == pytest.approx(pooled)
        assert methods["oracle"]["temperature"] == pytest.approx(fit_temperature(task.logits, task.labels))
    mean = result.mean()
    assert mean["uncalibrated"]["ece"] == pytest.approx(sum(table[t]["uncalibrated"]["ece"] for t in table) / 3)
    markdown = result.to_markdown()
    assert markdown.count("\n") == 2 + 3 and "**mean**" in markdown
    assert result.mean_markdown().count("\n") == 1 + 4
    with pytest.raises(ValueError, match="at least 2 tasks"):
        leave_one_task_out(tasks[:1])
    with pytest.raises(ValueError, match="held_out"):
        leave_one_task_out(tasks, held_out=["nope"])


def test_config_is_a_dataclass_saved_as_json(tmp_path):
    model = _tiny(d=8, h=4, lambda_reg=0.5, seed=3)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "thermometer_config.json").read_text())["config"]
    assert saved == dataclasses.asdict(model.config)
