"""Where saved files are read from: a local folder as is, or a Hub snapshot restricted to the files asked for.

Shared by the bundle (:mod:`hf_calib.hub`) and the calibrators (:mod:`hf_calib.scaling`), which must not import
the hub. A local folder never touches the network: an existing folder is used as is, a ``pathlib.Path`` (or any
non-string path) is always local, and so is a string that looks like a path (``./x``, ``/x``, ``~/x``, more
than one ``/``). Anything else must be a valid Hub repository id (``name`` or ``owner/name``), downloaded with
``huggingface_hub.snapshot_download(allow_patterns=...)``, so that nothing but the listed patterns (JSON,
safetensors, ...; never a pickle) is fetched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath


def local_folder(path_or_repo_id: str | os.PathLike[str]) -> Path | None:
    """``path_or_repo_id`` as a local folder when one exists there, else None (nothing is downloaded)."""
    local = Path(path_or_repo_id).expanduser()
    return local if local.is_dir() else None


def hub_repo_id(path_or_repo_id: str | os.PathLike[str], *, argument: str, what: str = "a folder") -> str:
    """``path_or_repo_id`` as a Hub repository id, or ``FileNotFoundError`` naming ``argument``.

    Refused (never sent to the Hub): a non-string path (``pathlib.Path``), an existing file, a string that looks
    like a local path, and a string that huggingface_hub's ``validate_repo_id`` rejects.
    """
    text = os.fspath(path_or_repo_id)
    problem = None
    if not isinstance(path_or_repo_id, str):
        problem = "it is a local path and no folder exists there"
    elif Path(text).expanduser().exists():
        problem = "it exists but is not a folder"
    elif text.startswith((".", "/", "~")) or text.count("/") > 1:
        problem = "it looks like a local path and no folder exists there"
    else:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(text)
        except HFValidationError:
            problem = "no folder exists there and it is not a valid Hub repository id"
    if problem is not None:
        raise FileNotFoundError(
            f"{argument}={text!r} is not {what} (and not a Hub repository id 'owner/name'): {problem}. Pass an "
            "existing local folder or a Hub repository id."
        )
    return text


def check_subfolder(subfolder: str | None) -> str | None:
    """A relative POSIX folder inside a repository (``calibration``), or ``ValueError`` naming ``subfolder``."""
    if subfolder is None or subfolder in ("", "."):
        return None
    parts = PurePosixPath(subfolder).parts if isinstance(subfolder, str) else ()
    if not parts or subfolder.startswith("/") or "\\" in subfolder or any(p in ("..", ".") for p in parts):
        raise ValueError(
            f"subfolder must be a relative folder inside the repository (e.g. 'calibration'); got {subfolder!r}."
        )
    return "/".join(parts)


def download_snapshot(
    repo_id: str,
    *,
    allow_patterns: Sequence[str],
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
) -> Path:
    """``huggingface_hub.snapshot_download`` of ``repo_id`` restricted to ``allow_patterns``; the snapshot folder."""
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            repo_id=repo_id,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            endpoint=endpoint,
            allow_patterns=list(allow_patterns),
        )
    )


def resolve_files(
    path_or_repo_id: str | os.PathLike[str],
    files: Sequence[str],
    *,
    argument: str,
    subfolder: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """The folder holding ``files``: ``path_or_repo_id[/subfolder]`` when it is a local folder, else the Hub
    snapshot of exactly ``[subfolder/]files`` (``revision``, ``token``, ``cache_dir`` as in ``snapshot_download``).

    ``files`` are plain names (no wildcard), so a download fetches those files and nothing else.
    """
    sub = check_subfolder(subfolder)
    local = local_folder(path_or_repo_id)
    if local is not None:
        return local / sub if sub else local
    repo_id = hub_repo_id(path_or_repo_id, argument=argument)
    patterns = [f"{sub}/{name}" if sub else name for name in files]
    snapshot = download_snapshot(repo_id, allow_patterns=patterns, revision=revision, token=token, cache_dir=cache_dir)
    return snapshot / sub if sub else snapshot
