"""AdUE loss, training (early stopping, grid selection) and baselines on synthetic cached features."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import roc_auc_score
from transformers import TrainingArguments

from hf_calib.adue import (
    AdUEConfig,
    AdUEFeatures,
    AdUEHead,
    MahalanobisDistance,
    adue_loss,
    evaluate_uncertainty,
    fit_adue_head,
    l2_sp,
    predict_uncertainty,
    predictive_entropy,
    softmax_response,
)
from hf_calib.metrics import misclassification_auroc


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (no synchronisation); other test files keep their setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- loss ----------------------------------------------------------------------------------------------------------


def test_loss_terms_match_torch_reference() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.rand(32, generator=g, dtype=torch.float64).clamp(0.01, 0.99).requires_grad_(True)
    e = (torch.rand(32, generator=g) < 0.3).double()
    u_sr = torch.rand(32, generator=g, dtype=torch.float64)
    head = torch.nn.Linear(4, 2).double()
    theta0 = {
        k: v.detach().clone() + 0.1 * torch.randn(v.shape, generator=g).double() for k, v in head.named_parameters()
    }
    total, parts = adue_loss(u, e, u_sr, alpha=0.3, beta=0.7, parameters=head.named_parameters(), initial=theta0)
    bce = -(e * torch.log(u) + (1 - e) * torch.log(1 - u)).mean()
    mse = ((u - u_sr) ** 2).mean()
    reg = sum(((p - theta0[k]) ** 2).sum() for k, p in head.named_parameters())
    assert parts["bce"].item() == pytest.approx(bce.item(), rel=1e-6)
    assert parts["mse"].item() == pytest.approx(mse.item(), rel=1e-6)
    assert parts["l2_sp"].item() == pytest.approx(reg.item(), rel=1e-6)
    assert total.item() == pytest.approx((bce + 0.3 * mse + 0.7 * reg).item(), rel=1e-6)
    total.backward()
    assert head.weight.grad is not None
    expected = 0.7 * 2 * (head.weight - theta0["weight"])  # d/dW of beta * ||W - W0||^2
    assert torch.allclose(head.weight.grad, expected)


def test_loss_input_errors() -> None:
    u = torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="shape"):
        adue_loss(u, torch.zeros(3), u, alpha=0.1, beta=0.0)
    with pytest.raises(ValueError, match="beta > 0"):
        adue_loss(u, torch.zeros(4), u, alpha=0.1, beta=0.1)
    with pytest.raises(ValueError, match="non-negative"):
        adue_loss(u, torch.zeros(4), u, alpha=-1.0, beta=0.0)
    with pytest.raises(ValueError, match="initial has no value"):
        l2_sp([("w", torch.zeros(2))], {})
    total, parts = adue_loss(u, torch.zeros(4), u, alpha=0.1, beta=0.0)
    assert parts["l2_sp"].item() == 0.0 and total.item() == pytest.approx(np.log(2.0))


# --- training on a synthetic problem ---------------------------------------------------------------------------------


def _mlp(seed: int) -> torch.nn.Module:
    """A RoBERTa-like dense-tanh-out_proj classifier with confident logits."""
    torch.manual_seed(seed)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    with torch.no_grad():
        mlp[2].weight.mul_(5)
    return mlp


def _split(classifier: torch.nn.Module, n: int, seed: int) -> AdUEFeatures:
    """Features whose errors the classifier's confidence cannot see: labels flip often where x[:, 1] > 0.8."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    with torch.no_grad():
        logits = classifier(x)
    flip_rate = torch.where(x[:, 1] > 0.8, 0.7, 0.03)
    flip = torch.rand(n, generator=g) < flip_rate
    labels = torch.where(flip, 1 - logits.argmax(-1), logits.argmax(-1))
    return AdUEFeatures(x, logits, labels)


@pytest.fixture(scope="module")
def problem() -> tuple[torch.nn.Module, AdUEFeatures, AdUEFeatures, AdUEFeatures]:
    classifier = _mlp(0)
    return classifier, _split(classifier, 1000, 1), _split(classifier, 500, 2), _split(classifier, 500, 3)


def _head(classifier: torch.nn.Module) -> AdUEHead:
    return AdUEHead.from_classifier(classifier, kind="encoder", num_labels=2, hidden_size=8)


