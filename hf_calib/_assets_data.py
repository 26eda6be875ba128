"""Readers of the offline data sets behind :mod:`hf_calib.assets`: path or rows in, plain rows out.

Nothing here locates an installed package or builds a ``datasets.Dataset``; :mod:`hf_calib.assets`
does both and re-exports the public readers (``read_mmlu_jsonl``, ``read_movie_reviews_csv``,
``sharegpt_to_messages``).
"""

from __future__ import annotations

import codecs
import csv
import difflib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be None or a positive integer; got {value!r}.")


# ----------------------------------------------------------------------------------------------
# MMLU
# ----------------------------------------------------------------------------------------------


def read_mmlu_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows ``{question, choices: [4 str], answer: 0-3, subject}`` of an MMLU jsonl file.

    Input lines have ``question, answer_a..answer_d, correct_answer, topic``; lines whose
    ``correct_answer`` is not one of A-D (two stray header rows in the shipped file) are dropped.
    """
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                letter = record["correct_answer"]
                row = {
                    "question": record["question"],
                    "choices": [record[f"answer_{c}"] for c in "abcd"],
                    "subject": record["topic"],
                }
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{lineno} is not an MMLU record ({type(err).__name__}: {err}).") from None
            if letter in ("A", "B", "C", "D"):
                rows.append({**row, "answer": "ABCD".index(letter)})
    return rows


def _normalize_subject(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def select_mmlu_rows(
    rows: list[dict[str, Any]], subjects: str | Iterable[str] | None, limit_per_subject: int | None
) -> list[dict[str, Any]]:
    """The rows of ``subjects`` (case and ``_`` vs space ignored), the first ``limit_per_subject`` of each."""
    if subjects is not None:
        known = {_normalize_subject(r["subject"]): r["subject"] for r in rows}
        names = [subjects] if isinstance(subjects, str) else list(subjects)
        if not names:
            raise ValueError("subjects must be None (all) or name at least one subject; got an empty list.")
        wanted = set()
        for name in names:
            if not isinstance(name, str) or _normalize_subject(name) not in known:
                close = difflib.get_close_matches(_normalize_subject(str(name)), sorted(known), n=3)
                hint = f"; did you mean {close}?" if close else "; see hf_calib.assets.mmlu_subjects()."
                raise ValueError(f"subjects: unknown MMLU subject {name!r}{hint}")
            wanted.add(known[_normalize_subject(name)])
        rows = [r for r in rows if r["subject"] in wanted]
    if limit_per_subject is not None:
        seen: dict[str, int] = {}
        kept = []
        for r in rows:
            seen[r["subject"]] = seen.get(r["subject"], 0) + 1
            if seen[r["subject"]] <= limit_per_subject:
                kept.append(r)
        rows = kept
    return rows


# ----------------------------------------------------------------------------------------------
# Movie reviews
# ----------------------------------------------------------------------------------------------


def read_movie_reviews_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows ``{text, label: 0/1, source}`` of a ``text,label,source`` CSV (IMDB reviews are long)."""
    limit = 2**31 - 1  # the C long on every platform; the default 131,072 is too small for IMDB
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)
    rows = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"text", "label", "source"} <= set(reader.fieldnames):
            raise ValueError(f"{path} must have the columns text, label, source; got {reader.fieldnames}.")
        for row in reader:
            if row["label"] not in ("0", "1"):
                raise ValueError(f"{path}, line {reader.line_num}: label must be 0 or 1; got {row['label']!r}.")
            rows.append({"text": row["text"], "label": int(row["label"]), "source": row["source"]})
    return rows


# ----------------------------------------------------------------------------------------------
# ShareGPT
# ----------------------------------------------------------------------------------------------


def _check_conversation(obj: Any, index: int) -> dict[str, Any]:
    turns = obj.get("conversations") if isinstance(obj, dict) else None
    if not (
        isinstance(turns, list)
        and all(
            isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str) for t in turns
        )
    ):
        raise ValueError(f"ShareGPT item {index} is not {{'id', 'conversations': [{{'from', 'value'}}]}}.")
    return {"id": str(obj.get("id", index)), "conversations": [{"from": t["from"], "value": t["value"]} for t in turns]}


