"""Recipes: the end-to-end jobs behind ``hf-calib`` subcommands, composed from the library's parts.

Each module has a ``cli(args)`` entry point taking the parsed ``argparse.Namespace``; :func:`run` checks the
arguments first (:mod:`.checks`), so a mistake is reported before the recipe imports or loads anything.
"""

from __future__ import annotations

import argparse
from importlib import import_module

from .checks import preflight

_MODULES = {
    "demo": "demo",
    "sft": "sft_cli",
    "eval": "mc_cli",
    "thermometer": "thermometer",
    "adue": "adue",
    "push": "push",
    "specialize": "specialization_cli",
}


def run(command: str, args: argparse.Namespace) -> int | None:
    """Check the parsed arguments of ``command`` (raising :class:`~.checks.UsageError`), then run its recipe."""
    if command not in _MODULES:
        raise ValueError(f"unknown command {command!r}; choose one of {sorted(_MODULES)}.")
    preflight(command, args)
    return import_module(f".{_MODULES[command]}", __name__).cli(args)
