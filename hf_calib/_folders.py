"""Replacing a whole folder atomically: build it in a staging sibling, then swap it in.

Used for calibrated adapter bundles and for the output folders of the recipes. A staging folder is named
``.{name}.{pid}.{random}.tmp`` and an old folder set aside ``.{name}.{pid}.old-{random}``, so the next save
can tell the leftovers of a killed process (its pid is gone) from those of a save still running.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ._safe_files import default_mode


def finalize_tree(folder: Path) -> None:
    """Give ``folder`` and everything in it the usual permissions and flush its files to disk.

    Temporary files and folders are created private (0600 / 0700); a saved folder gets what
    ``save_pretrained`` gives (0644 / 0755 under the usual umask 022).
    """
    file_mode, dir_mode = default_mode(directory=False), default_mode(directory=True)
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            os.chmod(path, dir_mode)
        else:
            os.chmod(path, file_mode)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _leftover_pattern(target: Path) -> re.Pattern[str]:
    # .{name}.{pid}.{random}.tmp (a staging folder) and .{name}.{pid}.old-{random} (an old folder set aside)
    return re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.(?:[^/]+\.tmp|old-[0-9a-f]+)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OverflowError:
        return False
    return True


def _dead_leftovers(target: Path) -> list[tuple[Path, bool]]:
    """``(folder, is_set_aside)`` for the leftovers of ``target``'s saves whose process has died."""
    if not target.parent.is_dir():
        return []
    pattern, found = _leftover_pattern(target), []
    for entry in sorted(target.parent.iterdir()):
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            pid = int(match.group(1))
            if pid != os.getpid() and not _alive(pid):
                found.append((entry, ".old-" in entry.name))
    return found


def recoverable(target: Path, marker: str | None = None) -> Path | None:
    """The earlier folder a killed save set aside, when ``target`` itself is missing (see :func:`swap_in`).

    With ``marker``, only a set-aside folder holding that file counts.
    """
    if target.exists():
        return None
    for folder, aside in _dead_leftovers(target):
        if aside and (marker is None or (folder / marker).is_file()):
            return folder
    return None


def clean_leftovers(target: Path) -> list[Path]:
    """Tidy up after saves of ``target`` whose process died; returns the folders removed.

    An earlier folder set aside by a save killed before it could move the new one in is moved back to
    ``target`` (when ``target`` is missing); every other staging or set-aside folder is deleted. Folders of
    saves still running (their process id is alive, this process's included) are kept.
    """
    restore = recoverable(target)
    if restore is not None:
        os.replace(restore, target)
    removed = []
    for folder, _ in _dead_leftovers(target):
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def staging_folder(target: Path) -> Path:
    """A new empty sibling folder of ``target`` to build a folder in (same file system, so renames are atomic).

    Leftovers of earlier saves of ``target`` that were killed are removed first (:func:`clean_leftovers`).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))


def _libc() -> Any:
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def exchange(first: Path, second: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``, macOS ``renamex_np(RENAME_SWAP)``).

    Returns False, having changed nothing, where the system or file system cannot do it.
    """
    import ctypes

    try:
        libc = _libc()
        if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
            at_fdcwd, rename_exchange = -100, 2
            result = libc.renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
        elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
            rename_swap = 2
            result = libc.renamex_np(os.fsencode(first), os.fsencode(second), rename_swap)
        else:
            return False
    except OSError:
        return False
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(error, os.strerror(error), str(first), None, str(second))


def swap_in(staged: Path, target: Path) -> None:
    """Move the finished ``staged`` folder to ``target``; an earlier folder there is replaced as a whole.

    With an earlier folder at ``target`` the two are exchanged in one atomic step where the system allows it
    (Linux, macOS), so ``target`` always holds a complete folder, old or new, whenever the process dies; the
    old one, now at ``staged``, is deleted afterwards (or by the next save if the process dies first). Where
    no atomic exchange exists, the old folder is renamed aside first and the new one renamed in: a process
    killed between those two renames leaves no folder at ``target`` (the old one stays aside, named
    ``.{name}.{pid}.old-*``, until the next save deletes it).
    """
    os.chmod(staged, default_mode(directory=True))  # mkdtemp made it private
    if not target.exists():
        os.replace(staged, target)
        return
    if exchange(staged, target):
        shutil.rmtree(staged, ignore_errors=True)
        return
    aside = target.parent / f".{target.name}.{os.getpid()}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, aside)
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
