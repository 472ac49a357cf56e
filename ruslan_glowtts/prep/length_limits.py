"""Length bounds, the training length caps recommended from the corpus, and dataset.toml.

Two levels, on purpose:
- bounds (--min/--max-duration, --min/--max-text-len) exclude what is implausible for one
  utterance (a 40 s file is a segmentation error, not a sentence); excluded lines leave the
  metadata;
- caps (max_audio_len / max_text_len in dataset.toml) cut the long tail at training time:
  monotonic alignment search costs O(text x frames) and the longest batches are where memory
  runs out and gradients spike. They are written to the prepared folder's dataset.toml (config
  layer 2), so `--set max_audio_len=...` or a preset still wins, without preparing again.

Coqui counts audio length in samples of the file (before its load-time trim) and text length
as len(text) of the metadata column, which in the ruslan formatter (Coqui's, and the kit's in
training/dataset.py) still ends with "\n" (+1).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ruslan_glowtts.prep.problems import Legend, Problem

logger = logging.getLogger(__name__)

# code -> (action, what it means); the report's legend for length problems.
LENGTH_PROBLEMS: Legend = {
    "too_short": ("excluded", "audio shorter than --min-duration"),
    "too_long": ("excluded", "audio longer than --max-duration (very long utterances destabilise training)"),
    "text_too_short": ("excluded", "normalised text shorter than --min-text-len characters"),
    "text_too_long": ("excluded", "normalised text longer than --max-text-len characters"),
    "unusual_speaking_rate": (
        "warning",
        ("characters per second far from the corpus median: the text may not match the audio"),
    ),
}
SPEAKING_RATE_FACTOR = 2.5  # flagged when chars/s is beyond median x or / this
AUDIO_CAP_STEP_SECONDS = 0.5
TEXT_CAP_STEP = 10


@dataclass(frozen=True)
class LengthBounds:
    min_seconds: float = 0.5
    max_seconds: float = 20.0
    min_chars: int = 2
    max_chars: int = 300


def length_problems(seconds: float, chars: int, bounds: LengthBounds) -> list[Problem]:
    found = []
    if seconds < bounds.min_seconds:
        found.append(("too_short", f"{seconds:.2f} s < {bounds.min_seconds:g} s"))
    if seconds > bounds.max_seconds:
        found.append(("too_long", f"{seconds:.2f} s > {bounds.max_seconds:g} s"))
    if chars < bounds.min_chars:
        found.append(("text_too_short", f"{chars} < {bounds.min_chars} characters"))
    if chars > bounds.max_chars:
        found.append(("text_too_long", f"{chars} > {bounds.max_chars} characters"))
    return [Problem.of(LENGTH_PROBLEMS, code, detail) for code, detail in found]


def speaking_rate_outliers(rates: dict[str, float]) -> dict[str, str]:
    """id -> detail for utterances whose characters per second are far from the median."""
    if len(rates) < 5:  # no meaningful median on a handful of lines
        return {}
    median = float(np.median(list(rates.values())))
    return {
        id_: f"{rate:.1f} chars/s, median {median:.1f}"
        for id_, rate in rates.items()
        if rate > median * SPEAKING_RATE_FACTOR or rate < median / SPEAKING_RATE_FACTOR
    }


def describe(values: list[float], digits: int = 2) -> dict[str, float]:
    if not values:
        return {"count": 0}
    array = np.asarray(values, dtype=np.float64)
    stats = {"count": len(values), "min": array.min(), "mean": array.mean()}
    stats.update({f"p{p:g}": np.percentile(array, p) for p in (1, 50, 90, 99, 99.9)})
    stats["max"] = array.max()
    return {k: (v if k == "count" else round(float(v), digits)) for k, v in stats.items()}


def recommend_caps(
    frames: list[int], chars: list[int], *, rate: int, percentile: float, bounds: LengthBounds
) -> dict[str, Any]:
    """Training caps at `percentile` of the usable utterances, rounded up to 0.5 s / 10 characters."""
    if not frames:
        return {}
    audio_at = float(np.percentile(frames, percentile)) / rate
    audio_cap = math.ceil(audio_at / AUDIO_CAP_STEP_SECONDS) * AUDIO_CAP_STEP_SECONDS
    max_audio_len = round(min(audio_cap, bounds.max_seconds) * rate)
    coqui_chars = [c + 1 for c in chars]  # Coqui's count includes the line's "\n"
    max_text_len = math.ceil(float(np.percentile(coqui_chars, percentile)) / TEXT_CAP_STEP) * TEXT_CAP_STEP
    dropped = sum(1 for f, c in zip(frames, coqui_chars, strict=True) if f > max_audio_len or c > max_text_len)
    return {
        "min_audio_len": round(bounds.min_seconds * rate),
        "max_audio_len": max_audio_len,
        "min_text_len": bounds.min_chars,
        "max_text_len": max_text_len,
        "percentile": percentile,
        "max_audio_seconds": round(max_audio_len / rate, 2),
        "dropped_at_training": dropped,
    }


def dataset_fragment(caps: dict[str, Any], *, sample_rate: int, characters: str | None) -> str:
    """dataset.toml: plain GlowTTSConfig keys, applied as config layer 2 by the training entry point."""
    lines = [
        "# Written by `python -m ruslan_glowtts.prepare`; config layer 2 (base < dataset.toml < preset < CLI).",
        "# The audio in RUSLAN/ is at this rate: it travels with the data.",
        f"audio.sample_rate = {sample_rate}",
    ]
    if caps:
        lines += [
            (
                f"# Length caps at the {caps['percentile']:g}th percentile of this corpus "
                "(see report.json, 'recommended'):"
            ),
            f"# {caps['dropped_at_training']} utterance(s) are longer and are skipped by Coqui's length filter.",
            f"min_audio_len = {caps['min_audio_len']}",
            f"max_audio_len = {caps['max_audio_len']}    # {caps['max_audio_seconds']:g} s",
            f"min_text_len = {caps['min_text_len']}",
            f"max_text_len = {caps['max_text_len']}      # characters, counted as Coqui does (+1 for the newline)",
        ]
    if characters is not None:
        lines += [
            "# The text keeps '+' stress marks (--stress keep): the vocabulary must include it.",
            f"characters.characters = {json.dumps(characters, ensure_ascii=False)}",
        ]
    return "\n".join(lines) + "\n"
