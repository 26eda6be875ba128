"""Upload a saved bundle folder to the Hugging Face Hub: exactly the bundle's files, nothing else from the folder.

The upload is an allow-list: the files the manifest lists, the manifest and the model card. Anything else in
the folder (a ``.env`` holding a token, notes, training logs, a stray pickle) stays on disk and is named in a
warning; hidden files are never uploaded, whatever the manifest says. The folder is verified first (manifest
readable, every listed file present with its recorded SHA-256), so a partial or damaged bundle is never
published. The token goes to huggingface_hub only; errors raised here carry no token-like text.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._secrets import scrub_secrets
from ._files import MANIFEST_FILE, README_FILE, check_bundle_files, read_manifest

logger = logging.getLogger(__name__)


class HubPushError(RuntimeError):
    """The upload failed (network, authentication, Hub error); the message carries no token-like text."""


@dataclass
class UploadPlan:
    """What :func:`push_folder` uploads from a bundle folder, and what it leaves out."""

    folder: Path
    #: ``(path in the repository, size in bytes)`` of every file uploaded, sorted.
    files: list[tuple[str, int]] = field(default_factory=list)
    #: Files of the folder that are not part of the bundle (not uploaded), sorted.
    ignored: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def plan_upload(folder: str | os.PathLike[str]) -> UploadPlan:
    """Verify the bundle in ``folder`` and list what an upload would send (see the module docstring).

    Raises:
        BundleError: not a bundle, or a listed file is missing, changed or damaged.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_bundle_files(folder, manifest)
    allowed = set(manifest["files"]) | {MANIFEST_FILE}
    if (folder / README_FILE).is_file():
        allowed.add(README_FILE)
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    # Hidden files (and files in hidden folders) are never uploaded, listed or not.
    upload = [name for name in sorted(allowed) if not any(part.startswith(".") for part in Path(name).parts)]
    return UploadPlan(
        folder=folder,
        files=[(name, (folder / name).stat().st_size) for name in upload],
        ignored=[name for name in present if name not in upload],
    )


def push_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload calibrated adapter (hf_calib)",
    create_pr: bool = False,
    endpoint: str | None = None,
    dry_run: bool = False,
) -> Any:
    """Create ``repo_id`` if needed (a model repository) and upload the bundle in ``folder``; returns ``CommitInfo``.

    Only the bundle's files are uploaded (:func:`plan_upload`); other files of the folder are named in a
    ``UserWarning`` and left out.

    Args:
        folder: a bundle written by :meth:`CalibratedAdapter.save_pretrained`.
        repo_id: ``"owner/name"`` (or ``"name"`` for the token's user).
        token: a Hub token with write access (default: huggingface_hub's, e.g. ``HF_TOKEN`` or ``hf auth login``).
        private: visibility of a newly created repository (ignored if it exists).
        revision: branch to commit to (default ``main``); it must exist.
        commit_message, create_pr: as in ``HfApi.create_commit``.
        endpoint: Hub URL (default: huggingface_hub's, i.e. ``HF_ENDPOINT``).
        dry_run: return the :class:`UploadPlan` without contacting the Hub.

    Raises:
        BundleError: the folder is not a complete, intact bundle (nothing is contacted).
        HubPushError: the Hub refused or could not be reached (message scrubbed of token-like text).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    if not isinstance(repo_id, str) or not repo_id or repo_id.count("/") > 1:
        raise ValueError(f"repo_id must be 'owner/name' or 'name'; got {repo_id!r}.")
    plan = plan_upload(folder)
    if plan.ignored:
        message = (
            f"not uploading {len(plan.ignored)} file(s) of {plan.folder} that are not part of the bundle: "
            f"{', '.join(plan.ignored)}"
        )
        warnings.warn(message, UserWarning, stacklevel=2)
    if dry_run:
        return plan
    api = HfApi(endpoint=endpoint)
    secret = token if isinstance(token, str) else None
    try:
        url = api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
        logger.info("hf_calib: uploading %d bundle files from %s to %s.", len(plan.files), plan.folder, url.repo_id)
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(plan.folder / name)) for name, _ in plan.files
        ]
        return api.create_commit(
            repo_id=url.repo_id,
            operations=operations,
            commit_message=commit_message,
            token=token,
            repo_type="model",
            revision=revision,
            create_pr=create_pr,
        )
    except Exception as exc:  # network, authentication and Hub errors
        text = scrub_secrets(f"{type(exc).__name__}: {exc}", secret)
        raise HubPushError(f"uploading {plan.folder} to {repo_id!r} failed ({text})") from None