def test_training_improves_validation_auroc(problem) -> None:
    classifier, train, val, test = problem
    head = _head(classifier)
    before = misclassification_auroc(predict_uncertainty(head, val.features), val.errors)
    config = AdUEConfig(
        learning_rates=(1e-2, 3e-2), alphas=(0.01,), betas=(0.01,), max_epochs=30, patience=10, progress=False
    )
    result = fit_adue_head(head, train, val, test, config)
    assert result.head is head
    assert result.val_auroc > before + 0.3
    after = misclassification_auroc(predict_uncertainty(head, val.features), val.errors)
    assert after == pytest.approx(result.val_auroc)  # the head holds the best epoch's weights
    sr = misclassification_auroc(softmax_response(test.logits), test.errors)
    assert result.test_auroc is not None and result.test_auroc > sr + 0.2
    # The classifier itself is untouched.
    assert torch.equal(classifier(train.features), train.logits)


def test_early_stopping_without_improvement(problem) -> None:
    classifier, train, val, _ = problem
    head = _head(classifier)
    start = copy.deepcopy(head.state_dict())
    # A learning rate below float32 resolution leaves every weight (so the AUROC) unchanged.
    config = AdUEConfig(learning_rates=(1e-30,), alphas=(0.1,), betas=(0.1,), max_epochs=50, patience=3, progress=False)
    result = fit_adue_head(head, train, val, config=config)
    (run,) = result.runs
    assert run.epochs_run == 3 and run.best_epoch == 0 and result.test_auroc is None
    assert all(torch.equal(v, start[k]) for k, v in head.state_dict().items())


def test_grid_selects_best_validation_auroc(problem) -> None:
    classifier, train, val, _ = problem
    head = _head(classifier)
    config = AdUEConfig(learning_rates=(1e-30, 1e-2), alphas=(0.01, 1.0), betas=(0.01,), max_epochs=8, progress=False)
    result = fit_adue_head(head, train, val, config=config)
    assert len(result.runs) == 4
    assert [(r.learning_rate, r.alpha) for r in result.runs] == [(1e-30, 0.01), (1e-30, 1.0), (1e-2, 0.01), (1e-2, 1.0)]
    best = max(result.runs, key=lambda r: r.val_auroc)
    assert (result.learning_rate, result.alpha, result.val_auroc) == (best.learning_rate, best.alpha, best.val_auroc)
    assert result.learning_rate == 1e-2
    assert misclassification_auroc(predict_uncertainty(head, val.features), val.errors) == pytest.approx(best.val_auroc)
    assert result.to_dict()["runs"][0]["learning_rate"] == 1e-30


def test_fit_is_deterministic_for_a_seed(problem) -> None:
    classifier, train, val, _ = problem
    config = AdUEConfig(learning_rates=(1e-2,), alphas=(0.1,), betas=(0.1,), max_epochs=3, seed=5, progress=False)
    a = fit_adue_head(_head(classifier), train, val, config=config)
    b = fit_adue_head(_head(classifier), train, val, config=config)
    assert a.val_auroc == b.val_auroc
    assert all(torch.equal(v, b.head.state_dict()[k]) for k, v in a.head.state_dict().items())


