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
    commit = push_folder(
        args.bundle,
        args.repo_id,
        token=token,
        private=args.private or None,
        revision=args.revision,
        commit_message=args.commit_message,
    )
    print(f"uploaded {args.bundle} to {getattr(commit, 'commit_url', None) or args.repo_id}")
    return 0
