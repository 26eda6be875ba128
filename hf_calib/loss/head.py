"""Model surgery for the fused loss: an output layer that returns the loss instead of the logits.

``CalibratedTrainer`` never calls a model's decoder directly (that would bypass the forward hooks
DDP and FSDP put on the model). It swaps the class of the model's output ``nn.Linear`` for
:class:`FusedLossLinear`, a subclass with the same parameters (so ``state_dict`` keys, PEFT adapter
files and ``save_pretrained`` output do not change). Unarmed it is an ordinary ``nn.Linear``.
Armed with the shifted labels, its forward computes :func:`hf_calib.fused_linear_label_smoothing_ce`
from its input hidden states ``[B, T, H]`` and its own weight, right where FSDP has gathered that
weight, keeps the loss (with its autograd graph) on the request, and returns zero-width logits
``[B, T, 0]`` so the model never builds ``[B, T, V]``.

:func:`plan_fused_loss` decides whether a model can take this path. Besides static checks (a plain
``nn.Linear`` head, no known logit rescaling in the config), it probes the model once with a tiny
input: the model's logits must equal ``softcap(head(hidden))`` and the armed forward must give the
same loss as :func:`hf_calib.label_smoothing_ce` on those logits. That catches models that rescale,
slice or otherwise transform their logits after the head, whatever their architecture.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from hf_calib_kernels.row_stats import RowStats

from .._model_utils import IGNORE_INDEX, base_model, eval_mode, unwrap_parallel
from .functions import fused_linear_label_smoothing_ce, label_smoothing_ce

# Config fields that make a transformers model transform its logits after the output layer
# (transformers 5.23). The probe is authoritative when it can run: MiniCPM3 scales the hidden
# states *before* the head with `logits_scaling`, and a scale of exactly 1 is harmless.
_RESCALING_FIELDS = {
    "logit_scale": "multiplies the logits after the output layer (Cohere, Cohere2)",
    "logits_scaling": "divides the logits after the output layer (Granite family; HyperCLOVA X multiplies)",
    "lm_head_multiplier": "multiplies the logits after the output layer (Falcon-H1)",
    "output_multiplier": "multiplies the logits before the soft cap (MuseGlimmer, MuseSpark)",
    "unpadded_vocab_size": "slices the logits to the unpadded vocabulary (Inkling)",
}
_PROBE_TOKENS = 8


@dataclasses.dataclass
class TokenStats:
    """Per-token statistics over the non-ignored labels of one micro-batch (0-d float32 tensors)."""

    n_valid: torch.Tensor
    entropy_sum: torch.Tensor
    n_correct: torch.Tensor

    @classmethod
    def from_row_stats(cls, stats: RowStats, valid: torch.Tensor) -> TokenStats:
        """Sums over the rows where ``valid`` holds (masked, not selected: no host sync)."""
        zero = torch.zeros((), dtype=torch.float32, device=valid.device)
        entropy = torch.where(valid, stats.entropy.float(), zero)
        return cls(valid.sum().float(), entropy.sum(), (stats.correct & valid).sum().float())


@dataclasses.dataclass
class FusedLossRequest:
    """What an armed :class:`FusedLossLinear` needs, and what it leaves behind.

    ``labels`` are ``[B, T]``, already shifted (``labels[b, t]`` is the target of position ``t``).
    After the forward, ``loss`` holds the fused loss (``None`` if the head had to return full
    logits, with ``skipped`` saying why), ``calls`` how many times the head ran. With ``row_stats=True``
    the head also leaves ``stats``: the per-token statistics of the same softmax as the loss
    (:class:`hf_calib_kernels.row_stats.RowStats`, each ``[B, T]``: confidence, correctness, NLL,
    entropy, Brier; NaN / False at ignored labels), from the loss kernels, at no extra matmul.
    """

    labels: torch.Tensor
    label_smoothing: float = 0.0
    num_items_in_batch: int | float | torch.Tensor | None = None
    softcap: float | None = None
    ignore_index: int = IGNORE_INDEX
    row_stats: bool = False
    loss: torch.Tensor | None = None
    stats: RowStats | None = None
    calls: int = 0
    skipped: str | None = None


class FusedLossLinear(nn.Linear):
    """``nn.Linear`` that, while armed with a :class:`FusedLossRequest`, returns the loss instead of logits.

    Installed by swapping the class of an existing ``nn.Linear`` (see :func:`install_fused_head`), so
    the module object, its parameters and their names stay the same.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        request: FusedLossRequest | None = self.__dict__.get("_hf_calib_request")
        if request is None:
            return super().forward(input)
        request.calls += 1
        if request.calls > 1:
            request.skipped = "the output layer ran more than once in one forward"
            return super().forward(input)
        if input.shape[:-1] != request.labels.shape:
            request.skipped = (
                f"the output layer's input {tuple(input.shape)} does not align with the shifted labels "
                f"{tuple(request.labels.shape)}"
            )
            return super().forward(input)
        weight, bias = self.weight, self.bias
        hidden = input if input.dtype == weight.dtype else input.to(weight.dtype)
        labels = request.labels.to(hidden.device)
        loss = fused_linear_label_smoothing_ce(
            hidden,
            weight,
            labels,
            bias=bias,
            label_smoothing=request.label_smoothing,
            ignore_index=request.ignore_index,
            num_items_in_batch=request.num_items_in_batch,
            softcap=request.softcap,
            return_stats=request.row_stats,
        )
        if request.row_stats:
            loss, request.stats = loss
        request.loss = loss
        # Zero-width "logits" hanging off the loss: DDP with find_unused_parameters=True (Trainer's
        # default) walks the graph from the model's outputs and must reach every parameter.
        return loss.reshape((1,) * input.dim()).expand(*input.shape[:-1], 0).to(input.dtype)


