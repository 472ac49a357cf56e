"""User errors and the kit's documented exit codes."""

from __future__ import annotations

import logging
import logging.handlers

# Exit codes of train_ruslan_glowtts.py (documented in README.md, "Exit codes").
EXIT_OK = 0
EXIT_CRASH = 1  # an unexpected error; the run folder and its logs are kept
EXIT_USAGE = 2  # bad input: one line on stderr, nothing written
EXIT_EXPLODED = 3  # the health guard stopped the run (policy stop, or escalations exhausted)
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT): a checkpoint was saved when the weights were finite
EXIT_TERMINATED = 143  # SIGTERM (kill, docker stop, preemption): the same as Ctrl-C


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2, never a traceback."""


# While the config is resolved and the data checked, dozens of `Overriding:` lines are logged;
# a bad input must print its one error line alone. The lines are held back and printed once the
# checks pass (release_logs()), or dropped with the error (release_logs(keep=False), which
# common.cli's wrapper calls on UserError, Ctrl-C and SIGTERM).
_held: tuple[logging.handlers.BufferingHandler, list[logging.Handler]] | None = None


def hold_logs() -> None:
    global _held
    if _held is not None:
        return
    root = logging.getLogger()
    buffer = logging.handlers.BufferingHandler(capacity=1_000_000)
    _held = (buffer, root.handlers[:])
    root.handlers = [buffer]


def release_logs(*, keep: bool = True) -> None:
    """Print what was held back (keep) or drop it, and log normally from here on."""
    global _held
    if _held is None:
        return
    buffer, handlers = _held
    _held = None
    logging.getLogger().handlers = handlers
    if keep:
        for record in buffer.buffer:
            for handler in handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)
