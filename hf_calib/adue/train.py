"""Training the AdUE head on cached features, with the paper's grid search and early stopping.

For each grid point (learning rate, alpha, beta) the head restarts from theta0, its weights when
``fit_adue_head`` is called (the classification head's, for a freshly attached head). It is trained with
Adam under a one-cycle cosine schedule (10% warm-up) on the training split for at most ``max_epochs`` epochs
of shuffled batches, and keeps the weights of its best epoch by validation AUROC of U against the frozen
classifier's errors; training stops after ``patience`` epochs without improvement. Epoch 0 (the untrained
copy) is a candidate too, so a run never ends below its start.
The grid point with the best validation AUROC wins (ties: the first in grid order).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..metrics import misclassification_auroc
from .attach import get_adue_head
from .features import AdUEFeatures
from .head import AdUEHead
from .loss import adue_loss


@dataclass
class AdUEConfig:
    """Knobs of ``fit_adue_head``; the defaults are the AdUE paper's.

    SmoothMax's lambda belongs to the head (``attach_adue_head(smoothmax_lambda=...)``), not to training.
    ``num_threads``: torch intra-op threads while fitting (restored afterwards). A head's matmuls are tiny, and
    several threads only add synchronisation (on a busy 2-core machine, 1 thread ran ~40x faster than 2);
    ``None`` keeps the current setting.
    """

    learning_rates: tuple[float, ...] = (4e-4, 1e-4, 1e-5)
    alphas: tuple[float, ...] = (0.01, 0.1, 1.0)
    betas: tuple[float, ...] = (0.01, 0.1, 1.0)
    max_epochs: int = 50
    batch_size: int = 128
    patience: int = 5
    warmup_ratio: float = 0.1
    seed: int = 0
    progress: bool = True
    num_threads: int | None = 1

    def __post_init__(self) -> None:
        for name in ("learning_rates", "alphas", "betas"):
            values = tuple(float(v) for v in getattr(self, name))
            if not values:
                raise ValueError(f"{name} must hold at least one value.")
            if any(v < 0 for v in values) or (name == "learning_rates" and any(v == 0 for v in values)):
                raise ValueError(f"{name} must be non-negative (learning rates positive); got {values}.")
            setattr(self, name, values)
        for name in ("max_epochs", "batch_size", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)}.")
        if self.num_threads is not None and int(self.num_threads) < 1:
            raise ValueError(f"num_threads must be None or a positive integer; got {self.num_threads}.")
        if not 0.0 < self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must lie in (0, 1); got {self.warmup_ratio}.")


@dataclass
class AdUERun:
    """One grid point: its hyperparameters, best validation AUROC, best epoch and epochs run."""

    learning_rate: float
    alpha: float
    beta: float
    val_auroc: float
    best_epoch: int
    epochs_run: int


@dataclass
class AdUEFitResult:
    """What ``fit_adue_head`` chose and measured; ``head`` holds the chosen weights."""

    head: AdUEHead
    learning_rate: float
    alpha: float
    beta: float
    val_auroc: float
    test_auroc: float | None
    best_epoch: int
    runs: list[AdUERun] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the weights)."""
        return {
            "learning_rate": self.learning_rate,
            "alpha": self.alpha,
            "beta": self.beta,
            "val_auroc": self.val_auroc,
            "test_auroc": self.test_auroc,
            "best_epoch": self.best_epoch,
            "runs": [asdict(r) for r in self.runs],
        }


