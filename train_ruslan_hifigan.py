"""Train a HiFi-GAN vocoder on the prepared RUSLAN, with exactly the GlowTTS run's audio features.

    python train_ruslan_hifigan.py --dataset-path /data/RUSLAN_prepared --tts-run runs/<glowtts run>
    python train_ruslan_hifigan.py --list-presets

The config is built in a fixed, logged order: configs/ruslan_hifigan.toml < the GlowTTS run's audio
settings (or the GlowTTS base config's) < presets/hifigan/<name>.toml < --set and flags. See README.md.
"""

import sys

from ruslan_glowtts.common.startup import guarded_main  # first: a signal during the imports below is one line


def main(argv: list[str] | None = None) -> int:
    return guarded_main(_main, argv)


def _main(argv: list[str] | None) -> int:
    import json

    from ruslan_glowtts.training.cli import setup_logging
    from ruslan_glowtts.common.errors import EXIT_USAGE, UserError
    from ruslan_glowtts.training.vocoder_cli import build_parser, request_from_args

    setup_logging()
    try:
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
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(outcome.message)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
