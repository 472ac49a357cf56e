"""train_ruslan_glowtts.py's command line, and GlowTTS's part of the run lifecycle (training/run.py).

GLOWTTS is the GlowTTS ModelRecipe: its flags on top of the shared ones, its config builder
(training/config.py), its samples and start-up checks (training/train.py), its model factory
(training/model.py) and its Trainer (training/trainer.py). The flags are the product interface
(README.md). `python -m trainer.distribute` appends `--continue_path= --restore_path= --group_id=...
--use_ddp=true --rank=N` to the command line; the underscore spellings are accepted as aliases and
an empty value means "not given".

Light to import: torch and Coqui are imported inside the methods that need them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ruslan_glowtts.common.presets import DEFAULT_PRESET, PRESETS_DIR, Preset, format_preset_table
from ruslan_glowtts.common.run_layout import GLOWTTS as GLOWTTS_KIND
from ruslan_glowtts.training import run
from ruslan_glowtts.training.run import ModelRecipe, Outcome, RunData, TrainJob, TrainRequest, positive_int

if TYPE_CHECKING:
    from ruslan_glowtts.training.config import Override


def _bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


class GlowTTSRecipe(ModelRecipe):
    kind = GLOWTTS_KIND
    presets_dir = PRESETS_DIR
    default_preset = DEFAULT_PRESET
    description = "Train GlowTTS on RUSLAN with a stability preset (Coqui TTS)."
    epilog = (
        "Layers: configs/ruslan_glowtts.toml < DATASET/dataset.toml < preset < --set and flags. "
        "Exit codes: 0 ok, 1 crash (run kept), 2 bad input, 3 stopped by the health guard, 130 Ctrl-C, "
        "143 SIGTERM."
    )
    dataset_required = "--dataset-path DIR is required (try data/sample after `make sample`, see README)"
    continue_refuses = (
        ("--grad-accum", "grad_accum"),
        ("--auto-escalate", "auto_escalate"),
        ("--max-escalations", "max_escalations"),
        ("--exclude-utterances", "exclude_utterances"),
    )

    def add_flags(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--grad-accum",
            type=positive_int,
            metavar="N",
            help="accumulate N micro-batches per optimizer step (effective batch = batch_size x N)",
        )
        p.add_argument(
            "--vocoder",
            type=Path,
            metavar="RUN_OR_CKPT",
            help="speak the TensorBoard test sentences through this HiFi-GAN run "
            "(train_ruslan_hifigan.py) instead of Griffin-Lim; its audio features must match the run's",
        )
        p.add_argument(
            "--exclude-utterances",
            type=Path,
            metavar="FILE",
            help="leave out the utterance ids listed in FILE (one per line, # comments), e.g. the "
            "suspects.txt diagnose writes; recorded in run.json with the file's hash",
        )
        p.add_argument(
            "--allow-unknown-chars",
            action="store_true",
            help="train even if the text has characters outside the vocabulary (they are dropped)",
        )
        p.add_argument(
            "--on-explosion",
            choices=("warn", "stop", "escalate"),
            help="what a grad_norm explosion does: warn (default: banner, keep training), stop "
            "(exit 3 with the next command), escalate (same as --auto-escalate)",
        )
        p.add_argument(
            "--auto-escalate",
            action="store_true",
            help="on an explosion, roll back to the last known-good weights and continue on the "
            "preset's fallback tier, by itself",
        )
        p.add_argument(
            "--max-escalations",
            type=positive_int,
            metavar="N",
            help="with --auto-escalate: tier switches before giving up (default 3)",
        )
        # Injected by `python -m trainer.distribute`.
        p.add_argument("--continue_path", dest="continue_path_ddp", default="", help=argparse.SUPPRESS)
        p.add_argument("--restore_path", dest="restore_path_ddp", default="", help=argparse.SUPPRESS)
        p.add_argument("--group_id", default="", help=argparse.SUPPRESS)
        p.add_argument("--use_ddp", type=_bool, default=False, help=argparse.SUPPRESS)
        p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)

    def normalize_args(self, args: argparse.Namespace) -> None:
        # the user's own hyphenated flag wins over distribute's (usually empty) injected one
        if args.continue_path is None and args.continue_path_ddp:
            args.continue_path = Path(args.continue_path_ddp)
        if args.restore_path is None and args.restore_path_ddp:
            args.restore_path = Path(args.restore_path_ddp)

    def flag_layers(self, args: argparse.Namespace) -> list[tuple[str, str, Any]]:
        policy = "escalate" if args.auto_escalate else args.on_explosion
        return [
            ("--grad-accum", "grad_accum_steps", args.grad_accum),
            ("--auto-escalate" if args.auto_escalate else "--on-explosion", "health.policy", policy),
            ("--max-escalations", "health.max_escalations", args.max_escalations),
        ]

    def job_options(self, args: argparse.Namespace, config: Any) -> dict[str, Any]:
        vocoder = None
        if args.vocoder is not None:  # refused unless its features match (issue 13)
            from ruslan_glowtts.voice.synthesize import vocoder_for_run

            vocoder = vocoder_for_run(args.vocoder, config.audio, "this GlowTTS config")
        return {
            "allow_unknown_chars": args.allow_unknown_chars,
            "vocoder": vocoder,
            "exclusion": _recorded_exclusion(args.continue_path)
            if args.continue_path is not None
            else _exclusion(args.exclude_utterances),
        }

    def next_command(self, request: TrainRequest, run_dir: Path | None) -> str:
        command = super().next_command(request, run_dir)
        exclusion = request.job.exclusion
        if command and exclusion is not None:  # the next tier leaves out what this one did
            import shlex

            command += f" --exclude-utterances {shlex.quote(str(exclusion.path))}"
        return command

    def format_presets(self) -> str:
        return format_preset_table()

    @property
    def config_class(self) -> type:
        from ruslan_glowtts.training.config import RuslanGlowTTSConfig

        return RuslanGlowTTSConfig

    def build_config(
        self, args: argparse.Namespace, preset: Preset, cli_layers: list[tuple[dict[str, Any], str]]
    ) -> tuple[Any, list[Override], dict[str, Any]]:
        from ruslan_glowtts.training.config import build_config

        config, overrides = build_config(preset=preset, dataset_path=args.dataset_path, cli_layers=cli_layers)
        return config, overrides, {}

    def dataset_of(self, config: Any) -> str | None:
        return config.datasets[0].path if config.datasets else None

    def set_dataset(self, config: Any, path: Path) -> None:
        config.datasets[0].path = str(path)

    def adjust_config(self, config: Any, job: TrainJob) -> None:
        import logging

        if job.restore_path is not None and config.data_dep_init_steps:
            # Data-dependent init would overwrite the restored ActNorm statistics.
            logging.getLogger(__name__).info(
                "Overriding: data_dep_init_steps = 0  (--restore-path: keep the restored ActNorm layers)"
            )
            config.data_dep_init_steps = 0

    def load_data(self, config: Any, request: TrainRequest) -> RunData:
        from ruslan_glowtts.training.train import load_data

        return load_data(config, request)

    def make_model(self, config: Any, job: TrainJob) -> Any:
        from ruslan_glowtts.training.model import RuslanGlowTTS

        model = RuslanGlowTTS(config)
        speedups(model, config)
        if job.vocoder is not None:
            from ruslan_glowtts.voice.preview import attach_vocoder

            attach_vocoder(model, job.vocoder)
        return model

    def trainer_class(self) -> type:
        from ruslan_glowtts.training.trainer import KitTrainer

        return KitTrainer

    def train(self, request: TrainRequest) -> Outcome:
        from ruslan_glowtts.training.train import train

        return train(request)


GLOWTTS = GlowTTSRecipe()


# --exclude-utterances (issue 19): read and hashed here, applied to the samples by train.load_data


def _exclusion(path: Path | None) -> Any:
    if path is None:
        return None
    import logging

    from ruslan_glowtts.common.exclusions import read_exclusion

    exclusion = read_exclusion(path, "--exclude-utterances")
    logging.getLogger(__name__).info("Excluding: %s  (--exclude-utterances)", exclusion.describe())
    return exclusion


def _recorded_exclusion(run_dir: Path) -> Any:
    """A resumed run leaves out what it left out when it started (run.json), whatever the file says now."""
    import logging

    from ruslan_glowtts.common.exclusions import Exclusion
    from ruslan_glowtts.common.run_record import RunRecord

    exclusion = Exclusion.from_json(RunRecord.read(run_dir).exclude_utterances)
    if exclusion is not None:
        logging.getLogger(__name__).info("Excluding: %s  (recorded in run.json)", exclusion.describe())
    return exclusion


def speedups(model: Any, config: Any) -> None:
    """The GPU speed settings that depend on the machine (docs/GPU.md): the decoder compiled when
    compile_model asks for it here, and cudnn's per-shape tuning where batch shapes repeat."""
    import logging

    import torch

    from ruslan_glowtts.training import compilation

    log = logging.getLogger(__name__)
    compiled = compilation.attach(model, config.compile_model, cuda_graphs=config.compile_cuda_graphs)
    if compiled is not None:
        log.info(
            "torch.compile: GlowTTS's decoder (%s)%s",
            "CUDA graphs" if compiled.cuda_graphs else "fused kernels",
            "; batches padded to a length grid" if model.pads_lengths() else "",
        )
    # cudnn's per-shape search runs on a shape's first use; never inside a CUDA graph capture.
    if (
        model.pads_lengths()
        and torch.cuda.is_available()
        and not config.cudnn_benchmark
        and not (compiled is not None and compiled.cuda_graphs)
    ):
        log.info("Overriding: cudnn_benchmark = True  (padded batch shapes repeat: each is tuned once)")
        config.cudnn_benchmark = True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return run.parse_args(GLOWTTS, argv)


def request_from_args(args: argparse.Namespace) -> TrainRequest:
    """Resolve the config for these arguments (logging every override) into a TrainRequest."""
    return run.request_from_args(GLOWTTS, args)
