"""The public losses on the chunked torch backend against ``F.cross_entropy`` on explicit logits.

References are float64 autograd through ``hidden @ weight.T + bias`` (see ``conftest.reference_ce``);
the fused loss runs its float32 math, so float32 inputs are compared at float32 tolerances and
bfloat16 inputs at the rounding of their bfloat16 outputs.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch
from transformers.trainer_pt_utils import LabelSmoother

from hf_calib import fused_linear_label_smoothing_ce, label_smoothing_ce
from hf_calib.loss import FusedLossRequest, TokenStats, TrainTokenCalibration, armed
from hf_calib.loss.head import install_fused_head
from hf_calib_kernels import chunk_rows_for

IGNORE = -100
F32 = {"rtol": 1e-4, "atol": 1e-6}
LOSS_KEYS = ("label_smoothing", "ignore_index", "reduction", "num_items_in_batch", "softcap")


def _labels(n: int, vocab: int, ignore_frac: float, gen: torch.Generator) -> torch.Tensor:
    """``[n]`` labels with exactly ``round(ignore_frac * n)`` ignored rows at random positions."""
    labels = torch.randint(0, vocab, (n,), generator=gen)
    n_ignored = round(ignore_frac * n)
    labels[torch.randperm(n, generator=gen)[:n_ignored]] = IGNORE
    return labels


def _inputs(n, width, vocab, ignore_frac=0.0, *, bias=True, seed=0, dtype=torch.float32, logit_scale=2.0):
    """Random ``hidden [n, H]``, ``weight [V, H]``, ``bias [V]`` (logits of size ~logit_scale), labels."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, width, generator=gen)
    weight = torch.randn(vocab, width, generator=gen) * (logit_scale / width**0.5)
    b = torch.randn(vocab, generator=gen) * 0.5 if bias else None
    cast = (lambda t: t.to(dtype)) if dtype != torch.float32 else (lambda t: t)
    return cast(hidden), cast(weight), None if b is None else cast(b), _labels(n, vocab, ignore_frac, gen)


