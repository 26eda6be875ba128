"""Results of the fused-CE benchmark (:mod:`hf_calib.recipes.bench`): configuration names, the JSON
file of raw runs, the line printed per run, the per-(config, method) summary, the fused loss's ratios,
and the Markdown / CSV tables.

Standard library only, so ``--table-from`` never imports torch.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

MIB = 1024 * 1024


def config_name(vocab: int, hidden: int, tokens: int) -> str:
    return f"V{vocab}_H{hidden}_N{tokens}"


def parse_config(name: str) -> tuple[int, int, int]:
    vocab, hidden, tokens = (int(part[1:]) for part in name.split("_"))
    return vocab, hidden, tokens


def _load(paths: list[str]) -> list[dict]:
    records = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        records.extend(data["runs"] if isinstance(data, dict) else data)
    return records


def _save(path: str, records: list[dict], meta: dict) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
    tmp.replace(path)


def summarize(records: list[dict]) -> list[dict]:
    """One row per (config, method): median time, max peak memory, and consistency of results."""
    rows = {}
    for rec in records:
        if "error" in rec:
            continue
        key = (rec["V"], rec["H"], rec["N"], rec["method"])
        rows.setdefault(key, []).append(rec)
    out = []
    for (vocab, width, tokens, method), recs in sorted(rows.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        out.append(
            {
                "config": config_name(vocab, width, tokens),
                "V": vocab,
                "H": width,
                "N": tokens,
                "method": method,
                "runs": len(recs),
                "seconds": statistics.median(r["seconds"] for r in recs),
                "cpu_seconds": statistics.median(r["cpu_seconds"] for r in recs),
                "peak_extra_mib": max(r["peak_extra_bytes"] for r in recs) / MIB,
                "grads_mib": recs[0]["grad_bytes"] / MIB,
                "loss": recs[0]["loss"],
                "grad_hidden_norm": recs[0]["grad_hidden_norm"],
                "grad_weight_norm": recs[0]["grad_weight_norm"],
            }
        )
    return out


def ratios(summary: list[dict]) -> list[dict]:
    """Per configuration: fused vs LabelSmoother (time, memory) and fused vs the matmul floor."""
    by_config = {}
    for row in summary:
        by_config.setdefault(row["config"], {})[row["method"]] = row
    out = []
    for config, methods in by_config.items():
        fused, ls, floor = methods.get("fused"), methods.get("labelsmoother"), methods.get("floor")
        if fused is None:
            continue
        row = {"config": config}
        if ls is not None:
            row["time_vs_ls"] = fused["seconds"] / ls["seconds"]
            row["cpu_vs_ls"] = fused["cpu_seconds"] / ls["cpu_seconds"]
            row["mem_vs_ls"] = fused["peak_extra_mib"] / ls["peak_extra_mib"]
            ls_excl = ls["peak_extra_mib"] - ls["grads_mib"]
            row["mem_excl_grads_vs_ls"] = (fused["peak_extra_mib"] - fused["grads_mib"]) / ls_excl
        if floor is not None:
            row["time_vs_floor"] = fused["seconds"] / floor["seconds"]
            row["cpu_vs_floor"] = fused["cpu_seconds"] / floor["cpu_seconds"]
        ref = ls or methods.get("cross_entropy")
        if ref is not None and ref["loss"] is not None:
            row["loss_rel_diff"] = abs(fused["loss"] - ref["loss"]) / abs(ref["loss"])
            row["grad_w_rel_diff"] = abs(fused["grad_weight_norm"] - ref["grad_weight_norm"]) / ref["grad_weight_norm"]
        out.append(row)
    return out


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_tables(summary: list[dict]) -> str:
    """Two Markdown tables: per (config, method) measurements, and the fused loss's ratios per config."""
    lines = [
        "| V | H | N | method | runs | wall (s) | CPU (s) | peak extra (MiB) | grads (MiB) | excl. grads (MiB) |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        lines.append(
            f"| {r['V']} | {r['H']} | {r['N']} | {r['method']} | {r['runs']} | {r['seconds']:.2f} "
            f"| {r['cpu_seconds']:.2f} | {r['peak_extra_mib']:.0f} | {r['grads_mib']:.0f} "
            f"| {r['peak_extra_mib'] - r['grads_mib']:.0f} |"
        )
    lines += [
        "",
        "| V | H | N | fused / LS wall | fused / LS CPU | fused / floor wall | fused / floor CPU "
        "| fused / LS peak extra | same, excl. grads | loss rel. diff | ‖grad W‖ rel. diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ratios(summary):
        vocab, width, tokens = parse_config(r["config"])
        cells = [
            _fmt(r.get("time_vs_ls"), ".2f"),
            _fmt(r.get("cpu_vs_ls"), ".2f"),
            _fmt(r.get("time_vs_floor"), ".2f"),
            _fmt(r.get("cpu_vs_floor"), ".2f"),
            _fmt(r.get("mem_vs_ls"), ".3f"),
            _fmt(r.get("mem_excl_grads_vs_ls"), ".3f"),
            _fmt(r.get("loss_rel_diff"), ".1e"),
            _fmt(r.get("grad_w_rel_diff"), ".1e"),
        ]
        lines.append(f"| {vocab} | {width} | {tokens} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: str, summary: list[dict]) -> None:
    keys = ["config", "V", "H", "N", "method", "runs", "seconds", "cpu_seconds", "peak_extra_mib", "grads_mib", "loss"]
    lines = [",".join(keys)]
    for row in summary:
        lines.append(",".join("" if row[k] is None else str(row[k]) for k in keys))
    Path(path).write_text("\n".join(lines) + "\n")


def print_run(method: str, rec: dict) -> None:
    """One line per run: its time, peak extra memory, gradients and loss, or its error."""
    if "error" in rec:
        print(f"  {method:14s} ERROR {rec['error']}", flush=True)
    else:
        print(
            f"  {method:14s} {rec['seconds']:8.2f} s  peak extra {rec['peak_extra_bytes'] / MIB:9.0f} MiB"
            f"  (grads {rec['grad_bytes'] / MIB:.0f} MiB)  loss {rec['loss']}",
            flush=True,
        )
