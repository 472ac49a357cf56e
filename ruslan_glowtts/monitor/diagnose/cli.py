"""`python -m ruslan_glowtts.diagnose RUN_DIR [--json] [--plot FILE.png]`: parse, diagnose, print."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ruslan_glowtts.common.cli import OneLineErrorParser, tool
from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.paths import output_file
from ruslan_glowtts.common.run_layout import CONFIG_FILE, GLOWTTS, config_model, kind_of
from ruslan_glowtts.monitor.diagnose.diagnosis import diagnose
from ruslan_glowtts.monitor.diagnose.plotting import plot
from ruslan_glowtts.monitor.diagnose.report import format_report
from ruslan_glowtts.monitor.diagnose.run_context import read_json
from ruslan_glowtts.monitor.diagnose.suspects import attach as attach_suspects
from ruslan_glowtts.monitor.diagnose.suspects import check_run_dir, datamap_path, plot_datamap
from ruslan_glowtts.monitor.events import read_run


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m ruslan_glowtts.diagnose",
        description="Read a run's TensorBoard logs and say whether it is healthy, with the command to run next.",
        epilog="Exit codes: 0 healthy or too early to tell, 1 warning, 2 bad input or an unreadable event file, "
        "3 exploding or diverged.",
    )
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a run folder (the one holding events.out.tfevents.*)"
    )
    parser.add_argument(
        "more_runs",
        type=Path,
        nargs="*",
        metavar="MORE_RUNS",
        help="other runs on the same data whose ledgers count for the suspect utterances "
        "(the run's escalation chain always does); the verdict is RUN_DIR's",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the diagnosis as JSON (verdict, reasons, recommended_preset, command, stats) instead of text",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="also draw grad_norm, loss and learning rate into this PNG, and the suspects' "
        "data map into FILE.datamap.png",
    )
    return parser


def check_glowtts_run(run_dir: Path) -> None:
    """diagnose judges GlowTTS runs: a run whose config.json names another model (a HiFi-GAN run,
    whose GAN norms mean nothing to GlowTTS's rules and whose presets are the vocoder's) is refused.
    A folder without config.json, or one that names no model, is judged on its curves alone."""
    config = read_json(run_dir / CONFIG_FILE)
    if config_model(config) and (found := kind_of(config)) is not GLOWTTS:
        what = found.name if found else f"Coqui {config_model(config)!r}"
        raise UserError(
            f"{run_dir} is a {what} run, not a GlowTTS run: diagnose judges GlowTTS runs (watch a "
            "vocoder's loss_0 and loss_1 in TensorBoard and listen to its EvalAudios)"
        )


@tool(log_level=logging.WARNING)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = args.run_dir.expanduser().absolute()
    if args.plot:
        output_file(args.plot, "--plot", suffix=".png")  # before reading a long run's events
    if run_dir.is_dir():
        check_glowtts_run(run_dir)
    events = read_run(run_dir)
    more = [check_run_dir(path) for path in args.more_runs]
    diagnosis = diagnose(run_dir, events)
    suspects = attach_suspects(diagnosis, more)  # the ledger's suspect utterances; writes suspects.txt
    if args.plot:
        plot(diagnosis, events, args.plot)
        if suspects.datamap:
            plot_datamap(suspects, datamap_path(args.plot))
    if args.json:
        print(json.dumps(diagnosis.to_json(), indent=2, ensure_ascii=False, allow_nan=False))
    else:
        print(format_report(diagnosis))
        if args.plot:
            print(f"Plot:     {args.plot}" + (f", {datamap_path(args.plot)}" if suspects.datamap else ""))
    return diagnosis.exit_code
