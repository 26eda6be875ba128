"""Masking secrets in text shown to people (error messages, CLI output)."""

from __future__ import annotations

import os
import re

# Hub tokens (hf_ and 34 letters or digits), bearer headers and token=... / token: ... values.
_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{30,}|(?i:bearer)\s+\S+|(?i:token)\s*[=:]\s*['\"]?[^\s'\",&)]+")


def scrub_secrets(text: str, *secrets: str | None) -> str:
    """``text`` with ``secrets``, ``$HF_TOKEN`` and anything token-like (``hf_...``, ``Bearer ...``,
    ``token=...``) replaced by ``***``."""
    for secret in (*secrets, os.environ.get("HF_TOKEN")):
        if isinstance(secret, str) and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _TOKEN_LIKE.sub("***", text)
