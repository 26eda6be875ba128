"""The bundle's own files written next to an adapter that someone else (Trainer) saves and uploads."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ._files import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, MANIFEST_FILE, copy_into
from .bundle import CalibratedAdapter

__all__ = ["write_alongside_adapter"]


def write_alongside_adapter(
    bundle: CalibratedAdapter,
    folders: list[Path],
    *,
    repo_id: str | None = None,
    adapter_source: Path | None = None,
) -> tuple[list[str], list[str]]:
    """Write ``bundle``'s files except the adapter's into each of ``folders``.

    Returns ``(written, components)``: the names written into every folder (the manifest last) and the
    bundle's component files as :meth:`CalibratedAdapter.write_components` listed them.

    The manifest records the checksums of the adapter files in ``adapter_source`` (the checkpoint Trainer
    copies them from) when it holds them, else of the adapter as PEFT saves it now (what Trainer's
    ``save_model`` writes next). The files are staged outside the folders, so nothing half-written can ride
    along with an upload, and the manifest is copied after the files it describes.
    """
    staged = Path(tempfile.mkdtemp(prefix="hf_calib_bundle_"))
    try:
        components = bundle.write_components(staged)
        adapter_files = [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE]
        if adapter_source is not None and all((adapter_source / name).is_file() for name in adapter_files):
            copy_into(adapter_source, staged, adapter_files)
        names = bundle.write_manifest(staged, components, repo_id=repo_id)
        own = [name for name in names if name not in adapter_files and (staged / name).is_file()]
        own.sort(key=lambda name: name == MANIFEST_FILE)
        for folder in folders:
            copy_into(staged, folder, own)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return own, components
