"""Run folders: claimed by one run, locked while a process trains in them, checked for the model
kind a command expects, and their checkpoints found and checked.

- A new run's folder has Coqui's name, `<run_name>-<Month-DD-YYYY_HH+MMAM>-<commit>`, to the minute,
  and Coqui reuses a folder of that name if it exists: two runs started in the same minute with the
  same output path (side by side, an escalation, a quick restart) would write into one folder.
  claim_run_folder() creates it with one atomic mkdir and adds `-2`, `-3`, ... to the run name
  while the name is taken.
- RunLock: `run.lock` in the folder, held (flock) by the process training in it. A second process
  (a second --continue-path) is refused in one line naming the holder. The kernel drops the lock of
  a process that dies however it dies; the file it leaves (SIGKILL, a reboot) is taken over with
  a warning.
- Kind checks: a command that takes a run folder or a checkpoint checks, before anything is
  written, that it holds the model the command expects and that it loads ("... is a GlowTTS run,
  not a HiFi-GAN run").

run.json itself is the RunRecord (common/run_record.py); the folder's names are in
common/run_layout.py. Light to import: torch and Coqui are imported inside the functions that
load checkpoints.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Self

from ruslan_glowtts import KIT_ROOT
from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.paths import input_file, input_folder
from ruslan_glowtts.common.run_layout import (
    CHECKPOINT_RE,
    CONFIG_FILE,
    KNOWN_GOOD,
    KNOWN_GOOD_META,
    LOCK_FILE,
    ModelKind,
    config_model,
    kind_of,
)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# A new run's folder


def claim_run_folder(output_path: Path, run_name: str) -> tuple[str, Path]:
    """Create a new run's folder, exclusively: (the run name used, the folder). Coqui's folder name
    for `run_name`, with -2, -3, ... added to the name while that folder exists."""
    # Imported here: trainer imports torch, and this module must stay light for diagnose.
    from trainer.generic_utils import get_experiment_folder_path

    output_path.mkdir(parents=True, exist_ok=True)
    candidate, n = run_name, 1
    while True:
        folder = Path(get_experiment_folder_path(output_path, candidate))
        try:
            folder.mkdir()  # atomic: of two runs asking for one name, one gets it, the other the next
        except FileExistsError:
            n += 1
            candidate = f"{run_name}-{n}"
            continue
        return candidate, folder


# ---------------------------------------------------------------------------------------------
# The lock of a run in progress


@dataclass
class RunLock:
    """`run.lock` in `run_dir`, held by this process while it trains there (a context manager).

    fcntl.flock, not the file's existence, says whether the lock is held: the kernel releases it
    when the holder dies, so a stale file (the holder was killed) is simply taken over, with a
    warning. The file records the holder (pid, host, since) for the refusal message."""

    run_dir: Path
    flag: str = "--continue-path"
    _fd: int | None = field(default=None, init=False, repr=False)

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_FILE

    def acquire(self) -> None:
        import fcntl

        for _ in range(10):  # another process may replace the file between our open and our lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                since = f", since {holder['since']}" if holder.get("since") else ""
                where = f" on {holder['host']}" if holder.get("host") not in (None, socket.gethostname()) else ""
                raise UserError(
                    f"{self.flag} {self.run_dir} is in use by process {holder.get('pid', '?')}{where}"
                    f"{since}: two processes must not train into one run folder; wait for it to "
                    "end, or stop it first"
                ) from None
            except OSError as exc:  # a file system without flock (some network mounts)
                logger.warning(
                    " ! Cannot lock %s (%s): make sure no other process trains in this run folder",
                    self.path,
                    exc.strerror or exc,
                )
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # released and removed by its holder meanwhile: lock the new file
                os.close(fd)
                continue
            break
        else:
            raise UserError(f"{self.flag} {self.run_dir}: cannot take its lock {self.path}: it keeps changing")
        stale = _read_holder(fd)
        if stale.get("pid") not in (None, os.getpid()):
            logger.warning(
                " ! Taking over the stale lock of process %s in %s (that process is no longer running)",
                stale["pid"],
                self.run_dir,
            )
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": now(), "command": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # while still holding it: a waiting process locks a new file, never this one
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 64 * 1024, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------
# The kind of model in a run folder or a checkpoint


def not_this_kind(config: dict[str, Any], expected: ModelKind, what: str) -> str | None:
    """Why `config` is not of the `expected` kind ("is a GlowTTS run, not a HiFi-GAN run"), or None."""
    found = kind_of(config)
    if found is expected:
        return None
    if found is not None:
        return f"is a {found.name} {what}, not a {expected.name} {what}"
    if model := config_model(config):
        return f"is a Coqui {model!r} {what}, not a {expected.name} {what}"
    return f"is not a {expected.name} {what} (its config names no Coqui model)"


def read_config_file(path: Path, flag: str, given: Path | None = None) -> dict[str, Any]:
    """A config.json as a dict, or one line saying why it cannot be read (`given`: what the user named)."""
    given = path if given is None else given
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(
            f"{flag} {given}: its {path.name} cannot be read ({exc}); a copy cut off? Copy the run folder again"
        ) from None
    if not isinstance(config, dict):
        raise UserError(f"{flag} {given}: its {path.name} is not a config (no JSON object)")
    return config


def read_run_config(run_dir: Path, flag: str) -> dict[str, Any]:
    """A run folder's config.json as a dict, or one line saying why it cannot be read."""
    input_folder(run_dir, flag, "run folder")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{flag} {run_dir}: not a run folder (no {CONFIG_FILE})")
    return read_config_file(path, flag, run_dir)