def install_fused_head(head: nn.Linear) -> FusedLossLinear:
    """Turn a plain ``nn.Linear`` into a :class:`FusedLossLinear` in place (idempotent)."""
    if type(head) is nn.Linear:
        head.__class__ = FusedLossLinear
    if not isinstance(head, FusedLossLinear):
        raise ValueError(f"head must be a plain torch.nn.Linear; got {type(head).__name__}.")
    head.__dict__["_hf_calib_request"] = None
    return head


def uninstall_fused_head(head: nn.Module) -> None:
    """Undo :func:`install_fused_head` (only before DDP/FSDP wrapping)."""
    if type(head) is FusedLossLinear:
        head.__class__ = nn.Linear
    head.__dict__.pop("_hf_calib_request", None)


@contextlib.contextmanager
def armed(head: FusedLossLinear, request: FusedLossRequest) -> Iterator[FusedLossRequest]:
    """Arm ``head`` with ``request`` for the duration of one model forward."""
    head.__dict__["_hf_calib_request"] = request
    try:
        yield request
    finally:
        head.__dict__["_hf_calib_request"] = None


def shift_causal_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``[B, T]`` targets of each position, as transformers' ``ForCausalLMLoss`` builds them:
    pad ``labels`` on the right with ``ignore_index`` and drop the first column."""
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:].contiguous()


@dataclasses.dataclass
class FusedLossPlan:
    """Outcome of :func:`plan_fused_loss`: ``head`` is ``None`` when the model cannot take the
    fused path, and then ``reason`` says why."""

    head: FusedLossLinear | None
    softcap: float | None = None
    reason: str | None = None


def _text_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        return None
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else config


def _static_suspicion(text_config) -> str | None:
    vocab = getattr(text_config, "vocab_size", None)
    for field, what in _RESCALING_FIELDS.items():
        value = getattr(text_config, field, None)
        if value is None or isinstance(value, str):
            continue
        if field == "unpadded_vocab_size" and value == vocab:
            continue
        if field != "unpadded_vocab_size" and float(value) == 1.0:
            continue
        return f"config.{field}={value} {what}"
    return None


def _describe_head(head: nn.Module | None) -> str:
    if head is None:
        return "the model has no output embeddings (get_output_embeddings() is None)"
    kind = f"{type(head).__module__}.{type(head).__qualname__}"
    if hasattr(head, "lora_A"):
        return (
            f"the output layer is a LoRA layer ({kind}): the fused loss would bypass the adapter; "
            "drop 'lm_head' from LoRA target_modules to use the fused path"
        )
    if hasattr(head, "modules_to_save"):
        return f"the output layer is wrapped by PEFT modules_to_save ({kind}), not a plain torch.nn.Linear"
    return f"the output layer is {kind}, not a plain torch.nn.Linear"


def _probe_inputs(model: nn.Module, head: nn.Linear) -> dict | None:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    n_embed = getattr(embeddings, "num_embeddings", None) or head.out_features
    device = head.weight.device
    if device.type == "meta" or any(p.device.type == "meta" for p in model.parameters()):
        return None
    input_ids = (torch.arange(_PROBE_TOKENS, device=device) % min(n_embed, head.out_features)).unsqueeze(0)
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        input_ids = input_ids.to(embeddings.weight.device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _tolerances(dtype: torch.dtype) -> tuple[float, float, float]:
    """``(rtol, atol)`` for comparing logits and a relative tolerance for the probe's loss."""
    return (1e-4, 1e-5, 1e-3) if dtype in (torch.float32, torch.float64) else (2e-2, 2e-3, 2e-2)


