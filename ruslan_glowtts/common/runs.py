"""Run folders: a fresh name per run, and run.json, the run's metadata.

Coqui names a run folder `<run_name>-<Month-DD-YYYY_HH+MMAM>-<commit>`, to the minute, and
reuses an existing folder of that name, so two runs started in the same minute (an escalation,
a quick restart) would write into one folder. The kit picks a run_name whose folder is new.

run.json holds what Coqui's config.json does not: the preset and its tier chain, every override
and its source, seed, command line, git commit, library versions, device and precision, the
parent run and reason in an escalation chain, and how the run ended. It is rewritten atomically.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ruslan_glowtts import KIT_ROOT
from ruslan_glowtts.common.atomic_files import write_text

logger = logging.getLogger(__name__)

# Files the kit adds to a Coqui run folder.
RUN_META = "run.json"
KNOWN_GOOD = "known_good.pth"  # the last known-good weights (ruslan_glowtts/monitor/guard.py)
KNOWN_GOOD_META = "known_good.json"


def unique_run_name(output_path: Path, run_name: str) -> str:
    """A run_name whose Coqui folder does not exist yet (…, name-2, name-3)."""
    # Imported here: trainer imports torch, and this module must stay light for diagnose.
    from trainer.generic_utils import get_experiment_folder_path

    candidate, n = run_name, 1
    while get_experiment_folder_path(output_path, candidate).exists():
        n += 1
        candidate = f"{run_name}-{n}"
    return candidate


def write_json_atomic(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_meta(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_META
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def update_meta(run_dir: Path, **fields: Any) -> dict[str, Any]:
    meta = read_meta(run_dir)
    meta.update(fields)
    write_json_atomic(run_dir / RUN_META, meta)
    return meta


def known_good(run_dir: Path) -> tuple[Path | None, int]:
    """The run's known-good checkpoint and its step, or (None, 0)."""
    path, meta = run_dir / KNOWN_GOOD, run_dir / KNOWN_GOOD_META
    if not path.is_file() or not meta.is_file():
        return None, 0
    return path, int(json.loads(meta.read_text(encoding="utf-8"))["step"])


def resume_candidates(run_dir: Path) -> list[Path]:
    """The checkpoints --continue-path can resume from, newest step first (Coqui's order:
    checkpoint_N.pth and best_model_N.pth by N; a checkpoint wins a tie)."""
    found = []
    for path in run_dir.glob("*.pth"):
        match = re.fullmatch(r"(checkpoint|best_model)_(\d+)\.pth", path.name)
        if match:
            found.append((int(match.group(2)), match.group(1) == "checkpoint", path))
    return [path for *_, path in sorted(found, reverse=True)]


def checkpoint_problem(path: Path) -> str | None:
    """Why this file is not a loadable Coqui checkpoint, or None when it is one."""
    import pickle
    import zipfile

    import torch  # here: diagnose imports this module and must not pay for torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            AttributeError, ModuleNotFoundError, IndexError, KeyError, TypeError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        size = path.stat().st_size if path.exists() else 0
        return f"cannot be loaded ({size} bytes: {text[:120]})"
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        return "is not a Coqui checkpoint (no 'model' weights in it)"
    return None


def loadable_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint of a run that loads. A kill during Coqui's save used to leave a
    truncated newest checkpoint that --continue-path picked and died on; older ones are fine."""
    from ruslan_glowtts.common.errors import UserError

    candidates = resume_candidates(run_dir)
    first_problem = ""
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        first_problem = first_problem or f" ({path.name} {problem})"
        logger.warning(" ! %s %s: trying the previous checkpoint", path.name, problem)
    known_good_path = run_dir / KNOWN_GOOD
    hint = (f"; start a new run from its last known-good weights with --restore-path {known_good_path}"
            if known_good_path.is_file() else "; start a new run")
    if not candidates:
        raise UserError(f"--continue-path {run_dir}: the run has no checkpoint to resume from{hint}")
    raise UserError(f"--continue-path {run_dir}: none of its {len(candidates)} checkpoints loads{first_problem}"
                    f"{hint}")


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "-C", str(KIT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(KIT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
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
