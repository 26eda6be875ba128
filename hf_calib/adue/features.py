"""Caching what the frozen classifier sees once, so that the AdUE head trains in seconds.

The backbone and its adapter are frozen, so the classification head's pooled input (the features), the
frozen model's class logits and the labels are computed once per split and reused by every epoch and every
grid point.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .attach import last_forward, transformers_model
from .head import normalized_softmax_response


@dataclass
class AdUEFeatures:
    """One split: ``features`` [N, ...] (what the head is fed), frozen ``logits`` [N, C] and ``labels`` [N]."""

    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        n = self.features.shape[0]
        if self.logits.ndim != 2 or self.logits.shape[0] != n or self.labels.shape != (n,):
            raise ValueError(
                f"features [N, ...], logits [N, C] and labels [N] must agree on N; got {tuple(self.features.shape)}, "
                f"{tuple(self.logits.shape)} and {tuple(self.labels.shape)}."
            )
        if n == 0:
            raise ValueError("an AdUEFeatures split needs at least one example.")

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def predictions(self) -> torch.Tensor:
        """The frozen classifier's predictions [N]."""
        return self.logits.argmax(-1)

    @property
    def errors(self) -> torch.Tensor:
        """The error indicator e [N] (float): 1 where the frozen classifier's prediction differs from the label."""
        return (self.predictions != self.labels).float()

    @property
    def normalized_softmax_response(self) -> torch.Tensor:
        """u_SR [N] of the frozen logits: ``(1 - max p) / (1 - 1/C)``."""
        return normalized_softmax_response(self.logits)


@torch.no_grad()
def extract_adue_features(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    labels_key: str = "labels",
    progress: bool = True,
    desc: str = "AdUE features",
) -> AdUEFeatures:
    """Run ``model`` (with an attached AdUE head) over ``batches`` in eval mode and collect one split.

    Each batch is a mapping of model inputs (``input_ids``, ``attention_mask``, ...) plus ``labels_key`` [B];
    the labels are not passed to the model. Tensors are moved to the model's device; results live on CPU.
    """
    base = transformers_model(model)
    device = next(base.parameters()).device
    was_training = model.training
    model.eval()
    features, logits, labels = [], [], []
    try:
        for batch in tqdm(batches, desc=desc, disable=not progress):
            if labels_key not in batch:
                raise ValueError(f"every batch needs the labels under {labels_key!r}; got keys {sorted(batch)}.")
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            labels.append(torch.as_tensor(inputs.pop(labels_key)).reshape(-1).long().cpu())
            model(**inputs)
            batch_features, batch_logits = last_forward(model)
            features.append(batch_features.detach().cpu())
            logits.append(batch_logits.detach().float().cpu())
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("batches is empty.")
    return AdUEFeatures(torch.cat(features), torch.cat(logits), torch.cat(labels))
