"""train_ruslan_hifigan.py's command line, and HiFi-GAN's part of the run lifecycle (training/run.py).

HIFIGAN is the vocoder's ModelRecipe: its flags on top of the shared ones (--tts-run), its config
builder, samples, model factory and Trainer, all in training/vocoder.py. Light to import: the
vocoder module (torch, Coqui) is imported inside the methods.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ruslan_glowtts import KIT_ROOT
from ruslan_glowtts.common.paths import input_folder
from ruslan_glowtts.common.presets import Preset
from ruslan_glowtts.common.run_layout import HIFIGAN as HIFIGAN_KIND
from ruslan_glowtts.training.run import ModelRecipe, RunData, TrainJob, TrainRequest

if TYPE_CHECKING:
    from ruslan_glowtts.training.config import Override


class HifiganRecipe(ModelRecipe):
    kind = HIFIGAN_KIND
    presets_dir = KIT_ROOT / "presets" / "hifigan"
    default_preset = "default"
    description = "Train Coqui's HiFi-GAN vocoder on a prepared RUSLAN folder, matching a GlowTTS run's features."
    epilog = (
        "Layers: configs/ruslan_hifigan.toml < GlowTTS audio settings < preset < --set. Exit codes: 0 ok, "
        "1 crash (run kept), 2 bad input, 3 stopped by the guard (non-finite updates), 130 Ctrl-C, "
        "143 SIGTERM."
    )
    dataset_required = "--dataset-path DIR is required: the folder `python -m ruslan_glowtts.prepare` wrote"
    continue_refuses = (("--tts-run", "tts_run"),)

    def add_flags(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--tts-run",
            type=Path,
            metavar="RUN",
            help="GlowTTS run folder (or its config.json) whose audio settings the vocoder must match "
            "(default: the kit's GlowTTS base config)",
        )
        p.add_argument(
            "--on-explosion",
            choices=("warn", "stop"),
            help="what a burst of non-finite updates does: warn (default) or stop (exit 3)",
        )

    def flag_layers(self, args: argparse.Namespace) -> list[tuple[str, str, Any]]:
        return [("--on-explosion", "health.policy", args.on_explosion)]

    def format_presets(self) -> str:
        from ruslan_glowtts.training.vocoder import format_vocoder_presets

        return format_vocoder_presets()

    @property
    def config_class(self) -> type:
        from ruslan_glowtts.training.vocoder import RuslanHifiganConfig

        return RuslanHifiganConfig

    def build_config(
        self, args: argparse.Namespace, preset: Preset, cli_layers: list[tuple[dict[str, Any], str]]
    ) -> tuple[Any, list[Override], dict[str, Any]]:
        from ruslan_glowtts.training.vocoder import build_vocoder_config

        if args.tts_run is not None and args.tts_run.suffix != ".json":
            input_folder(args.tts_run, "--tts-run", "run folder")
        config, overrides, source = build_vocoder_config(
            preset=preset, dataset_path=args.dataset_path, tts_run=args.tts_run, cli_layers=cli_layers
        )
        return config, overrides, {"audio_source": source}

    def dataset_of(self, config: Any) -> str | None:
        return config.data_path or None

    def set_dataset(self, config: Any, path: Path) -> None:
        config.data_path = str(path)

    def load_data(self, config: Any, request: TrainRequest) -> RunData:
        from ruslan_glowtts.training.vocoder import load_vocoder_samples

        eval_samples, train_samples = load_vocoder_samples(config)
        return RunData(train_samples, eval_samples)

    def make_model(self, config: Any, job: TrainJob) -> Any:
        from ruslan_glowtts.training.vocoder import RuslanHifigan

        return RuslanHifigan(config)

    def trainer_class(self) -> type:
        from ruslan_glowtts.training.vocoder import hifigan_trainer_class

        return hifigan_trainer_class()


HIFIGAN = HifiganRecipe()