def _run(fn, tensors, labels, grad_output=None, **kwargs):
    """``fn(*leaves, labels, **kwargs)`` and the gradients of every floating leaf after backward."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in tensors]
    if len(leaves) == 3:  # fused: hidden, weight, bias
        out = fn(leaves[0], leaves[1], labels, bias=leaves[2], **kwargs)
    else:
        out = fn(leaves[0], labels, **kwargs)
    out.backward(torch.ones_like(out) if grad_output is None else grad_output.to(out.dtype))
    return out.detach(), [None if t is None else t.grad for t in leaves]


def _reference(reference_ce, tensors, labels, grad_output=None, **kwargs):
    """Float64 reference: loss and gradients of the same leaves through explicit logits."""
    loss_kwargs = {k: v for k, v in kwargs.items() if k in LOSS_KEYS}
    leaves = [None if t is None else t.detach().double().requires_grad_(True) for t in tensors]
    if len(leaves) == 3:
        logits = leaves[0] @ leaves[1].T
        if leaves[2] is not None:
            logits = logits + leaves[2]
    else:
        logits = leaves[0]
    out = reference_ce(logits, labels, **loss_kwargs)
    out.backward(torch.ones_like(out) if grad_output is None else grad_output.double())
    return out.detach(), [None if t is None else t.grad for t in leaves]


def _assert_grads_close(got, want, **tol):
    for name, g, r in zip(("hidden/logits", "weight", "bias"), got, want, strict=False):
        assert (g is None) == (r is None), name
        if g is not None:
            torch.testing.assert_close(g.double(), r, **tol, msg=lambda m, name=name: f"grad {name}: {m}")


# --------------------------------------------------------------------------------------------
# The matrix: vocab x ignored fraction x smoothing x soft cap x reduction (+ num_items_in_batch)
# --------------------------------------------------------------------------------------------

REDUCTIONS = ("mean", "mean_num_items", "sum", "none")
MATRIX = list(itertools.product((1, 1000, 4099), (0.0, 0.3, 1.0), (0.0, 0.1, 0.5), (None, 2.0), REDUCTIONS))
LOGITS_MATRIX = list(itertools.product((1, 1000, 4099), (0.0, 0.3, 1.0), (0.0, 0.1), (None, 2.0), ("mean", "none")))


def _matrix_kwargs(labels, reduction, eps, softcap, seed):
    kwargs = {"label_smoothing": eps, "softcap": softcap, "reduction": reduction}
    grad_output = None
    if reduction == "mean_num_items":
        n_valid = int((labels != IGNORE).sum())
        # Alternate int / tensor counts; a count larger than this batch's, as under accumulation.
        n_items = n_valid + 5
        kwargs.update(reduction="mean", num_items_in_batch=torch.tensor(n_items) if seed % 2 else n_items)
    elif reduction == "none":
        grad_output = torch.randn(labels.shape, generator=torch.Generator().manual_seed(seed))
    return kwargs, grad_output


@pytest.mark.parametrize("vocab,ignore_frac,eps,softcap,reduction", MATRIX)
def test_fused_matches_reference(reference_ce, vocab, ignore_frac, eps, softcap, reduction):
    seed = MATRIX.index((vocab, ignore_frac, eps, softcap, reduction))
    hidden, weight, bias, labels = _inputs(16, 8, vocab, ignore_frac, seed=seed)
    kwargs, grad_output = _matrix_kwargs(labels, reduction, eps, softcap, seed)
    # 5 rows per chunk: several chunks and a partial last one whenever >5 rows are valid.
    kwargs["chunk_bytes"] = 4 * vocab * 5
    loss, grads = _run(fused_linear_label_smoothing_ce, (hidden, weight, bias), labels, grad_output, **kwargs)
    ref, ref_grads = _reference(reference_ce, (hidden, weight, bias), labels, grad_output, **kwargs)
    assert loss.dtype == torch.float32 and loss.shape == ref.shape
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss.double(), ref, **F32)
    _assert_grads_close(grads, ref_grads, **F32)


@pytest.mark.parametrize("vocab,ignore_frac,eps,softcap,reduction", LOGITS_MATRIX)
def test_logits_loss_matches_reference(reference_ce, vocab, ignore_frac, eps, softcap, reduction):
    seed = LOGITS_MATRIX.index((vocab, ignore_frac, eps, softcap, reduction))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(16, vocab, generator=gen) * 3.0
    labels = _labels(16, vocab, ignore_frac, gen)
    kwargs, grad_output = _matrix_kwargs(labels, reduction, eps, softcap, seed)
    kwargs["chunk_bytes"] = 4 * vocab * 5
    loss, grads = _run(label_smoothing_ce, (logits,), labels, grad_output, **kwargs)
    ref, ref_grads = _reference(reference_ce, (logits,), labels, grad_output, **kwargs)
    torch.testing.assert_close(loss.double(), ref, **F32)
    _assert_grads_close(grads, ref_grads, **F32)


@pytest.mark.parametrize("vocab", [50257, 32001])
@pytest.mark.parametrize("reduction,softcap", [("mean", None), ("none", 30.0)])
def test_fused_large_odd_vocab_many_chunks(reference_ce, vocab, reduction, softcap):
    hidden, weight, bias, labels = _inputs(300, 16, vocab, 0.3, seed=vocab, logit_scale=4.0)
    chunk_bytes = 4 * vocab * 64
    n_valid = int((labels != IGNORE).sum())
    rows = chunk_rows_for(n_valid, vocab, chunk_bytes)
    assert rows == 64 and n_valid % rows != 0 and n_valid // rows >= 3  # several chunks + a partial one
    grad_output = torch.randn(300) if reduction == "none" else None
    kwargs = {"label_smoothing": 0.5, "softcap": softcap, "reduction": reduction, "chunk_bytes": chunk_bytes}
    loss, grads = _run(fused_linear_label_smoothing_ce, (hidden, weight, bias), labels, grad_output, **kwargs)
    ref, ref_grads = _reference(reference_ce, (hidden, weight, bias), labels, grad_output, **kwargs)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss.double(), ref, **F32)
    _assert_grads_close(grads, ref_grads, **F32)


# --------------------------------------------------------------------------------------------
# Pitfalls the kernels guard against (docs/loss.md, "Pitfalls the kernels guard against")
# --------------------------------------------------------------------------------------------


def test_prompt_masking_interleaved_ignored_rows(reference_ce):
    """Each sequence masks its prompt (varying length) and its right padding with -100."""
    batch, seq, width, vocab = 4, 24, 8, 301
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(batch, seq, width, generator=gen)
    weight = torch.randn(vocab, width, generator=gen) * 0.7
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    for b, (prompt, pad) in enumerate([(3, 0), (10, 5), (0, 9), (17, 2)]):
        labels[b, :prompt] = IGNORE
        labels[b, seq - pad :] = IGNORE
    grad_output = torch.randn(batch, seq, generator=gen)
    for reduction, g in (("mean", None), ("none", grad_output)):
        kwargs = {"label_smoothing": 0.1, "reduction": reduction, "chunk_bytes": 4 * vocab * 7}
        loss, grads = _run(fused_linear_label_smoothing_ce, (hidden, weight, None), labels, g, **kwargs)
        ref, ref_grads = _reference(reference_ce, (hidden, weight, None), labels, g, **kwargs)
        torch.testing.assert_close(loss.double(), ref, **F32)
        _assert_grads_close(grads, ref_grads, **F32)
        ignored = labels == IGNORE
        assert bool((grads[0][ignored] == 0).all())
        if reduction == "none":
            assert bool((loss[ignored] == 0).all()) and bool((loss[~ignored] > 0).all())


@pytest.mark.parametrize("api", ["fused", "logits"])
def test_non_finite_inputs_on_ignored_rows_do_not_leak(reference_ce, api):
    """Ignored rows are masked, not dropped: a NaN / inf hidden state or logit row there must still
    give exact zeros for that row and leave every other loss and gradient untouched."""
    hidden, weight, bias, labels = _inputs(12, 6, 40, seed=24)
    labels[[2, 5, 9]] = IGNORE
    tensors = (hidden, weight, bias) if api == "fused" else (hidden @ weight.T + bias,)
    fn = fused_linear_label_smoothing_ce if api == "fused" else label_smoothing_ce
    poisoned = [t.clone() for t in tensors]
    poisoned[0][2] = float("nan")
    poisoned[0][5] = float("inf")
    for reduction in ("mean", "none"):
        grad_output = torch.randn(12) if reduction == "none" else None
        kwargs = {"label_smoothing": 0.1, "reduction": reduction, "chunk_bytes": 4 * 40 * 4}
        loss, grads = _run(fn, poisoned, labels, grad_output, **kwargs)
        ref, ref_grads = _reference(reference_ce, tensors, labels, grad_output, **kwargs)
        torch.testing.assert_close(loss.double(), ref, **F32)
        _assert_grads_close(grads, ref_grads, **F32)


def test_softcap_applied_exactly_once(reference_ce):
    """Raw logits well beyond the cap: once-capped and twice-capped losses differ a lot."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(12, 97, generator=gen) * 20.0
    labels = torch.randint(0, 97, (12,), generator=gen)
    cap = 5.0
    loss, (grad,) = _run(label_smoothing_ce, (logits,), labels, softcap=cap, label_smoothing=0.1)
    ref, (ref_grad,) = _reference(reference_ce, (logits,), labels, softcap=cap, label_smoothing=0.1)
    twice = reference_ce(cap * torch.tanh(logits.double() / cap), labels, softcap=cap, label_smoothing=0.1)
    torch.testing.assert_close(loss.double(), ref, **F32)
    torch.testing.assert_close(grad.double(), ref_grad, **F32)
    assert abs(float(ref) - float(twice)) > 0.1