def _logits_of(outputs) -> torch.Tensor:
    return outputs["logits"] if isinstance(outputs, dict) else outputs[0]


def _probe(model: nn.Module, head: FusedLossLinear, softcap: float | None) -> tuple[bool, str | None]:
    """``(probed, reason)``: whether a probe ran, and why the fused path is wrong for this model."""
    inputs = _probe_inputs(model, head)
    if inputs is None:
        return False, None
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    with eval_mode(model), torch.no_grad():
        try:
            try:
                reference = _logits_of(model(**inputs, use_cache=False))
            except TypeError:
                reference = _logits_of(model(**inputs))
        except Exception:  # noqa: BLE001 - e.g. ZeRO-3 partitioned weights: cannot run, cannot judge
            return False, None
        finally:
            hook.remove()
        if len(captured) != 1:
            return True, f"the output layer ran {len(captured)} times in one forward (expected once)"
        raw = captured[0].float()
        expected = raw if softcap is None else softcap * torch.tanh(raw / softcap)
        if expected.shape != reference.shape:
            return True, (
                f"the model's logits {tuple(reference.shape)} are not the output layer's output "
                f"{tuple(expected.shape)}: it transforms them after the head"
            )
        rtol, atol, loss_rtol = _tolerances(reference.dtype)
        scale = float(expected.abs().max())
        if float((expected - reference.float()).abs().max()) > rtol * scale + atol * max(scale, 1.0):
            return True, "the model's logits differ from its output layer's output: it transforms them after the head"
        labels = shift_causal_labels(inputs["input_ids"].to(head.weight.device))
        request = FusedLossRequest(labels=labels, label_smoothing=0.1, softcap=softcap)
        try:
            with armed(head, request):
                logits = _logits_of(model(**inputs))
        except Exception as exc:  # noqa: BLE001 - any failure means this model cannot take the path
            return True, f"the model's forward fails without full logits ({type(exc).__name__}: {exc})"
    if request.loss is None or request.calls != 1 or logits.shape[-1] != 0:
        return True, request.skipped or "the model did not use the fused output layer as expected"
    want = label_smoothing_ce(reference.float(), labels.to(reference.device), label_smoothing=0.1)
    if abs(float(request.loss) - float(want)) > loss_rtol * max(abs(float(want)), 1.0):
        return True, "the fused loss disagrees with the loss on the model's own logits"
    return True, None


def plan_fused_loss(model: nn.Module, *, probe: bool = True) -> FusedLossPlan:
    """Install :class:`FusedLossLinear` on ``model``'s output layer if the fused loss is exact for it.

    ``model`` may be a transformers ``*ForCausalLM`` (or vision-language ``*ForConditionalGeneration``
    with a causal LM loss), plain or PEFT-wrapped. The soft cap is read from the text config's
    ``final_logit_softcapping`` (Gemma 2/3). Returns the plan; on failure nothing stays installed.
    """
    base = base_model(unwrap_parallel(model))  # DDP / DataParallel style wrappers, then PEFT
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or type(head) not in (nn.Linear, FusedLossLinear):
        return FusedLossPlan(None, reason=_describe_head(head))
    if not head.weight.dtype.is_floating_point:
        return FusedLossPlan(None, reason=f"the output layer's weight is {head.weight.dtype}, not floating point")
    text_config = _text_config(base)
    softcap = getattr(text_config, "final_logit_softcapping", None) if text_config is not None else None
    softcap = float(softcap) if softcap else None
    suspicion = _static_suspicion(text_config) if text_config is not None else None
    was_installed = type(head) is FusedLossLinear
    install_fused_head(head)
    probed, reason = _probe(base, head, softcap) if probe else (False, None)
    if not probed and suspicion is not None:
        reason = suspicion
    elif reason is not None and suspicion is not None:
        reason = f"{reason} ({suspicion})"
    if reason is not None:
        if not was_installed:
            uninstall_fused_head(head)
        return FusedLossPlan(None, reason=reason)
    return FusedLossPlan(head, softcap=softcap)


def is_causal_lm(model: nn.Module) -> bool:
    """Whether transformers would train ``model`` with the shifted causal-LM loss."""
    from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    base = base_model(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if type(base).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return True
    try:
        loss_type = getattr(base, "loss_type", None)
    except Exception:  # noqa: BLE001 - some models compute loss_type lazily from the config
        loss_type = None
    return LOSS_MAPPING.get(loss_type) is ForCausalLMLoss
