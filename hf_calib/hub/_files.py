"""Files of a bundle: the manifest, safe reading (JSON and safetensors only), atomic folder writes, Hub download.

Nothing here unpickles: a bundle is JSON plus safetensors plus a PNG and the README, and only those patterns are
downloaded from the Hub. Every check names the file it is about.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._download import download_snapshot, hub_repo_id, local_folder
from .._folders import recoverable
from .._safe_files import write_atomic

MANIFEST_FILE = "calibration.json"
FORMAT = "hf_calib.calibrated_adapter"
FORMAT_VERSION = 2
#: Bundles written before this version record no checksums and are refused.
MIN_FORMAT_VERSION = 2
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
    """The manifest of ``folder``, checked for format, version and the shape of its file table."""
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
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"{folder / MANIFEST_FILE} has format_version {version!r}; this hf_calib reads up to {FORMAT_VERSION}. "
            "Upgrade hf_calib."
        )
    if version < MIN_FORMAT_VERSION:
        raise BundleError(
            f"{folder / MANIFEST_FILE} has format_version {version}, written before bundles recorded checksums, so "
            "its files cannot be verified. Save the bundle again with this hf_calib."
        )
    files = manifest.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
        raise BundleError(f"{folder / MANIFEST_FILE} is corrupted: 'files' must be a list of file names.")
    for name in files:
        check_member_name(folder, name)
    checksums = manifest.get("checksums")
    if not isinstance(checksums, dict) or set(checksums) != set(files):
        raise BundleError(
            f"{folder / MANIFEST_FILE} is corrupted: 'checksums' must give the SHA-256 and size of every listed file."
        )
    for name in files:
        entry = checksums[name]
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
            or isinstance(entry.get("size"), bool)
            or not isinstance(entry.get("size"), int)
            or entry["size"] < 0
        ):
            raise BundleError(
                f"{folder / MANIFEST_FILE} is corrupted: the checksum of {name} must be "
                '{"sha256": <64 hex digits>, "size": <bytes>}.'
            )
    return manifest


def check_member_name(folder: Path, name: str) -> None:
    """Refuse a listed file name that leaves the folder, is hidden, or is not a plain relative path."""
    parts = Path(name).parts
    if (
        not parts
        or Path(name).is_absolute()
        or "\\" in name
        or any(part in ("..", ".") or part.startswith(".") for part in parts)
        or name != Path(name).as_posix()
    ):
        raise BundleError(
            f"{folder / MANIFEST_FILE} lists {name!r}, which is not a plain file path inside the bundle folder "
            "(no '..', no absolute path, no hidden file)."
        )
    root = folder.resolve()
    if root not in (folder / name).resolve().parents:
        raise BundleError(f"{folder / MANIFEST_FILE} lists {name!r}, which is outside the bundle folder.")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_checksums(folder: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"sha256": hex, "size": bytes}}`` of the files ``names`` of ``folder``."""
    return {name: {"sha256": sha256_of(folder / name), "size": (folder / name).stat().st_size} for name in names}


def verify_checksums(folder: Path, manifest: dict[str, Any]) -> None:
    """Every listed file exists with the recorded size and SHA-256; else :class:`BundleError` naming it."""
    for name in manifest["files"]:
        path = folder / name
        if not path.is_file():
            raise BundleError(f"the bundle in {folder} is incomplete: {name} is missing. Save or download it again.")
        expected = manifest["checksums"][name]
        size = path.stat().st_size
        digest = sha256_of(path) if size == expected["size"] else None
        if size != expected["size"] or digest != expected["sha256"]:
            found = f"{size} bytes" if digest is None else f"SHA-256 {digest[:16]}..., {size} bytes"
            raise BundleError(
                f"the bundle in {folder} is corrupted: {name} does not match its checksum (expected SHA-256 "
                f"{expected['sha256'][:16]}..., {expected['size']} bytes; found {found}). It was changed or damaged "
                "after saving: save or download the bundle again."
            )


def check_bundle_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Checksums match (:func:`verify_checksums`), then JSON files parse and safetensors headers are valid."""
    verify_checksums(folder, manifest)
    for name in manifest["files"]:
        if name.endswith(".json"):
            read_json_file(folder / name, folder)
        elif name.endswith(".safetensors"):
            check_safetensors_file(folder / name, folder)


def check_finite_tensors(folder: Path, names: Iterable[str]) -> None:
    """Every tensor of the safetensors files ``names`` holds finite values; else :class:`BundleError` naming it."""
    import torch
    from safetensors import safe_open

    for name in names:
        if not name.endswith(".safetensors"):
            continue
        with safe_open(str(folder / name), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise BundleError(
                        f"the bundle in {folder} holds non-finite values (NaN or inf) in tensor {key!r} of {name}; "
                        "the model it was saved from had diverged. Fix the training and save it again."
                    )


def list_files(folder: Path) -> list[str]:
    """Relative POSIX paths of all files under ``folder``, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def write_json_file(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` as indented JSON through a temporary file and a rename (never a half-written file)."""
    text = json.dumps(content, indent=2, sort_keys=True) + "\n"
    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def check_replaceable(target: Path) -> None:
    """Refuse to replace anything but a missing folder, an empty one or an earlier bundle."""
    if target.exists() and not target.is_dir():
        raise ValueError(f"directory {str(target)!r} is a file; pass a folder path.")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_FILE).is_file():
        raise ValueError(
            f"directory {str(target)!r} is not empty and holds no calibrated adapter bundle; refusing to replace it. "
            "Pass a new or empty folder."
        )


def copy_into(source: Path, destination: Path, names: Iterable[str]) -> None:
    """Copy ``names`` from ``source`` into ``destination``, each through a temporary file and a rename."""
    for name in names:
        write_atomic(destination / name, lambda tmp, src=source / name: shutil.copyfile(src, tmp))


def resolve_folder(
    path_or_repo_id: str | os.PathLike[str],
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
) -> Path:
    """A local bundle folder as is, else a Hub snapshot restricted to :data:`SAFE_PATTERNS`.

    A ``pathlib.Path`` or a string that looks like a path is never sent to the Hub (:mod:`hf_calib._download`).
    """
    local = local_folder(path_or_repo_id)
    if local is not None:
        return local
    aside = recoverable(Path(path_or_repo_id).expanduser(), MANIFEST_FILE)
    if aside is not None:
        # A save was killed between moving the old bundle aside and moving the new one in (only where the
        # system has no atomic exchange); the old bundle is intact there, and the next save moves it back.
        return aside
    repo_id = hub_repo_id(path_or_repo_id, argument="path_or_repo_id", what="a bundle folder")
    return download_snapshot(
        repo_id, allow_patterns=SAFE_PATTERNS, revision=revision, token=token, cache_dir=cache_dir, endpoint=endpoint
    )
