"""``torch.compile`` traces the fused loss without a graph break in hf_calib or hf_calib_kernels.

A graph break at a tensor-value read (``.item()``, ``bool(t)``, ``nonzero``, ...) is also a
device-to-host sync per training step on a GPU, so "no graph break in our code" and "no host sync
in the training path" are checked together here (the eager side of it is in ``test_losses.py``).

Graphs are compiled with the ``eager`` / ``aot_eager`` backends: Dynamo finds the graph breaks and
AOTAutograd traces the backward, without inductor's code-generation time. Graph breaks inside
transformers itself may exist; only those with a frame in our packages fail the tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch._dynamo.backends.debugging import ExplainWithBackend
from transformers import LlamaConfig, LlamaForCausalLM

import hf_calib
import hf_calib_kernels
from hf_calib import fused_linear_label_smoothing_ce, label_smoothing_ce
from hf_calib.loss import FusedLossRequest, armed, plan_fused_loss, shift_causal_labels
from hf_calib.loss import functions as loss_functions

IGNORE = -100
VOCAB = 64
OUR_DIRS = tuple(str(Path(m.__file__).resolve().parent) + os.sep for m in (hf_calib, hf_calib_kernels))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _our_graph_breaks(break_reasons) -> list[str]:
    """The graph breaks with a frame of their user stack in hf_calib or hf_calib_kernels."""
    ours = []
    for reason in break_reasons:
        frames = [f"{f.filename}:{f.lineno}" for f in reason.user_stack]
        if any(str(Path(f.filename).resolve()).startswith(OUR_DIRS) for f in reason.user_stack):
            ours.append(f"{reason.reason.splitlines()[0]} at {' <- '.join(reversed(frames))}")
    return ours


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config)


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids [2, 8]``, shifted labels with a masked prompt, and a tensor token count that is
    larger than this micro-batch's (as under gradient accumulation)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 8), generator=gen)
    labels = ids.clone()
    labels[0, : 2 + seed] = IGNORE
    labels[1, -1 - seed :] = IGNORE
    shifted = shift_causal_labels(labels)
    return ids, shifted, (shifted != IGNORE).sum() + 3


def _train_step(model, head, ids, shifted, n_items):
    """What ``CalibratedLossMixin.compute_loss`` does on the fused path: arm the head outside the
    (compiled) model, run the model, backward the loss the head left on the request."""
    model.zero_grad(set_to_none=True)
    request = FusedLossRequest(labels=shifted, label_smoothing=0.1, num_items_in_batch=n_items, row_stats=True)
    with armed(head, request):
        outputs = model(input_ids=ids)
    assert request.calls == 1 and request.loss is not None and outputs.logits.shape[-1] == 0
    request.loss.backward()
    grads = {name.removeprefix("_orig_mod."): p.grad.clone() for name, p in model.named_parameters()}
    return request.loss.detach(), request.stats, grads


def test_llama_training_step_compiles_without_graph_break_in_hf_calib():
    """Trainer's ``torch_compile=True`` compiles the model; the armed output layer runs the fused loss
    inside it. No graph break may come from our code, and a new request (new labels and token count)
    per step must not recompile."""
    model = _tiny_llama()
    plan = plan_fused_loss(model)
    assert plan.head is not None
    explain = ExplainWithBackend("eager")
    compiled = torch.compile(model, backend=explain)

    graphs_after_first = None
    for seed in range(2):
        batch = _batch(seed)
        loss, stats, grads = _train_step(compiled, plan.head, *batch)
        graphs_after_first = len(explain.graphs) if graphs_after_first is None else graphs_after_first
        want_loss, want_stats, want_grads = _train_step(model, plan.head, *batch)
        torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-7)
        for field in ("confidence", "correct", "nll", "entropy", "brier"):
            torch.testing.assert_close(
                getattr(stats, field), getattr(want_stats, field), rtol=1e-5, atol=1e-6, equal_nan=True
            )
        for name, grad in grads.items():
            torch.testing.assert_close(grad, want_grads[name], rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")

    output = explain.output()
    assert _our_graph_breaks(output.break_reasons) == []
    assert len(explain.graphs) == graphs_after_first, "the second step recompiled"


def _loss_inputs():
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 5, 8, generator=gen)
    weight = torch.randn(50, 8, generator=gen) * 0.5
    bias = torch.randn(50, generator=gen) * 0.5
    labels = torch.randint(0, 50, (3, 5), generator=gen)
    labels[0, :3] = IGNORE
    labels[2, -1] = IGNORE
    return hidden, weight, bias, labels, (labels != IGNORE).sum() + 2


@pytest.mark.parametrize("api", ["fused", "logits"])
def test_public_losses_compile_with_fullgraph(api):
    """The public functions trace as one graph, autograd.Function and chunk loop included (the loop
    runs over a count of rows known from the shapes, so Dynamo unrolls it); compiled forward and
    backward equal eager ones. A bad label then fails at run time with the device-side check."""
    hidden, weight, bias, labels, n_items = _loss_inputs()
    kwargs = {"label_smoothing": 0.1, "softcap": 3.0, "chunk_bytes": 4 * 50 * 8}  # 2 chunks of 8 rows
    if api == "fused":
        leaves = (hidden, weight, bias)

        def loss_fn(h, w, b, y, n):
            return fused_linear_label_smoothing_ce(h, w, y, bias=b, num_items_in_batch=n, **kwargs)
    else:
        leaves = (hidden @ weight.T + bias,)

        def loss_fn(z, y, n):
            return label_smoothing_ce(z, y, num_items_in_batch=n, **kwargs)

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (compiled, loss_fn):
        params = [t.clone().requires_grad_(True) for t in leaves]
        loss = fn(*params, labels, n_items)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in params]))
    (loss, grads), (want_loss, want_grads) = results
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-7)
    for grad, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-7)

    bad = labels.clone()
    bad[1, 2] = 50
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 50\)"):
        compiled(*leaves, bad, n_items)


def test_graph_break_filter_sees_a_sync_in_our_code(monkeypatch):
    """The filter of the Llama test is not vacuous: a value read in hf_calib's label check is a graph
    break attributed to hf_calib."""
    hidden, weight, _, labels, _ = _loss_inputs()
    monkeypatch.setattr(loss_functions, "_checks_on_host", lambda t: bool(t.min() > -1000))

    def loss_fn(h, w, y):
        return fused_linear_label_smoothing_ce(h, w, y)

    output = torch._dynamo.explain(loss_fn)(hidden, weight, labels)
    assert any("functions.py" in reason for reason in _our_graph_breaks(output.break_reasons))
