"""Recipes: the end-to-end jobs behind ``hf-calib`` subcommands, composed from the library's parts.

Each module has a ``cli(args)`` entry point taking the parsed ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
from importlib import import_module

_MODULES = {
    "demo": "demo",
    "sft": "sft_cli",
    "eval": "mc_cli",
    "thermometer": "thermometer",
    "adue": "adue",
    "push": "push",
}


def run(command: str, args: argparse.Namespace) -> int | None:
    """Run the recipe of ``command`` with the parsed arguments."""
    if command not in _MODULES:
        raise ValueError(f"unknown command {command!r}; choose one of {sorted(_MODULES)}.")
    return import_module(f".{_MODULES[command]}", __name__).cli(args)
