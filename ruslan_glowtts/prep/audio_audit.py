"""Per-file audio checks: what is wrong with one source WAV, and whether it can be trained on.

Extreme sample values are one cause of exploding gradients, and Coqui reads whatever the
file holds: NaN samples, DC, clipping, silence. Each check here measures one of those and
returns a problem with an action: "excluded" (cannot be trained on), "fixed" (the prepared
copy is corrected) or "warning" (kept, listed for a human to look at). Nothing here raises for
bad audio: a broken file is a problem entry, never a crashed run.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import soundfile as sf

from ruslan_glowtts.prep.problems import Action, Legend, Problem

logger = logging.getLogger(__name__)

# code -> (action, what it means); the report's legend for audio problems.
AUDIO_PROBLEMS: Legend = {
    "missing_file": ("excluded", "RUSLAN/<id>.wav does not exist"),
    "unreadable": ("excluded", "the file cannot be decoded as audio (corrupt, truncated header, not a WAV)"),
    "empty_audio": ("excluded", "the file decodes to zero samples"),
    "truncated": ("warning", "fewer samples could be read than the header announces"),
    "too_long_to_decode": ("excluded", "longer than 10 minutes: not decoded at all, to keep memory bounded"),
    "non_finite": ("excluded", "NaN or Inf samples (float WAV): the features would be NaN"),
    "multichannel": ("fixed", "more than one channel: downmixed to mono (mean of the channels)"),
    "out_of_range": ("fixed", "float samples beyond ±1.0: scaled down to a 0.99 peak"),
    "clipping": ("warning", "some samples at full scale (clipped peaks), below the exclusion limit"),
    "clipped": ("excluded", "too many samples at full scale (--max-clipped-ratio): distorted audio"),
    "dc_offset": ("fixed", "the mean of the signal is far from 0: offset removed"),
    "near_silent": ("excluded", "the peak is below --silence-peak-db: nothing audible to learn from"),
    "low_sample_rate": ("warning", "source rate below the training rate: upsampled, the top band is empty"),
    "long_leading_silence": ("warning", "more leading silence than --max-edge-silence (trimmed with --trim-silence)"),
    "long_trailing_silence": ("warning", "more trailing silence than --max-edge-silence (trimmed with --trim-silence)"),
    "processing_error": ("excluded", "an unexpected error while processing the file (the detail names it)"),
}

FULL_SCALE = 0.999  # |sample| at or above this counts as clipped (int16 peaks are 32767/32768)


def problem(code: str, detail: str = "", action: Action | None = None) -> Problem:
    return Problem.of(AUDIO_PROBLEMS, code, detail, action)


@dataclass(frozen=True)
class AudioLimits:
    max_clipped_ratio: float = 0.01  # share of full-scale samples above which a file is excluded
    clipping_report_ratio: float = 0.0001  # ... and above which it is listed as a warning
    max_dc_offset: float = 0.01  # |mean| above which the offset is removed
    silence_peak_db: float = -40.0  # peak below this (dBFS) = near-silent, excluded
    max_edge_silence: float = 1.0  # seconds of leading/trailing silence before it is listed
    max_decode_seconds: float = 600.0  # longer files are not decoded at all (memory guard)


@dataclass
class SourceAudio:
    """A decoded, checked source file: mono float64 samples (None when excluded) and its findings."""

    audio: np.ndarray | None
    rate: int = 0
    problems: list[Problem] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.audio is not None


def wav_declared_frames(path: Path) -> int | None:
    """The frame count a RIFF/WAVE header announces (its data chunk size / block align), or None
    when the file is not a plain RIFF WAV or announces no usable size (streamed: 0 or 0xFFFFFFFF)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = 0
            while True:
                chunk = handle.read(8)
                if len(chunk) < 8:
                    return None
                chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if chunk_id == b"fmt ":
                    fmt = handle.read(size + (size & 1))
                    if len(fmt) < 14:
                        return None
                    block_align = struct.unpack("<H", fmt[12:14])[0]
                elif chunk_id == b"data":
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    handle.seek(size + (size & 1), 1)  # chunks are word-aligned
    except OSError:
        return None


