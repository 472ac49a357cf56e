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
    import json

    from ruslan_glowtts.training.vocoder_cli import build_parser, request_from_args

    args = build_parser().parse_args(argv)
    if args.list_presets:
        from ruslan_glowtts.training.vocoder import format_vocoder_presets

        print(format_vocoder_presets())
        return 0
    request = request_from_args(args)
    if args.print_config:
        print(json.dumps(request.config.to_dict(), indent=2, ensure_ascii=False, default=str))
        return 0
    from ruslan_glowtts.training.vocoder import train_vocoder  # imports torch and Coqui

    outcome = train_vocoder(request)
    print(outcome.message)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
