"""The per-utterance ledger: which utterances each training batch held, what each one cost the
model, and which batches the health guard flagged.

Written during training by KitTrainer (ruslan_glowtts/training/trainer.py), read by diagnose's
"Suspect utterances" (ruslan_glowtts/monitor/diagnose/suspects.py). Data is one of the causes of
exploding GlowTTS gradients, and a transcript that does not match its audio shows as an
utterance whose loss stays high while the corpus's falls (dataset cartography); the guard
skipping a batch says nothing about which utterance was in it unless someone writes it down.

Format: one text file per rank in the run folder, `ledger_rank<R>.tsv`, append-only, tab-separated:

    #ledger v1 rank=0 pid=1234 opened=2026-01-01T10:00:00+00:00 first_step=0
    u  STEP  ID  TEXT_LEN  MEL_LEN  NLL  DUR     an utterance in the batch of update STEP
    f  STEP  KIND  GRAD_NORM  LOSS               the guard flagged update STEP (skipped, spike, jump, ...)

- NLL is GlowTTS's negative log-likelihood per mel frame and channel of that one utterance
  (the batch's `log_mle` is the frame-weighted mean of these), DUR its duration loss per input
  token (the batch's `loss_dur` is the token-weighted mean): GlowTTSLoss's terms, per sample.
  TEXT_LEN and MEL_LEN are the model's input lengths (tokens, mel frames). A NaN loss (Coqui's
  `NaN loss` error) leaves no terms: `nan`.
- Every opening of the file (a new run, a --continue-path resume, a restart after a crash)
  starts with a `#ledger` line: a segment. Steps repeat across segments after a resume from an
  earlier checkpoint; the reader keys a batch by (file, segment, step).
- A batch's lines are written by one os.write on an O_APPEND descriptor, so a crash leaves
  whole lines (the reader skips a torn last line, and says so).

Cost: no extra forward, and no host sync in the step on a GPU: `add` starts a non-blocking copy
of a [B, 4] tensor into pinned memory and records a CUDA event; the lines are written once the
event has completed, checked (never waited for) at the next `add`, and waited for only by
`flush`/`close`. On a CPU the lines are written at once. bench/run.py's `ledger` section
measures the cost (docs/BENCHMARKS.md, section 7).

This module imports torch only inside the writer's functions: diagnose reads ledgers without it.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

LEDGER_GLOB = "ledger_rank*.tsv"
VERSION = 1
HEADER_PREFIX = "#ledger"
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_MAX_PENDING = 64  # GPU copies in flight before add() waits for the oldest (never reached in practice)


def ledger_path(run_dir: Path, rank: int = 0) -> Path:
    return Path(run_dir) / f"ledger_rank{rank}.tsv"


def utterance_id(name: str) -> str:
    """The corpus id of a Coqui sample name: `ruslan#RUSLAN/000123_RUSLAN` -> `000123_RUSLAN`
    (audio_unique_name is `<dataset>#<path relative to the corpus, no extension>`)."""
    base = str(name).rsplit("#", 1)[-1].rsplit("/", 1)[-1]
    base = base[:-4] if base.lower().endswith(".wav") else base
    return re.sub(r"\s", "_", base) or "?"  # a tab or newline would break the line format


# ---------------------------------------------------------------------------------------------
# Writing (training)


def per_sample_terms(outputs: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
    """[B, 2] float32 on the outputs' device: GlowTTSLoss's two terms for each sample of the batch,
    from the outputs the step already has (no forward, no host sync).

    Column 0: negative log-likelihood per frame and channel; column 1: duration loss per token.
    Coqui's batch values are their length-weighted means (tests/test_ledger.py checks it)."""
    import torch

    with torch.no_grad():
        z = outputs["z"].detach().float()  # [B, T, C]; padded frames are zero in z, mean and scale
        mean, log_scale = outputs["y_mean"].detach().float(), outputs["y_log_scale"].detach().float()
        frames = batch["mel_lengths"].to(z.device, torch.float32)
        tokens = batch["text_lengths"].to(z.device, torch.float32)
        pz = (log_scale + 0.5 * torch.exp(-2 * log_scale) * (z - mean) ** 2).sum(dim=(1, 2))
        nll = _HALF_LOG_2PI + (pz - outputs["logdet"].detach().float()) / (frames * z.shape[2])
        gap = outputs["durations_log"].detach().float() - outputs["total_durations_log"].detach().float()
        dur = (gap**2).sum(dim=(1, 2)) / tokens
        return torch.stack([nll, dur], dim=1)


@dataclass
class _Pending:
    step: int
    ids: list[str]
    host: Any  # [B, 4]: text length, mel length, NLL, duration; a pinned copy of a GPU tensor
    event: Any = None  # torch.cuda.Event, None when `host` is ready


