"""Pieces every recipe needs: loading models by name, devices, and folders that appear only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..hub._files import staging_folder, swap_in

#: Names that select the offline models of hf_calib.assets instead of a Hub id or a local path.
SMOLLM2_ALIASES = ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct")
MINILM_ALIASES = ("minilm", "sentence-transformers/all-MiniLM-L6-v2")


def hub_id(name: str) -> str:
    """The Hub id of an offline alias (for model cards); other names are returned as they are."""
    if name in SMOLLM2_ALIASES:
        return SMOLLM2_ALIASES[1]
    if name in MINILM_ALIASES:
        return MINILM_ALIASES[1]
    return name


def resolve_device(device: str | None) -> torch.device:
    """``"auto"``/None → CUDA when available, else CPU; otherwise the named device, checked to exist."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; use --device cpu.")
    return resolved


def causal_lm_path(name: str) -> str:
    """The folder or Hub id of a causal LM: the offline SmolLM2's cached folder for ``"smollm2"``."""
    if name in SMOLLM2_ALIASES:
        from ..assets import smollm2_path

        return str(smollm2_path())
    _check_model_name(name)
    return name


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a causal LM (see :func:`causal_lm_path`), without remote code.

    A tokenizer without a padding token gets its end-of-sequence token as padding (batched scoring needs one).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(causal_lm_path(name), trust_remote_code=False)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name: str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` for a causal LM: the offline SmolLM2 for ``"smollm2"``, else a Hub id or folder."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(name)
    model = AutoModelForCausalLM.from_pretrained(causal_lm_path(name), dtype=dtype, trust_remote_code=False)
    return model.to(resolve_device(device)), tokenizer


def _check_model_name(name: str) -> None:
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "", 1)
    if looks_like_path and not Path(name).expanduser().is_dir():
        raise ValueError(
            f"model {name!r} is not an existing folder; pass a local model folder, a Hub id such as "
            f"'org/name', or {SMOLLM2_ALIASES[0]!r} for the offline SmolLM2."
        )


def encoder_path(name: str) -> str:
    """The folder or Hub id of an encoder: the offline all-MiniLM-L6-v2 for ``"minilm"``."""
    if name in MINILM_ALIASES:
        from ..assets import minilm_path

        return str(minilm_path())
    _check_model_name(name)
    return name


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``final`` only when the block finishes.

    An exception or Ctrl-C (``KeyboardInterrupt``) inside the block deletes the temporary folder,
    so ``final`` keeps its previous content (or stays absent) and no half-written folder is left.
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise ValueError(f"{str(final)!r} exists and is not a folder; choose another output path.")
    if final.exists() and not overwrite:
        raise ValueError(f"{str(final)!r} exists; pass overwrite=True or choose another output path.")
    staging = staging_folder(final)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, final)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads, then restore the previous count.

    Small networks (Thermometer, AdUE heads) train much faster on one thread than on several busy ones.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None, *, floatfmt: str = ".3f") -> str:
    """A Markdown table of ``rows`` (dicts); floats printed with ``floatfmt``, missing cells as ``-``."""
    if not rows:
        return ""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return format(value, floatfmt)
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
