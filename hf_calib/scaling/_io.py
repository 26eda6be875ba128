"""Safe saving of calibrators: each file is written under a temporary name, then renamed into place."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


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
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    """Write ``content`` as indented JSON, atomically."""

    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2, sort_keys=True)
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
