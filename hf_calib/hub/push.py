"""Upload a saved bundle folder to the Hugging Face Hub with huggingface_hub (``create_repo`` + ``upload_folder``).

The folder is checked first (manifest readable, every listed file present and parseable), so a partial bundle
is never published. Every file of the folder is uploaded in one ``upload_folder`` call. The token goes to
huggingface_hub only; nothing here prints or logs it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ._files import check_bundle_files, read_manifest

logger = logging.getLogger(__name__)


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
) -> Any:
    """Create ``repo_id`` if needed (a model repository) and upload the bundle in ``folder``; returns ``CommitInfo``.

    Args:
        folder: a bundle written by :meth:`CalibratedAdapter.save_pretrained`.
        repo_id: ``"owner/name"`` (or ``"name"`` for the token's user).
        token: a Hub token with write access (default: huggingface_hub's, e.g. ``HF_TOKEN`` or ``hf auth login``).
        private: visibility of a newly created repository (ignored if it exists).
        revision: branch to commit to (default ``main``); it must exist.
        commit_message, create_pr: as in ``HfApi.upload_folder``.
        endpoint: Hub URL (default: huggingface_hub's, i.e. ``HF_ENDPOINT``).
    """
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or not repo_id or repo_id.count("/") > 1:
        raise ValueError(f"repo_id must be 'owner/name' or 'name'; got {repo_id!r}.")
    folder = Path(folder)
    check_bundle_files(folder, read_manifest(folder)["files"])
    api = HfApi(endpoint=endpoint)
    url = api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    logger.info("hf_calib: uploading the calibrated adapter bundle in %s to %s.", folder, url.repo_id)
    return api.upload_folder(
        repo_id=url.repo_id,
        folder_path=folder,
        commit_message=commit_message,
        token=token,
        repo_type="model",
        revision=revision,
        create_pr=create_pr,
    )
