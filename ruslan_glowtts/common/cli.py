"""The one outer `main` of every command: the documented exit codes, each failure one line.

    from ruslan_glowtts.common.cli import tool

    @tool(interrupted="interrupted (Ctrl-C): ...")       # the tool's own words for Ctrl-C
    def main(argv: list[str] | None) -> int:
        args = build_parser().parse_args(argv)        # a OneLineErrorParser: bad flags raise UserError
        ...
        return 0

`main(argv=None) -> int` is then the wrapped function (tests call it in-process); `run_tool(fn,
argv, ...)` is the same without the decorator. What the wrapper does, for every tool alike:

- logging set up once (`log_level`; None leaves it to the tool);
- UserError -> `error: <message>` on stderr, exit 2, log lines held back by hold_logs() dropped;
- Ctrl-C -> one line (`interrupted`), exit 130; SIGTERM -> one line (`terminated`), exit 143.
  A tool that handles signals itself once it is running (the Trainer saves a checkpoint and
  returns 130/143 itself) only ever lets the ones during its start-up reach the wrapper;
- a closed stdout (`... | head`) -> exit 141 (128 + SIGPIPE, what a shell reports), no traceback;
- anything else is a real crash: the traceback is kept, with the held log lines as context.

`run_as_script("pkg.module")` is the `python -m` entry: it imports the tool's module inside the
same guard, so Ctrl-C during seconds of torch/librosa imports is one line too. This module imports
nothing heavy (the scripts import it before torch and Coqui).

Every command runs under it (WRAPPED_MAINS in tests/test_tool_wrapper.py lists their mains and
checks each is wrapped). A new command: put `@tool(...)` on its `main(argv)` (no `except
UserError`, signal handling or logging.basicConfig of its own), have its script or `python -m`
module call `run_as_script("its.module")`, and add the module to WRAPPED_MAINS.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from ruslan_glowtts.common.errors import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    UserError,
    release_logs,
)
from ruslan_glowtts.common.paths import output_folder

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout left (`--list-presets | head`)

INTERRUPTED = "interrupted (Ctrl-C)"
TERMINATED = "terminated (SIGTERM)"
STARTUP_INTERRUPTED = "interrupted (Ctrl-C) during start-up: nothing was done"
STARTUP_TERMINATED = "terminated (SIGTERM) during start-up: nothing was done"
# The training scripts: their Trainer saves a checkpoint and exits 130/143 itself once it runs.
TRAINING_START_UP = {
    "interrupted": "interrupted (Ctrl-C) during start-up: nothing was trained or saved",
    "terminated": "terminated (SIGTERM) during start-up: nothing was trained or saved",
}

NOISY_LOGGERS = ("matplotlib", "numba", "fsspec", "PIL")

Main = Callable[[list[str] | None], int]


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C (finally blocks run)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Defer SIGINT and SIGTERM over a few writes that must land together (a WAV and its line in an
    index): a signal that comes meanwhile is handled as soon as the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that raises UserError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see --help)")


def setup_logging(level: int = logging.INFO) -> None:
    """Plain `message` lines on stderr; the libraries' chatter below WARNING."""
    logging.basicConfig(level=level, format="%(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_tool(
    main: Main,
    argv: list[str] | None = None,
    *,
    log_level: int | None = logging.INFO,
    interrupted: str = INTERRUPTED,
    terminated: str = TERMINATED,
) -> int:
    """Run `main(argv)` with the kit's exit codes (see the module docstring); returns the code."""
    if log_level is not None:
        setup_logging(log_level)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        return main(argv)
    except UserError as exc:
        release_logs(keep=False)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        release_logs(keep=False)
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        release_logs(keep=False)
        print(terminated, file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:
        # Nothing to report to a reader that left; stdout goes to /dev/null so that the
        # interpreter's final flush does not raise again.
        with contextlib.suppress(OSError, ValueError):  # a stdout without a file (captured in tests)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    finally:
        release_logs(keep=True)  # no-op after the drops above; on a crash the held lines are context
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def tool(
    *, log_level: int | None = logging.INFO, interrupted: str = INTERRUPTED, terminated: str = TERMINATED
) -> Callable[[Main], Main]:
    """Decorator form of run_tool: `@tool(...) def main(argv) -> int` gives `main(argv=None) -> int`.
    The wrapped function stays reachable as `main.__wrapped__`; `main.tool_options` records the
    options (the tests check that every command's main is wrapped)."""

    def wrap(fn: Main) -> Main:
        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> int:
            return run_tool(fn, argv, log_level=log_level, interrupted=interrupted, terminated=terminated)

        main.tool_options = {  # type: ignore[attr-defined]
            "log_level": log_level,
            "interrupted": interrupted,
            "terminated": terminated,
        }
        return main

    return wrap


def run_as_script(
    module: str,
    argv: list[str] | None = None,
    *,
    interrupted: str = STARTUP_INTERRUPTED,
    terminated: str = STARTUP_TERMINATED,
) -> NoReturn:
    """A script's or `python -m`'s last line: import `module` under the guard (a signal during its
    imports is one line: `interrupted`/`terminated`), then exit with its wrapped main(argv)."""

    def import_and_run(argv: list[str] | None) -> int:
        return importlib.import_module(module).main(argv)

    sys.exit(run_tool(import_and_run, argv, log_level=None, interrupted=interrupted, terminated=terminated))


def check_writable(folder: Path, name: str) -> None:
    """`folder` can be created and written to, or a one-line UserError naming it as `name`
    ("--dst", "--output-path"). Nothing is created: an exit-2 error must leave no trace behind."""
    output_folder(folder, name)