def check_run_kind(run_dir: Path, expected: ModelKind, flag: str) -> dict[str, Any]:
    """The run folder's config.json, refused in one line unless it is a run of the `expected` kind."""
    config = read_run_config(run_dir, flag)
    if (why := not_this_kind(config, expected, "run")) is not None:
        raise UserError(f"{flag} {run_dir} {why}")
    return config


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    config: dict[str, Any]  # the config saved in it ({} when none was)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # its weights' names and shapes


class CheckpointProblem(Exception):
    """The file is not a loadable Coqui checkpoint; the message says why (one clause)."""


def read_checkpoint(path: Path) -> Checkpoint:
    """Load `path` as a Coqui checkpoint (CheckpointProblem when it is not one). A file read before,
    unchanged since, is not loaded again (start-up checks it, then compares its layers)."""
    stat = path.stat() if path.is_file() else None
    return _read_checkpoint(path, stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)


@functools.lru_cache(maxsize=4)
def _read_checkpoint(path: Path, mtime_ns: int, size: int) -> Checkpoint:
    import pickle
    import zipfile

    import torch  # here: diagnose imports this module and must not pay for torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (
        RuntimeError,
        EOFError,
        OSError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
        AttributeError,
        ModuleNotFoundError,
        IndexError,
        KeyError,
        TypeError,
    ) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        size = path.stat().st_size if path.exists() else 0
        raise CheckpointProblem(f"cannot be loaded ({size} bytes: {text[:120]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointProblem("is not a Coqui checkpoint (no 'model' weights in it)")
    config = state.get("config")
    step = state.get("step")
    shapes = {name: tuple(value.shape) for name, value in state["model"].items() if hasattr(value, "shape")}
    return Checkpoint(
        path, int(step) if isinstance(step, int) else 0, config if isinstance(config, dict) else {}, shapes
    )


def checkpoint_problem(path: Path) -> str | None:
    """Why this file is not a loadable Coqui checkpoint, or None when it is one."""
    try:
        read_checkpoint(path)
    except CheckpointProblem as problem:
        return str(problem)
    return None


def check_checkpoint(path: Path, flag: str, expected: ModelKind | None = None) -> Checkpoint:
    """A checkpoint file given on the command line: it exists, is a file, loads, and (with `expected`)
    holds that kind of model, by the config saved in it or else the config.json beside it."""
    input_file(path, flag, "checkpoint file")
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointProblem as problem:
        raise UserError(f"{flag} {path} {problem}") from None
    if expected is not None:
        config = checkpoint.config
        if not config and (path.parent / CONFIG_FILE).is_file():
            with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
                config = json.loads((path.parent / CONFIG_FILE).read_text(encoding="utf-8"))
        if isinstance(config, dict) and config and (why := not_this_kind(config, expected, "checkpoint")):
            raise UserError(f"{flag} {path} {why}")
    return checkpoint


# ---------------------------------------------------------------------------------------------
# Checkpoints of a run


def resume_candidates(run_dir: Path) -> list[Path]:
    """The checkpoints --continue-path can resume from, newest step first (Coqui's order:
    checkpoint_N.pth and best_model_N.pth by N; a checkpoint wins a tie)."""
    found = []
    for path in run_dir.glob("*.pth"):
        if match := CHECKPOINT_RE.fullmatch(path.name):
            found.append((int(match.group(2)), match.group(1) == "checkpoint", path))
    return [path for *_, path in sorted(found, reverse=True)]


def loadable_checkpoint(run_dir: Path, flag: str = "--continue-path") -> Checkpoint:
    """The newest checkpoint of a run that loads. A kill during Coqui's save used to leave a
    truncated newest checkpoint that --continue-path picked and died on; older ones are fine."""
    candidates = resume_candidates(run_dir)
    first_problem = ""
    for path in candidates:
        try:
            return read_checkpoint(path)
        except CheckpointProblem as problem:
            first_problem = first_problem or f" ({path.name} {problem})"
            logger.warning(" ! %s %s: trying the previous checkpoint", path.name, problem)
    known_good_path = run_dir / KNOWN_GOOD
    hint = (
        f"; start a new run from its last known-good weights with --restore-path {known_good_path}"
        if known_good_path.is_file()
        else "; start a new run"
    )
    if not candidates:
        raise UserError(f"{flag} {run_dir}: the run has no checkpoint to resume from{hint}")
    raise UserError(f"{flag} {run_dir}: none of its {len(candidates)} checkpoints loads{first_problem}{hint}")


def known_good(run_dir: Path) -> tuple[Path | None, int]:
    """The run's known-good checkpoint and its step, or (None, 0)."""
    path, meta = run_dir / KNOWN_GOOD, run_dir / KNOWN_GOOD_META
    if not path.is_file() or not meta.is_file():
        return None, 0
    return path, int(json.loads(meta.read_text(encoding="utf-8"))["step"])


def is_disk_error(exc: BaseException) -> bool:
    """An OSError from the storage, not from the code: a full disk or quota, an I/O error, a
    read-only or too-large file. The run reports it in one line instead of a traceback."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG)


# ---------------------------------------------------------------------------------------------
# What reproduces a run


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(
            ["git", "-C", str(KIT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(KIT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("torch", "torchaudio", "coqui-tts", "coqui-tts-trainer", "coqpit-config", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def environment() -> dict[str, Any]:
    """What reproduces a run besides its config: command, commit, versions."""
    return {
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "git_commit": _git_commit(),
        "versions": _versions(),
        "host": platform.node(),
    }
