"""Atomic file writes: a temp file in the target's folder, then os.replace.

A reader (or a run that was killed) sees either the old file or the complete new one, never a
half-written one. Temp files are hidden (`.NAME.tmp-PID`) so a killed run's leftovers are easy
to find and remove on the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

TEMP_MARK = ".tmp-"


def temp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def fsync_path(path: Path, *, directory: bool = False) -> None:
    """Flush a file (or a folder's entries) to disk: a rename without it can survive a power
    loss while the renamed file's data does not."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (network, FUSE) refuse fsync on folders
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temp path to write to; on success it replaces `path`, on failure it is removed (which
    also gives back the space a write on a full disk took). With durable (always for .pth
    checkpoints), the data is fsynced before the rename and the folder after it. An OSError that
    names no file (a write to an open file: ENOSPC, EIO) is raised again naming `path`."""
    path = Path(path)
    durable = durable or path.suffix == ".pth"  # a checkpoint must survive a crash right after its save
    temp = temp_path_for(path)
    try:
        yield temp
        if durable:
            fsync_path(temp)
        os.replace(temp, path)
        if durable:
            fsync_path(path.parent, directory=True)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        if isinstance(exc, OSError) and exc.filename in (None, str(temp), temp) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def write_bytes(path: Path, data: bytes, *, only_if_changed: bool = False) -> bool:
    """Write `data` atomically. With only_if_changed, an identical file is left untouched
    (so a re-run does not bump mtimes). Returns whether the file was written."""
    if only_if_changed:
        try:
            if path.read_bytes() == data:
                return False
        except OSError:
            pass
    with atomic_output(path) as temp, open(temp, "wb") as handle:
        handle.write(data)
    return True


def write_text(path: Path, text: str, *, only_if_changed: bool = False) -> bool:
    return write_bytes(path, text.encode("utf-8"), only_if_changed=only_if_changed)


def remove_stale_temp_files(folder: Path) -> int:
    """Remove temp files left by a killed run (call it while holding the folder's lock)."""
    removed = 0
    if not folder.is_dir():
        return 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") and TEMP_MARK in entry.name and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
    if removed:
        logger.info("Removed %d half-written temp file(s) left by an interrupted run in %s", removed, folder)
    return removed
