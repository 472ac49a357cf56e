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
    import json

    from ruslan_glowtts.common.errors import hold_logs, release_logs
    from ruslan_glowtts.common.presets import format_preset_table
    from ruslan_glowtts.training.cli import parse_args, request_from_args

    args = parse_args(argv)
    if args.list_presets:
        print(format_preset_table())
        return 0
    hold_logs()  # released by train() once its start-up checks pass
    request = request_from_args(args)
    if args.print_config:
        release_logs()
        print(json.dumps(request.job.config.to_dict(), indent=2, ensure_ascii=False))
        return 0
    from ruslan_glowtts.training.train import train  # imports torch and Coqui

    outcome = train(request)
    print(outcome.message)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
