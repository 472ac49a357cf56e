"""User errors and the kit's documented exit codes."""

from __future__ import annotations

import argparse

# Exit codes of train_ruslan_glowtts.py (documented in README.md, "Exit codes").
EXIT_OK = 0
EXIT_CRASH = 1  # an unexpected error; the run folder and its logs are kept
EXIT_USAGE = 2  # bad input: one line on stderr, nothing written
EXIT_EXPLODED = 3  # the health guard stopped the run (policy stop, or escalations exhausted)
EXIT_INTERRUPTED = 130  # Ctrl-C: a checkpoint was saved


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2, never a traceback."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that raises UserError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see --help)")
