"""Files of saved calibrators (temperature, Thermometer, AdUE head): atomic writes, JSON reading, and
safetensors checks made before any tensor is allocated.

Each file is written under a temporary name, then renamed into place. On loading, a safetensors file's header
(names, shapes, dtypes; no tensor data) is compared with what the JSON config implies before a module is built,
so a tampered size in a config fails at once instead of allocating it, and loaded tensors must be finite.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open


def default_mode(*, directory: bool) -> int:
    """The permissions a normally created file (0o666) or folder (0o777) gets under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` for a temporary file in ``path``'s folder, then rename it to ``path``.

    A crash mid-write leaves the previous ``path`` (if any) intact and no partial file behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file private (0600); give it the permissions of a normally created file.
        os.chmod(tmp, default_mode(directory=False))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    """Write ``content`` as indented JSON, atomically."""

    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2, sort_keys=True, allow_nan=False)
            handle.write("\n")

    write_atomic(path, dump)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON object, with an error that names the missing or broken file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist; save it with save_pretrained() first.")
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what}: {path} is not valid JSON ({err}).") from err
    if not isinstance(content, dict):
        raise ValueError(f"{what}: {path} must hold a JSON object.")
    return content


# ------------------------------------------------------------------------------------------ safetensors checks
#: safetensors' dtype names of the floating-point torch dtypes a calibrator may be saved in.
FLOAT_DTYPES: dict[torch.dtype, str] = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
}
TORCH_DTYPES: dict[str, torch.dtype] = {name: dtype for dtype, name in FLOAT_DTYPES.items()}
_MAX_PROBLEMS = 6


def read_safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype name)}`` of a safetensors file, read from its header only (no tensor is loaded)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; save the calibrator with save_pretrained() first.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = {}
            for name in handle.keys():
                tensor = handle.get_slice(name)
                header[name] = (tuple(int(n) for n in tensor.get_shape()), str(tensor.get_dtype()))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}).") from err
    return header


def check_header(
    path: Path,
    header: Mapping[str, tuple[tuple[int, ...], str]],
    expected: Mapping[str, tuple[tuple[int, ...], str]],
    *,
    source: str,
    why: Mapping[str, str] | None = None,
    allowed_dtypes: Collection[str] = (),
    dtype_source: str = "the config",
) -> None:
    """Raise ``ValueError`` unless ``header`` holds exactly the tensors ``expected`` (names, shapes, dtypes).

    ``expected[name] = (shape, dtype)`` is what ``source`` (the config file) implies; ``dtype`` ``""`` accepts any
    of ``allowed_dtypes``. ``why[name]`` names the config fields a tensor's shape comes from and ``dtype_source``
    the field the dtype comes from, for the message.
    """
    why = why or {}
    problems = [
        f"missing tensor {name!r} ({why.get(name, 'listed in the config')})" for name in expected if name not in header
    ]
    problems += [f"unexpected tensor {name!r}" for name in header if name not in expected]
    for name, (shape, dtype) in expected.items():
        if name not in header:
            continue
        found_shape, found_dtype = header[name]
        if tuple(found_shape) != tuple(shape):
            reason = f" from {why[name]}" if name in why else ""
            problems.append(f"tensor {name!r}: expected shape {tuple(shape)}{reason}, found {tuple(found_shape)}")
        if dtype and found_dtype != dtype:
            problems.append(f"tensor {name!r}: expected dtype {dtype} from {dtype_source}, found {found_dtype}")
        elif not dtype and found_dtype not in allowed_dtypes:
            problems.append(f"tensor {name!r}: expected a floating dtype {sorted(allowed_dtypes)}, found {found_dtype}")
    if problems:
        shown = problems[:_MAX_PROBLEMS]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more")
        raise ValueError(
            f"{path} does not match {source}: {'; '.join(shown)}. Save the weights and the config together "
            "(save_pretrained) and do not edit either."
        )


def check_finite_tensors(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise ``ValueError`` naming the first tensor of ``tensors`` that holds NaN or +-inf."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = ~torch.isfinite(tensor)
            kind = "NaN" if bool(torch.isnan(tensor).any()) else "inf"
            raise ValueError(
                f"{where}: tensor {name!r} holds {int(bad.sum())} non-finite value(s) ({kind}); "
                "a calibrator with NaN or inf weights would give NaN probabilities."
            )
