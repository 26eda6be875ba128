"""The Triton row kernel (``kernels/ce_triton.py``) on CPU under the Triton interpreter.

Why a worker subprocess: ``TRITON_INTERPRET=1`` is read when ``@triton.jit`` decorates a kernel,
i.e. when ``hf_calib_kernels.ce_triton`` is first imported, and it then holds for the whole
process. When ``pytest tests/`` runs every file in one process, the import order is not ours to
choose, and setting the variable in ``conftest.py`` would silently change what every other test
sees (``backend="triton"`` would be accepted on CPU everywhere). So this module builds all cases
here, saves their inputs with safetensors, runs *one* worker (``python tests/test_kernels.py
--worker DIR``, with ``TRITON_INTERPRET=1`` in its environment) that calls the Triton backend on
them, and compares its outputs here with float64 ``F.cross_entropy`` references, one
parametrised test per case. A second subprocess, without the interpreter, compiles the kernel for
an NVIDIA GPU (no device needed) to catch code the interpreter accepts but the compiler rejects.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from hf_calib import fused_linear_label_smoothing_ce, label_smoothing_ce

IGNORE = -100
F32 = {"rtol": 1e-4, "atol": 1e-6}

# Row-kernel cases: (V, BLOCK_V) with a single partial block, many blocks with a partial last one
# (1000 = 15 * 64 + 40; 4099 = 16 * 256 + 3), an exact multiple, and V = 1.
ROW_SHAPES = [(1, 1), (1, 16), (130, 128), (128, 128), (1000, 64), (4099, 256)]
# Public-API matrix, as in test_losses.py: vocab x ignored fraction x smoothing x soft cap x reduction.
# The interpreter's cost is per block, and V = 4099 takes 5 blocks of 1024 (the last with 3 valid
# columns) per pass, so there every (smoothing, cap, reduction) appears once, cycling the ignored
# fraction; V = 1 and 1000 (one partial block) run the full product.
IGNORED, EPS, CAPS, REDUCTIONS = (
    (0.0, 0.3, 1.0),
    (0.0, 0.1, 0.5),
    (None, 2.0),
    ("mean", "mean_num_items", "sum", "none"),
)
MATRIX = list(itertools.product((1, 1000), IGNORED, EPS, CAPS, REDUCTIONS)) + [
    (4099, IGNORED[i % 3], eps, cap, reduction)
    for i, (eps, cap, reduction) in enumerate(itertools.product(EPS, CAPS, REDUCTIONS))
]
LOGITS_MATRIX = list(itertools.product((1, 1000, 4099), (0.3,), (0.0, 0.1), (None, 2.0), ("mean", "none")))


def _case_specs() -> dict[str, dict]:
    specs: dict[str, dict] = {}
    for (vocab, block), eps, cap in itertools.product(ROW_SHAPES, (0.0, 0.5), (None, 2.0)):
        specs[f"rows-V{vocab}-block{block}-eps{eps}-cap{cap}"] = {
            "kind": "rows", "vocab": vocab, "n": 6, "block_v": block, "label_smoothing": eps, "softcap": cap,
        }  # fmt: skip
    rows = {"kind": "rows", "vocab": 1000, "n": 6, "block_v": 128}
    specs["rows-loss-only"] = rows | {"label_smoothing": 0.1, "softcap": None, "no_grad": True}
    specs["rows-huge-logits"] = rows | {"label_smoothing": 0.1, "softcap": None, "content": "huge"}
    specs["rows-huge-logits-capped"] = rows | {"label_smoothing": 0.1, "softcap": 30.0, "content": "huge"}
    specs["rows-neg-inf-first-blocks"] = rows | {"label_smoothing": 0.0, "softcap": None, "content": "neg_inf"}
    specs["rows-confident-target"] = rows | {"label_smoothing": 0.0, "softcap": None, "content": "confident"}
    specs["rows-default-block"] = rows | {"vocab": 4099, "block_v": None, "label_smoothing": 0.1, "softcap": 2.0}
    specs["rows-empty"] = rows | {"n": 0, "label_smoothing": 0.1, "softcap": 2.0}
    for vocab, ignore, eps, cap, reduction in MATRIX:
        specs[f"fused-V{vocab}-ign{ignore}-eps{eps}-cap{cap}-{reduction}"] = {
            "kind": "fused", "vocab": vocab, "n": 16, "width": 8, "ignore": ignore,
            "label_smoothing": eps, "softcap": cap, "reduction": reduction,
        }  # fmt: skip
    for vocab, ignore, eps, cap, reduction in LOGITS_MATRIX:
        specs[f"logits-V{vocab}-ign{ignore}-eps{eps}-cap{cap}-{reduction}"] = {
            "kind": "logits", "vocab": vocab, "n": 16, "ignore": ignore,
            "label_smoothing": eps, "softcap": cap, "reduction": reduction,
        }  # fmt: skip
    # bf16 end to end: the driver runs the matmul in bf16 and upcasts each chunk's logits to
    # float32 before the row kernel, so the kernel itself only ever sees float32; these cases
    # check the casts around it (bf16 gradients out, float32 loss).
    bf16 = {"dtype": "bfloat16", "vocab": 1000, "n": 32, "width": 16, "ignore": 0.3, "label_smoothing": 0.1}
    specs["fused-bf16"] = bf16 | {"kind": "fused", "softcap": 4.0, "reduction": "mean"}
    specs["fused-bf16-none"] = bf16 | {"kind": "fused", "softcap": None, "reduction": "none"}
    specs["logits-bf16"] = bf16 | {"kind": "logits", "softcap": 4.0, "reduction": "mean"}
    # Under torch.compile(fullgraph=True): the row kernel is a custom operator, opaque to Dynamo
    # (which would otherwise trace Triton's launcher, or here the interpreter).
    compiled = {"vocab": 1000, "n": 16, "ignore": 0.3, "label_smoothing": 0.1, "softcap": 2.0, "compile": True}
    specs["fused-compiled"] = compiled | {"kind": "fused", "width": 8, "reduction": "mean_num_items"}
    specs["logits-compiled"] = compiled | {"kind": "logits", "reduction": "none"}
    # Row statistics through the public functions: odd V over several blocks, soft cap, ignored rows, bf16.
    stats = {"kind": "stats", "n": 16, "width": 8, "ignore": 0.3, "label_smoothing": 0.1, "reduction": "mean"}
    for api, vocab, cap, dtype in itertools.product(("fused", "logits"), (1, 4099), (None, 2.0), ("float32",)):
        specs[f"stats-{api}-V{vocab}-cap{cap}"] = stats | {"api": api, "vocab": vocab, "softcap": cap, "dtype": dtype}
    for api in ("fused", "logits"):
        specs[f"stats-{api}-bf16"] = stats | {"api": api, "vocab": 1000, "softcap": 4.0, "dtype": "bfloat16"}
    for seed, spec in enumerate(specs.values()):
        spec["seed"] = seed
    return specs


CASES = _case_specs()
ROW_CASES = [k for k, s in CASES.items() if s["kind"] == "rows"]
STATS_CASES = [k for k, s in CASES.items() if s["kind"] == "stats"]
API_CASES = [k for k, s in CASES.items() if s["kind"] in ("fused", "logits")]


def _labels(n: int, vocab: int, ignore_frac: float, gen: torch.Generator) -> torch.Tensor:
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[torch.randperm(n, generator=gen)[: round(ignore_frac * n)]] = IGNORE
    return labels


def _case_inputs(spec: dict) -> dict[str, torch.Tensor]:
    """Deterministic inputs of one case (built in the parent, shipped to the worker)."""
    gen = torch.Generator().manual_seed(spec["seed"])
    n, vocab = spec["n"], spec["vocab"]
    dtype = getattr(torch, spec.get("dtype", "float32"))
    if spec["kind"] == "rows":
        logits = torch.randn(n, vocab, generator=gen) * 3.0
        labels = torch.randint(0, vocab, (n,), generator=gen)
        content = spec.get("content")
        if content == "huge":  # naive exp overflows; the online max must not
            logits = logits * 3e3
        elif content == "neg_inf":  # whole leading blocks of -inf (masked vocabulary)
            logits[:, :300] = -float("inf")
            labels = torch.randint(300, vocab, (n,), generator=gen)
        elif content == "confident":  # p_y ~ 1 - 1e-4: the target gradient is a small difference
            logits[torch.arange(n), labels] += 25.0
        grad_scale = torch.randn(n, generator=gen)
        if n:
            grad_scale[0] = 0.0
        return {"logits": logits, "labels": labels, "grad_scale": grad_scale}
    labels = _labels(n, vocab, spec["ignore"], gen)
    out = {"labels": labels, "grad_output": torch.randn(n, generator=gen)}
    if spec.get("api", spec["kind"]) == "fused":
        out["hidden"] = torch.randn(n, spec["width"], generator=gen).to(dtype)
        out["weight"] = (torch.randn(vocab, spec["width"], generator=gen) * (2.0 / spec["width"] ** 0.5)).to(dtype)
        out["bias"] = (torch.randn(vocab, generator=gen) * 0.5).to(dtype)
    else:
        out["logits"] = (torch.randn(n, vocab, generator=gen) * 3.0).to(dtype)
    return out


def _api_kwargs(spec: dict, labels: torch.Tensor) -> dict:
    """Keyword arguments of the public call; ``num_items_in_batch`` alternates int and tensor."""
    kwargs = {"label_smoothing": spec["label_smoothing"], "softcap": spec["softcap"], "reduction": spec["reduction"]}
    # Several chunks, the last one partial, whenever more than 5 rows are valid.
    kwargs["chunk_bytes"] = 4 * spec["vocab"] * 5
    if spec["reduction"] == "mean_num_items":
        n_items = int((labels != IGNORE).sum()) + 5
        kwargs.update(reduction="mean", num_items_in_batch=torch.tensor(n_items) if spec["seed"] % 2 else n_items)
    return kwargs


def _api_call(spec: dict, inputs: dict[str, torch.Tensor], backend: str):
    """Run the public loss on fresh leaves; return ``{"loss": ..., "grad_<leaf>": ...}``."""
    names = ("hidden", "weight", "bias") if spec["kind"] == "fused" else ("logits",)
    leaves = {name: inputs[name].clone().requires_grad_(True) for name in names}
    kwargs = _api_kwargs(spec, inputs["labels"]) | {"backend": backend}
    if spec["kind"] == "fused":

        def call(labels, hidden, weight, bias):
            return fused_linear_label_smoothing_ce(hidden, weight, labels, bias=bias, **kwargs)
    else:

        def call(labels, logits):
            return label_smoothing_ce(logits, labels, **kwargs)

    if spec.get("compile"):
        call = torch.compile(call, backend="aot_eager", fullgraph=True)
    out = call(inputs["labels"], *leaves.values())
    out.backward(inputs["grad_output"] if kwargs["reduction"] == "none" else torch.ones(()))
    return {"loss": out.detach()} | {f"grad_{name}": leaf.grad for name, leaf in leaves.items()}


def _stats_call(spec: dict, inputs: dict[str, torch.Tensor], backend: str) -> dict[str, torch.Tensor]:
    """Loss, gradients and row statistics (``return_stats=True``) of the public call, on ``backend``."""
    fused = spec["api"] == "fused"
    names = ("hidden", "weight", "bias") if fused else ("logits",)
    leaves = {name: inputs[name].clone().requires_grad_(True) for name in names}
    kwargs = {
        "label_smoothing": spec["label_smoothing"], "softcap": spec["softcap"], "backend": backend,
        "chunk_bytes": 4 * spec["vocab"] * 5, "return_stats": True,
    }  # fmt: skip
    if fused:
        loss, stats = fused_linear_label_smoothing_ce(
            leaves["hidden"], leaves["weight"], inputs["labels"], bias=leaves["bias"], **kwargs
        )
    else:
        loss, stats = label_smoothing_ce(leaves["logits"], inputs["labels"], **kwargs)
    loss.backward()
    out = {"loss": loss.detach(), "correct": stats.correct.float()}
    out |= {name: getattr(stats, name) for name in ("confidence", "nll", "entropy", "brier")}
    return out | {f"grad_{name}": leaf.grad for name, leaf in leaves.items()}


def _worker(directory: Path) -> None:
    """Subprocess entry point: run every case on the Triton backend (needs TRITON_INTERPRET=1)."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "the worker needs TRITON_INTERPRET=1"
    from hf_calib_kernels.ce_triton import label_smoothing_ce_rows

    specs = json.loads((directory / "cases.json").read_text())
    tensors = load_file(directory / "inputs.safetensors")
    outputs = {}
    for key, spec in specs.items():
        inputs = {name.split("/", 1)[1]: t for name, t in tensors.items() if name.split("/", 1)[0] == key}
        if spec["kind"] == "rows":
            kwargs = {
                "label_smoothing": spec["label_smoothing"],
                "softcap": spec["softcap"],
                "block_v": spec["block_v"],
            }
            grad_scale = None if spec.get("no_grad") else inputs["grad_scale"]
            loss, grad, _ = label_smoothing_ce_rows(
                inputs["logits"].clone(), inputs["labels"], grad_scale=grad_scale, **kwargs
            )
            # The same call with the row statistics: its loss and gradient must not change.
            loss_s, grad_s, stats = label_smoothing_ce_rows(
                inputs["logits"].clone(), inputs["labels"], grad_scale=grad_scale, stats=True, **kwargs
            )
            result = {"loss": loss, "loss_with_stats": loss_s, "stats": stats}
            result |= {} if grad is None else {"grad": grad, "grad_with_stats": grad_s}
        elif spec["kind"] == "stats":
            result = _stats_call(spec, inputs, backend="triton")
        else:
            result = _api_call(spec, inputs, backend="triton")
        outputs |= {f"{key}/{name}": t.contiguous() for name, t in result.items()}
    save_file(outputs, directory / "outputs.safetensors")


