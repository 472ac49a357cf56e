"""train_ruslan_hifigan.py's command line: its arguments, and the vocoder request they resolve to."""

from __future__ import annotations

import argparse
from pathlib import Path

from ruslan_glowtts.common.cli import OneLineErrorParser, check_writable
from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.training.cli import _positive_int


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="train_ruslan_hifigan.py",
        description="Train Coqui's HiFi-GAN vocoder on a prepared RUSLAN folder, matching a GlowTTS run's features.",
        epilog="Layers: configs/ruslan_hifigan.toml < GlowTTS audio settings < preset < --set. Exit codes: 0 ok, "
        "1 crash (run kept), 2 bad input, 3 stopped by the guard (non-finite updates), 130 Ctrl-C.",
    )
    p.add_argument("--preset", metavar="NAME|PATH", help="vocoder preset (default: default, Coqui's recipe); see --list-presets")
    p.add_argument("--list-presets", action="store_true", help="list the vocoder presets and exit")
    p.add_argument("--dataset-path", type=Path, metavar="DIR",
                   help="the folder `python -m ruslan_glowtts.prepare` wrote (its feature cache is used)")
    p.add_argument("--tts-run", type=Path, metavar="RUN",
                   help="GlowTTS run folder (or its config.json) whose audio settings the vocoder must match "
                   "(default: the kit's GlowTTS base config)")
    p.add_argument("--output-path", type=Path, metavar="DIR", help="where run folders go (default runs/)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set batch_size=16 --set lr_gen=5e-5 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--max-steps", type=_positive_int, default=0, metavar="N",
                   help="stop cleanly with a checkpoint once the run's step count reaches N")
    p.add_argument("--continue-path", type=Path, metavar="RUN_DIR", help="resume a vocoder run from its last checkpoint")
    p.add_argument("--restore-path", type=Path, metavar="CKPT", help="start a new run from these weights")
    p.add_argument("--seed", type=int, help="training seed (default: the config's training_seed)")
    p.add_argument("--on-explosion", choices=("warn", "stop"),
                   help="what a burst of non-finite updates does: warn (default) or stop (exit 3)")
    return p


def request_from_args(args: argparse.Namespace):  # -> VocoderRequest
    from ruslan_glowtts.common.presets import load_recorded_preset
    from ruslan_glowtts.training.config import parse_set_option, set_key
    from ruslan_glowtts.training.vocoder import (
        DEFAULT_VOCODER_PRESET,
        VOCODER_PRESETS_DIR,
        RuslanHifiganConfig,
        VocoderRequest,
        build_vocoder_config,
        load_vocoder_preset,
    )

    if args.continue_path is not None:
        given = [f for f, v in (("--preset", args.preset), ("--set", args.sets), ("--seed", args.seed),
                                ("--tts-run", args.tts_run), ("--output-path", args.output_path),
                                ("--restore-path", args.restore_path), ("--on-explosion", args.on_explosion)) if v]
        if given:
            raise UserError(f"{', '.join(given)} cannot be combined with --continue-path: a resumed run keeps its "
                            "own config.json")
        run_dir = args.continue_path
        if not (run_dir / "config.json").is_file():
            raise UserError(f"--continue-path {run_dir}: not a run folder (no config.json)")
        if not any(run_dir.glob("checkpoint_*.pth")) and not any(run_dir.glob("best_model*.pth")):
            raise UserError(f"--continue-path {run_dir}: the run has no checkpoint to resume from")
        config = RuslanHifiganConfig()
        config.load_json(str(run_dir / "config.json"))
        if args.dataset_path is not None:
            config.data_path = str(args.dataset_path.resolve())
        from ruslan_glowtts.common import runs

        preset = load_recorded_preset(runs.read_meta(run_dir), VOCODER_PRESETS_DIR, DEFAULT_VOCODER_PRESET)
        return VocoderRequest(config, preset, max_steps=args.max_steps, continue_path=run_dir)

    preset = load_vocoder_preset(args.preset or DEFAULT_VOCODER_PRESET)
    cli_layers = [(parse_set_option(option, RuslanHifiganConfig), "--set") for option in args.sets]
    for flag, key, value in (("--seed", "training_seed", args.seed),
                             ("--output-path", "output_path", str(args.output_path) if args.output_path else None),
                             ("--on-explosion", "health.policy", args.on_explosion)):
        if value is not None:
            layer: dict = {}
            set_key(layer, key, value)
            cli_layers.append((layer, flag))
    if args.restore_path is not None and not args.restore_path.is_file():
        raise UserError(f"--restore-path {args.restore_path}: no such checkpoint file")
    if args.dataset_path is not None and not args.dataset_path.is_dir():
        raise UserError(f"--dataset-path {args.dataset_path}: no such folder")
    config, overrides, source = build_vocoder_config(preset=preset, dataset_path=args.dataset_path,
                                                     tts_run=args.tts_run, cli_layers=cli_layers)
    if not args.print_config:
        if args.dataset_path is None:
            raise UserError("--dataset-path DIR is required: the folder `python -m ruslan_glowtts.prepare` wrote")
        check_writable(Path(config.output_path), "output path")
    return VocoderRequest(config, preset, overrides, audio_source=source, max_steps=args.max_steps,
                          restore_path=args.restore_path)
