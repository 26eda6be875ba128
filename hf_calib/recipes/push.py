"""``hf-calib push``: upload a saved calibrated-adapter bundle (exactly its files) to the Hugging Face Hub.

The model card goes regenerated for ``--repo-id`` (its usage example loads that repository); the folder on disk
is left as it is. ``--dry-run`` lists every file with its size and what happens to the card.
"""

from __future__ import annotations

import argparse
import difflib
import os
import warnings
from pathlib import Path


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _print_changes(path: Path, content: bytes, saved: str, uploaded: str) -> None:
    """The lines of ``path`` that the upload replaces, as a unified diff."""
    before = path.read_text(encoding="utf-8").splitlines(keepends=True)
    after = content.decode("utf-8").splitlines(keepends=True)
    print("".join(difflib.unified_diff(before, after, fromfile=saved, tofile=uploaded, n=0)), end="")


def cli(args: argparse.Namespace) -> int:
    from .._secrets import scrub_secrets
    from ..hub import BundleError
    from ..hub.push import HubPushError, plan_upload, push_folder

    if not args.bundle.is_dir():
        raise ValueError(f"bundle {str(args.bundle)!r} is not a folder; pass a folder written by save_pretrained.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # what they say is printed below
        # BundleError (a ValueError) for a partial or damaged bundle
        plan = plan_upload(args.bundle, repo_id=args.repo_id)
    for name in plan.ignored:
        print(f"not uploaded (not part of the bundle): {name}")
    if getattr(args, "dry_run", False):
        for name, size in plan.files:
            note = f"; {plan.notes[name]}" if name in plan.notes else ""
            print(f"would upload {name} ({_size(size)}{note})")
        for name, content in plan.contents.items():
            _print_changes(plan.folder / name, content, f"{name} (saved)", f"{name} (uploaded to {args.repo_id})")
        print(f"{len(plan.files)} files, {_size(plan.total_bytes)} to {args.repo_id} (dry run: nothing was uploaded)")
        return 0
    for name, note in plan.notes.items():
        print(f"{name}: {note}")
    # The token is read from the environment and handed to huggingface_hub; it is never printed.
    token = os.environ.get(args.token_env) or None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the ignored files were printed above
            commit = push_folder(
                args.bundle,
                args.repo_id,
                token=token,
                private=args.private or None,
                revision=args.revision,
                commit_message=args.commit_message,
            )
    except (BundleError, ValueError, FileNotFoundError):
        raise
    except HubPushError as exc:
        raise ValueError(
            f"{exc}. Check the network, HF_ENDPOINT, and that ${args.token_env} holds a token with write access."
        ) from None
    except Exception as exc:  # anything else: one line, never the token
        text = scrub_secrets(f"{type(exc).__name__}: {exc}", token)
        raise ValueError(f"uploading to {args.repo_id!r} failed ({text}).") from None
    print(f"uploaded {len(plan.files)} files ({_size(plan.total_bytes)}) to ", end="")
    print(getattr(commit, "commit_url", None) or args.repo_id)
    return 0