@pytest.fixture(scope="module")
def triton_run(tmp_path_factory):
    """``(inputs, outputs)`` of every case; the outputs come from one interpreter subprocess."""
    directory = tmp_path_factory.mktemp("triton_interpreter")
    inputs = {key: _case_inputs(spec) for key, spec in CASES.items()}
    (directory / "cases.json").write_text(json.dumps(CASES))
    save_file(
        {f"{key}/{name}": t for key, d in inputs.items() for name, t in d.items()}, directory / "inputs.safetensors"
    )
    env = os.environ | {"TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", str(directory)], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"Triton interpreter worker failed:\n{proc.stderr[-4000:]}")
    flat = load_file(directory / "outputs.safetensors")
    outputs: dict[str, dict[str, torch.Tensor]] = {key: {} for key in CASES}
    for name, t in flat.items():
        key, field = name.split("/", 1)
        outputs[key][field] = t
    return inputs, outputs


@pytest.mark.parametrize("key", ROW_CASES)
def test_row_kernel_matches_float64_cross_entropy(triton_run, key):
    spec = CASES[key]
    inputs, outputs = triton_run[0][key], triton_run[1][key]
    raw = inputs["logits"].double().requires_grad_(True)
    z = raw if spec["softcap"] is None else spec["softcap"] * torch.tanh(raw / spec["softcap"])
    ref_loss = F.cross_entropy(z, inputs["labels"], label_smoothing=spec["label_smoothing"], reduction="none")
    tol = {"rtol": 1e-5, "atol": 1e-3} if spec.get("content") == "huge" else F32
    loss = outputs["loss"]
    assert loss.dtype == torch.float32 and loss.shape == (spec["n"],)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss.double(), ref_loss.detach(), **tol)
    if spec.get("no_grad"):
        assert "grad" not in outputs
        return
    (ref_grad,) = torch.autograd.grad(ref_loss, raw, grad_outputs=inputs["grad_scale"].double())
    grad = outputs["grad"]
    assert grad.dtype == torch.float32 and grad.shape == raw.shape
    torch.testing.assert_close(grad.double(), ref_grad, **F32)
    if spec["n"]:
        assert bool((grad[0] == 0).all())  # grad_scale 0: exactly zero row


