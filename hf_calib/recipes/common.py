"""Pieces every recipe needs: loading models by name, devices, and folders that appear only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .._folders import staging_folder, swap_in

# The aliases, resolve_device and check_model_path live with the pre-flight checks, which must not import torch.
from .checks import MINILM_ALIASES, SMOLLM2_ALIASES, check_model_path, resolve_device


def hub_id(name: str) -> str:
    """The Hub id of an offline alias (for model cards); other names are returned as they are."""
    if name in SMOLLM2_ALIASES:
        return SMOLLM2_ALIASES[1]
    if name in MINILM_ALIASES:
        return MINILM_ALIASES[1]
    return name


def causal_lm_path(name: str) -> str:
    """The folder or Hub id of a causal LM: the offline SmolLM2's cached folder for ``"smollm2"``."""
    if name in SMOLLM2_ALIASES:
        from ..assets import smollm2_path

        return str(smollm2_path())
    check_model_path(name)
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


def load_causal_lm(
    name: str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, tokenizer: Any = None
):
    """``(model, tokenizer)`` for a causal LM: the offline SmolLM2 for ``"smollm2"``, else a Hub id or folder.

    ``tokenizer``: one already loaded with :func:`load_tokenizer` (else it is loaded here).
    """
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(name)
    model = AutoModelForCausalLM.from_pretrained(causal_lm_path(name), dtype=dtype, trust_remote_code=False)
    return model.to(resolve_device(device)), tokenizer


def encoder_path(name: str) -> str:
    """The folder or Hub id of an encoder: the offline all-MiniLM-L6-v2 for ``"minilm"``."""
    if name in MINILM_ALIASES:
        from ..assets import minilm_path

        return str(minilm_path())
    check_model_path(name)
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
