"""Pre-flight checks: every argument of a subcommand is validated before any model, data or training is touched.

:func:`preflight` runs the checks of one subcommand on the parsed arguments (``recipes.run`` calls it before
importing the recipe). A failed check raises :class:`UsageError`, which ``hf-calib`` prints as one line
(``hf-calib SUB: error: ...``) with exit code 2. The checks also put the arguments in the form the recipes
use: MMLU subject names are replaced by their canonical spelling and the default subject lists are filled in.

Cheap checks (files, folders, counts, names written as paths) run first, without importing torch. The models,
the MMLU subject list and the device then import torch/transformers, but only read small files: an offline
alias is located (not converted), a local folder's or a cached Hub id's ``config.json`` is parsed, and a Hub
id that is not in the cache costs one metadata request (no retries).

This module imports nothing heavy at import time; :mod:`.common` re-exports the helpers it shares with the
recipes (the offline aliases, :func:`resolve_device`, :func:`check_model_path`).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Names that select the offline models of hf_calib.assets instead of a Hub id or a local path.
SMOLLM2_ALIASES = ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct")
MINILM_ALIASES = ("minilm", "sentence-transformers/all-MiniLM-L6-v2")


class UsageError(ValueError):
    """A mistake in the command line: ``hf-calib`` prints the message as one line and exits with code 2."""


#: What a model must be loadable as (``kind`` of :func:`check_model`).
CAUSAL_LM = "causal LM"
ENCODER = "sequence classifier"


# ------------------------------------------------------------------------------------------------ files
def check_output_dir(path: Path, earlier_output: str, flag: str = "--output-dir") -> None:
    """``path`` can receive a recipe's output: it is missing, an empty folder, or an earlier output of the same
    recipe (it holds ``earlier_output``), and its parent folder is writable.

    The recipes replace the output folder as a whole when they finish: any other folder would be lost.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {str(path)!r} exists and is not a folder; choose another output folder.")
    if path.is_dir() and any(path.iterdir()) and not (path / earlier_output).exists():
        raise UsageError(
            f"{flag} {str(path)!r} is not empty and holds no earlier output of this command (no {earlier_output}); "
            "it would be replaced as a whole: pass a new or empty folder."
        )
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is inside {str(existing)!r}, which is a file; choose another folder.")
    # The output is written to a sibling folder and renamed into place: the parent folder must be writable.
    writable = path.parent.absolute() if path.parent.exists() else existing
    if not os.access(writable, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {str(path)!r}: {str(writable)!r} is not writable; choose another output folder.")


def check_adapter(path: Path | None, flag: str = "--adapter") -> None:
    """``path`` (when given) is a PEFT adapter folder: it holds a readable ``adapter_config.json``."""
    if path is None:
        return
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UsageError(
            f"{flag} {str(path)!r} is not a folder; pass a PEFT adapter folder, e.g. DIR/adapter of hf-calib sft."
        )
    config = path / "adapter_config.json"
    if not config.is_file():
        raise UsageError(
            f"{flag} {str(path)!r} has no adapter_config.json; pass a PEFT adapter folder, e.g. DIR/adapter of "
            "hf-calib sft."
        )
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{flag} {str(path)!r}: adapter_config.json is not readable JSON ({exc}).") from None


# ------------------------------------------------------------------------------------------------ device
def resolve_device(device: str | None) -> torch.device:
    """``"auto"``/None → CUDA when available, else CPU; otherwise the named device, checked to exist here."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {device!r}.")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available; use 'cpu' or 'auto'.")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {device!r} does not exist: this machine has cuda:0 to cuda:{count - 1}.")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} was asked for but MPS (Apple GPU) is not available; use 'cpu' or 'auto'.")
    return resolved


def check_device(device: str, flag: str = "--device") -> None:
    """``device`` exists on this machine (``auto`` always does)."""
    try:
        resolve_device(device)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


# ------------------------------------------------------------------------------------------------ MMLU subjects
def canonical_subjects(names: Sequence[str], flag: str) -> list[str]:
    """The installed MMLU spelling of each of ``names`` (case and ``_`` vs space ignored), checked to exist."""
    from ..assets import _normalize_subject, mmlu_subjects

    try:
        known = {_normalize_subject(s): s for s in mmlu_subjects()}
    except FileNotFoundError as exc:  # AssetNotFoundError: the message is the pip command that fixes it
        raise UsageError(f"{flag} needs the offline MMLU questions: {exc}") from None
    out: list[str] = []
    for name in names:
        subject = known.get(_normalize_subject(name))
        if subject is None:
            close = difflib.get_close_matches(_normalize_subject(name), sorted(known), n=3)
            hint = (
                f"did you mean {' or '.join(repr(c) for c in close)}?"
                if close
                else f"hf_calib.assets.mmlu_subjects() lists the {len(known)} subjects; quote names that have spaces."
            )
            raise UsageError(f"{flag}: {name!r} is not an MMLU subject; {hint}")
        if subject in out:
            raise UsageError(f"{flag} names {subject!r} twice; list each subject once.")
        out.append(subject)
    return out


# ------------------------------------------------------------------------------------------------ models
def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "", 1)


def check_model_path(name: str, flag: str = "--model") -> None:
    """A ``name`` written as a path (``./x``, ``/x``, ``~/x``, ``a/b/c``) must be an existing folder."""
    if _looks_like_path(name) and not Path(name).expanduser().is_dir():
        raise UsageError(
            f"{flag} {name!r} is not an existing folder; pass a local model folder, a Hub id such as "
            f"'org/name', or an offline alias ('smollm2', 'minilm')."
        )


def _check_alias(name: str, flag: str, kind: str) -> bool:
    """True when ``name`` is the offline alias of a ``kind`` and its asset is installed (located, not converted)."""
    from ..assets import minilm_path, smollm2_gguf_path

    aliases = {
        CAUSAL_LM: (SMOLLM2_ALIASES, smollm2_gguf_path, "SmolLM2 causal LM"),
        ENCODER: (MINILM_ALIASES, minilm_path, "MiniLM encoder"),
    }
    for alias_kind, (names, locate, what) in aliases.items():
        if name not in names:
            continue
        if alias_kind != kind:
            raise UsageError(
                f"{flag} {name!r} is the offline {what}, but a {kind} is needed here, such as {aliases[kind][0][0]!r}."
            )
        try:
            locate()
        except FileNotFoundError as exc:  # AssetNotFoundError: the message is the pip command that fixes it
            raise UsageError(f"{flag} {name!r}: {exc}") from None
        return True
    return False


def _hub_config_source(name: str, flag: str) -> str:
    """Where the ``config.json`` of Hub id ``name`` can be read: its cached snapshot folder, else ``name`` itself.

    Not cached: one metadata request without retries tells a missing repository from an unreachable Hub.
    """
    import huggingface_hub
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import GatedRepoError, RemoteEntryNotFoundError, RepositoryNotFoundError

    fix = "pass a local model folder, a Hub id you have downloaded, or an offline alias ('smollm2', 'minilm')."
    try:
        cached = huggingface_hub.try_to_load_from_cache(name, "config.json")
    except ValueError:  # HFValidationError: not 'name' or 'org/name'
        raise UsageError(f"{flag} {name!r} is neither a local folder nor a valid Hub id ('org/name'); {fix}") from None
    if isinstance(cached, str):
        return str(Path(cached).parent)
    if constants.HF_HUB_OFFLINE:
        raise UsageError(
            f"{flag} {name!r} is neither a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE is set; {fix}"
        )
    try:
        get_hf_file_metadata(hf_hub_url(name, "config.json"))
    except GatedRepoError:
        raise UsageError(
            f"{flag} {name!r} is a gated Hub repository: accept its terms on the Hub and log in (hf auth login)."
        ) from None
    except RepositoryNotFoundError:
        raise UsageError(
            f"{flag} {name!r} is neither a local folder nor a model on the Hub (private ones need hf auth login); {fix}"
        ) from None
    except RemoteEntryNotFoundError:
        raise UsageError(
            f"{flag} {name!r} has no config.json on the Hub, so it is not a transformers model; {fix}"
        ) from None
    except Exception as exc:  # no network, proxy, server error: any failure means it cannot be downloaded now
        raise UsageError(
            f"{flag} {name!r} is neither a local folder nor in the Hugging Face cache, and the Hub cannot be reached "
            f"({type(exc).__name__}); {fix}"
        ) from None
    return name


def check_model(name: str, flag: str, kind: str) -> None:
    """``name`` is an offline alias, a local model folder or a Hub id whose config loads, of a model that can be a
    ``kind`` (:data:`CAUSAL_LM` or :data:`ENCODER`). Remote code is never allowed."""
    check_model_path(name, flag)
    if _check_alias(name, flag, kind):
        return
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise UsageError(
                f"{flag} {name!r} has no config.json; pass a folder written by save_pretrained (config, weights, "
                "tokenizer)."
            )
        source = str(folder)
    else:
        source = _hub_config_source(name, flag)

    from transformers import AutoConfig
    from transformers.models.auto import modeling_auto

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise UsageError(f"{flag} {name!r}: its config.json does not load ({reason[:200]}).") from None
    heads = (
        modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        if kind == CAUSAL_LM
        else modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    )
    if config.model_type not in heads:
        example = "'smollm2'" if kind == CAUSAL_LM else "'minilm'"
        raise UsageError(
            f"{flag} {name!r} is a {config.model_type!r} model, which transformers cannot load as a {kind}; "
            f"pass a {kind} such as {example}."
        )


# ------------------------------------------------------------------------------------------------ subcommands
def _demo(args: argparse.Namespace) -> None:
    check_output_dir(args.output_dir, "report.md")
    check_model_path(args.model, "--model")
    check_model_path(args.encoder, "--encoder")
    check_model(args.model, "--model", CAUSAL_LM)
    check_model(args.encoder, "--encoder", ENCODER)
    check_device(args.device)


def check_chat_data(path: str | None, flag: str = "--dataset") -> None:
    """``path`` is None (the offline data), a data file of a known type, or a saved ``datasets`` folder."""
    if path is None:
        return
    target = Path(path).expanduser()
    suffixes = (".jsonl", ".json", ".csv", ".parquet")
    if target.is_dir():
        if not any((target / name).is_file() for name in ("dataset_info.json", "dataset_dict.json", "state.json")):
            raise UsageError(f"{flag} {path!r} is a folder but not one saved by datasets' save_to_disk.")
    elif target.is_file():
        if target.suffix.lower() not in suffixes:
            raise UsageError(
                f"{flag} {path!r}: unknown file type {target.suffix!r}; use {', '.join(suffixes)} or a saved "
                "datasets folder."
            )
    else:
        raise UsageError(f"{flag} {path!r} does not exist; pass a local data file or a saved datasets folder.")


def _sft(args: argparse.Namespace) -> None:
    check_chat_data(args.dataset)
    if args.batch_size > args.turns:
        raise UsageError(
            f"--batch-size {args.batch_size} is larger than --turns {args.turns}; lower --batch-size or raise --turns."
        )
    check_output_dir(args.output_dir, "adapter")
    check_model(args.model, "--model", CAUSAL_LM)
    check_device(args.device)


def _eval(args: argparse.Namespace) -> None:
    check_output_dir(args.output_dir, "metrics.json")
    check_adapter(args.adapter)
    check_model(args.model, "--model", CAUSAL_LM)
    args.subjects = canonical_subjects(args.subjects or _default_subjects(), "--subjects")
    check_device(args.device)


def _thermometer(args: argparse.Namespace) -> None:
    check_output_dir(args.output_dir, "leave_one_out.json")
    check_adapter(args.adapter)
    check_model(args.model, "--model", CAUSAL_LM)
    subjects = canonical_subjects(args.subjects or _default_subjects(), "--subjects")
    if args.held_out is None:
        held_out = subjects[-max(1, len(subjects) // 4) :]
    else:
        held_out = canonical_subjects(args.held_out, "--held-out")
    subjects += [s for s in held_out if s not in subjects]
    if len(subjects) < 2:
        raise UsageError("--subjects needs at least 2 subjects: training subjects plus a held-out one.")
    if not [s for s in subjects if s not in held_out]:
        raise UsageError("--held-out holds every subject; leave at least one of --subjects for training.")
    args.subjects, args.held_out = subjects, held_out
    check_device(args.device)


def _adue(args: argparse.Namespace) -> None:
    check_output_dir(args.output_dir, "bundle")
    check_model(args.model, "--model", ENCODER)
    check_device(args.device)


def _default_subjects() -> tuple[str, ...]:
    from .mc import DEFAULT_SUBJECTS

    return DEFAULT_SUBJECTS


_CHECKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "demo": _demo,
    "sft": _sft,
    "eval": _eval,
    "thermometer": _thermometer,
    "adue": _adue,
}


def preflight(command: str, args: argparse.Namespace) -> None:
    """Check the arguments of ``command`` (raising :class:`UsageError`) and canonicalize them in place."""
    check = _CHECKS.get(command)
    if check is not None:
        check(args)
