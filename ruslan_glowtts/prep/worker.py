"""The per-file work of prepare, run in worker processes: check, fix, resample, write, featurise.

A worker reads one source file at a time and returns a small record (no audio), so memory stays
bounded whatever the corpus size. Workers run with one BLAS thread and glibc keeping freed
buffers (ruslan_glowtts/common/process_tuning.py): together ~2x faster per file on the benchmark.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruslan_glowtts.common.process_tuning import keep_freed_memory, limit_blas_threads
from ruslan_glowtts.prep.audio_audit import (
    AudioLimits,
    edge_silence,
    problem,
    read_and_check,
)
from ruslan_glowtts.prep.audio_conversion import (
    resample,
    to_pcm16,
    trim,
    write_pcm16_wav,
)
from ruslan_glowtts.prep.feature_cache import compute_features, write_features
from ruslan_glowtts.prep.problems import Action

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    target_rate: int
    trim_silence: bool
    trim_db: float  # Coqui's audio.trim_db: the same threshold its load-time trim uses
    frame_length: int
    hop_length: int
    limits: AudioLimits
    audio_config: Any | None  # Coqui audio config for the features; None = no features


@dataclass(frozen=True)
class Job:
    id: str
    source: str
    wav: str
    features: str | None  # where to write the features, or None
    convert: bool  # False: the prepared WAV is current, only its features are missing


_settings: WorkerSettings | None = None
_ap: Any = None
_blas_limit: Any = None


def warm_up() -> None:
    """Pay the one-time costs (Coqui's import, librosa's lazy imports and numba compilation,
    ~4 s) in the parent before forking, instead of once in every worker."""
    import numpy as np
    from TTS.utils.audio import AudioProcessor  # noqa: F401

    noise = np.random.default_rng(0).standard_normal(4096) * 0.1
    edge_silence(noise, 22050, trim_db=45, frame_length=1024, hop_length=256)
    resample(noise, 44100, 22050)


# Blocked in prepare while it forks the pool, unblocked by each worker once its own handlers are in
# place: a signal in between would otherwise run the parent's handler, copied into the worker.
POOL_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def init_worker(settings: WorkerSettings, *, in_pool: bool = True) -> None:
    global _settings, _ap, _blas_limit
    if in_pool:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the parent
        # The parent terminates the pool on Ctrl-C/SIGTERM; a worker leaves at once and quietly
        # (its half-written temp file is removed by the next run) instead of printing the
        # BrokenPipeError of a result it can no longer send.
        signal.signal(signal.SIGTERM, _exit_quietly)
        _die_with_parent()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, POOL_SIGNALS)
    _settings = settings
    if settings.audio_config is not None:
        from TTS.utils.audio import AudioProcessor

        _ap = AudioProcessor(settings.audio_config)
    keep_freed_memory()
    if in_pool:
        _blas_limit = limit_blas_threads()  # kept referenced: the limit lasts as long as the worker


def _exit_quietly(signum: int, frame: Any) -> None:
    os._exit(128 + signum)


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent dies, even by SIGKILL (no orphan keeps working
    and then fails writing to a closed pipe)."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(0)


def process(job: Job) -> dict[str, Any]:
    """Do one job; any unexpected error becomes a problem entry for that file, not a crash."""
    try:
        return _process(job)
    except Exception as exc:  # one bad file must not stop 22,000 others (logged with its traceback)
        logger.debug("processing %s failed", job.source, exc_info=True)
        return {
            "id": job.id,
            "converted": job.convert,
            "usable": False,
            "frames": 0,
            "features": False,
            "problems": [problem("processing_error", f"{type(exc).__name__}: {exc}").to_json()],
            "source": {},
        }


def _process(job: Job) -> dict[str, Any]:
    assert _settings is not None, "init_worker() first"
    settings = _settings
    wav, features = Path(job.wav), Path(job.features) if job.features else None
    if not job.convert:
        assert features is not None
        write_features(features, compute_features(_ap, wav))
        return {"id": job.id, "converted": False, "features": True}

    # Drop old features before rewriting the audio: a kill between the two writes then leaves a
    # missing feature file (computed on the fly), never features of the previous audio.
    if features is not None:
        features.unlink(missing_ok=True)
    source = read_and_check(Path(job.source), settings.target_rate, settings.limits)
    # The record is stored as JSON in prepare's state database: problems in their JSON form.
    record: dict[str, Any] = {
        "id": job.id,
        "converted": True,
        "usable": source.usable,
        "frames": 0,
        "features": False,
        "problems": [p.to_json() for p in source.problems],
        "source": source.info,
    }
    if source.audio is None:  # not usable
        wav.unlink(missing_ok=True)  # an earlier run's copy of a file that is now excluded
        return record

    audio = resample(source.audio, source.rate, settings.target_rate)
    start, end = edge_silence(
        audio,
        settings.target_rate,
        trim_db=settings.trim_db,
        frame_length=settings.frame_length,
        hop_length=settings.hop_length,
    )
    lead, trail = start / settings.target_rate, (len(audio) - end) / settings.target_rate
    record["source"].update(leading_silence=round(lead, 3), trailing_silence=round(trail, 3))
    action: Action | None = "fixed" if settings.trim_silence else None
    for code, seconds in (("long_leading_silence", lead), ("long_trailing_silence", trail)):
        if seconds > settings.limits.max_edge_silence:
            record["problems"].append(problem(code, f"{seconds:.2f} s", action).to_json())
    if settings.trim_silence:
        audio = trim(audio, settings.target_rate, start, end)

    pcm = to_pcm16(audio)
    write_pcm16_wav(wav, pcm, settings.target_rate)
    record["frames"] = len(pcm)
    if features is not None:
        write_features(features, compute_features(_ap, wav))
        record["features"] = True
    return record
