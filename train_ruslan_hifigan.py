"""Train a HiFi-GAN vocoder on the prepared RUSLAN, with exactly the GlowTTS run's audio features.

    python train_ruslan_hifigan.py --dataset-path /data/RUSLAN_prepared --tts-run runs/<glowtts run>
    python train_ruslan_hifigan.py --list-presets

The config is built in a fixed, logged order: configs/ruslan_hifigan.toml < the GlowTTS run's audio
settings (or the GlowTTS base config's) < presets/hifigan/<name>.toml < --set and flags. See README.md.
"""

import sys

# First, and light: from here a signal during the imports below is one line (ruslan_glowtts/common/cli.py).
from ruslan_glowtts.common.cli import TRAINING_START_UP, tool


@tool(**TRAINING_START_UP)  # the Trainer handles signals itself once it runs: these are the start-up's
def main(argv: list[str] | None = None) -> int:
    # parse -> config -> train, through the run lifecycle both models share (ruslan_glowtts/training/run.py)
    from ruslan_glowtts.training.run import command_main
    from ruslan_glowtts.training.vocoder_cli import HIFIGAN

    return command_main(HIFIGAN, argv)


if __name__ == "__main__":
    sys.exit(main())
