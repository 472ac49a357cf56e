"""Turning checked source audio into the training copy: resample once, trim, 16-bit PCM.

Resampling is done here, once, with soxr (a well-kept, high-quality resampler), so training
never resamples: Coqui's resample = true runs librosa on every load of every file.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ruslan_glowtts.common.atomic_files import write_bytes

logger = logging.getLogger(__name__)

RESAMPLE_QUALITY = "HQ"  # soxr's default high quality; VHQ costs ~30% more for no audible gain in speech
TRIM_MARGIN_SECONDS = 0.1  # silence left at each edge after --trim-silence, so onsets are not cut


def resample(audio: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate == target_rate:
        return audio
    return soxr.resample(audio, rate, target_rate, quality=RESAMPLE_QUALITY)


def trim(audio: np.ndarray, rate: int, start: int, end: int) -> np.ndarray:
    margin = int(TRIM_MARGIN_SECONDS * rate)
    return audio[max(0, start - margin) : min(len(audio), end + margin)]


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Quantise to int16. The clip only catches resampler overshoot of a few LSB near full scale."""
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def write_pcm16_wav(path: Path, pcm: np.ndarray, rate: int) -> None:
    """Write a mono 16-bit PCM WAV atomically (temp file + rename).

    Encoded in memory first: soundfile fsyncs every file it closes, which cost more than the
    encoding itself (~1 ms per file) and buys nothing here: a rename after a complete write is
    what makes the file safe against a killed run, and a re-run redoes what was not recorded."""
    buffer = io.BytesIO()
    sf.write(buffer, pcm, rate, subtype="PCM_16", format="WAV")
    write_bytes(path, buffer.getvalue())