def test_bf16_fused_matches_fp32_reference_of_rounded_inputs(reference_ce):
    """bf16 matmuls, float32 loss; compared with float64 math on the same bf16-rounded inputs.

    The driver rounds each logit to bf16 (its matmul output dtype) before the float32 row math,
    so the loss is accurate to about bf16 logit rounding and the gradients to bf16 output rounding.
    """
    hidden, weight, bias, labels = _inputs(64, 32, 1000, 0.3, seed=3, dtype=torch.bfloat16)
    grad_output = None
    kwargs = {"label_smoothing": 0.1, "softcap": 4.0, "chunk_bytes": 4 * 1000 * 9}
    loss, grads = _run(fused_linear_label_smoothing_ce, (hidden, weight, bias), labels, grad_output, **kwargs)
    ref, ref_grads = _reference(reference_ce, (hidden, weight, bias), labels, grad_output, **kwargs)
    assert loss.dtype == torch.float32
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3
    torch.testing.assert_close(loss.double(), ref, rtol=2e-3, atol=2e-3)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), r, rtol=2e-2, atol=1e-2 * float(r.abs().max()))


def test_bf16_target_gradient_when_target_is_nearly_certain(reference_ce):
    """p_y ~ 1 - 1e-3: ``p_y - 1`` in bf16 would round to 0 or to a multiple of 2**-9."""
    vocab, width, n = 64, 8, 6
    gen = torch.Generator().manual_seed(4)
    labels = torch.full((n,), 3)
    # Exact bf16 inputs and exact logits (hidden = 0, so logits = bias): only output rounding remains.
    bias = torch.zeros(vocab, dtype=torch.bfloat16)
    bias[3] = 11.0
    hidden = torch.zeros(n, width, dtype=torch.bfloat16)
    weight = torch.randn(vocab, width, generator=gen).to(torch.bfloat16)
    p_target = torch.softmax(bias.double(), 0)[3]
    assert 0.998 < float(p_target) < 0.9995
    _, grads = _run(fused_linear_label_smoothing_ce, (hidden, weight, bias), labels)
    _, ref_grads = _reference(reference_ce, (hidden, weight, bias), labels)
    assert float(ref_grads[2][3]) == pytest.approx(float(p_target) - 1.0, rel=1e-9)
    torch.testing.assert_close(grads[2].double(), ref_grads[2], rtol=1e-2, atol=1e-7)
    torch.testing.assert_close(grads[0].double(), ref_grads[0], rtol=1e-2, atol=1e-5)

    logits = bias.expand(n, vocab).clone()
    _, (grad_logits,) = _run(label_smoothing_ce, (logits,), labels)
    _, (ref_grad_logits,) = _reference(reference_ce, (logits,), labels)
    assert grad_logits.dtype == torch.bfloat16
    torch.testing.assert_close(grad_logits.double(), ref_grad_logits, rtol=1e-2, atol=1e-7)


