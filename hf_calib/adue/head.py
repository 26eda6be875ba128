"""The AdUE uncertainty head: a trainable copy of a classifier's head that outputs U in (0, 1).

For logits ``z [N, C]`` of the copy, ``p = softmax(z)`` and

    SmoothMax(p) = (1 / lambda) * logsumexp(lambda * p)           (lambda = 100 by default)
    U = clamp((1 - SmoothMax(p)) / (1 - 1 / C), 1e-8, 1 - 1e-8)

SmoothMax is a differentiable upper bound of ``max(p)`` (``max p <= SmoothMax(p) <= max p + log(C) / lambda``),
so at initialisation U is the normalised softmax response ``(1 - max p) / (1 - 1/C)`` up to ``log(C) / lambda``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

HeadKind = Literal["encoder", "decoder", "verbaliser"]
HEAD_KINDS: tuple[str, ...] = ("encoder", "decoder", "verbaliser")
U_EPS = 1e-8


def smoothmax(probs: torch.Tensor, smoothmax_lambda: float = 100.0) -> torch.Tensor:
    """``(1 / lambda) * logsumexp(lambda * probs, dim=-1)``: a smooth maximum over the last dimension."""
    if not (math.isfinite(smoothmax_lambda) and smoothmax_lambda > 0):
        raise ValueError(f"smoothmax_lambda must be a finite number > 0; got {smoothmax_lambda}.")
    return torch.logsumexp(probs * smoothmax_lambda, dim=-1) / smoothmax_lambda


def adue_uncertainty(logits: torch.Tensor, smoothmax_lambda: float = 100.0) -> torch.Tensor:
    """U [N] of the head's ``logits [N, C]`` (C >= 2): ``clamp((1 - SmoothMax(softmax)) / (1 - 1/C), eps, 1 - eps)``.

    Computed in at least float32 so that ``1 - SmoothMax`` does not cancel in half precision.
    """
    if logits.ndim != 2 or logits.shape[-1] < 2:
        raise ValueError(f"logits must have shape [N, C] with C >= 2; got {tuple(logits.shape)}.")
    num_classes = logits.shape[-1]
    probs = torch.softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)
    u = (1.0 - smoothmax(probs, smoothmax_lambda)) / (1.0 - 1.0 / num_classes)
    return u.clamp(U_EPS, 1.0 - U_EPS)


def normalized_softmax_response(logits: torch.Tensor) -> torch.Tensor:
    """``u_SR = (1 - max softmax(logits)) / (1 - 1/C)`` [N] of frozen classifier ``logits [N, C]``, in [0, 1]."""
    if logits.ndim != 2 or logits.shape[-1] < 2:
        raise ValueError(f"logits must have shape [N, C] with C >= 2; got {tuple(logits.shape)}.")
    probs = torch.softmax(logits.double(), dim=-1)
    return ((1.0 - probs.max(dim=-1).values) / (1.0 - 1.0 / logits.shape[-1])).to(torch.float32)


class AdUEHead(nn.Module):
    """An uncertainty head over pooled classifier features.

    ``head`` maps the features the classification head receives (pooled to one row per example, see
    ``hf_calib.adue.attach``) to ``C`` logits; ``forward`` returns U [N]. The head's architecture and starting
    weights are those of the classification head (encoders: ``classifier``; decoders: ``score``; causal LMs:
    a ``Linear`` built from the output-embedding rows of the verbaliser tokens).

    Args:
        head: the module to train; called on features [N, ...] and returning logits [N, C].
        kind: ``"encoder"``, ``"decoder"`` or ``"verbaliser"`` — decides how the classifier's input is pooled.
        num_labels: C.
        hidden_size: the feature width, recorded to refuse heads of another model.
        smoothmax_lambda: lambda of SmoothMax.
        verbaliser_token_ids: the label tokens' ids (``kind="verbaliser"`` only), in label order.
    """

    def __init__(
        self,
        head: nn.Module,
        *,
        kind: HeadKind,
        num_labels: int,
        hidden_size: int,
        smoothmax_lambda: float = 100.0,
        verbaliser_token_ids: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"kind must be one of {HEAD_KINDS}; got {kind!r}.")
        if num_labels < 2:
            raise ValueError(f"num_labels must be at least 2; got {num_labels}.")
        if not (math.isfinite(smoothmax_lambda) and smoothmax_lambda > 0):
            raise ValueError(f"smoothmax_lambda must be a finite number > 0; got {smoothmax_lambda}.")
        if (kind == "verbaliser") != (verbaliser_token_ids is not None):
            raise ValueError("verbaliser_token_ids must be given exactly when kind='verbaliser'.")
        self.head = head
        self.kind = kind
        self.num_labels = int(num_labels)
        self.hidden_size = int(hidden_size)
        self.smoothmax_lambda = float(smoothmax_lambda)
        self.verbaliser_token_ids = None if verbaliser_token_ids is None else [int(t) for t in verbaliser_token_ids]

    @classmethod
    def from_classifier(cls, classifier: nn.Module, **kwargs: object) -> AdUEHead:
        """An ``AdUEHead`` whose ``head`` is an exact deep copy of ``classifier``, with trainable parameters."""
        head = copy.deepcopy(classifier)
        head.requires_grad_(True)
        return cls(head, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_output_embeddings(
        cls, output_embeddings: nn.Module, verbaliser_token_ids: Sequence[int], **kwargs: object
    ) -> AdUEHead:
        """A ``Linear(H, C)`` head whose rows are the LM head's rows of ``verbaliser_token_ids`` (bias too, if any).

        The class logits of a causal LM used as a classifier are ``lm_head(h)[ids]``, which this Linear reproduces.
        """
        weight = getattr(output_embeddings, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            raise TypeError(
                f"the output embeddings must be a Linear-like module with a 2-D weight; got "
                f"{type(output_embeddings).__name__}. Put the LM head in modules_to_save instead of adapting it."
            )
        ids = [int(t) for t in verbaliser_token_ids]
        if len(ids) < 2 or len(set(ids)) != len(ids):
            raise ValueError(f"verbaliser_token_ids must hold at least 2 distinct token ids; got {ids}.")
        if min(ids) < 0 or max(ids) >= weight.shape[0]:
            raise ValueError(f"verbaliser_token_ids must lie in [0, {weight.shape[0]}); got {ids}.")
        bias = getattr(output_embeddings, "bias", None)
        linear = nn.Linear(weight.shape[1], len(ids), bias=bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight[ids])
            if bias is not None:
                linear.bias.copy_(bias[ids])
        return cls(linear, num_labels=len(ids), verbaliser_token_ids=ids, **kwargs)  # type: ignore[arg-type]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The head's logits [N, C] for pooled ``features``."""
        return self.head(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """U [N] for pooled ``features`` (see the module docstring)."""
        return adue_uncertainty(self.logits(features), self.smoothmax_lambda)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_labels={self.num_labels}, smoothmax_lambda={self.smoothmax_lambda}"