def _reference_stats(z: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float64 statistics of logits ``z [N, V]`` (already soft-capped) from the full softmax."""
    p = torch.softmax(z.double(), dim=-1)
    logp = torch.log_softmax(z.double(), dim=-1)
    onehot = F.one_hot(labels, z.shape[-1]).double()
    return {
        "confidence": p.max(dim=-1).values,
        "correct": (z.argmax(dim=-1) == labels).double(),
        "nll": -logp.gather(1, labels[:, None]).squeeze(1),
        "entropy": -torch.special.xlogy(p, p).sum(-1),
        "brier": (p - onehot).square().sum(-1),
    }


@pytest.mark.parametrize("key", ROW_CASES)
def test_row_kernel_statistics_match_float64_softmax(triton_run, key):
    """The Triton kernel's row statistics (online over blocks) equal the full float64 softmax's, and asking
    for them changes neither the loss nor the gradient by a single bit."""
    spec = CASES[key]
    inputs, outputs = triton_run[0][key], triton_run[1][key]
    assert torch.equal(outputs["loss_with_stats"], outputs["loss"])
    if "grad" in outputs:
        assert torch.equal(outputs["grad_with_stats"], outputs["grad"])
    stats = outputs["stats"]
    assert stats.dtype == torch.float32 and stats.shape == (spec["n"], 5)
    if not spec["n"]:
        return
    raw = inputs["logits"].double()
    z = raw if spec["softcap"] is None else spec["softcap"] * torch.tanh(raw / spec["softcap"])
    ref = _reference_stats(z, inputs["labels"])
    tol = {"rtol": 1e-5, "atol": 1e-2} if spec.get("content") == "huge" else {"rtol": 1e-4, "atol": 1e-5}
    for column, name in enumerate(("confidence", "correct", "nll", "entropy", "brier")):
        torch.testing.assert_close(stats[:, column].double(), ref[name], **tol, msg=lambda m, n=name: f"{n}: {m}")
    # The torch row kernel gives the same statistics on the same logits.
    from hf_calib_kernels.ce_torch import label_smoothing_ce_rows

    _, _, torch_stats = label_smoothing_ce_rows(
        inputs["logits"].clone(), inputs["labels"], label_smoothing=spec["label_smoothing"],
        softcap=spec["softcap"], grad_scale=None, stats=True,
    )  # fmt: skip
    torch.testing.assert_close(stats, torch_stats, **tol)


def test_row_statistics_break_argmax_ties_like_torch():
    """Ties between blocks and inside a block go to the lowest index, as ``torch.argmax``."""
    from hf_calib_kernels.ce_torch import label_smoothing_ce_rows

    logits = torch.zeros(3, 300)
    logits[0, [7, 200]] = 5.0  # tie across 64-wide blocks
    logits[1, [70, 71]] = 5.0  # tie inside a block
    labels = torch.tensor([200, 70, 0])  # row 2: every logit ties, argmax is 0
    _, _, stats = label_smoothing_ce_rows(
        logits, labels, label_smoothing=0.0, softcap=None, grad_scale=None, stats=True
    )
    assert stats[:, 1].tolist() == [0.0, 1.0, 1.0]
    assert (logits.argmax(dim=1) == labels).tolist() == [False, True, True]


@pytest.mark.parametrize("key", STATS_CASES)
def test_triton_row_statistics_match_torch_backend(triton_run, key):
    """``return_stats=True`` on the Triton backend: same loss and gradients as without statistics would give
    on the torch backend, statistics equal to the torch backend's and to a float64 reference, NaN / False on
    ignored labels."""
    spec = CASES[key]
    inputs, outputs = triton_run[0][key], triton_run[1][key]
    expected = _stats_call(spec, inputs, backend="torch")
    labels = inputs["labels"]
    valid = labels != IGNORE
    bf16 = spec["dtype"] == "bfloat16"
    tol = {"rtol": 2e-3, "atol": 2e-4} if bf16 else {"rtol": 1e-5, "atol": 1e-6}
    for name, value in expected.items():
        got = outputs[name]
        if name in ("confidence", "nll", "entropy", "brier"):
            assert bool(torch.isnan(got[~valid]).all()), name
            got, value = got[valid], value[valid]
        elif name == "correct":
            assert not bool(got[~valid].any())
            got, value = got[valid], value[valid]
        if name.startswith("grad") and bf16:
            torch.testing.assert_close(got.float(), value.float(), rtol=1e-2, atol=1e-2 * float(value.abs().max()))
        else:
            torch.testing.assert_close(got, value, **tol, msg=lambda m, n=name: f"{n}: {m}")
    if spec["api"] == "fused":
        z = inputs["hidden"].double() @ inputs["weight"].double().T + inputs["bias"].double()
        if bf16:  # the driver's matmul rounds the logits to bf16
            z = (inputs["hidden"] @ inputs["weight"].T + inputs["bias"]).double()
    else:
        z = inputs["logits"].double()
    if spec["softcap"] is not None:
        z = spec["softcap"] * torch.tanh(z / spec["softcap"])
    ref = _reference_stats(z[valid], labels[valid])
    for name in ("confidence", "nll", "entropy", "brier"):
        torch.testing.assert_close(outputs[name][valid].double(), ref[name], rtol=1e-4, atol=1e-4)
    # Correctness may flip only where the top two logits are within rounding of each other.
    top2 = z[valid].topk(min(2, z.shape[1]), dim=-1).values
    close = (top2[:, 0] - top2[:, -1]).abs() < 1e-2 if z.shape[1] > 1 else torch.zeros_like(valid[valid])
    agree = outputs["correct"][valid].double() == ref["correct"]
    assert bool((agree | close).all())


@pytest.mark.parametrize("key", API_CASES)
def test_triton_backend_matches_float64_reference(triton_run, reference_ce, key):
    spec = CASES[key]
    inputs, outputs = triton_run[0][key], triton_run[1][key]
    kwargs = _api_kwargs(spec, inputs["labels"])
    leaves = {k: inputs[k].double().requires_grad_(True) for k in ("hidden", "weight", "bias", "logits") if k in inputs}
    logits = leaves["logits"] if "logits" in leaves else leaves["hidden"] @ leaves["weight"].T + leaves["bias"]
    loss_kwargs = {k: kwargs[k] for k in ("label_smoothing", "softcap", "reduction") if k in kwargs}
    ref = reference_ce(logits, inputs["labels"], num_items_in_batch=kwargs.get("num_items_in_batch"), **loss_kwargs)
    ref.backward(
        inputs["grad_output"].double() if kwargs["reduction"] == "none" else torch.ones((), dtype=torch.float64)
    )
    loss = outputs["loss"]
    assert loss.dtype == torch.float32 and loss.shape == ref.shape
    assert torch.isfinite(loss).all()
    if spec.get("dtype") == "bfloat16":
        # Logits are rounded to bf16 by the driver's matmul and gradients are bf16 outputs.
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=2e-3, atol=2e-3)
        torch_backend = _api_call(spec, inputs, backend="torch")
        for name, leaf in leaves.items():
            grad = outputs[f"grad_{name}"]
            assert grad.dtype == torch.bfloat16
            torch.testing.assert_close(grad.double(), leaf.grad, rtol=2e-2, atol=1e-2 * float(leaf.grad.abs().max()))
            # Same bf16 logits as the torch backend; only float32 rounding inside the kernels differs.
            scale = float(torch_backend[f"grad_{name}"].abs().max())
            torch.testing.assert_close(grad, torch_backend[f"grad_{name}"], rtol=1e-2, atol=1e-4 * scale)
        torch.testing.assert_close(loss, torch_backend["loss"], rtol=1e-5, atol=1e-6)
        return
    torch.testing.assert_close(loss.double(), ref.detach(), **F32)
    for name, leaf in leaves.items():
        torch.testing.assert_close(
            outputs[f"grad_{name}"].double(), leaf.grad, **F32, msg=lambda m, n=name: f"{n}: {m}"
        )


_COMPILE_SCRIPT = """
import itertools

import triton
from triton.backends.compiler import GPUTarget
from hf_calib_kernels.ce_triton import _label_smoothing_ce_rows_kernel as kernel

signature = {"logits_ptr": "*fp32", "labels_ptr": "*i64", "grad_scale_ptr": "*fp32", "loss_ptr": "*fp32",
             "stats_ptr": "*fp32", "stride_row": "i32", "vocab": "i32", "eps_over_v": "fp32",
             "one_minus_eps": "fp32", "cap": "fp32", "HAS_SOFTCAP": "constexpr", "HAS_SMOOTHING": "constexpr",
             "HAS_GRAD": "constexpr", "HAS_STATS": "constexpr", "BLOCK_V": "constexpr"}
for softcap, smoothing, grad, stats, vocab_is_one in itertools.product((False, True), repeat=5):
    constexprs = {"HAS_SOFTCAP": softcap, "HAS_SMOOTHING": smoothing, "HAS_GRAD": grad, "HAS_STATS": stats,
                  "BLOCK_V": 4096}
    sig = dict(signature)
    if vocab_is_one:  # Triton specializes an integer argument equal to 1 into a constant
        sig["vocab"] = "constexpr"
        constexprs["vocab"] = 1
    src = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    triton.compile(src, target=GPUTarget("cuda", 80, 32), options={"num_warps": 8})
print("compiled")
"""


def test_kernel_compiles_for_an_nvidia_gpu():
    """The interpreter runs plain Python/numpy and accepts code the compiler rejects (it missed a
    loop-carried variable that changed type); compile every constexpr variant for sm_80."""
    triton = pytest.importorskip("triton")
    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("triton was built without the NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-4000:]


# --------------------------------------------------------------------------------------------
# Backend selection (in-process: resolve_backend reads TRITON_INTERPRET at call time)
# --------------------------------------------------------------------------------------------


def test_triton_backend_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    hidden, weight, labels = torch.randn(4, 3), torch.randn(7, 3), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="backend='triton'.*TRITON_INTERPRET"):
        fused_linear_label_smoothing_ce(hidden, weight, labels, backend="triton")
    with pytest.raises(ValueError, match="backend='triton'.*TRITON_INTERPRET"):
        label_smoothing_ce(hidden @ weight.T, labels, backend="triton")


def test_default_backend_is_torch_on_cpu_and_triton_on_cuda(monkeypatch):
    from hf_calib.loss import functions as losses

    assert losses.resolve_backend(None, torch.device("cpu")) == "torch"
    assert losses.resolve_backend(None, torch.device("cuda")) == "triton"

    def no_triton():
        raise AssertionError("backend=None on CPU must not load the Triton kernel")

    monkeypatch.setattr(losses, "_triton_rows", no_triton)
    hidden, weight, labels = torch.randn(5, 3), torch.randn(7, 3), torch.tensor([0, 1, IGNORE, 3, 6])
    default = fused_linear_label_smoothing_ce(hidden, weight, labels, label_smoothing=0.1)
    torch.testing.assert_close(
        default, fused_linear_label_smoothing_ce(hidden, weight, labels, label_smoothing=0.1, backend="torch")
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(Path(sys.argv[2]))
    else:
        sys.exit("usage: python tests/test_kernels.py --worker DIR (run the tests with pytest)")