def iter_sharegpt_items(
    fh: IO[bytes], path: str | os.PathLike[str], limit: int | None, chunk_bytes: int
) -> Iterator[dict[str, Any]]:
    """The checked items of the ShareGPT JSON array read from the open binary file ``fh`` (named ``path``).

    Decodes one item at a time from ``chunk_bytes`` reads; the first item that cannot be decoded
    once the end of the file is reached is the truncated tail and is dropped.
    """
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()  # bytes cut mid-character at the tail are never flushed
    buf, pos, eof, started, count = "", 0, False, False, 0
    while limit is None or count < limit:
        while pos < len(buf) and (buf[pos].isspace() or (started and buf[pos] == ",")):
            pos += 1
        if pos < len(buf) and not started:
            if buf[pos] != "[":
                raise ValueError(f"{path} is not a JSON array (it starts with {buf[pos]!r}).")
            started, pos = True, pos + 1
            continue
        if pos < len(buf) and buf[pos] == "]":
            return
        item = None
        if pos < len(buf):
            if buf[pos] != "{":
                raise ValueError(f"{path}: item {count} is not a JSON object (starts with {buf[pos]!r}).")
            try:
                item, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                item = None  # incomplete so far: read more, or at the end of the file it is the cut-off tail
        if item is None:
            if eof:
                if not started:
                    raise ValueError(f"{path} is empty; expected a JSON array of ShareGPT items.")
                return
            chunk = fh.read(chunk_bytes)
            eof = not chunk
            buf, pos = buf[pos:] + utf8.decode(chunk), 0
            continue
        yield _check_conversation(item, count)
        pos, count = end, count + 1


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant"}


def sharegpt_to_messages(conversations: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """Chat ``messages`` from ShareGPT turns: human/user -> ``user``, gpt/chatgpt -> ``assistant``.

    Other speakers (system, bing, bard) are dropped; the result starts with a user message, ends
    with an assistant message and alternates (it stops before the first repeated role).
    """
    messages: list[dict[str, str]] = []
    for turn in conversations:
        role = _SHAREGPT_ROLES.get(turn["from"])
        if role is None or (not messages and role != "user"):
            continue
        if messages and messages[-1]["role"] == role:
            break
        messages.append({"role": role, "content": turn["value"]})
    if messages and messages[-1]["role"] == "user":
        messages.pop()
    return messages


def first_exchanges(
    items: Iterable[dict[str, Any]], limit: int | None, max_chars: int | None
) -> tuple[list[str], list[list[dict[str, str]]]]:
    """``(ids, [user, assistant] pairs)``: the first exchange of each item, as ``load_sharegpt_turns`` keeps them."""
    ids, chats = [], []
    for item in items:
        pair = sharegpt_to_messages(item["conversations"])[:2]
        if len(pair) < 2 or not all(m["content"].strip() for m in pair):
            continue
        if max_chars is not None and len(pair[0]["content"]) + len(pair[1]["content"]) > max_chars:
            continue
        ids.append(item["id"])
        chats.append(pair)
        if limit is not None and len(chats) >= limit:
            break
    return ids, chats


# ----------------------------------------------------------------------------------------------
# Chatterbot corpus
# ----------------------------------------------------------------------------------------------


def read_chatterbot_yaml(path: str | os.PathLike[str]) -> tuple[list[str], list[list[str]]]:
    """``(categories, conversations)`` of one chatterbot-corpus ``.yml`` file; a conversation is a list of turns.

    Items that are not a list of at least two strings are skipped: the shipped ``trivia.yml`` (1.3.3)
    has one entry whose question and answer were merged into a single string by a missing ``-``.
    """
    import yaml  # a dependency of transformers and huggingface-hub

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict) or not isinstance(data.get("conversations"), list):
        raise ValueError(f"{path} is not a chatterbot corpus file (a mapping with a 'conversations' list).")
    categories = [str(c) for c in data.get("categories") or []]
    conversations = [
        [turn.strip() for turn in item]
        for item in data["conversations"]
        if isinstance(item, list) and len(item) >= 2 and all(isinstance(turn, str) for turn in item)
    ]
    return categories, conversations


def chatterbot_files(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """``{category: path}`` of the ``.yml`` files in a chatterbot-corpus language folder."""
    folder = Path(folder)
    files = {f.stem: f for f in sorted(folder.glob("*.yml"))} if folder.is_dir() else {}
    if not files:
        raise FileNotFoundError(f"{str(folder)!r} is not a folder of chatterbot-corpus .yml files.")
    return files


def chatterbot_first_exchanges(
    folder: str | os.PathLike[str], categories: str | Iterable[str] | None
) -> list[tuple[str, str, str]]:
    """``(category, prompt, response)``: the first two turns of each conversation, exact duplicates dropped."""
    files = chatterbot_files(folder)
    names = list(files) if categories is None else [categories] if isinstance(categories, str) else list(categories)
    if not names or any(name not in files for name in names):
        raise ValueError(f"categories must be None (all) or names from {sorted(files)}; got {categories!r}.")
    rows: dict[tuple[str, str, str], None] = {}
    for name in names:
        for turns in read_chatterbot_yaml(files[name])[1]:
            rows.setdefault((name, turns[0], turns[1]), None)
    return list(rows)
