"""`python -m ruslan_glowtts.prepare`: flags -> PrepareOptions -> prepare(), its summary and exit code.

    python -m ruslan_glowtts.prepare --src /data/RUSLAN --dst /data/RUSLAN_prepared

Exit codes: 0 a usable dataset (problems are in the report), 2 bad arguments, 3 fewer than
MIN_USABLE usable utterances (the report is written), 130 Ctrl-C, 143 SIGTERM (both through
common.cli.tool; finished files are kept and a re-run resumes).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ruslan_glowtts.common.cli import OneLineErrorParser, tool
from ruslan_glowtts.common.corpus_layout import METADATA_FILE, REPORT, WAV_DIR
from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.presets import DEFAULT_PRESET
from ruslan_glowtts.prep.audio_audit import AudioLimits
from ruslan_glowtts.prep.length_limits import LengthBounds
from ruslan_glowtts.prep.prepare import MIN_USABLE, PrepareOptions, prepare
from ruslan_glowtts.prep.report import summary_lines
from ruslan_glowtts.prep.text_normalization import TextOptions

EXIT_NOTHING_USABLE = 3


def build_parser() -> argparse.ArgumentParser:
    d_bounds, d_limits = LengthBounds(), AudioLimits()
    p = OneLineErrorParser(
        prog="python -m ruslan_glowtts.prepare",
        description="Check, clean, resample and normalise a RUSLAN corpus into a training-ready folder, "
        "with a report of every problem found.",
        epilog="Exit codes: 0 usable dataset (problems are listed in DST/report.json), 2 bad arguments, "
        f"3 fewer than {MIN_USABLE} usable utterances, 130 interrupted (run again to resume).",
    )
    p.add_argument(
        "--src",
        type=Path,
        required=True,
        metavar="DIR",
        help=f"the RUSLAN folder as downloaded: {METADATA_FILE} and {WAV_DIR}/*.wav (read only)",
    )
    p.add_argument(
        "--dst",
        type=Path,
        required=True,
        metavar="DIR",
        help="the prepared folder to write (new, or an earlier prepare output to update); "
        "then train with --dataset-path DIR",
    )
    p.add_argument("--meta", type=Path, metavar="FILE", help=f"metadata file (default SRC/{METADATA_FILE})")
    p.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="worker processes (default: all %(default)s cores)",
    )
    text = p.add_argument_group("text")
    text.add_argument(
        "--stress",
        choices=("strip", "keep"),
        default="strip",
        help="'+' stress marks: strip them (default), or keep them and add '+' to the vocabulary "
        "(inference text then needs stress marks too)",
    )
    text.add_argument(
        "--yo",
        choices=("keep", "e"),
        default="keep",
        help="keep ё (default) or write е everywhere (when the corpus marks ё inconsistently)",
    )
    lengths = p.add_argument_group("lengths")
    lengths.add_argument(
        "--min-duration",
        type=float,
        default=d_bounds.min_seconds,
        metavar="S",
        help="exclude shorter utterances (default %(default)s s)",
    )
    lengths.add_argument(
        "--max-duration",
        type=float,
        default=d_bounds.max_seconds,
        metavar="S",
        help="exclude longer utterances (default %(default)s s)",
    )
    lengths.add_argument(
        "--min-text-len",
        type=int,
        default=d_bounds.min_chars,
        metavar="N",
        help="exclude shorter normalised texts (default %(default)s characters)",
    )
    lengths.add_argument(
        "--max-text-len",
        type=int,
        default=d_bounds.max_chars,
        metavar="N",
        help="exclude longer normalised texts (default %(default)s characters)",
    )
    lengths.add_argument(
        "--cap-percentile",
        type=float,
        default=99.0,
        metavar="P",
        help="training caps max_audio_len/max_text_len in dataset.toml at this percentile of "
        "the usable utterances (default %(default)s; 100 keeps all)",
    )
    audio = p.add_argument_group("audio")
    audio.add_argument(
        "--trim-silence", action="store_true", help="cut leading/trailing silence (keeping 0.1 s) in the prepared copy"
    )
    audio.add_argument(
        "--max-edge-silence",
        type=float,
        default=d_limits.max_edge_silence,
        metavar="S",
        help="report leading/trailing silence longer than this (default %(default)s s)",
    )
    audio.add_argument(
        "--max-clipped-ratio",
        type=float,
        default=d_limits.max_clipped_ratio,
        metavar="R",
        help="exclude files with more than this share of full-scale samples (default %(default)s)",
    )
    audio.add_argument(
        "--silence-peak-db",
        type=float,
        default=d_limits.silence_peak_db,
        metavar="DB",
        help="exclude files whose peak is below this, in dBFS (default %(default)s)",
    )
    features = p.add_argument_group("feature cache")
    features.add_argument(
        "--no-features",
        action="store_true",
        help="do not build the mel feature cache (training then computes features on the fly)",
    )
    features.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        metavar="NAME|PATH",
        help="the preset you will train with, if it changes audio settings (default %(default)s)",
    )
    p.add_argument(
        "--exclude",
        type=Path,
        metavar="FILE",
        help="leave out the utterance ids listed in FILE (one per line, # comments), e.g. the "
        "suspects.txt diagnose writes; recorded in report.json with the file's hash",
    )
    return p


def options_from_args(argv: list[str] | None = None) -> PrepareOptions:
    args = build_parser().parse_args(argv)
    bounds = LengthBounds(args.min_duration, args.max_duration, args.min_text_len, args.max_text_len)
    if not 0 <= bounds.min_seconds < bounds.max_seconds or not 0 <= bounds.min_chars < bounds.max_chars:
        raise UserError(
            "length bounds: need 0 <= --min-duration < --max-duration and 0 <= --min-text-len < --max-text-len"
        )
    if not 0 < args.cap_percentile <= 100:
        raise UserError(f"--cap-percentile must be in (0, 100], got {args.cap_percentile:g}")
    limits = AudioLimits(
        max_clipped_ratio=args.max_clipped_ratio,
        silence_peak_db=args.silence_peak_db,
        max_edge_silence=args.max_edge_silence,
    )
    return PrepareOptions(
        src=args.src,
        dst=args.dst,
        meta=args.meta,
        jobs=args.jobs,
        text=TextOptions(stress=args.stress, yo=args.yo),
        bounds=bounds,
        limits=limits,
        cap_percentile=args.cap_percentile,
        trim_silence=args.trim_silence,
        features=not args.no_features,
        preset=args.preset,
        exclude=args.exclude,
    )


@tool(
    interrupted="interrupted: finished files are kept; run the same command again to resume",
    terminated="terminated (SIGTERM): finished files are kept; run the same command again to resume",
)
def main(argv: list[str] | None = None) -> int:
    """`python -m ruslan_glowtts.prepare` (ruslan_glowtts/prepare.py runs it under common.cli.run_as_script)."""
    logging.getLogger("TTS").setLevel(logging.WARNING)  # "Setting up Audio Processor..." once per worker
    result = prepare(options_from_args(argv))
    print("\n".join(summary_lines(result.report, result.dst)))
    if result.usable < MIN_USABLE:
        print(
            f"error: {result.usable} usable utterance(s) remain, training needs at least {MIN_USABLE}; "
            f"see {result.dst / REPORT}",
            file=sys.stderr,
        )
        return EXIT_NOTHING_USABLE
    print(f"Next: python train_ruslan_glowtts.py --dataset-path {result.dst}")
    return 0
