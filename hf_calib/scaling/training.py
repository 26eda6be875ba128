"""Training Thermometer on several labelled tasks (the official code's loop; ``docs/scaling.md``, "Thermometer").

Each step picks one training task uniformly at random, draws a batch of ``batch_size`` of its training
examples without replacement (the whole split when it is smaller), and takes one AdamW step on
:func:`hf_calib.scaling.thermometer.thermometer_loss`. Every ``eval_every`` steps (and after the last
one) the network predicts each training task's temperature from its validation features,
``T_t = 1 / mean beta``, and the mean over tasks of ``CE(z / T_t, y)`` on those validation examples
decides which checkpoint is returned (the lowest; the earliest among equals).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ._checks import check_features, check_logits_labels, scale_logits
from .thermometer import Thermometer, ThermometerConfig, thermometer_loss


@dataclass
class ThermometerTask:
    """One task's frozen-LLM outputs: ``features`` [N, d], answer ``logits`` [N, C] and ``labels`` [N].

    Validated on construction: N >= 2, finite features, no NaN in the logits (``-inf`` = absent option).
    """

    name: str
    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ThermometerTask.name must be a non-empty string; got {self.name!r}.")
        what = f"task {self.name!r}"
        self.logits, self.labels = check_logits_labels(self.logits, self.labels, name=f"logits of {what}")
        self.logits = self.logits.float().cpu()
        self.features = check_features(self.features, name=f"features of {what}").float().cpu()
        if self.features.shape[0] != self.logits.shape[0]:
            raise ValueError(
                f"{what}: features have {self.features.shape[0]} rows but logits have {self.logits.shape[0]}; "
                "they must describe the same examples in the same order."
            )

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, index: torch.Tensor) -> ThermometerTask:
        """The examples at ``index`` as a new task with the same name."""
        return ThermometerTask(self.name, self.features[index], self.logits[index], self.labels[index])


@dataclass
class TrainingHistory:
    """What :func:`train_thermometer` saw: per-step training loss and the validation NLL at each check."""

    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    best_step: int = 0
    best_val_nll: float = math.inf


def split_task(task: ThermometerTask, val_fraction: float, generator: torch.Generator) -> tuple:
    """Random ``(train, validation)`` subsets; each keeps at least one example (N >= 2)."""
    n = len(task)
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    order = torch.randperm(n, generator=generator)
    return task.subset(order[n_val:]), task.subset(order[:n_val])


def check_tasks(tasks: Sequence[ThermometerTask] | Mapping[str, ThermometerTask], name: str) -> list[ThermometerTask]:
    values = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    if not values:
        raise ValueError(f"{name} is empty; pass at least one ThermometerTask.")
    for task in values:
        if not isinstance(task, ThermometerTask):
            raise TypeError(f"{name} must hold ThermometerTask items; got {type(task).__name__}.")
    names = [t.name for t in values]
    if len(set(names)) != len(names):
        raise ValueError(f"{name} has repeated task names; give every task its own name.")
    dims = {t.features.shape[1] for t in values}
    if len(dims) != 1:
        raise ValueError(f"{name}: all tasks need features of one dimension; got {sorted(dims)}.")
    return values


@torch.no_grad()
def mean_validation_nll(thermometer: Thermometer, tasks: Sequence[ThermometerTask]) -> float:
    """``(1/|tasks|) sum_t CE(z_t * mean(beta(x_t)), y_t)``: each task scaled by its own predicted temperature."""
    total = 0.0
    for task in tasks:
        beta = thermometer(task.features).mean()
        total += float(nn.functional.cross_entropy(scale_logits(task.logits, beta), task.labels))
    return total / len(tasks)


def train_thermometer(
    tasks: Sequence[ThermometerTask] | Mapping[str, ThermometerTask],
    config: ThermometerConfig | None = None,
    *,
    val_tasks: Sequence[ThermometerTask] | Mapping[str, ThermometerTask] | None = None,
    show_progress: bool = True,
    **overrides: Any,
) -> tuple[Thermometer, TrainingHistory]:
    """Train a Thermometer on labelled ``tasks`` and return the best checkpoint and the history.

    Args:
        tasks: training tasks (features, logits, labels). Without ``val_tasks`` each is split at random
            into training and validation parts (``config.val_fraction``).
        config: hyperparameters; default ``ThermometerConfig(input_size=d)`` (the paper's values).
        val_tasks: explicit validation tasks used as they are (then ``tasks`` are used whole for training).
        show_progress: show a tqdm progress bar.
        overrides: fields replacing those of ``config`` (e.g. ``steps=1000``).

    Returns:
        ``(thermometer, history)``; the network holds the weights with the lowest mean validation NLL,
        in eval mode.
    """
    train = check_tasks(tasks, "tasks")
    dim = train[0].features.shape[1]
    base = config.to_dict() if config is not None else {"input_size": dim}
    config = ThermometerConfig.from_dict({**base, **overrides})
    if dim != config.input_size:
        raise ValueError(f"features have dimension {dim} but config.input_size is {config.input_size}.")
    generator = torch.Generator().manual_seed(config.seed)
    if val_tasks is None:
        pairs = [split_task(task, config.val_fraction, generator) for task in train]
        train, val = [p[0] for p in pairs], [p[1] for p in pairs]
    else:
        val = check_tasks(val_tasks, "val_tasks")
        if val[0].features.shape[1] != dim:
            raise ValueError("val_tasks must have features of the same dimension as tasks.")
    picker = random.Random(config.seed)

    torch.manual_seed(config.seed)
    thermometer = Thermometer(config)
    optimizer = torch.optim.AdamW(thermometer.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    history = TrainingHistory()
    best_state = copy.deepcopy(thermometer.state_dict())
    progress = tqdm(range(1, config.steps + 1), desc="Thermometer", disable=not show_progress)
    for step in progress:
        thermometer.train()
        task = train[picker.randrange(len(train))]
        batch = torch.randperm(len(task), generator=generator)[: config.batch_size]
        optimizer.zero_grad()
        loss = thermometer_loss(task.logits[batch], task.labels[batch], thermometer(task.features[batch]), config)
        loss.backward()
        optimizer.step()
        history.losses.append(loss.item())
        if step % config.eval_every == 0 or step == config.steps:
            thermometer.eval()
            value = mean_validation_nll(thermometer, val)
            history.eval_steps.append(step)
            history.val_nll.append(value)
            if value < history.best_val_nll:
                history.best_val_nll, history.best_step = value, step
                best_state = copy.deepcopy(thermometer.state_dict())
            progress.set_postfix(val_nll=f"{value:.4f}", best=f"{history.best_val_nll:.4f}")
    thermometer.load_state_dict(best_state)
    return thermometer.eval(), history
