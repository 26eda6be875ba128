"""A self-contained Markdown report: headed sections of prose, tables and PNG figures beside it."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import format_table


@dataclass
class Report:
    """Collects sections in order and writes ``report.md`` (+ ``results.json``) into one folder.

    Figures are referenced by paths relative to the report, so the folder can be moved or zipped.
    """

    title: str
    sections: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def section(self, heading: str, text: str = "") -> None:
        self.sections.append(f"## {heading}\n\n{text.strip()}\n" if text else f"## {heading}\n")

    def paragraph(self, text: str) -> None:
        self.sections.append(text.strip() + "\n")

    def table(self, rows: list[dict[str, Any]], columns: list[str] | None = None, *, floatfmt: str = ".3f") -> None:
        self.sections.append(format_table(rows, columns, floatfmt=floatfmt) + "\n")

    def figure(self, path: str | Path | None, caption: str, *, root: str | Path) -> None:
        if path is None:
            return
        relative = os.path.relpath(Path(path), Path(root))
        self.sections.append(f"![{caption}]({Path(relative).as_posix()})\n\n*{caption}*\n")

    def render(self) -> str:
        return f"# {self.title}\n\n" + "\n".join(self.sections)

    def write(self, folder: str | Path) -> Path:
        """Write ``report.md`` and ``results.json`` atomically (each via a temporary file and a rename)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _write_text(folder / "results.json", json.dumps(self.results, indent=2, sort_keys=True, default=_plain))
        return _write_text(folder / "report.md", self.render())


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to results.json")


def _write_text(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