def read_and_check(path: Path, target_rate: int, limits: AudioLimits) -> SourceAudio:
    """Decode `path` and run every sample-level check; fixes are applied to the returned audio."""
    try:
        info = sf.info(str(path))
    except (RuntimeError, ValueError, TypeError, OSError) as exc:  # libsndfile's errors are RuntimeErrors
        return SourceAudio(None, problems=[problem("unreadable", str(exc).strip())])
    result = SourceAudio(
        None,
        info.samplerate,
        info={
            "rate": info.samplerate,
            "channels": info.channels,
            "subtype": info.subtype,
            "seconds": round(info.frames / info.samplerate, 3) if info.samplerate else 0.0,
        },
    )
    if info.frames <= 0 or info.samplerate <= 0:
        result.problems.append(problem("empty_audio", f"{info.frames} frames"))
        return result
    if info.frames / info.samplerate > limits.max_decode_seconds:
        result.problems.append(problem("too_long_to_decode", f"{info.frames / info.samplerate:.1f} s"))
        return result
    try:
        data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, ValueError, TypeError, OSError) as exc:  # libsndfile's errors are RuntimeErrors
        result.problems.append(problem("unreadable", str(exc).strip()))
        return result
    if len(data) == 0:
        result.problems.append(problem("empty_audio", "0 samples decoded"))
        return result
    declared = wav_declared_frames(path)
    if declared is not None and declared > len(data):
        # libsndfile derives `frames` from the file's size, so only the header's own data size
        # tells that the file was cut (a copy or download that stopped early).
        announced, present = declared / info.samplerate, len(data) / info.samplerate
        result.problems.append(
            problem(
                "truncated",
                f"{len(data)} of {declared} frames: the header announces {announced:.2f} s, {present:.2f} s present",
            )
        )
    elif len(data) < info.frames:
        result.problems.append(problem("truncated", f"{len(data)} of {info.frames} frames"))

    if not np.isfinite(data.sum(dtype=np.float64)):  # one pass; float32 samples cannot overflow a float64 sum
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        result.problems.append(problem("non_finite", f"{bad} NaN/Inf samples"))
        return result
    if data.shape[1] > 1:
        result.problems.append(problem("multichannel", f"{data.shape[1]} channels"))
        audio = data.mean(axis=1)
    else:
        audio = data[:, 0]
    del data

    result.problems.extend(_level_checks(audio, limits, result.info))
    if any(p.excluded for p in result.problems):
        return result
    if info.samplerate < target_rate:
        result.problems.append(problem("low_sample_rate", f"{info.samplerate} Hz < {target_rate} Hz"))
    result.audio = _apply_fixes(audio, result.problems, result.info)
    return result


def _level_checks(audio: np.ndarray, limits: AudioLimits, info: dict[str, Any]) -> list[Problem]:
    found = []
    magnitude = np.abs(audio)
    peak = float(magnitude.max())
    clipped = float(np.count_nonzero(magnitude >= FULL_SCALE)) / len(audio)
    dc = float(audio.mean())
    rms = float(np.sqrt(np.dot(audio, audio) / len(audio)))
    info.update(
        peak=round(peak, 5),
        clipped_ratio=round(clipped, 6),
        dc_offset=round(dc, 5),
        rms_db=round(20 * np.log10(max(rms, 1e-10)), 2),
    )
    if peak > 1.0:
        # Float WAVs keep values beyond full scale, so nothing is clipped yet: scale instead.
        found.append(problem("out_of_range", f"peak {peak:.3f}"))
    elif clipped > limits.max_clipped_ratio:
        limit = limits.max_clipped_ratio
        found.append(problem("clipped", f"{clipped:.2%} of samples at full scale (limit {limit:.2%})"))
    elif clipped > limits.clipping_report_ratio:
        found.append(problem("clipping", f"{clipped:.3%} of samples at full scale"))
    if abs(dc) > limits.max_dc_offset:
        found.append(problem("dc_offset", f"mean {dc:+.4f}"))
    peak_db = 20 * np.log10(max(peak, 1e-10))
    if peak_db < limits.silence_peak_db:
        found.append(problem("near_silent", f"peak {peak_db:.1f} dBFS (limit {limits.silence_peak_db:g})"))
    return found


def _apply_fixes(audio: np.ndarray, problems: list[Problem], info: dict[str, Any]) -> np.ndarray:
    codes = {p.code for p in problems}
    if "dc_offset" in codes:
        audio = audio - info["dc_offset"]
    peak = float(np.abs(audio).max())
    if "out_of_range" in codes or peak > 1.0:  # removing DC can also push a peak past full scale
        audio = audio * (0.99 / peak)
    return audio


def edge_silence(
    audio: np.ndarray, rate: int, *, trim_db: float, frame_length: int, hop_length: int
) -> tuple[int, int]:
    """(first, last) sample of the non-silent part, as Coqui's own trim finds it (librosa, trim_db
    below the loudest frame)."""
    _, (start, end) = librosa.effects.trim(audio, top_db=trim_db, frame_length=frame_length, hop_length=hop_length)
    return int(start), int(end)