def test_bf16_grad_weight_accumulated_over_many_chunks(reference_ce):
    """384 one-row chunks adding same-sign terms into grad_weight: a bf16 running sum stalls
    (about 30% off here), a float32 one does not."""
    vocab, width, n = 16, 8, 384
    gen = torch.Generator().manual_seed(5)
    hidden = (1.0 + 0.01 * torch.randn(n, width, generator=gen)).to(torch.bfloat16)
    weight = (0.1 * torch.randn(vocab, width, generator=gen)).to(torch.bfloat16)
    labels = torch.zeros(n, dtype=torch.long)
    kwargs = {"reduction": "sum", "chunk_bytes": 4 * vocab}
    assert chunk_rows_for(n, vocab, kwargs["chunk_bytes"]) == 1
    _, grads = _run(fused_linear_label_smoothing_ce, (hidden, weight, None), labels, **kwargs)
    _, ref_grads = _reference(reference_ce, (hidden, weight, None), labels, **kwargs)
    torch.testing.assert_close(grads[1].double(), ref_grads[1], rtol=1e-2, atol=1e-2 * float(ref_grads[1].abs().max()))


# --------------------------------------------------------------------------------------------
# Denominators, empty and all-ignored batches
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_tensor", [False, True])
def test_num_items_in_batch_divides_the_sum(as_tensor):
    hidden, weight, bias, labels = _inputs(20, 8, 50, 0.3, seed=6)
    n_items = 37
    num_items = torch.tensor(n_items) if as_tensor else n_items
    loss, grads = _run(fused_linear_label_smoothing_ce, (hidden, weight, bias), labels, num_items_in_batch=num_items)
    total, total_grads = _run(fused_linear_label_smoothing_ce, (hidden, weight, bias), labels, reduction="sum")
    torch.testing.assert_close(loss, total / n_items, rtol=1e-6, atol=0)
    for g, t in zip(grads, total_grads, strict=True):
        torch.testing.assert_close(g, t / n_items, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("api", ["fused", "logits"])
@pytest.mark.parametrize(
    "reduction,num_items",
    [("mean", None), ("mean", 7), ("mean", 0), ("mean", torch.tensor(0)), ("sum", None), ("none", None)],
)
def test_all_ignored_batch_gives_exact_zeros(api, reduction, num_items):
    hidden, weight, bias, _ = _inputs(6, 4, 11, seed=7)
    labels = torch.full((2, 3), IGNORE)
    hidden = hidden.reshape(2, 3, 4)
    kwargs = {"reduction": reduction, "num_items_in_batch": num_items, "label_smoothing": 0.1, "softcap": 3.0}
    if api == "fused":
        loss, grads = _run(fused_linear_label_smoothing_ce, (hidden, weight, bias), labels, **kwargs)
    else:
        loss, grads = _run(label_smoothing_ce, (hidden @ weight.T,), labels, **kwargs)
    assert loss.shape == (() if reduction != "none" else (2, 3))
    assert bool((loss == 0).all())
    for g in grads:
        assert g is not None and bool((g == 0).all())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_inputs(reduction):
    hidden = torch.zeros(0, 5, requires_grad=True)
    weight = torch.randn(9, 5, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    loss = fused_linear_label_smoothing_ce(hidden, weight, labels, reduction=reduction, label_smoothing=0.1)
    assert loss.shape == ((0,) if reduction == "none" else ())
    loss.sum().backward()
    assert hidden.grad.shape == (0, 5) and bool((weight.grad == 0).all())
    logits = torch.zeros(2, 0, 9, requires_grad=True)
    out = label_smoothing_ce(logits, torch.zeros(2, 0, dtype=torch.long), reduction=reduction)
    assert out.shape == ((2, 0) if reduction == "none" else ())
    assert bool((out == 0).all())


# --------------------------------------------------------------------------------------------
# Autograd: partial requires_grad, no_grad, repeated backward, upstream gradients, 3-D inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("trainable", ["hidden", "weight", "bias", "hidden+bias"])
def test_only_some_inputs_require_grad(reference_ce, reduction, trainable):
    hidden, weight, bias, labels = _inputs(10, 6, 40, 0.3, seed=8)
    grad_output = torch.randn(10) if reduction == "none" else None
    leaves = {"hidden": hidden.clone(), "weight": weight.clone(), "bias": bias.clone()}
    for name in trainable.split("+"):
        leaves[name].requires_grad_(True)
    out = fused_linear_label_smoothing_ce(
        leaves["hidden"], leaves["weight"], labels, bias=leaves["bias"], reduction=reduction, label_smoothing=0.1
    )
    out.backward(torch.ones_like(out) if grad_output is None else grad_output)
    _, ref_grads = _reference(
        reference_ce, (hidden, weight, bias), labels, grad_output, reduction=reduction, label_smoothing=0.1
    )
    for (name, leaf), ref_grad in zip(leaves.items(), ref_grads, strict=True):
        if name in trainable.split("+"):
            torch.testing.assert_close(leaf.grad.double(), ref_grad, **F32)
        else:
            assert leaf.grad is None


def test_no_bias_and_no_grad(reference_ce):
    hidden, weight, _, labels = _inputs(10, 6, 40, 0.3, seed=9)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    with torch.no_grad():
        for reduction in ("mean", "sum", "none"):
            out = fused_linear_label_smoothing_ce(hidden, weight, labels, reduction=reduction, label_smoothing=0.2)
            assert not out.requires_grad
            ref = reference_ce(hidden.double() @ weight.double().T, labels, reduction=reduction, label_smoothing=0.2)
            torch.testing.assert_close(out.double(), ref, **F32)


@pytest.mark.parametrize("api", ["fused", "logits"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_repeated_backward_with_retain_graph_accumulates_consistently(reference_ce, api, reduction):
    """Backward 1x, 2x, 1x the upstream gradient gives 4x the gradient.

    3-D inputs reach the loss through a reshape, whose backward hands autograd a view of the
    returned gradient; autograd adopts it as `.grad` and later accumulates into it in place, so a
    loss that returned its stored gradient would see it corrupted on the next backward.
    """
    hidden, weight, bias, labels = _inputs(12, 6, 30, 0.25, seed=10)
    hidden, labels = hidden.reshape(3, 4, 6), labels.reshape(3, 4)
    tensors = (hidden, weight, bias) if api == "fused" else (hidden @ weight.T + bias,)
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    if api == "fused":
        out = fused_linear_label_smoothing_ce(leaves[0], leaves[1], labels, bias=leaves[2], reduction=reduction)
    else:
        out = label_smoothing_ce(leaves[0], labels, reduction=reduction)
    grad_output = torch.randn(out.shape) if reduction == "none" else torch.ones(())
    out.backward(grad_output, retain_graph=True)
    out.backward(grad_output * 2.0, retain_graph=True)
    out.backward(grad_output)
    _, ref_grads = _reference(reference_ce, tensors, labels, grad_output, reduction=reduction)
    _assert_grads_close([t.grad for t in leaves], [4.0 * g for g in ref_grads], **F32)


@pytest.mark.parametrize("api", ["fused", "logits"])
def test_upstream_gradient_scales_the_gradients(reference_ce, api):
    hidden, weight, bias, labels = _inputs(12, 6, 30, 0.25, seed=11)
    tensors = (hidden, weight, bias) if api == "fused" else (hidden @ weight.T,)
    fn = fused_linear_label_smoothing_ce if api == "fused" else label_smoothing_ce
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    out = (
        fn(leaves[0], leaves[1], labels, bias=leaves[2], label_smoothing=0.1)
        if api == "fused"
        else fn(leaves[0], labels, label_smoothing=0.1)
    )
    (out * 3.0).backward()
    _, ref_grads = _reference(reference_ce, tensors, labels, label_smoothing=0.1)
    _assert_grads_close([t.grad for t in leaves], [3.0 * g for g in ref_grads], **F32)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_three_dimensional_hidden(reference_ce, reduction):
    hidden, weight, bias, labels = _inputs(3 * 7, 5, 23, 0.3, seed=12)
    hidden, labels = hidden.reshape(3, 7, 5), labels.reshape(3, 7)
    grad_output = torch.randn(3, 7) if reduction == "none" else None
    loss, grads = _run(
        fused_linear_label_smoothing_ce, (hidden, weight, bias), labels, grad_output, reduction=reduction
    )
    ref, ref_grads = _reference(reference_ce, (hidden, weight, bias), labels, grad_output, reduction=reduction)
    assert loss.shape == ref.shape == ((3, 7) if reduction == "none" else ())
    assert grads[0].shape == (3, 7, 5)
    torch.testing.assert_close(loss.double(), ref, **F32)
    _assert_grads_close(grads, ref_grads, **F32)


def test_gradient_accumulation_over_micro_batches_equals_full_batch():
    """Trainer-style accumulation: every micro-batch divides by the total number of valid tokens."""
    hidden, weight, bias, labels = _inputs(8 * 12, 6, 45, 0.3, seed=13)
    hidden, labels = hidden.reshape(8, 12, 6), labels.reshape(8, 12)
    n_items = int((labels != IGNORE).sum())
    kwargs = {"label_smoothing": 0.1, "softcap": 3.0}
    full_loss, full_grads = _run(fused_linear_label_smoothing_ce, (hidden, weight, bias), labels, **kwargs)

    w = weight.clone().requires_grad_(True)
    b = bias.clone().requires_grad_(True)
    micro_losses, micro_grad_hidden = [], []
    for i, part in enumerate(torch.arange(8).chunk(4)):
        h = hidden[part].clone().requires_grad_(True)
        num_items = torch.tensor(n_items) if i % 2 else n_items
        loss = fused_linear_label_smoothing_ce(h, w, labels[part], bias=b, num_items_in_batch=num_items, **kwargs)
        loss.backward()
        micro_losses.append(loss.detach())
        micro_grad_hidden.append(h.grad)
    torch.testing.assert_close(torch.stack(micro_losses).sum(), full_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.cat(micro_grad_hidden), full_grads[0], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(w.grad, full_grads[1], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(b.grad, full_grads[2], rtol=1e-5, atol=1e-8)


def test_gradcheck_against_finite_differences():
    """The row math is float32 whatever the input dtype, so float64 ``gradcheck`` runs with
    finite-difference steps and tolerances sized for float32 forward values."""
    gen = torch.Generator().manual_seed(14)
    hidden = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, IGNORE, 6, 3, 3])
    tol = {"eps": 1e-3, "atol": 1e-3, "rtol": 1e-3}
    for reduction in ("mean", "none"):
        kwargs = {"label_smoothing": 0.1, "softcap": 2.0, "reduction": reduction}

        def fused(h, w, b, kwargs=kwargs):
            return fused_linear_label_smoothing_ce(h, w, labels, bias=b, **kwargs)

        def from_logits(z, kwargs=kwargs):
            return label_smoothing_ce(z, labels, **kwargs)

        assert torch.autograd.gradcheck(fused, (hidden, weight, bias), **tol)
        logits = (hidden @ weight.T).detach().requires_grad_(True)
        assert torch.autograd.gradcheck(from_logits, (logits,), **tol)


# --------------------------------------------------------------------------------------------
# transformers' LabelSmoother
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_items", [None, 29])
def test_logits_loss_equals_transformers_label_smoother(num_items):
    gen = torch.Generator().manual_seed(15)
    logits = torch.randn(3, 10, 257, generator=gen) * 2.0
    labels = torch.randint(0, 257, (3, 10), generator=gen)
    labels[0, :4] = IGNORE
    labels[2, 7:] = IGNORE
    ours_logits = logits.clone().requires_grad_(True)
    ours = label_smoothing_ce(ours_logits[:, :-1], labels[:, 1:], label_smoothing=0.1, num_items_in_batch=num_items)
    ours.backward()
    theirs_logits = logits.clone().requires_grad_(True)
    theirs = LabelSmoother(epsilon=0.1)(
        {"logits": theirs_logits}, labels, shift_labels=True, num_items_in_batch=num_items
    )
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_logits.grad, theirs_logits.grad, rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------------


def _bad_fused_calls():
    h, w, b, y = _inputs(4, 3, 5, seed=16)
    meta = torch.empty(5, 3, device="meta")
    return [
        ("label_smoothing", lambda: fused_linear_label_smoothing_ce(h, w, y, label_smoothing=-0.1)),
        ("label_smoothing", lambda: fused_linear_label_smoothing_ce(h, w, y, label_smoothing=1.0)),
        ("labels", lambda: fused_linear_label_smoothing_ce(h, w, torch.tensor([0, 1, 5, 2]))),
        ("labels", lambda: fused_linear_label_smoothing_ce(h, w, torch.tensor([0, -1, 4, 2]))),
        ("labels", lambda: fused_linear_label_smoothing_ce(h, w, y[:3])),
        ("labels", lambda: fused_linear_label_smoothing_ce(h, w, y.float())),
        ("weight.shape", lambda: fused_linear_label_smoothing_ce(h, w[:, :2], y)),
        ("weight", lambda: fused_linear_label_smoothing_ce(h, w[0], y)),
        ("bias", lambda: fused_linear_label_smoothing_ce(h, w, y, bias=b[:4])),
        ("weight dtype", lambda: fused_linear_label_smoothing_ce(h, w.double(), y)),
        ("bias dtype", lambda: fused_linear_label_smoothing_ce(h, w, y, bias=b.double())),
        ("weight is on meta", lambda: fused_linear_label_smoothing_ce(h, meta, y)),
        ("hidden", lambda: fused_linear_label_smoothing_ce(h.long(), w, y)),
        ("reduction", lambda: fused_linear_label_smoothing_ce(h, w, y, reduction="avg")),
        ("backend", lambda: fused_linear_label_smoothing_ce(h, w, y, backend="cuda")),
        ("softcap", lambda: fused_linear_label_smoothing_ce(h, w, y, softcap=0.0)),
        ("softcap", lambda: fused_linear_label_smoothing_ce(h, w, y, softcap=-1.0)),
        ("num_items_in_batch", lambda: fused_linear_label_smoothing_ce(h, w, y, num_items_in_batch=0)),
        ("num_items_in_batch", lambda: fused_linear_label_smoothing_ce(h, w, y, num_items_in_batch=torch.tensor(0))),
    ]


def _bad_logits_calls():
    z, y = torch.randn(4, 5), torch.tensor([0, 1, 2, IGNORE])
    return [
        ("logits", lambda: label_smoothing_ce(z.long(), y)),
        ("labels", lambda: label_smoothing_ce(z, y[:3])),
        ("labels", lambda: label_smoothing_ce(z, torch.tensor([0, 1, 9, 2]))),
        ("label_smoothing", lambda: label_smoothing_ce(z, y, label_smoothing=1.0)),
        ("reduction", lambda: label_smoothing_ce(z, y, reduction=None)),
        ("softcap", lambda: label_smoothing_ce(z, y, softcap=0)),
        ("backend", lambda: label_smoothing_ce(z, y, backend="numpy")),
        ("num_items_in_batch", lambda: label_smoothing_ce(z, y, num_items_in_batch=0)),
    ]


@pytest.mark.parametrize("case", range(len(_bad_fused_calls())))
def test_bad_fused_arguments_raise_value_error_naming_them(case):
    name, call = _bad_fused_calls()[case]
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize("case", range(len(_bad_logits_calls())))
def test_bad_logits_arguments_raise_value_error_naming_them(case):
    name, call = _bad_logits_calls()[case]
    with pytest.raises(ValueError, match=name):
        call()


# --------------------------------------------------------------------------------------------
# No host syncs in the training path; where label values are checked (docs/loss.md, "Label checks")
# --------------------------------------------------------------------------------------------

_HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy")


class HostRead(AssertionError):
    """A tensor value was read by the host (a device-to-host sync on a GPU)."""


@contextlib.contextmanager
def _no_host_reads(monkeypatch):
    """Make every Python-level read of tensor values raise :class:`HostRead`: ``.item()``,
    ``.tolist()``, ``bool/int/float(t)``, ``nonzero`` and boolean-mask indexing (data-dependent shapes)."""

    def forbid(name):
        def raiser(*args, **kwargs):
            raise HostRead(f"Tensor.{name} in the training path")

        return raiser

    getitem = torch.Tensor.__getitem__

    def checked_getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            raise HostRead("boolean-mask indexing in the training path")
        return getitem(self, index)

    with monkeypatch.context() as patch:
        for name in _HOST_READS:
            patch.setattr(torch.Tensor, name, forbid(name))
        patch.setattr(torch, "nonzero", forbid("nonzero"))
        patch.setattr(torch.Tensor, "__getitem__", checked_getitem)
        yield


def _training_step(hidden, weight, labels, num_items):
    """One forward + backward as ``CalibratedTrainer`` runs it: the armed output layer computes the
    fused loss (and the SFT trainer's token statistics); the logits fallback uses ``label_smoothing_ce``."""
    head = install_fused_head(torch.nn.Linear(weight.shape[1], weight.shape[0], bias=True))
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.zero_()
    h = hidden.clone().requires_grad_(True)
    request = FusedLossRequest(labels=labels, label_smoothing=0.1, num_items_in_batch=num_items, row_stats=True)
    with armed(head, request):
        head(h)
    request.loss.backward()
    # What the trainers do with the statistics in a training step: also without reading the device.
    valid = labels != IGNORE
    TrainTokenCalibration().add(request.stats, valid)
    TokenStats.from_row_stats(request.stats, valid)
    logits = (hidden @ weight.T).requires_grad_(True)
    fallback = label_smoothing_ce(logits, labels, label_smoothing=0.1, num_items_in_batch=num_items)
    fallback.backward()
    return request.loss.detach(), fallback.detach(), h.grad, head.weight.grad, logits.grad


@pytest.mark.parametrize("num_items", [None, "tensor"])
def test_training_path_reads_no_tensor_value_on_the_host(monkeypatch, num_items):
    """With value checks on the device (as for CUDA tensors, forced on the CPU by
    HF_CALIB_CHECK_LABELS=0), one training step of the fused loss reads no tensor value on the host:
    the label check is an asynchronous assert, the mean's denominator stays a tensor, ignored rows
    are masked instead of selected."""
    hidden, weight, _, labels = _inputs(2 * 9, 6, 40, 0.4, seed=20)
    hidden, labels = hidden.reshape(2, 9, 6), labels.reshape(2, 9)
    n_items = torch.tensor(int((labels != IGNORE).sum()) + 4) if num_items else None
    expected = _training_step(hidden, weight, labels, n_items)  # CPU default: host checks

    monkeypatch.setenv("HF_CALIB_CHECK_LABELS", "0")
    with _no_host_reads(monkeypatch):
        got = _training_step(hidden, weight, labels, n_items)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)

    # The guard is not vacuous: the CPU default (exact ValueError for bad labels) reads on the host.
    monkeypatch.delenv("HF_CALIB_CHECK_LABELS")
    with _no_host_reads(monkeypatch), pytest.raises(HostRead):
        _training_step(hidden, weight, labels, n_items)


def test_device_side_checks_still_reject_bad_values(monkeypatch):
    """HF_CALIB_CHECK_LABELS=0 (the path of CUDA tensors and torch.compile) on the CPU: the same
    conditions fail through torch._assert_async, a RuntimeError with the message."""
    monkeypatch.setenv("HF_CALIB_CHECK_LABELS", "0")
    h, w, _, y = _inputs(4, 3, 5, seed=21)
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 5\).*HF_CALIB_CHECK_LABELS=1"):
        fused_linear_label_smoothing_ce(h, w, torch.tensor([0, 1, 5, 2]))
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 5\)"):
        label_smoothing_ce(h @ w.T, torch.tensor([0, -1, IGNORE, 2]))
    for n_items in (0, torch.tensor(0)):
        with pytest.raises(RuntimeError, match="num_items_in_batch must be positive"):
            fused_linear_label_smoothing_ce(h, w, y, num_items_in_batch=n_items)
    # ... and accept what the host checks accept: all labels ignored with a zero count gives 0.
    ignored = torch.full((4,), IGNORE)
    assert float(fused_linear_label_smoothing_ce(h, w, ignored, num_items_in_batch=torch.tensor(0))) == 0.0


def test_host_side_label_check_lists_the_bad_labels(monkeypatch):
    h, w, _, _ = _inputs(4, 3, 5, seed=22)
    for flag in (None, "1"):  # the CPU default, and the debugging switch for other devices
        if flag is None:
            monkeypatch.delenv("HF_CALIB_CHECK_LABELS", raising=False)
        else:
            monkeypatch.setenv("HF_CALIB_CHECK_LABELS", flag)
        with pytest.raises(
            ValueError, match=r"labels must lie in \[0, 5\) or equal ignore_index=-100; found \[7, -3\]"
        ):
            fused_linear_label_smoothing_ce(h, w, torch.tensor([0, 7, IGNORE, -3]))


def test_num_items_in_batch_tensor_must_hold_one_value():
    h, w, _, y = _inputs(4, 3, 5, seed=23)
    with pytest.raises(ValueError, match="num_items_in_batch must be a number or a one-element tensor"):
        fused_linear_label_smoothing_ce(h, w, y, num_items_in_batch=torch.tensor([3, 4]))
