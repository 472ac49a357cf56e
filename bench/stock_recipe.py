"""Coqui's stock GlowTTS recipe, rebuilt for coqui-tts 0.28: the baseline the kit is measured against.

Coqui's recipes/ljspeech/glow_tts/train_glowtts.py, with what 0.28 changed (config-based
load_tts_samples, GlowTTS(config)) and the two changes RUSLAN forces on anyone who copies it:
the `ruslan` formatter, and Russian graphemes instead of English phonemes (the recipe's
phonemizer would need espeak, and Coqui's default ASCII characters would drop every Cyrillic
letter). Everything else is Coqui's default: lr 1e-3, grad_clip 5.0, NoamLR warmup 4000 stepped
per epoch, unshuffled length-sorted batches, on-the-fly features, the recipe's 4 loader workers.
Not part of the kit.

    python bench/stock_recipe.py --dataset-path DIR --output-path DIR --batch-size 4 --max-steps 40
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path

from trainer import Trainer, TrainerArgs
from TTS.tts.configs.glow_tts_config import GlowTTSConfig
from TTS.tts.configs.shared_configs import BaseDatasetConfig, CharactersConfig
from TTS.tts.datasets import load_tts_samples
from TTS.tts.models.glow_tts import GlowTTS

REPO = Path(__file__).resolve().parents[1]


def russian_characters() -> CharactersConfig:
    """The same character set as the kit's base config, so both models see the same tokens."""
    base = tomllib.loads((REPO / "configs" / "ruslan_glowtts.toml").read_text(encoding="utf-8"))
    return CharactersConfig(**base["characters"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset-path", required=True)
    p.add_argument("--output-path", required=True)
    p.add_argument("--batch-size", type=int, default=32)  # the recipe's value
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many trainer steps (benchmarks)")
    p.add_argument("--resample", action="store_true", help="audio.resample = true (44.1 kHz input)")
    p.add_argument("--sample-rate", type=int, default=22050)
    p.add_argument(
        "--matched",
        action="store_true",
        help="for loss curves beside the kit's: warmup counted in steps (scheduler_after_epoch = "
        "false) and shuffled batches; everything else stays Coqui's",
    )
    p.add_argument("--seed", type=int, default=54321, help="Coqui's training_seed")
    p.add_argument("--mixed-precision", choices=("fp32", "bf16"), default="fp32")
    args = p.parse_args()

    dataset_config = BaseDatasetConfig(
        formatter="ruslan", meta_file_train="metadata_RUSLAN_22200.csv", path=args.dataset_path
    )
    config = GlowTTSConfig(
        batch_size=args.batch_size,
        eval_batch_size=16,
        num_loader_workers=4,
        num_eval_loader_workers=4,
        run_eval=False,  # benchmarks time training steps only
        test_delay_epochs=-1,
        epochs=1000,
        text_cleaner="basic_cleaners",
        use_phonemes=False,
        characters=russian_characters(),
        print_step=25,
        plot_step=1,  # every step's wall time, for the benchmark
        print_eval=False,
        # the recipe's True means fp16 on CUDA, bf16 autocast on CPU: fp32 here unless asked
        mixed_precision=args.mixed_precision == "bf16",
        precision="bf16",
        training_seed=args.seed,
        output_path=args.output_path,
        datasets=[dataset_config],
        save_step=100000,
    )
    config.audio.sample_rate = args.sample_rate
    if args.matched:
        config.scheduler_after_epoch = False
        config.shuffle = True
    config.audio.resample = args.resample
    train_samples, eval_samples = load_tts_samples(config, eval_split=True, eval_split_size=2)
    model = GlowTTS(config)

    def stop_at_max_steps(trainer: Trainer) -> None:
        if args.max_steps and trainer.total_steps_done >= args.max_steps:
            trainer.dashboard_logger.flush()
            os._exit(0)  # the stock Trainer has no max-steps; leave without its interrupt handling

    trainer = Trainer(
        TrainerArgs(),
        config,
        args.output_path,
        model=model,
        train_samples=train_samples,
        eval_samples=eval_samples,
        parse_command_line_args=False,
        callbacks={"on_train_step_end": stop_at_max_steps},
    )
    trainer.fit()


if __name__ == "__main__":
    main()