@torch.no_grad()
def predict_uncertainty(head: AdUEHead, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """U [N] of ``head`` (in eval mode) for cached ``features`` [N, ...], on CPU."""
    was_training = head.training
    head.eval()
    device = next(head.parameters()).device
    try:
        parts = [
            head(features[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(features), batch_size)
        ]
    finally:
        head.train(was_training)
    return torch.cat(parts)


def _check_split(split: AdUEFeatures, name: str, head: AdUEHead) -> None:
    if split.logits.shape[-1] != head.num_labels:
        raise ValueError(f"{name} has {split.logits.shape[-1]} classes but the head has {head.num_labels}.")
    n_errors = int(split.errors.sum().item())
    if name == "val" and n_errors in (0, len(split)):
        raise ValueError(
            f"val has {n_errors} errors in {len(split)} examples; validation AUROC needs both errors and correct "
            "predictions. Use a larger validation split."
        )


def train_adue_run(
    head: AdUEHead,
    train: AdUEFeatures,
    val: AdUEFeatures,
    *,
    learning_rate: float,
    alpha: float,
    beta: float,
    config: AdUEConfig,
) -> tuple[dict[str, torch.Tensor], AdUERun]:
    """Train ``head`` from its current weights at one grid point; return its best state and the run's record.

    ``head`` is left holding the last epoch's weights; the caller restores whichever state it wants.
    """
    device = next(head.parameters()).device
    initial = {k: v.detach().clone() for k, v in head.named_parameters()}
    x = train.features.to(device)
    errors = train.errors.to(device)
    u_sr = train.normalized_softmax_response.to(device)
    val_errors = val.errors
    n = len(train)
    steps_per_epoch = -(-n // config.batch_size)
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=learning_rate,
        total_steps=config.max_epochs * steps_per_epoch,
        pct_start=config.warmup_ratio,
        anneal_strategy="cos",
    )
    generator = torch.Generator().manual_seed(config.seed)
    best_auroc = misclassification_auroc(predict_uncertainty(head, val.features), val_errors)
    best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    best_epoch, epochs_run = 0, 0
    for epoch in range(1, config.max_epochs + 1):
        head.train()
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            loss, _ = adue_loss(
                head(x[idx]),
                errors[idx],
                u_sr[idx],
                alpha=alpha,
                beta=beta,
                parameters=head.named_parameters(),
                initial=initial,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        epochs_run = epoch
        auroc = misclassification_auroc(predict_uncertainty(head, val.features), val_errors)
        if auroc > best_auroc:
            best_auroc, best_epoch = auroc, epoch
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
    return best_state, AdUERun(learning_rate, alpha, beta, best_auroc, best_epoch, epochs_run)


def fit_adue_head(
    model_or_head: nn.Module,
    train: AdUEFeatures,
    val: AdUEFeatures,
    test: AdUEFeatures | None = None,
    config: AdUEConfig | None = None,
) -> AdUEFitResult:
    """Grid-search and train the AdUE head of ``model_or_head`` on cached splits; load the best weights into it.

    Args:
        model_or_head: a model with an attached head (``attach_adue_head``) or an ``AdUEHead``.
        train: features of the split the classifier was fine-tuned on (the paper's choice).
        val: features for early stopping and model selection; needs both errors and correct predictions.
        test: optional held-out features; its AUROC is reported (never used for any choice).
        config: grid, schedule and early stopping (paper defaults).

    Returns:
        ``AdUEFitResult`` with the chosen hyperparameters, validation and test AUROC, every run's record and
        the head (the same module, now holding the chosen weights).
    """
    config = config or AdUEConfig()
    head = model_or_head if isinstance(model_or_head, AdUEHead) else get_adue_head(model_or_head)
    for split, name in ((train, "train"), (val, "val"), (test, "test")):
        if split is not None:
            _check_split(split, name, head)
    theta0 = copy.deepcopy(head.state_dict())
    grid = list(itertools.product(config.learning_rates, config.alphas, config.betas))
    best: tuple[dict[str, torch.Tensor], AdUERun] | None = None
    runs: list[AdUERun] = []
    bar = tqdm(grid, desc="AdUE grid", disable=not config.progress)
    threads = torch.get_num_threads()
    # The grid's shuffles and dropout masks come from one seeded stream, without touching the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.num_threads is not None:
            torch.set_num_threads(int(config.num_threads))
        try:
            for lr, alpha, beta in bar:
                head.load_state_dict(theta0)
                state, run = train_adue_run(head, train, val, learning_rate=lr, alpha=alpha, beta=beta, config=config)
                runs.append(run)
                if best is None or run.val_auroc > best[1].val_auroc:
                    best = (state, run)
                bar.set_postfix(best_val_auroc=f"{best[1].val_auroc:.4f}")
        finally:
            torch.set_num_threads(threads)
    assert best is not None  # the grid is never empty (AdUEConfig checks)
    head.load_state_dict(best[0])
    head.eval()
    test_auroc = None
    if test is not None:
        test_auroc = misclassification_auroc(predict_uncertainty(head, test.features), test.errors)
    chosen = best[1]
    return AdUEFitResult(
        head=head,
        learning_rate=chosen.learning_rate,
        alpha=chosen.alpha,
        beta=chosen.beta,
        val_auroc=chosen.val_auroc,
        test_auroc=test_auroc,
        best_epoch=chosen.best_epoch,
        runs=runs,
    )
