"""Files of a bundle: the manifest, safe reading (JSON and safetensors only), atomic folder writes, Hub download.

Nothing here unpickles: a bundle is JSON plus safetensors plus a PNG and the README, and only those patterns are
downloaded from the Hub. Every check names the file it is about.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MANIFEST_FILE = "calibration.json"
FORMAT = "hf_calib.calibrated_adapter"
FORMAT_VERSION = 1
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
README_FILE = "README.md"
#: What a bundle may contain; downloads are restricted to these patterns (no pickle, no code).
SAFE_PATTERNS = ["*.json", "*.safetensors", "*.png", README_FILE]


class BundleError(ValueError):
    """A bundle folder is missing a file, holds a corrupted one, or is not a calibrated adapter bundle."""


def read_json_file(path: Path, folder: Path) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`BundleError` naming the file if it is missing or unreadable."""
    name = path.relative_to(folder).as_posix()
    if not path.is_file():
        raise BundleError(f"the bundle in {folder} is incomplete: {name} is missing. Save or download it again.")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"the bundle in {folder} is corrupted: {name} is not valid JSON ({err}).") from err
    if not isinstance(content, dict):
        raise BundleError(f"the bundle in {folder} is corrupted: {name} must hold a JSON object.")
    return content


def check_safetensors_file(path: Path, folder: Path) -> None:
    """Parse the header of a safetensors file and check its size (no tensor is loaded)."""
    from safetensors import safe_open

    name = path.relative_to(folder).as_posix()
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for every malformation
        raise BundleError(
            f"the bundle in {folder} is corrupted: {name} is not a valid safetensors file ({err})."
        ) from err


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of ``folder``, checked for format and version."""
    if not (folder / MANIFEST_FILE).is_file():
        extra = " (it holds a PEFT adapter only)" if (folder / ADAPTER_CONFIG_FILE).is_file() else ""
        raise BundleError(
            f"{folder} is not a calibrated adapter bundle{extra}: {MANIFEST_FILE} is missing. "
            "Save one with CalibratedAdapter.save_pretrained()."
        )
    manifest = read_json_file(folder / MANIFEST_FILE, folder)
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{folder / MANIFEST_FILE} is not a calibrated adapter manifest (format {FORMAT!r}).")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"{folder / MANIFEST_FILE} has format_version {version!r}; this hf_calib reads up to {FORMAT_VERSION}. "
            "Upgrade hf_calib."
        )
    if not isinstance(manifest.get("files"), list) or not all(isinstance(f, str) for f in manifest["files"]):
        raise BundleError(f"{folder / MANIFEST_FILE} is corrupted: 'files' must be a list of file names.")
    return manifest


def check_bundle_files(folder: Path, files: Iterable[str]) -> None:
    """Every listed file exists (else the first missing one is named) and JSON / safetensors files parse."""
    root = folder.resolve()
    for name in files:
        path = (folder / name).resolve()
        if root not in path.parents:
            raise BundleError(f"{folder / MANIFEST_FILE} lists {name!r}, which is outside the bundle folder.")
        if not path.is_file():
            raise BundleError(f"the bundle in {folder} is incomplete: {name} is missing. Save or download it again.")
        if name.endswith(".json"):
            read_json_file(folder / name, folder)
        elif name.endswith(".safetensors"):
            check_safetensors_file(folder / name, folder)


def list_files(folder: Path) -> list[str]:
    """Relative POSIX paths of all files under ``folder``, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def write_json_file(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def staging_folder(target: Path) -> Path:
    """A new empty sibling folder of ``target`` to build a bundle in (same file system, so renames are atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))


def check_replaceable(target: Path) -> None:
    """Refuse to replace anything but a missing folder, an empty one or an earlier bundle."""
    if target.exists() and not target.is_dir():
        raise ValueError(f"directory {str(target)!r} is a file; pass a folder path.")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_FILE).is_file():
        raise ValueError(
            f"directory {str(target)!r} is not empty and holds no calibrated adapter bundle; refusing to replace it. "
            "Pass a new or empty folder."
        )


def swap_in(staged: Path, target: Path) -> None:
    """Move the finished ``staged`` folder to ``target``; an earlier bundle there is replaced as a whole.

    The old folder is renamed aside first and deleted only once the new one is in place, so an interruption
    leaves either the old bundle, or the old one aside plus the new one complete, never a half-written bundle.
    """
    if target.exists():
        aside = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, aside)
        try:
            os.replace(staged, target)
        except BaseException:
            os.replace(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staged, target)


def copy_into(source: Path, destination: Path, names: Iterable[str]) -> None:
    """Copy ``names`` from ``source`` into ``destination``, each through a temporary file and a rename."""
    for name in names:
        final = destination / name
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        try:
            shutil.copyfile(source / name, tmp)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def resolve_folder(
    path_or_repo_id: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
) -> Path:
    """A local bundle folder as is, else a Hub snapshot restricted to :data:`SAFE_PATTERNS`."""
    local = Path(path_or_repo_id).expanduser()
    if local.is_dir():
        return local
    text = str(path_or_repo_id)
    if local.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"{text!r} is not a bundle folder (and not a Hub repository id 'owner/name').")
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            repo_id=text,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            endpoint=endpoint,
            allow_patterns=SAFE_PATTERNS,
        )
    )