def test_fit_input_errors(problem) -> None:
    classifier, train, val, _ = problem
    head = _head(classifier)
    all_right = AdUEFeatures(val.features, val.logits, val.logits.argmax(-1))
    with pytest.raises(ValueError, match="validation AUROC needs both"):
        fit_adue_head(head, train, all_right, config=AdUEConfig(progress=False))
    three = AdUEFeatures(val.features, torch.randn(len(val), 3), val.labels)
    with pytest.raises(ValueError, match="3 classes"):
        fit_adue_head(head, train, three, config=AdUEConfig(progress=False))
    with pytest.raises(ValueError, match="N"):
        AdUEFeatures(torch.zeros(3, 2), torch.zeros(2, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="learning_rates"):
        AdUEConfig(learning_rates=())
    with pytest.raises(ValueError, match="patience"):
        AdUEConfig(patience=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        AdUEConfig(warmup_ratio=0.0)
    assert AdUEConfig().learning_rates == (4e-4, 1e-4, 1e-5) and AdUEConfig().max_epochs == 50


# --- baselines -----------------------------------------------------------------------------------------------------


def test_softmax_response_and_entropy_references() -> None:
    logits = torch.randn(40, 5) * 3
    logits[0] = torch.tensor([200.0, 0, 0, 0, 0])  # other classes underflow to p = 0
    p = torch.softmax(logits.double(), -1).numpy()
    assert np.allclose(softmax_response(logits).numpy(), 1 - p.max(-1))
    assert np.allclose(predictive_entropy(logits).numpy(), scipy_entropy(p, axis=-1), atol=1e-12)
    assert predictive_entropy(torch.zeros(1, 4)).item() == pytest.approx(np.log(4))


def _mahalanobis_numpy(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray) -> np.ndarray:
    classes = np.unique(train_y)
    means = {c: train_x[train_y == c].mean(0) for c in classes}
    centred = np.concatenate([train_x[train_y == c] - means[c] for c in classes])
    precision = np.linalg.pinv(np.cov(centred, rowvar=False, bias=True))
    dists = [[(r - means[c]) @ precision @ (r - means[c]) for c in classes] for r in x]
    return np.min(np.array(dists), axis=1)


def test_mahalanobis_matches_numpy_reference() -> None:
    g = np.random.default_rng(0)
    train_x = g.normal(size=(300, 6)) + np.repeat(np.eye(3, 6) * 3, 100, axis=0)
    train_y = np.repeat([0, 1, 2], 100)
    x = g.normal(size=(50, 6))
    ours = MahalanobisDistance().fit(torch.tensor(train_x), torch.tensor(train_y)).score(torch.tensor(x)).numpy()
    assert np.allclose(ours, _mahalanobis_numpy(train_x, train_y, x), rtol=1e-8)
    # Rank-deficient features (a duplicated column, [N, 1, H] like a RoBERTa head's input) still score.
    wide = np.concatenate([train_x, train_x[:, :1]], axis=1)
    md = MahalanobisDistance().fit(torch.tensor(wide)[:, None, :], torch.tensor(train_y))
    assert torch.isfinite(md.score(torch.tensor(wide[:5])[:, None, :])).all()
    with pytest.raises(ValueError, match="not fitted"):
        MahalanobisDistance().score(torch.tensor(x))
    with pytest.raises(ValueError, match="width"):
        md.score(torch.tensor(x))


def test_evaluate_uncertainty_matches_sklearn(problem) -> None:
    classifier, train, _, test = problem
    head = _head(classifier)
    result = evaluate_uncertainty(head, train, test)
    errors = test.errors.numpy()
    assert result["n_errors"] == int(errors.sum()) and result["n"] == len(test)
    assert result["accuracy"] == pytest.approx(1 - errors.mean())
    expected = {
        "adue": predict_uncertainty(head, test.features).numpy(),
        "softmax_response": softmax_response(test.logits).numpy(),
        "entropy": predictive_entropy(test.logits).numpy(),
        "mahalanobis": _mahalanobis_numpy(train.features.numpy(), train.labels.numpy(), test.features.numpy()),
    }
    assert set(result["auroc"]) == set(expected)
    for name, score in expected.items():
        assert result["auroc"][name] == pytest.approx(roc_auc_score(errors, score), abs=1e-9), name
    assert set(evaluate_uncertainty(None, train, test)["auroc"]) == {"softmax_response", "entropy", "mahalanobis"}


# --- Trainer -------------------------------------------------------------------------------------------------------


def test_adue_trainer_trains_only_the_head(tmp_path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    from hf_calib.adue import attach_adue_head, get_adue_head, normalized_softmax_response
    from hf_calib.adue.trainer import AdUETrainer, AdUETrainingArguments, adue_compute_metrics

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    model = get_peft_model(BertForSequenceClassification(config), LoraConfig(task_type="SEQ_CLS", r=4))
    attach_adue_head(model)
    g = torch.Generator().manual_seed(0)
    rows = [
        {"input_ids": torch.randint(3, 120, (6,), generator=g), "labels": int(torch.randint(0, 2, (), generator=g))}
        for _ in range(48)
    ]
    frozen = {k: v.clone() for k, v in model.named_parameters() if "adue_head" not in k}
    head_before = {k: v.clone() for k, v in get_adue_head(model).named_parameters()}
    args = AdUETrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=16,
        learning_rate=1e-2,
        adue_alpha=0.5,
        adue_beta=0.2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = AdUETrainer(model, args, train_dataset=rows, eval_dataset=rows, compute_metrics=adue_compute_metrics)
    # The Trainer's loss on a batch equals the reference built from the model's own outputs.
    batch = {"input_ids": torch.stack([r["input_ids"] for r in rows[:16]])}
    labels = torch.tensor([r["labels"] for r in rows[:16]])
    model.eval()
    with torch.no_grad():
        out = model(**batch)
        got = trainer.compute_loss(model, {**batch, "labels": labels})
    e = (out.logits.argmax(-1) != labels).float()
    expected, _ = adue_loss(out.uncertainty, e, normalized_softmax_response(out.logits), alpha=0.5, beta=0.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)  # L2-SP is 0 before any step

    trainer.train()
    assert all(torch.equal(v, frozen[k]) for k, v in model.named_parameters() if "adue_head" not in k)
    assert any(not torch.equal(v, head_before[k]) for k, v in get_adue_head(model).named_parameters())
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_adue_auroc"] <= 1.0 and "eval_accuracy" in metrics
    with pytest.raises(TypeError, match="AdUETrainingArguments"):
        AdUETrainer(model, TrainingArguments(output_dir=str(tmp_path), report_to=[]))
