"""Training samples and the startup checks that Coqui does not make.

Coqui reads a RUSLAN folder without checking the audio's sample rate (with resample = false) and
drops characters outside the vocabulary with a single warning. Both silently train a wrong
model, so the kit checks them before the first step and stops with what to do.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

import soundfile as sf
from TTS.tts.datasets import load_tts_samples

from ruslan_glowtts.common.corpus_layout import METADATA_FILE, WAV_DIR, wav_path
from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.next_steps import PREPARE_HINT
from ruslan_glowtts.common.vocabulary import Vocabulary
from ruslan_glowtts.prep.metadata import LINE_PROBLEMS, MetadataScan, read_metadata

logger = logging.getLogger(__name__)

RATE_CHECK_FILES = 64  # files whose header is read at startup (spread over the corpus)


def check_metadata(root: Path, meta_file: str) -> MetadataScan:
    """The metadata file, parsed by prepare's own reader (ruslan_glowtts/prep/metadata.py): training
    accepts exactly the lines prepare keeps, and stops at the first line prepare would exclude.
    A byte-order mark is stripped, as prepare does (its report records it)."""
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    meta = root / meta_file
    if not meta.is_file():
        raise UserError(f"metadata file not found: {meta} (a RUSLAN folder holds {METADATA_FILE} and {WAV_DIR}/)")
    scan = read_metadata(meta)
    if scan.problems:
        first = scan.problems[0]
        raise UserError(
            f"{meta}:{first.line}: not an 'id|text' line: {LINE_PROBLEMS[first.code][1]}"
            f"{f' ({first.detail})' if first.detail else ''}; {PREPARE_HINT.format(src=root)} "
            "reports and excludes such lines"
        )
    if not scan.entries:
        raise UserError(f"{meta} is empty")
    if scan.bom:
        logger.info("%s starts with a byte-order mark: ignored", meta)
    return scan


def ruslan_formatter(root_path: str, meta_file: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Coqui's `ruslan` formatter's samples, from the kit's metadata reader (Coqui's would keep a
    byte-order mark in the first id and crash on a line without '|'). Each text keeps the line's
    newline as Coqui's does: the length caps count it (ruslan_glowtts/prep/length_limits.py)."""
    scan = check_metadata(Path(root_path), meta_file)
    return [
        {
            "text": entry.text + "\n",
            "audio_file": str(wav_path(Path(root_path), entry.id)),
            "speaker_name": "ruslan",
            "root_path": root_path,
        }
        for entry in scan.entries
    ]


def split_eval(samples: list[dict[str, Any]], size: float, max_size: int | None) -> tuple[list, list]:
    """A fixed eval split: the same utterances for every run and resume of the same corpus.

    `size` <= 1 is a fraction, > 1 a count (Coqui's eval_split_size convention); at least one
    utterance is held out, and at least one is left to train on.
    """
    if len(samples) < 2:
        raise UserError(f"need at least 2 utterances to train and evaluate, found {len(samples)}")
    count = int(size) if size > 1 else int(len(samples) * size)
    if max_size:
        count = min(count, max_size)
    count = min(max(count, 1), len(samples) - 1)
    ordered = sorted(samples, key=lambda s: s["audio_file"])
    random.Random(0).shuffle(ordered)
    return ordered[count:], ordered[:count]


