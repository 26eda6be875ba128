"""``AdUETrainer``: transformers' ``Trainer`` training only the attached AdUE head, on live forward passes.

``fit_adue_head`` on cached features is the fast path (seconds, with the paper's grid and early stopping);
this Trainer is for pipelines that already run on ``Trainer`` (datasets, callbacks, logging, checkpoints).
Per batch, with the frozen classifier's class logits ``z`` [B, C] and labels ``y`` [B]:

    e = 1[argmax z != y],  u_SR = (1 - max softmax z) / (1 - 1/C)
    loss = BCE(U, e) + adue_alpha * MSE(U, u_SR) + adue_beta * ||theta - theta0||^2

with ``theta0`` the head's weights when the trainer is created. The backbone always runs in eval mode
(no dropout), so ``e`` and ``u_SR`` are the deployed model's; the head follows the Trainer's train/eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import EvalPrediction, Trainer, TrainingArguments

from ..metrics import misclassification_auroc
from .attach import get_adue_head, last_forward, transformers_model
from .head import normalized_softmax_response
from .loss import adue_loss


@dataclass
class AdUETrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the AdUE loss weights."""

    adue_alpha: float = field(default=0.1, metadata={"help": "Weight of MSE(U, u_SR) in the AdUE loss."})
    adue_beta: float = field(default=0.1, metadata={"help": "Weight of the L2-SP term in the AdUE loss."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adue_alpha < 0 or self.adue_beta < 0:
            raise ValueError(f"adue_alpha and adue_beta must be non-negative; got {self.adue_alpha}, {self.adue_beta}.")


def adue_compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """``compute_metrics`` for ``AdUETrainer`` on a classifier: AUROC of U for the frozen model's errors.

    Expects predictions ``(logits [N, C], uncertainty [N])`` as gathered from a ``*ForSequenceClassification``.
    """
    predictions = eval_pred.predictions
    if not isinstance(predictions, tuple) or len(predictions) < 2:
        raise ValueError("predictions must be (logits, ..., uncertainty); attach an AdUE head to the model.")
    logits, uncertainty = np.asarray(predictions[0]), np.asarray(predictions[-1])
    errors = logits.argmax(-1) != np.asarray(eval_pred.label_ids)
    return {"adue_auroc": misclassification_auroc(uncertainty, errors), "accuracy": float(1.0 - errors.mean())}


class AdUETrainer(Trainer):
    """Trains the AdUE head of ``model`` (``attach_adue_head`` first) with the AdUE loss; see the module docs."""

    def __init__(self, model: nn.Module, args: AdUETrainingArguments, **kwargs: Any) -> None:
        if not isinstance(args, AdUETrainingArguments):
            raise TypeError(f"args must be AdUETrainingArguments; got {type(args).__name__}.")
        head = get_adue_head(model)
        super().__init__(model=model, args=args, **kwargs)
        self._adue_initial = {k: v.detach().clone() for k, v in head.named_parameters()}

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The AdUE loss of one batch; ``inputs["labels"]`` [B] are the true classes."""
        inputs = dict(inputs)
        if "labels" not in inputs:
            raise ValueError("AdUETrainer needs the true labels in inputs['labels'].")
        labels = inputs.pop("labels")
        base = transformers_model(self.model)
        head = get_adue_head(self.model)
        training = base.training
        base.eval()  # the frozen classifier is judged as deployed, without dropout
        head.train(training)
        try:
            outputs = model(**inputs)
        finally:
            base.train(training)
        _, class_logits = last_forward(self.model)
        frozen = class_logits.detach().float()
        errors = (frozen.argmax(-1) != labels.reshape(-1)).float()
        loss, _ = adue_loss(
            outputs["uncertainty"],
            errors,
            normalized_softmax_response(frozen).to(frozen.device),
            alpha=self.args.adue_alpha,
            beta=self.args.adue_beta,
            parameters=head.named_parameters(),
            initial=self._adue_initial,
        )
        return (loss, outputs) if return_outputs else loss