class UtteranceLedger:
    """Appends one rank's ledger lines. Never stops training: an I/O error is logged once and
    switches the ledger off."""

    def __init__(self, run_dir: Path, rank: int = 0, *, enabled: bool = True) -> None:
        self.path = ledger_path(run_dir, rank)
        self.rank = rank
        self.enabled = enabled
        self._fd: int | None = None
        self._pending: list[_Pending] = []  # batches of finished updates, waiting for their copy
        self._window: list[_Pending] = []  # micro-batches of the update being accumulated

    # -- the interface the trainer and the guard call --------------------------------------------
    def record(
        self, step: int, batch: dict[str, Any], outputs: dict[str, Any] | None, *, accumulating: bool = False
    ) -> None:
        """One training (micro-)batch of update `step`: its names and lengths from `batch`, its
        terms from the model `outputs` (None after a NaN loss: the terms are written as nan).
        accumulating: a micro-batch whose update happens at a later step (--grad-accum): its
        lines are written with that step, the one the guard judges and flags."""
        if not self.enabled:
            return
        import torch

        names = batch.get("audio_unique_names") or batch.get("audio_files") or []
        lengths = torch.stack([batch["text_lengths"], batch["mel_lengths"]], dim=1)
        terms = per_sample_terms(outputs, batch) if outputs is not None else None
        self.add(step, names, lengths, terms, accumulating=accumulating)

    def add(
        self,
        step: int,
        names: Sequence[str],
        lengths: torch.Tensor,
        terms: torch.Tensor | None,
        *,
        accumulating: bool = False,
    ) -> None:
        """names: B sample names; lengths: [B, 2] (text, mel); terms: [B, 2] (NLL, duration) or
        None. Device tensors are copied to the host without blocking; see the module docstring."""
        if not self.enabled:
            return
        import torch

        if terms is None:
            terms = torch.full((len(names), 2), math.nan, device=lengths.device)
        packed = torch.cat([lengths.detach().to(terms.device, torch.float32), terms.detach().float()], dim=1)
        host, event = self._host_copy(packed)
        self._window.append(_Pending(step, [utterance_id(n) for n in names], host, event))
        if accumulating:
            return
        for earlier in self._window:  # the micro-batches of this update take its step
            earlier.step = step
        self._pending += self._window
        self._window = []
        if len(self._pending) > _MAX_PENDING:  # lines are written by write_ready(), after the step
            self._drain(wait=True)

    def write_ready(self) -> None:
        """Write the batches whose copies have arrived, without waiting for the others: called after
        each step, when the trainer reads back the step's other values, never inside the step."""
        self._drain(wait=False)

    def mark(self, step: int, kind: str, grad_norm: float, loss: float) -> None:
        """The guard flagged update `step` (HealthGuard.on_flag): "skipped" (non-finite), "spike", or
        an explosion rule's alarm. The values are host floats the guard has already read."""
        if self.enabled:
            self._drain(wait=False)  # the batches already here first, so the file reads in step order
            self._write(f"f\t{int(step)}\t{kind}\t{_num(grad_norm)}\t{_num(loss)}\n")

    def flush(self) -> None:
        """Write every pending batch (waits for their copies: call it outside the step). The
        micro-batches of an update that never happened (a run stopped mid-accumulation) keep
        their own steps."""
        self._pending += self._window
        self._window = []
        self._drain(wait=True)

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- internals -------------------------------------------------------------------------------
    @staticmethod
    def _host_copy(packed: torch.Tensor) -> tuple[Any, Any]:
        """(host tensor, event or None). A GPU tensor is copied into pinned memory without
        blocking; the CUDA event, recorded after the copy on the same stream, says when it is there."""
        if packed.device.type != "cuda":
            return packed, None
        import torch

        host = torch.empty(packed.shape, dtype=torch.float32, pin_memory=True)  # (pinned: the copy cannot block)
        host.copy_(packed, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def _drain(self, *, wait: bool) -> None:
        while self._pending:
            item = self._pending[0]
            if item.event is not None and not item.event.query():
                if not wait:
                    return
                item.event.synchronize()
            self._pending.pop(0)
            self._write(_lines(item.step, item.ids, item.host))

    def _write(self, text: str) -> None:
        if not self.enabled:
            return
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                step = re.match(r"[uf]\t(\d+)", text)
                opened = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
                text = (
                    f"{HEADER_PREFIX} v{VERSION} rank={self.rank} pid={os.getpid()} opened={opened} "
                    f"first_step={step.group(1) if step else '?'}\n" + text
                )
            data = text.encode("utf-8")
            while data:  # one write for a batch; loop only if the kernel took part of it
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            self.enabled = False
            self._pending.clear()
            self._window.clear()
            logger.warning(
                " ! The utterance ledger %s cannot be written (%s): it is off for the rest of this "
                "run; training continues",
                self.path,
                exc.strerror or exc,
            )


def _num(value: float) -> str:
    return (
        f"{value:.6g}" if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    )


def _lines(step: int, ids: list[str], host: Any) -> str:
    rows = host.tolist()  # a host tensor: no device sync here
    return "".join(
        f"u\t{step}\t{id_}\t{int(t)}\t{int(m)}\t{_num(nll)}\t{_num(dur)}\n"
        for id_, (t, m, nll, dur) in zip(ids, rows, strict=True)
    )


# ---------------------------------------------------------------------------------------------
# Reading (diagnose)


@dataclass
class Ledger:
    """Every observation of one or more ledgers, as arrays (one entry per utterance per batch).

    batch: index of the batch (file, segment, step) the observation belongs to; flags: batch index
    -> the guard's flags for it; problems: lines that could not be read, said once per file."""

    files: list[Path] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # utterance index -> id
    utt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    batch: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    step: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    text_len: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mel_len: np.ndarray = field(default_factory=lambda: np.zeros(0))
    nll: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dur: np.ndarray = field(default_factory=lambda: np.zeros(0))
    batches: int = 0
    flags: dict[int, list[tuple[str, float, float]]] = field(default_factory=dict)
    flagged_without_batch: int = 0  # flags for a step whose batch lines are missing
    segments: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def observations(self) -> int:
        return len(self.utt)


def ledger_files(run_dirs: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for run_dir in run_dirs:
        found += sorted(Path(run_dir).glob(LEDGER_GLOB))
    return found


def read_ledgers(files: Iterable[Path]) -> Ledger:
    """Read ledger files into one Ledger. A torn last line (a crash during the write) and lines
    that are not ledger lines are skipped and listed in `problems`; unreadable files too."""
    out = Ledger()
    index: dict[str, int] = {}
    batch_of: dict[tuple[int, int, int], int] = {}
    # Typed arrays, not lists: a long run's ledger holds millions of sightings (8 bytes a value).
    cols: dict[str, array[Any]]
    cols = {
        name: array(code)
        for name, code in (
            ("utt", "q"),
            ("batch", "q"),
            ("step", "q"),
            ("text_len", "d"),
            ("mel_len", "d"),
            ("nll", "d"),
            ("dur", "d"),
        )
    }
    pending_flags: list[tuple[tuple[int, int, int], tuple[str, float, float]]] = []
    for file_no, path in enumerate(files):
        path = Path(path)
        segment, bad, first_bad = -1, 0, 0
        try:
            with open(path, "rb") as handle:  # streamed: a long run's ledger is hundreds of MB
                out.files.append(path)
                for number, raw in enumerate(handle, 1):
                    if not raw.endswith(b"\n"):  # only the last line can lack it: a crash during its write
                        out.problems.append(
                            f"{path.name}: its last line is incomplete (a crash while writing it?): skipped"
                        )
                        break
                    line = raw[:-1].decode("utf-8", "replace")
                    if line.startswith(HEADER_PREFIX):
                        segment += 1
                        out.segments += 1
                        continue
                    parts = line.split("\t")
                    try:
                        if parts[0] == "u" and len(parts) == 7:
                            step = int(parts[1])
                            values = (int(parts[3]), int(parts[4]), float(parts[5]), float(parts[6]))
                            b = batch_of.setdefault((file_no, segment, step), len(batch_of))
                            u = index.setdefault(parts[2], len(index))
                            for name, value in zip(cols, (u, b, step, *values), strict=True):
                                cols[name].append(value)
                        elif parts[0] == "f" and len(parts) == 5:
                            pending_flags.append(
                                ((file_no, segment, int(parts[1])), (parts[2], float(parts[3]), float(parts[4])))
                            )
                        elif line:
                            raise ValueError
                    except ValueError:
                        bad += 1
                        first_bad = first_bad or number
        except OSError as exc:
            out.problems.append(f"{path}: cannot be read ({exc.strerror or exc})")
            continue
        if bad:
            out.problems.append(
                f"{path.name}: {bad} line(s) that are not ledger lines skipped (first: line {first_bad})"
            )
    for key, flag in pending_flags:
        flagged = batch_of.get(key)
        if flagged is None:
            out.flagged_without_batch += 1
            continue
        out.flags.setdefault(flagged, []).append(flag)
    out.ids = list(index)
    out.batches = len(batch_of)
    for name, column in cols.items():
        setattr(out, name, np.frombuffer(column, np.int64 if column.typecode == "q" else np.float64).copy())
    return out
