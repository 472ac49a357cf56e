"""Speak text with a trained GlowTTS run and, if given, its HiFi-GAN vocoder: one WAV per sentence.

    python -m ruslan_glowtts.synthesize --tts runs/<glowtts run> --vocoder runs/<hifigan run> \\
        --text "В 1812 году началась Отечественная война." --out out/
    python -m ruslan_glowtts.synthesize --tts runs/<run>/checkpoint_50000.pth --file sentences.txt --out out/

RUN_OR_CKPT is a run folder (its newest checkpoint_N.pth, else best_model.pth, else known_good.pth,
with the folder's config.json) or a checkpoint file (with the config.json beside it).

Before loading anything it checks that the vocoder was trained on the same mel features as the
GlowTTS model (every setting Coqui's Synthesizer does not convert, ruslan_glowtts/voice/audio_compat.py)
and refuses a mismatch with one line naming the settings. The text goes through prepare's
normaliser first (numbers, abbreviations: «в 1812 году» is read as words), as the training text did.
Synthesis is Coqui's own Synthesizer with the vocoder passed by path: `tts --model_path ...
--vocoder_name ...` ignores the vocoder in coqui-tts 0.28 (README, "Listen").

Every input is checked before --out is made or a model is loaded: the paths (common/paths.py),
that each checkpoint loads and is the kind of model its flag expects, the text. index.tsv is
rewritten after each WAV, so a run stopped by Ctrl-C or SIGTERM leaves an index of the WAVs it wrote.

Exit codes: 0 WAVs written, 2 bad input (one line on stderr, nothing written), 130/143 Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruslan_glowtts.common.atomic_files import atomic_output, write_text
from ruslan_glowtts.common.cli import OneLineErrorParser, signals_held, tool
from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.paths import input_file, output_folder
from ruslan_glowtts.common.run_layout import BEST_MODEL, CONFIG_FILE, KNOWN_GOOD
from ruslan_glowtts.common.runs import CheckpointProblem, check_checkpoint, read_checkpoint, resume_candidates
from ruslan_glowtts.common.vocabulary import out_of_vocabulary
from ruslan_glowtts.prep.text_normalization import normalize_text
from ruslan_glowtts.voice.audio_compat import check_compatible

logger = logging.getLogger(__name__)

VOCODER_MODELS = (
    "hifigan",
    "gan",
    "melgan",
    "multiband_melgan",
    "fullband_melgan",
    "parallel_wavegan",
    "wavegrad",
    "wavernn",
    "univnet",
)


@dataclass(frozen=True)
class Model:
    checkpoint: Path
    config_path: Path
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.checkpoint)


def _candidates(run_dir: Path) -> list[Path]:
    """A run's checkpoints to speak with, best first: its checkpoint_N.pth, newest step first, then
    best_model.pth and known_good.pth."""
    newest = [path for path in resume_candidates(run_dir) if path.name.startswith("checkpoint_")]
    return [path for path in [*newest, run_dir / BEST_MODEL, run_dir / KNOWN_GOOD] if path.is_file()]


def _loadable(candidates: list[Path], flag: str, given: Path) -> Path:
    """The first of a run's `candidates` that loads as a checkpoint (a damaged newest one is passed
    over, with a warning), or one line naming the first problem."""
    problems = []
    for path in candidates:
        try:
            read_checkpoint(path)
        except CheckpointProblem as problem:
            problems.append(f"{path.name} {problem}")
            continue
        if problems:
            logger.warning(" ! %s %s: %s; using %s", flag, given, problems[0], path.name)
        return path
    raise UserError(f"{flag} {given}: none of its checkpoints loads ({problems[0]})")


def resolve_model(given: Path, flag: str, *, vocoder: bool | None = None) -> Model:
    """The checkpoint and config.json a run folder or checkpoint path stands for. With `vocoder`, the
    config must be a vocoder's (True) or a TTS model's (False); then the checkpoint must load. All
    checked here, before anything is written."""
    if not given.exists() and not given.is_symlink():
        raise UserError(f"{flag} {given}: no such run folder or checkpoint")
    if given.is_dir():
        candidates = _candidates(given)
        if not candidates:
            raise UserError(
                f"{flag} {given}: the run has no checkpoint (checkpoint_N.pth, {BEST_MODEL} or {KNOWN_GOOD}) yet"
            )
        config_path = given / CONFIG_FILE
    else:
        candidates, config_path = [], input_file(given, flag, "checkpoint file").parent / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{flag} {given}: no config.json beside the checkpoint ({config_path})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{flag} {given}: unreadable config.json: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("audio"), dict):
        raise UserError(f"{flag} {given}: {config_path} is not a Coqui model config (no audio settings)")
    if vocoder is True and not _is_vocoder(config):
        raise UserError(f"{flag} {given}: this is a {config.get('model')} model, not a vocoder")
    if vocoder is False and _is_vocoder(config):
        raise UserError(f"{flag} {given}: this is a vocoder ({config.get('model')}), not a GlowTTS model")
    checkpoint = _loadable(candidates, flag, given) if candidates else check_checkpoint(given, flag).path
    return Model(checkpoint, config_path, config)


def _is_vocoder(config: dict[str, Any]) -> bool:
    return "generator_model" in config or str(config.get("model", "")).lower() in VOCODER_MODELS


def vocoder_for_run(given: Path, tts_audio: Any, tts_name: str) -> Model:
    """The vocoder behind `--vocoder` of train_ruslan_glowtts.py, checked against the run's features."""
    vocoder = resolve_model(given, "--vocoder", vocoder=True)
    check_compatible(tts_audio, vocoder.config["audio"], tts_name=tts_name, vocoder_name=vocoder.name)
    return vocoder


