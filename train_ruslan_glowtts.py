"""Train GlowTTS on RUSLAN with a stability preset (Coqui TTS).

    python train_ruslan_glowtts.py --preset stable --dataset-path /data/RUSLAN_prepared
    python train_ruslan_glowtts.py --list-presets

The config is built in a fixed, logged order: configs/ruslan_glowtts.toml < DATASET/dataset.toml
< presets/<name>.toml < --set and flags. See README.md.
"""

import signal
import sys

EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143  # ruslan_glowtts.errors (not imported yet)


class _Terminated(BaseException):
    """SIGTERM before training started: nothing to save, leave at once without a traceback."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    # Training installs its own handlers (stop at the end of a step, save a checkpoint); until
    # then a signal only has imports and checks to interrupt.
    previous = signal.signal(signal.SIGTERM, _terminate) if _in_main_thread() else None
    try:
        return _main(argv)
    except KeyboardInterrupt:
        _release_logs(keep=False)
        print("interrupted (Ctrl-C) during start-up: nothing was trained or saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        _release_logs(keep=False)
        print("terminated (SIGTERM) during start-up: nothing was trained or saved", file=sys.stderr)
        return EXIT_TERMINATED
    except BaseException:
        _release_logs(keep=True)  # an unexpected error: the held lines are context for it
        raise
    finally:
        _release_logs(keep=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _release_logs(*, keep: bool) -> None:
    errors = sys.modules.get("ruslan_glowtts.errors")  # absent if the signal came during the imports
    if errors is not None:
        errors.release_logs(keep=keep)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _main(argv: list[str] | None) -> int:
    import json

    from ruslan_glowtts.cli import parse_args, request_from_args, setup_logging
    from ruslan_glowtts.errors import UserError, hold_logs, release_logs
    from ruslan_glowtts.presets import format_preset_table

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
        from ruslan_glowtts.train import train  # imports torch and Coqui

        outcome = train(request)
    except UserError as exc:
        release_logs(keep=False)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(outcome.message)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
