"""Command line of train_ruslan_glowtts.py: arguments -> TrainRequest.

The flags are the product interface (README.md). `python -m trainer.distribute` appends
`--continue_path= --restore_path= --group_id=... --use_ddp=true --rank=N` to the command line;
the underscore spellings are accepted as aliases and an empty value means "not given".
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ruslan_glowtts.common.atomic_files import remove_stale_temp_files
from ruslan_glowtts.common.cli import OneLineErrorParser, check_writable
from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.presets import DEFAULT_PRESET

if TYPE_CHECKING:
    from ruslan_glowtts.training.train import TrainRequest

logger = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="train_ruslan_glowtts.py",
        description="Train GlowTTS on RUSLAN with a stability preset (Coqui TTS).",
        epilog="Layers: configs/ruslan_glowtts.toml < DATASET/dataset.toml < preset < --set and flags. "
        "Exit codes: 0 ok, 1 crash (run kept), 2 bad input, 3 stopped by the health guard, 130 Ctrl-C, "
        "143 SIGTERM.",
    )
    p.add_argument("--preset", metavar="NAME|PATH", help=f"stability preset (default {DEFAULT_PRESET}); see --list-presets")
    p.add_argument("--list-presets", action="store_true", help="list the presets, their values and fallbacks, and exit")
    p.add_argument("--dataset-path", type=Path, metavar="DIR",
                   help="RUSLAN folder (metadata_RUSLAN_22200.csv + RUSLAN/*.wav), ideally prepared by "
                   "`python -m ruslan_glowtts.prepare`")
    p.add_argument("--output-path", type=Path, metavar="DIR", help="where run folders go (default runs/)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set lr=3e-4 --set audio.sample_rate=22050 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--max-steps", type=_positive_int, default=0, metavar="N",
                   help="stop cleanly with a checkpoint once the run's step count reaches N")
    p.add_argument("--grad-accum", type=_positive_int, metavar="N",
                   help="accumulate N micro-batches per optimizer step (effective batch = batch_size x N)")
    p.add_argument("--continue-path", metavar="RUN_DIR", help="resume a run from its last checkpoint")
    p.add_argument("--restore-path", metavar="CKPT", help="start a new run from these weights (fine-tune)")
    p.add_argument("--allow-partial-restore", action="store_true",
                   help="with --restore-path: accept a checkpoint whose layers do not all match the config "
                   "(the matching ones are restored, the rest start fresh)")
    p.add_argument("--seed", type=int, help="training seed (default: the config's training_seed)")
    p.add_argument("--vocoder", type=Path, metavar="RUN_OR_CKPT",
                   help="speak the TensorBoard test sentences through this HiFi-GAN run (train_ruslan_hifigan.py) "
                   "instead of Griffin-Lim; its audio features must match the run's")
    p.add_argument("--exclude-utterances", type=Path, metavar="FILE",
                   help="leave out the utterance ids listed in FILE (one per line, # comments), e.g. the "
                   "suspects.txt diagnose writes; recorded in run.json with the file's hash")
    p.add_argument("--allow-unknown-chars", action="store_true",
                   help="train even if the text has characters outside the vocabulary (they are dropped)")
    p.add_argument("--on-explosion", choices=("warn", "stop", "escalate"),
                   help="what a grad_norm explosion does: warn (default: banner, keep training), stop "
                   "(exit 3 with the next command), escalate (same as --auto-escalate)")
    p.add_argument("--auto-escalate", action="store_true",
                   help="on an explosion, roll back to the last known-good weights and continue on the "
                   "preset's fallback tier, by itself")
    p.add_argument("--max-escalations", type=_positive_int, metavar="N",
                   help="with --auto-escalate: tier switches before giving up (default 3)")
    # Injected by `python -m trainer.distribute`.
    p.add_argument("--continue_path", dest="continue_path_ddp", default="", help=argparse.SUPPRESS)
    p.add_argument("--restore_path", dest="restore_path_ddp", default="", help=argparse.SUPPRESS)
    p.add_argument("--group_id", default="", help=argparse.SUPPRESS)
    p.add_argument("--use_ddp", type=_bool, default=False, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.continue_path = Path(args.continue_path or args.continue_path_ddp) if (args.continue_path or args.continue_path_ddp) else None
    args.restore_path = Path(args.restore_path or args.restore_path_ddp) if (args.restore_path or args.restore_path_ddp) else None
    if args.continue_path and args.restore_path:
        raise UserError("use either --continue-path (resume a run) or --restore-path (new run from weights), not both")
    if args.continue_path:
        given = [flag for flag, value in (("--preset", args.preset), ("--set", args.sets),
                                          ("--grad-accum", args.grad_accum), ("--seed", args.seed),
                                          ("--output-path", args.output_path),
                                          ("--on-explosion", args.on_explosion),
                                          ("--auto-escalate", args.auto_escalate),
                                          ("--max-escalations", args.max_escalations),
                                          ("--exclude-utterances", args.exclude_utterances)) if value]
        if given:
            raise UserError(
                f"{', '.join(given)} cannot be combined with --continue-path: a resumed run keeps its own "
                "config.json. To change settings, start a new run from its weights with --restore-path "
                "RUN_DIR/checkpoint_N.pth (or edit RUN_DIR/config.json)"
            )
    return args


def _vocoder(args: argparse.Namespace, config: Any) -> Any:
    """--vocoder: the vocoder for the test audio, refused unless its features match (issue 13)."""
    if getattr(args, "vocoder", None) is None:
        return None
    from ruslan_glowtts.voice.synthesize import vocoder_for_run

    return vocoder_for_run(args.vocoder, config.audio, "this GlowTTS config")


def request_from_args(args: argparse.Namespace) -> "TrainRequest":
    """Resolve the config for these arguments (logging every override) into a TrainRequest."""
    # Imported here so that --help and --list-presets do not pay for importing torch and Coqui.
    from ruslan_glowtts.common import runs
    from ruslan_glowtts.common.presets import load_preset, load_recorded_preset
    from ruslan_glowtts.training.config import (
        Layer,
        Override,
        RuslanGlowTTSConfig,
        build_config,
        parse_set_option,
        set_key,
    )
    from ruslan_glowtts.training.train import Launch, TrainJob, TrainRequest

    launch = Launch(rank=args.rank, group_id=args.group_id, use_ddp=args.use_ddp)
    if args.continue_path is not None:
        run_dir = args.continue_path
        if not (run_dir / "config.json").is_file():
            raise UserError(f"--continue-path {run_dir}: not a run folder (no config.json)")
        # Coqui resumes from checkpoint_N/best_model_N (known_good.pth holds weights only, no
        # optimizer state); the newest that actually loads, not merely the newest name.
        resume_from = runs.loadable_checkpoint(run_dir)
        remove_stale_temp_files(run_dir)  # a save killed before its rename
        config = RuslanGlowTTSConfig()
        config.load_json(str(run_dir / "config.json"))
        if args.dataset_path is not None:
            config.datasets[0].path = str(args.dataset_path.resolve())
        meta = runs.read_meta(run_dir)
        preset = load_recorded_preset(meta)
        logger.info("Continuing %s with its own config.json (preset %s)", run_dir, preset.name)
        if meta.get("status") in ("exploded", "escalated"):
            logger.warning(" ! This run was stopped by the health guard (%s); its last checkpoint may hold the "
                           "exploding state. The next tier, from the known-good weights, is usually better: %s",
                           meta.get("message", "").split(". Next:")[0], "see run.json 'message'")
        # An escalation from here rebuilds the config from the run's original command-line settings.
        recorded = [Override.from_json(o) for o in meta.get("overrides", [])]  # old runs: no "layer" key
        cli_overrides = [o for o in recorded if o.layer is Layer.COMMAND_LINE]
        logger.info("Resuming from %s", resume_from.name)
        exclusion = _recorded_exclusion(meta)
        job = TrainJob(config, preset, tuple(cli_overrides), dataset_path=Path(config.datasets[0].path),
                       max_steps=args.max_steps, continue_path=run_dir, resume_from=resume_from,
                       allow_unknown_chars=args.allow_unknown_chars, vocoder=_vocoder(args, config),
                       exclusion=exclusion)
        return TrainRequest(job, launch)

    preset = load_preset(args.preset or DEFAULT_PRESET)
    cli_layers = [(parse_set_option(option), "--set") for option in args.sets]
    policy = "escalate" if args.auto_escalate else args.on_explosion
    for flag, key, value in (("--grad-accum", "grad_accum_steps", args.grad_accum),
                             ("--seed", "training_seed", args.seed),
                             ("--output-path", "output_path", str(args.output_path) if args.output_path else None),
                             ("--auto-escalate" if args.auto_escalate else "--on-explosion", "health.policy", policy),
                             ("--max-escalations", "health.max_escalations", args.max_escalations)):
        if value is not None:
            layer: dict = {}
            set_key(layer, key, value)
            cli_layers.append((layer, flag))
    if args.restore_path is not None:
        if not args.restore_path.is_file():
            raise UserError(f"--restore-path {args.restore_path}: no such checkpoint file")
        problem = runs.checkpoint_problem(args.restore_path)
        if problem:
            raise UserError(f"--restore-path {args.restore_path} {problem}")
    config, overrides = build_config(preset=preset, dataset_path=args.dataset_path, cli_layers=cli_layers)
    if not args.print_config:
        if args.dataset_path is None:
            raise UserError("--dataset-path DIR is required (try data/sample after `make sample`, see README)")
        check_writable(Path(config.output_path), "output path")
    exclusion = _exclusion(args.exclude_utterances)
    job = TrainJob(config, preset, tuple(overrides), dataset_path=args.dataset_path, max_steps=args.max_steps,
                   restore_path=args.restore_path, allow_partial_restore=args.allow_partial_restore,
                   allow_unknown_chars=args.allow_unknown_chars, vocoder=_vocoder(args, config),
                   exclusion=exclusion)
    return TrainRequest(job, launch)


# --exclude-utterances (issue 19): read and hashed here, applied to the samples by train()


def _exclusion(path: Path | None) -> Any:
    if path is None:
        return None
    from ruslan_glowtts.common.exclusions import read_exclusion

    exclusion = read_exclusion(path, "--exclude-utterances")
    logger.info("Excluding: %s  (--exclude-utterances)", exclusion.describe())
    return exclusion


def _recorded_exclusion(meta: dict) -> Any:
    """A resumed run leaves out what it left out when it started (run.json), whatever the file says now."""
    from ruslan_glowtts.common.exclusions import Exclusion

    exclusion = Exclusion.from_json(meta.get("exclude_utterances"))
    if exclusion is not None:
        logger.info("Excluding: %s  (recorded in run.json)", exclusion.describe())
    return exclusion
