"""Train GlowTTS on RUSLAN with a stability preset (Coqui TTS).

    python train_ruslan_glowtts.py --preset stable --dataset-path /data/RUSLAN_prepared
    python train_ruslan_glowtts.py --list-presets

The config is built in a fixed, logged order: configs/ruslan_glowtts.toml < DATASET/dataset.toml
< presets/<name>.toml < --set and flags. See README.md.
"""

import sys

from ruslan_glowtts.common.startup import guarded_main  # first: a signal during the imports below is one line


def main(argv: list[str] | None = None) -> int:
    return guarded_main(_main, argv)


def _main(argv: list[str] | None) -> int:
    import json

    from ruslan_glowtts.training.cli import parse_args, request_from_args, setup_logging
    from ruslan_glowtts.common.errors import EXIT_USAGE, UserError, hold_logs, release_logs
    from ruslan_glowtts.common.presets import format_preset_table

    setup_logging()
    try:
        args = parse_args(argv)
        if args.list_presets:
            print(format_preset_table())
            return 0
        hold_logs()  # released by train() once its start-up checks pass
        request = request_from_args(args)
        if args.print_config:
            release_logs()
            print(json.dumps(request.config.to_dict(), indent=2, ensure_ascii=False))
            return 0
        from ruslan_glowtts.training.train import train  # imports torch and Coqui

        outcome = train(request)
    except UserError as exc:
        release_logs(keep=False)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(outcome.message)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
