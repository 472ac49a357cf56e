"""Read a run's TensorBoard event files: every scalar point, one value per step, latest kept.

Two traps make a naive reader wrong for diagnosis:
- TensorBoard's EventAccumulator keeps a 10,000-point reservoir per scalar tag by default and
  drops the rest at random, spikes included. We ask for size guidance 0 (keep everything).
- A resumed run (`--continue-path`) adds an event file, and a rollback re-runs steps that are
  already logged. Events of a tag are taken in write order (files by their first event's time);
  when a step goes back to or below one already seen, the points from that step on belong to an
  abandoned branch and are dropped, so the latest write wins. It is the rule TensorBoard itself
  applies to out-of-order steps in old event files ("purge orphaned data"); with the v2 files
  that torch writes it keeps both branches and draws a zig-zag.
A corrupt event file is named in a warning and listed in RunEvents.unreadable (the reader itself
would stop at the bad record without a word); the other files are still read.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.run_layout import EVENTS_GLOB, HEALTH_PREFIX

logger = logging.getLogger(__name__)

TENSORBOARD_MISSING = (
    "TensorBoard is not installed for {python}: pip install tensorboard==2.21.0 (see requirements.txt)"
)


@dataclass(frozen=True)
class Series:
    """One scalar tag: strictly increasing steps and their latest values (NaN/Inf kept as is)."""

    steps: np.ndarray  # int64
    values: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class RunEvents:
    run_dir: Path
    files: list[Path]
    scalars: dict[str, Series] = field(default_factory=dict)
    texts: list[tuple[int, str, str]] = field(default_factory=list)  # (step, tag, text) of Health/ text entries
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # event files that could not be read, and why

    def get(self, *tags: str) -> tuple[str, Series] | None:
        """The first of `tags` that has points, with its series."""
        for tag in tags:
            if tag in self.scalars and len(self.scalars[tag]):
                return tag, self.scalars[tag]
        return None


def event_files(run_dir: Path) -> list[Path]:
    """The event files directly inside a run folder (not in its subfolders)."""
    try:
        return sorted(p for p in run_dir.glob(EVENTS_GLOB) if p.is_file())
    except OSError as exc:
        raise UserError(f"cannot read {run_dir}: {exc.strerror or exc}") from None


def folders_with_events(root: Path) -> list[Path]:
    """Every folder under `root` (itself included) that holds event files, latest write last."""
    found: dict[Path, float] = {}

    def fail(exc: OSError) -> None:
        raise exc

    try:
        for folder, _dirs, files in os.walk(root, onerror=fail, followlinks=False):
            mtimes = [os.stat(os.path.join(folder, f)).st_mtime for f in files if f.startswith(EVENTS_GLOB.rstrip("*"))]
            if mtimes:
                found[Path(folder)] = max(mtimes)
    except OSError as exc:
        raise UserError(f"cannot read {exc.filename or root}: {exc.strerror or exc}") from None
    return sorted(found, key=lambda p: (found[p], str(p)))


def check_records(path: Path) -> str | None:
    """Why an event file is corrupt, or None. TensorBoard's reader stops silently at the first bad
    record, so a corrupt file would read as a run with fewer (or no) points. Checks the TFRecord
    framing (length and its CRC) of every record; the payload CRCs are left to the reader (pure
    Python CRC over a long run's file would take seconds). A record cut short at the very end is
    a file still being written, not corruption."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            offset = 0
            while offset + 12 <= size:
                header = f.read(12)
                length, crc = struct.unpack("<QI", header)
                if masked_crc32c(header[:8]) != crc:
                    return f"corrupt record at byte {offset} of {size} (not a TensorBoard event file from there on)"
                offset += 12 + length + 4
                f.seek(offset)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _latest_per_step(events: list) -> Series:
    """Keep one value per step: a step at or below the last one cuts the older branch off there."""
    steps: list[int] = []
    values: list[float] = []
    for event in events:
        if steps and event.step <= steps[-1]:
            cut = bisect.bisect_left(steps, event.step)
            del steps[cut:], values[cut:]
        steps.append(event.step)
        values.append(event.value)
    return Series(np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64))


def read_run(run_dir: Path) -> RunEvents:
    """Every scalar of every event file in `run_dir`, de-duplicated by step (see module doc)."""
    try:
        from tensorboard.backend.event_processing import event_accumulator as ea
        from tensorboard.util import tensor_util
    except ImportError:
        import sys

        raise UserError(TENSORBOARD_MISSING.format(python=sys.executable)) from None

    if not run_dir.exists():
        raise UserError(f"run folder not found: {run_dir}")
    if not run_dir.is_dir():
        raise UserError(f"not a folder: {run_dir}")
    files = event_files(run_dir)
    if not files:
        raise UserError(_no_events_message(run_dir))

    # Size guidance 0 keeps every scalar (and the few Health/ text entries); images, audio and
    # histograms are parsed anyway but not needed, so keep one of each.
    guidance = {ea.SCALARS: 0, ea.TENSORS: 0, ea.IMAGES: 1, ea.AUDIO: 1, ea.HISTOGRAMS: 1, ea.COMPRESSED_HISTOGRAMS: 1}
    loaded = []
    unreadable: list[tuple[Path, str]] = []
    for path in files:
        if why := check_records(path):
            logger.warning("warning: cannot read the event file %s: %s", path, why)
            unreadable.append((path, why))
            continue
        acc = ea.EventAccumulator(str(path), size_guidance=guidance, purge_orphaned_data=False)
        try:
            acc.Reload()
        except Exception as exc:  # noqa: BLE001 - whatever the reader raises, the file is unreadable
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            logger.warning("warning: cannot read the event file %s: %s", path, why)
            unreadable.append((path, why))
            continue
        try:
            first = acc.FirstEventTimestamp()
        except ValueError:  # an empty file: a run that has only just started
            continue
        loaded.append((first, path.name, acc))
    loaded.sort(key=lambda item: (item[0], item[1]))

    per_tag: dict[str, list] = {}
    texts: list[tuple[int, str, str]] = []
    for _, _, acc in loaded:
        tags = acc.Tags()
        for tag in tags.get(ea.SCALARS, []):
            per_tag.setdefault(tag, []).extend(acc.Scalars(tag))
        for tag in tags.get(ea.TENSORS, []):
            if not tag.startswith(HEALTH_PREFIX) or acc.SummaryMetadata(tag).plugin_data.plugin_name != "text":
                continue
            for event in acc.Tensors(tag):
                text = tensor_util.make_ndarray(event.tensor_proto).reshape(-1)
                texts.append(
                    (
                        event.step,
                        tag.removesuffix("/text_summary"),
                        " ".join(t.decode("utf-8", "replace") for t in text),
                    )
                )
    run = RunEvents(run_dir, files, unreadable=unreadable)
    run.scalars = {tag: _latest_per_step(events) for tag, events in per_tag.items()}
    run.texts = sorted(texts)
    logger.debug("read %d event file(s) of %s: %d scalar tags", len(files), run_dir, len(run.scalars))
    return run


def _no_events_message(run_dir: Path) -> str:
    message = f"no TensorBoard event files ({EVENTS_GLOB}) in {run_dir}"
    runs = [p for p in folders_with_events(run_dir) if p != run_dir]
    if runs:
        return (
            f"{message}; it holds {len(runs)} run folder(s), diagnose one of them, e.g. "
            f"python -m ruslan_glowtts.diagnose {runs[-1]}"
        )
    return f"{message}; a run writes them from its first step (is this a run folder?)"