def load_samples(config: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and eval samples of the configured corpus, after the metadata and file checks."""
    dataset = config.datasets[0]
    root = Path(dataset.path)
    samples, _ = load_tts_samples(config, eval_split=False, formatter=ruslan_formatter)
    missing = [s["audio_file"] for s in samples if not Path(s["audio_file"]).is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(samples)} audio files are missing (first: {missing[0]}); "
            f"{PREPARE_HINT.format(src=root)} reports and excludes them"
        )
    return split_eval(samples, config.eval_split_size, config.eval_split_max_size)


def read_audio_lengths(samples: list[dict[str, Any]], config: Any) -> tuple[dict[str, int], Counter]:
    """Every file's length in samples (Coqui's get_audio_size: the header's frame count) and the
    count of files per sample rate, from one read of each header; stop with one line when a header
    cannot be read (a file replaced or damaged after prepare)."""
    lengths: dict[str, int] = {}
    rates: Counter = Counter()
    unreadable: list[str] = []
    for sample in samples:
        try:
            info = sf.info(sample["audio_file"])
            lengths[sample["audio_file"]] = info.frames
            rates[info.samplerate] += 1
        except (sf.LibsndfileError, RuntimeError, OSError):  # LibsndfileError is a RuntimeError
            unreadable.append(sample["audio_file"])
    if unreadable:
        root = Path(config.datasets[0].path)
        shown = ", ".join(Path(name).name for name in unreadable[:5]) + (" ..." if len(unreadable) > 5 else "")
        raise UserError(
            f"{len(unreadable)} of {len(samples)} audio files cannot be read as audio ({shown}); "
            f"`{PREPARE_HINT.format(src=root)}` reports and excludes them "
            "(or replace them from the source corpus)"
        )
    return lengths, rates


def check_length_caps(
    train: list[dict[str, Any]], evaluation: list[dict[str, Any]], lengths: dict[str, int], config: Any
) -> None:
    """Coqui applies min/max_audio_len and min/max_text_len only inside fit() ("No samples left"
    after an untrained checkpoint_0.pth); the kit counts what fits before anything is written."""

    def fits(sample: dict[str, Any]) -> bool:
        audio, text = lengths[sample["audio_file"]], len(sample["text"])
        return (
            config.min_audio_len <= audio <= config.max_audio_len and config.min_text_len <= text <= config.max_text_len
        )

    n_train, n_eval = sum(map(fits, train)), sum(map(fits, evaluation))
    if n_train >= 1 and n_eval >= 1:
        if n_train < len(train):
            logger.info("Length caps leave %d of %d training utterances", n_train, len(train))
        return
    rate = config.audio.sample_rate
    longest = max(lengths.values(), default=0)
    raise UserError(
        f"the length caps leave {n_train} of {len(train)} training and {n_eval} of {len(evaluation)} eval "
        f"utterances (at least 1 of each is needed): min/max_audio_len = {config.min_audio_len}/"
        f"{config.max_audio_len} are in samples of the audio files ({config.max_audio_len / rate:.2f} s at "
        f"{rate} Hz; the longest file has {longest} = {longest / rate:.1f} s), min/max_text_len = "
        f"{config.min_text_len}/{config.max_text_len} in characters. E.g. --set max_audio_len={15 * rate} for 15 s"
    )


def check_sample_rate(samples: list[dict[str, Any]], config: Any, rates: Counter | None = None) -> None:
    """Stop when files are not at the config's rate: Coqui would mis-featurise them silently.
    `rates`: files per sample rate when every header was read already; else a sample is read."""
    target = config.audio.sample_rate
    if config.audio.resample:
        logger.warning(
            "audio.resample = true: every file is resampled to %d Hz on every load (slow); "
            "python -m ruslan_glowtts.prepare resamples once",
            target,
        )
        return
    if rates is None:
        step = max(1, len(samples) // RATE_CHECK_FILES)
        rates = Counter(sf.info(s["audio_file"]).samplerate for s in samples[::step])
    wrong = {rate: n for rate, n in rates.items() if rate != target}
    if wrong:
        root = Path(config.datasets[0].path)
        found = ", ".join(f"{rate} Hz ({n} files)" for rate, n in sorted(wrong.items()))
        raise UserError(
            f"audio is at {found} but the config trains at {target} Hz. Resample once with "
            f"`{PREPARE_HINT.format(src=root)}` and train on the prepared folder "
            "(or add --set audio.resample=true to resample on every load, much slower)"
        )


def check_vocabulary(samples: list[dict[str, Any]], config: Any, *, allow_unknown: bool = False) -> Counter:
    """Count characters of the cleaned training text that the model's vocabulary lacks.

    Coqui's tokenizer would drop them with one warning; the kit refuses to start unless
    `allow_unknown` (--allow-unknown-chars), and then logs what will be dropped.
    """
    vocabulary = Vocabulary.from_config(config)  # prepare excludes lines by the same verdict
    unknown: Counter = Counter()
    example: dict[str, str] = {}
    for sample in samples:
        for char in vocabulary.unknown(sample["text"], sample.get("language")):
            unknown[char] += 1
            example.setdefault(char, Path(sample["audio_file"]).stem)
    if unknown:
        listed = ", ".join(f"{c!r} x{n} (e.g. {example[c]})" for c, n in unknown.most_common(12))
        more = f" and {len(unknown) - 12} more" if len(unknown) > 12 else ""
        message = f"{sum(unknown.values())} characters in the training text are not in the vocabulary: {listed}{more}."
        if not allow_unknown:
            raise UserError(
                f"{message} Normalise the text with `python -m ruslan_glowtts.prepare`, add the characters "
                "to characters.characters / characters.punctuations, or pass --allow-unknown-chars to drop them"
            )
        logger.warning("%s They will be dropped (--allow-unknown-chars).", message)
    return unknown
