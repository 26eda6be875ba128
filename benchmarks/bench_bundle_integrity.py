"""What the integrity checks of a calibrated adapter bundle cost: file hashing and the base-model weights sample.

(1) SHA-256 of a file of S MB (what saving and loading pay per bundle file), median over repeats;
(2) the base-model fingerprint (config fields + weights sample) of SmolLM2-135M-Instruct (272 tensors),
    and of 291 tensors with the shapes of LLaMA-2-7B (32 layers; stride-0 views of one element, so the
    13 GB of a real 7B model are not allocated: the sample reads 16 elements per tensor whatever its size,
    so its cost depends on the number of tensors, not on their size);
(3) CalibratedAdapter.save_pretrained and from_pretrained (every check included) of a LoRA adapter
    (r = 8, q/v) with a temperature on SmolLM2.

python benchmarks/bench_bundle_integrity.py               # ~1 min on 2 cores
python benchmarks/bench_bundle_integrity.py --sizes 10 100 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def llama7b_shaped() -> list[tuple[str, object]]:
    import torch

    hidden, inter, vocab, layers = 4096, 11008, 32000, 32
    one = torch.zeros(1, dtype=torch.bfloat16)

    def view(*shape):
        return one.expand(*shape)

    tensors = [("model.embed_tokens.weight", view(vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors += [(p + f"self_attn.{n}.weight", view(hidden, hidden)) for n in ("q_proj", "k_proj", "v_proj")]
        tensors += [(p + "self_attn.o_proj.weight", view(hidden, hidden))]
        tensors += [(p + "mlp.gate_proj.weight", view(inter, hidden)), (p + "mlp.up_proj.weight", view(inter, hidden))]
        tensors += [(p + "mlp.down_proj.weight", view(hidden, inter))]
        tensors += [(p + "input_layernorm.weight", view(hidden)), (p + "post_attention_layernorm.weight", view(hidden))]
    tensors += [("model.norm.weight", view(hidden)), ("lm_head.weight", view(vocab, hidden))]
    return tensors


class _Shaped:
    """Just enough of a model for the weights sample: ``named_parameters``."""

    def __init__(self, tensors):
        self.tensors = tensors

    def named_parameters(self):
        return iter(self.tensors)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100], help="file sizes in MB (default 10 100)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per measurement (median; default 5)")
    args = parser.parse_args(argv)

    import torch

    from hf_calib._fingerprint import weights_sample
    from hf_calib.hub._files import sha256_of

    torch.set_num_threads(1)
    print("| measurement | median | per unit |")
    print("|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = Path(tmp) / f"{size}.bin"
            path.write_bytes(os.urandom(size * 1024 * 1024))
            sha256_of(path)  # warm the page cache: loads read files that were just written or downloaded
            seconds = median_seconds(lambda p=path: sha256_of(p), args.repeats)
            print(f"| SHA-256 of a {size} MB file | {seconds * 1000:.0f} ms | {size / seconds:.0f} MB/s |")

    shaped = _Shaped(llama7b_shaped())
    seconds = median_seconds(lambda: weights_sample(shaped), args.repeats)
    n = len(shaped.tensors)
    per_tensor = f"{seconds / n * 1e6:.0f} µs/tensor"
    print(f"| weights sample, LLaMA-2-7B shapes ({n} tensors) | {seconds * 1000:.0f} ms | {per_tensor} |")

    from peft import LoraConfig, get_peft_model

    from hf_calib.assets import load_smollm2
    from hf_calib.hub import CalibratedAdapter

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = load_smollm2()
        base_params = sum(p.numel() for p in model.parameters())
        peft = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        n = sum(1 for _ in peft.get_base_model().named_parameters())
        seconds = median_seconds(lambda: weights_sample(peft), args.repeats)
        print(
            f"| weights sample, SmolLM2-135M ({n} parameters incl. LoRA) | {seconds * 1000:.0f} ms | "
            f"{base_params / 1e6:.0f} M base parameters |"
        )
        bundle = CalibratedAdapter(peft, temperature=1.3)
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "bundle"
            save = median_seconds(lambda: bundle.save_pretrained(target), args.repeats)
            base, _ = load_smollm2()
            load = median_seconds(lambda: CalibratedAdapter.from_pretrained(target, base_model=base), args.repeats)
            size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) / 2**20
        print(f"| save_pretrained, SmolLM2 LoRA bundle ({size:.1f} MB) | {save * 1000:.0f} ms | |")
        print(f"| from_pretrained, same bundle (all checks) | {load * 1000:.0f} ms | |")


if __name__ == "__main__":
    main()
