"""Train GlowTTS on RUSLAN with a stability preset (Coqui TTS).

    python train_ruslan_glowtts.py --preset stable --dataset-path /data/RUSLAN_prepared
    python train_ruslan_glowtts.py --list-presets

The config is built in a fixed, logged order: configs/ruslan_glowtts.toml < DATASET/dataset.toml
< presets/<name>.toml < --set and flags. See README.md.
"""

import sys

# First, and light: from here a signal during the imports below is one line (ruslan_glowtts/common/cli.py).
from ruslan_glowtts.common.cli import TRAINING_START_UP, tool


@tool(**TRAINING_START_UP)  # the Trainer handles signals itself once it runs: these are the start-up's
def main(argv: list[str] | None = None) -> int:
    # parse -> config -> train, through the run lifecycle both models share (ruslan_glowtts/training/run.py)
    from ruslan_glowtts.training.cli import GLOWTTS
    from ruslan_glowtts.training.run import command_main

    return command_main(GLOWTTS, argv)


if __name__ == "__main__":
    sys.exit(main())
