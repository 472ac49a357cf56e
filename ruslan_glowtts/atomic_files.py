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


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temp path to write to; on success it replaces `path`, on failure it is removed."""
    temp = temp_path_for(path)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
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
    with atomic_output(path) as temp:
        with open(temp, "wb") as handle:
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
