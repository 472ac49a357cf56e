"""Paths from the command line, checked before anything is read or written, in one place.

Each check turns what would otherwise surface later as a traceback (or as a file written in the
wrong place) into one UserError line naming the flag: a missing input, a symlink loop, a file
where a folder is expected and the reverse, a read-only or unwritable output, a wrong suffix.
Nothing is created: an exit-2 error must leave no trace behind.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from ruslan_glowtts.common.errors import UserError


def _kind(path: Path, flag: str) -> str:
    """ "missing", "folder", "file" or "other" for what `path` is (following symlinks)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise UserError(f"{flag} {path} is a broken symlink (it points to {os.readlink(path)})") from None
        return "missing"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{flag} {path} is a symlink loop") from None
        if exc.errno == errno.ENOTDIR:
            return "missing"  # a file in the way above it: the folder checks name it
        raise UserError(f"{flag} {path} cannot be read: {exc.strerror or exc}") from None
    return "folder" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def input_folder(path: Path, flag: str, what: str = "folder") -> Path:
    """An existing folder to read from (`what` names it: "folder", "run folder")."""
    kind = _kind(path, flag)
    if kind == "missing":
        raise UserError(f"{flag} {path}: no such {what}")
    if kind != "folder":
        raise UserError(f"{flag} {path} is a file, not a {what}")
    return path


def input_file(path: Path, flag: str, what: str = "file") -> Path:
    """An existing file to read (`what` names it: "checkpoint file", "text file")."""
    kind = _kind(path, flag)
    if kind == "missing":
        raise UserError(f"{flag} {path}: no such {what}")
    if kind == "folder":
        raise UserError(f"{flag} {path} is a folder, not a {what}")
    return path


def output_folder(path: Path, flag: str) -> None:
    """`path` is a folder that exists or can be created, and can be written to."""
    existing = path.absolute()
    while (kind := _kind(existing, flag)) == "missing":
        existing = existing.parent
    if kind != "folder":
        where = "" if existing == path.absolute() else f": {existing}"
        raise UserError(
            f"{flag} {path} is not writable{where} is a file, not a folder"
            if where
            else f"{flag} {path} is a file, not a folder"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".writable-"):
            pass
    except OSError as exc:
        if exc.errno == errno.EROFS:
            raise UserError(f"{flag} {path} is not writable: {existing} is on a read-only file system") from None
        raise UserError(f"{flag} {path} is not writable: {exc.strerror or exc}") from None


def output_file(path: Path, flag: str, suffix: str | None = None) -> None:
    """`path` is a file that can be written (an existing file is replaced), with `suffix` if given."""
    if _kind(path, flag) == "folder":
        raise UserError(f"{flag} {path} is a folder, not a file")
    if suffix is not None and path.suffix.lower() != suffix:
        raise UserError(f"{flag} {path} must end in {suffix}")
    output_folder(path.parent, flag)
