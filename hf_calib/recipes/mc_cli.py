"""``hf-calib eval``: multiple-choice calibration of a causal LM (optionally with an adapter) on MMLU."""

from __future__ import annotations

import argparse
import json

from .checks import check_adapter
from .common import format_table, load_causal_lm, staged_dir
from .mc import measure_mc, mmlu_benchmark


def load_with_adapter(name: str, adapter, device: str):
    """The model (with a PEFT adapter applied when ``adapter`` is a folder) and its tokenizer."""
    check_adapter(adapter)
    model, tokenizer = load_causal_lm(name, device=device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model, tokenizer


def cli(args: argparse.Namespace) -> int:
    # recipes.run checked the arguments: args.subjects holds canonical MMLU names.
    model, tokenizer = load_with_adapter(args.model, args.adapter, args.device)
    bench = mmlu_benchmark(args.subjects, args.limit, scoring=args.scoring, tokenizer=tokenizer)
    with staged_dir(args.output_dir) as out:
        result = measure_mc(bench, model, tokenizer, diagram=out / "reliability_diagram.png", title="MMLU")
        (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2, sort_keys=True))
    print(f"\n{len(bench)} MMLU questions, {args.scoring} scoring")
    print(format_table([result.summary()]))
    print(f"reliability diagram and metrics.json in {args.output_dir}")
    return 0
