"""Upload a saved bundle folder to the Hugging Face Hub: exactly the bundle's files, nothing else from the folder.

The upload is an allow-list: the files the manifest lists, the manifest and the model card. Anything else in
the folder (a ``.env`` holding a token, notes, training logs, a stray pickle) stays on disk and is named in a
warning; hidden files are never uploaded, whatever the manifest says. The folder is verified first (manifest
readable, every listed file present with its recorded SHA-256), so a partial or damaged bundle is never
published. The token goes to huggingface_hub only; errors raised here carry no token-like text.

The model card is written for the target repository: the saved ``README.md`` names the repository id given at
save time (or ``path/to/this/folder``) in its usage example, so the uploaded one is regenerated from it in
memory (:func:`hf_calib.hub.card.card_for_repo`): exactly what ``save_pretrained(..., repo_id=repo_id)`` writes.
The folder itself is never modified; the README is not among the checksummed files, so the bundle still
verifies.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .._secrets import scrub_secrets
from ._files import MANIFEST_FILE, README_FILE, check_bundle_files, read_manifest
from .card import card_for_repo

logger = logging.getLogger(__name__)
_AS_SAVED = "uploaded as saved"


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
    #: Files uploaded from memory instead of from the folder: ``README.md`` regenerated for :attr:`repo_id`.
    contents: dict[str, bytes] = field(default_factory=dict)
    #: What happens to a file on the way (``{"README.md": "model card regenerated for me/x"}``).
    notes: dict[str, str] = field(default_factory=dict)
    #: The repository the plan was made for (the card is written for it); None: the README goes as saved.
    repo_id: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def _check_repo_id(repo_id: Any) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        valid = isinstance(repo_id, str) and bool(repo_id) and validate_repo_id(repo_id) is None
    except HFValidationError:
        valid = False
    if not valid:
        raise ValueError(f"repo_id must be 'owner/name' or 'name' (a valid Hub repository id); got {repo_id!r}.")
    return repo_id


def plan_upload(folder: str | os.PathLike[str], repo_id: str | None = None) -> UploadPlan:
    """Verify the bundle in ``folder`` and list what an upload would send (see the module docstring).

    With ``repo_id``, the model card is regenerated for that repository (:attr:`UploadPlan.contents`; sizes are
    those of what is uploaded). A README that is not an hf_calib card (no usage example) goes as saved, with a
    ``UserWarning``.

    Raises:
        BundleError: not a bundle, or a listed file is missing, changed or damaged.
        ValueError: ``repo_id`` is not a valid Hub repository id.
    """
    if repo_id is not None:
        _check_repo_id(repo_id)  # before anything is read: the card would embed it
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_bundle_files(folder, manifest)
    allowed = set(manifest["files"]) | {MANIFEST_FILE}
    if (folder / README_FILE).is_file():
        allowed.add(README_FILE)
    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    # Hidden files (and files in hidden folders) are never uploaded, listed or not.
    upload = [name for name in sorted(allowed) if not any(part.startswith(".") for part in Path(name).parts)]
    plan = UploadPlan(folder=folder, ignored=[name for name in present if name not in upload], repo_id=repo_id)
    if repo_id is not None and README_FILE in upload:
        _retarget_card(plan, manifest, repo_id)
    plan.files = [
        (name, len(plan.contents[name]) if name in plan.contents else (folder / name).stat().st_size) for name in upload
    ]
    return plan


def _retarget_card(plan: UploadPlan, manifest: dict[str, Any], repo_id: str) -> None:
    """Put the README regenerated for ``repo_id`` into ``plan.contents`` (or a warning into ``plan.notes``)."""
    card = manifest.get("card")
    model_name = card.get("model_name") if isinstance(card, dict) else None
    text = new = None
    try:
        with open(plan.folder / README_FILE, encoding="utf-8", newline="") as handle:  # keep its line endings
            text = handle.read()
        new = card_for_repo(text, repo_id, model_name=model_name if isinstance(model_name, str) else None)
    except (ValueError, TypeError, yaml.YAMLError):  # not UTF-8, or metadata that does not parse: not hf_calib's
        new = None
    plan.contents.pop(README_FILE, None)
    plan.repo_id = repo_id
    if new is None:
        why = f"it is not an hf_calib model card (no usage example to point at {repo_id})"
        plan.notes[README_FILE] = f"{_AS_SAVED}: {why}"
        warnings.warn(f"{plan.folder / README_FILE}: {plan.notes[README_FILE]}.", UserWarning, stacklevel=3)
    elif new == text:
        plan.notes[README_FILE] = f"model card already written for {repo_id}"
    else:
        plan.contents[README_FILE] = new.encode("utf-8")
        plan.notes[README_FILE] = f"model card regenerated for {repo_id}"


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
    ``UserWarning`` and left out. The model card is regenerated for the repository (its usage example loads
    ``repo_id``; for a bare ``"name"``, the ``"owner/name"`` the Hub answers); the folder is not modified.

    Args:
        folder: a bundle written by :meth:`CalibratedAdapter.save_pretrained`.
        repo_id: ``"owner/name"`` (or ``"name"`` for the token's user).
        token: a Hub token with write access (default: huggingface_hub's, e.g. ``HF_TOKEN`` or ``hf auth login``).
        private: visibility of a newly created repository (ignored if it exists).
        revision: branch to commit to (default ``main``); it must exist.
        commit_message, create_pr: as in ``HfApi.create_commit``.
        endpoint: Hub URL (default: huggingface_hub's, i.e. ``HF_ENDPOINT``).
        dry_run: return the :class:`UploadPlan` (regenerated card included) without contacting the Hub.

    Raises:
        BundleError: the folder is not a complete, intact bundle (nothing is contacted).
        HubPushError: the Hub refused or could not be reached (message scrubbed of token-like text).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    plan = plan_upload(folder, repo_id=_check_repo_id(repo_id))
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
        note = plan.notes.get(README_FILE, _AS_SAVED)
        if "/" not in repo_id and url.repo_id != repo_id and not note.startswith(_AS_SAVED):
            # A bare name lands in the token's namespace: the card's example loads the full id.
            _retarget_card(plan, read_manifest(plan.folder), url.repo_id)
            plan.files = [(name, len(plan.contents.get(name, b"")) or size) for name, size in plan.files]
        logger.info("hf_calib: uploading %d bundle files from %s to %s.", len(plan.files), plan.folder, url.repo_id)
        operations = [
            CommitOperationAdd(
                path_in_repo=name,
                path_or_fileobj=plan.contents[name] if name in plan.contents else str(plan.folder / name),
            )
            for name, _ in plan.files
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
