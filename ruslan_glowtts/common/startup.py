"""The training scripts' outer main: a signal before training starts is one line, not a traceback.

Until a Trainer installs its own handlers (stop at the end of a step, save a checkpoint), Ctrl-C or
SIGTERM can only interrupt imports and start-up checks: nothing was trained or saved, so the
script says so in one line and exits 130 / 143. This module imports nothing heavy: the scripts
import it first, before torch and Coqui.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # as ruslan_glowtts.common.errors (kept import-free here)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command whose reader left


class _Terminated(BaseException):
    """SIGTERM before training started."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def _release_logs(*, keep: bool) -> None:
    errors = sys.modules.get("ruslan_glowtts.common.errors")  # absent if the signal came during the imports
    if errors is not None:
        errors.release_logs(keep=keep)


def guarded_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a training script's main(argv); a signal during its start-up is one line and 130/143."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return main(argv)
    except KeyboardInterrupt:
        _release_logs(keep=False)
        print("interrupted (Ctrl-C) during start-up: nothing was trained or saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        _release_logs(keep=False)
        print("terminated (SIGTERM) during start-up: nothing was trained or saved", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:  # `--list-presets | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except BaseException:
        _release_logs(keep=True)  # an unexpected error: the held lines are context for it
        raise
    finally:
        _release_logs(keep=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