def read_sentences(text: str | None, file: Path | None) -> list[str]:
    if text is not None:
        lines = [text]
    else:
        assert file is not None
        input_file(file, "--file")
        try:
            lines = file.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is not text
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--file {file}: cannot read it as UTF-8 text: {exc}") from None
    sentences = [line.replace("\ufeff", "").strip() for line in lines]
    sentences = [line for line in sentences if line]
    if not sentences:
        raise UserError(f"{'--text' if text is not None else f'--file {file}'}: no text to speak")
    return sentences


def _cleaner(config: dict[str, Any]) -> Callable[[str], str] | None:
    from TTS.tts.utils.text import cleaners

    return getattr(cleaners, config.get("text_cleaner") or "", None)


def _check_vocabulary(sentences: list[str], config: dict[str, Any]) -> None:
    """Coqui's tokenizer drops characters outside the vocabulary: warn, and refuse a sentence with
    no letter left (GlowTTS cannot run on an empty input)."""
    chars = config.get("characters") or {}
    letters = chars.get("characters")
    if not letters:
        return
    vocabulary = letters + (chars.get("punctuations") or "")
    cleaner = _cleaner(config)
    for number, sentence in enumerate(sentences, 1):
        cleaned = cleaner(sentence) if cleaner is not None else sentence
        if not any(c in letters for c in cleaned):
            latin = any("a" <= c.lower() <= "z" for c in cleaned)
            raise UserError(
                f"sentence {number} {sentence!r}: no letter of the model's vocabulary in it (Russian "
                "text expected" + ("; Latin letters are not in the vocabulary)" if latin else ")")
            )
        unknown = out_of_vocabulary(sentence, vocabulary, cleaner)
        if unknown:
            logger.warning(
                " ! %r: characters outside the model's vocabulary are dropped: %s", sentence, " ".join(unknown)
            )


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m ruslan_glowtts.synthesize",
        description="Speak Russian text with a GlowTTS run and (optionally) a matching HiFi-GAN vocoder run.",
        epilog="Exit codes: 0 WAVs written, 2 bad input.",
    )
    p.add_argument(
        "--tts",
        type=Path,
        required=True,
        metavar="RUN_OR_CKPT",
        help="GlowTTS run folder (newest checkpoint) or checkpoint file",
    )
    p.add_argument(
        "--vocoder",
        type=Path,
        metavar="RUN_OR_CKPT",
        help="HiFi-GAN run folder or checkpoint (train_ruslan_hifigan.py); without it: Griffin-Lim",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="one sentence: one WAV")
    source.add_argument("--file", type=Path, help="UTF-8 text file: one WAV per non-empty line")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for 001.wav, 002.wav, ...")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is available")
    return p


def synthesize(args: argparse.Namespace) -> list[Path]:
    output_folder(args.out, "--out")  # before the models load: a refusal then costs nothing
    tts = resolve_model(args.tts, "--tts", vocoder=False)
    vocoder = resolve_model(args.vocoder, "--vocoder", vocoder=True) if args.vocoder is not None else None
    if vocoder is not None:
        check_compatible(tts.config["audio"], vocoder.config["audio"], tts_name=tts.name, vocoder_name=vocoder.name)
    sentences = read_sentences(args.text, args.file)
    normalized = [normalize_text(s).text for s in sentences]
    _check_vocabulary(normalized, tts.config)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {args.out}: cannot create it: {exc.strerror}") from None

    import torch
    from TTS.utils.synthesizer import Synthesizer

    if vocoder is None:
        logger.warning(
            " ! No --vocoder: using Griffin-Lim (metallic sound; judge intelligibility and prosody). "
            "Train a vocoder with train_ruslan_hifigan.py for a real voice."
        )
    else:
        logger.info("Vocoder: %s", vocoder.name)
    use_cuda = torch.cuda.is_available() and not args.cpu
    synthesizer = Synthesizer(
        tts_checkpoint=tts.checkpoint,
        tts_config_path=tts.config_path,
        vocoder_checkpoint=vocoder.checkpoint if vocoder else None,
        vocoder_config=vocoder.config_path if vocoder else None,
        use_cuda=use_cuda,
    )
    written = []
    width = max(3, len(str(len(normalized))))
    index = []
    for number, (original, text) in enumerate(zip(sentences, normalized, strict=True), 1):
        wav = synthesizer.tts(text, split_sentences=False)
        path = args.out / f"{number:0{width}d}.wav"
        index.append(f"{path.name}\t{original}\t{text}")
        # A WAV and its index line land together: a run stopped by a signal leaves an index of
        # exactly the WAVs it wrote (and no half-written WAV).
        with signals_held():
            with atomic_output(path) as temp:
                synthesizer.save_wav(wav, str(temp))
            write_text(args.out / "index.tsv", "file\ttext\tnormalised text\n" + "\n".join(index) + "\n")
        seconds = len(wav) / synthesizer.output_sample_rate
        logger.info("%s  %.2f s  %s", path, seconds, text)
        written.append(path)
    return written


@tool(
    interrupted="interrupted (Ctrl-C): the WAVs written so far are kept",
    terminated="terminated (SIGTERM): the WAVs written so far are kept",
)
def main(argv: list[str] | None = None) -> int:
    """`python -m ruslan_glowtts.synthesize` (ruslan_glowtts/synthesize.py runs it under common.cli.run_as_script)."""
    args = build_parser().parse_args(argv)
    written = synthesize(args)
    vocoder = "HiFi-GAN" if args.vocoder is not None else "Griffin-Lim (no --vocoder)"
    print(f"Wrote {len(written)} WAV(s) to {args.out} with {vocoder}; index.tsv lists their text.")
    return 0
