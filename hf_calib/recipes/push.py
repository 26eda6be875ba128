"""``hf-calib push``: upload a saved calibrated-adapter bundle (every file of it) to the Hugging Face Hub."""

from __future__ import annotations

import argparse
import os


def cli(args: argparse.Namespace) -> int:
    from ..hub import push_folder

    if not args.bundle.is_dir():
        raise ValueError(f"bundle {str(args.bundle)!r} is not a folder; pass a folder written by save_pretrained.")
    # The token is read from the environment and handed to huggingface_hub; it is never printed.
    token = os.environ.get(args.token_env) or None
    try:
        commit = push_folder(
            args.bundle,
            args.repo_id,
            token=token,
            private=args.private or None,
            revision=args.revision,
            commit_message=args.commit_message,
        )
    except (ValueError, FileNotFoundError):
        raise
    except Exception as exc:  # network, authentication and Hub errors: one line, never the token
        raise ValueError(
            f"uploading to {args.repo_id!r} failed ({type(exc).__name__}: {exc}). Check the network, HF_ENDPOINT, "
            f"and that ${args.token_env} holds a token with write access."
        ) from exc
    print(f"uploaded {args.bundle} to {getattr(commit, 'commit_url', None) or args.repo_id}")
    return 0
