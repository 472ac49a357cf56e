"""Open TensorBoard on a run (or all runs), on this machine only unless asked, with the diagnosis.

TensorBoard itself serves the page, through its own program API (`tensorboard.program`) in this
process: Ctrl-C stops the server and nothing outlives us. Two of its defaults are changed:
- `--load_fast=false`: the fast loader is a separate Rust process; the Python loader keeps
  everything in this one.
- `--samples_per_plugin scalars=0`: TensorBoard otherwise keeps a random 1,000 points per
  scalar tag, so a grad_norm spike can be missing from the very chart you look at.
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ruslan_glowtts.common.cli import OneLineErrorParser, tool
from ruslan_glowtts.common.errors import EXIT_OK, UserError
from ruslan_glowtts.common.run_layout import EVENTS_GLOB
from ruslan_glowtts.monitor.events import TENSORBOARD_MISSING, folders_with_events

logger = logging.getLogger(__name__)

DEFAULT_LOGDIR = Path("runs")  # the trainer's default output_path (configs/ruslan_glowtts.toml)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6006  # TensorBoard's own default
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
HTTP_TIMEOUT_S = 60.0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got '{text}'") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="view_tensorboard.py",
        description="Open TensorBoard on the latest training run (or all of them) and print its diagnosis.",
        epilog="Ctrl-C stops TensorBoard. From another machine, keep the default host and tunnel: "
        "ssh -L 6006:127.0.0.1:6006 USER@TRAINING_HOST",
    )
    p.add_argument(
        "logdir",
        nargs="?",
        type=Path,
        default=DEFAULT_LOGDIR,
        metavar="LOGDIR",
        help="a folder of runs (the trainer's --output-path, default runs/) or one run folder",
    )
    p.add_argument("--all", action="store_true", help="show every run under LOGDIR, not only the latest")
    p.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        metavar="N",
        help=f"port to serve on (default {DEFAULT_PORT}; a free one is picked if it is busy)",
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        metavar="H",
        help=f"address to bind (default {DEFAULT_HOST}: this machine only). 0.0.0.0 makes the logs "
        "readable from the network",
    )
    return p


def find_runs(logdir: Path) -> list[Path]:
    """Run folders (folders holding event files) under `logdir`, itself included; latest last."""
    how = (
        f"Train one first: python train_ruslan_glowtts.py --dataset-path DIR (runs go to {DEFAULT_LOGDIR}/), "
        "or name the folder that holds your runs: python view_tensorboard.py PATH"
    )
    if not logdir.exists():
        raise UserError(f"no runs found: {logdir} does not exist. {how}")
    if not logdir.is_dir():
        raise UserError(f"{logdir} is not a folder: pass a folder of runs or one run folder")
    runs = folders_with_events(logdir)
    if not runs:
        raise UserError(f"no runs found in {logdir} (looked for {EVENTS_GLOB} in it and its subfolders). {how}")
    return runs


def host_warning(host: str) -> str | None:
    if host in LOOPBACK:
        return None
    return (
        f"warning: serving on {host}: anyone who can reach this machine can read these logs and hear the "
        "test audio, without a password. To view from another machine, prefer the default 127.0.0.1 and "
        "an SSH tunnel: ssh -L 6006:127.0.0.1:6006 USER@TRAINING_HOST"
    )


def port_is_free(host: str, port: int) -> bool:
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UserError(f"cannot use host {host}: {exc.strerror}") from None
    except (UnicodeError, ValueError, OSError) as exc:  # e.g. "a..b": an empty label
        raise UserError(f"cannot use host {host!r}: not a valid host name or address ({exc})") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # The same option TensorBoard's server sets, so a port in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES) and port:
                return False  # busy, or a privileged port: another port will do
            raise UserError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc} (is {host} an address of this machine?)"
            ) from None
    return True


def start_tensorboard(logdir: Path, host: str, port: int) -> tuple[str, Any]:
    """Start TensorBoard's server in a thread of this process; return (URL, server)."""
    try:
        from tensorboard import program
    except ImportError:
        raise UserError(TENSORBOARD_MISSING.format(python=sys.executable)) from None

    servers: list[Any] = []

    def server_class(app: Any, flags: Any) -> Any:  # keep the server, to shut it down on Ctrl-C
        servers.append(program.WerkzeugServer(app, flags))
        return servers[-1]

    def launch(on_port: int) -> str:
        tb = program.TensorBoard(server_class=server_class)
        tb.configure(
            argv=[
                None,
                "--logdir",
                str(logdir),
                "--host",
                host,
                "--port",
                str(on_port),
                "--load_fast",
                "false",
                "--samples_per_plugin",
                "scalars=0",
            ]
        )
        return tb.launch()

    if not port_is_free(host, port):
        logger.warning("port %d is busy; using a free one", port)
        port = 0  # the OS picks a free port: no race with another program
    try:
        try:
            url = launch(port)
        except program.TensorBoardPortInUseError:  # taken between the check and the bind
            url = launch(0)
    except program.TensorBoardServerException as exc:
        raise UserError(exc.msg) from None
    return url, servers[-1]


def wait_for_http(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise UserError(f"TensorBoard did not answer at {url} within {timeout_s:.0f} s")
        time.sleep(0.2)


def print_diagnosis(runs: list[Path], show_all: bool) -> None:
    """The verdict of what is on screen: the full report for one run, one line per run for --all."""
    from ruslan_glowtts.monitor.diagnose import diagnose, format_report, one_line

    for run in runs if show_all else runs[-1:]:
        try:
            d = diagnose(run)
        except UserError as exc:
            print(f"{run.name}: no diagnosis ({exc})", flush=True)
            continue
        except Exception as exc:  # noqa: BLE001 - the curves are still worth showing
            logger.warning("%s: diagnosis failed (%s: %s)", run.name, type(exc).__name__, exc)
            continue
        print(one_line(d) if show_all else format_report(d), flush=True)
    if show_all:
        print("Details: python -m ruslan_glowtts.diagnose RUN_DIR [--plot FILE.png]", flush=True)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@tool(log_level=logging.WARNING, interrupted="interrupted")  # Ctrl-C before the server was up
def main(argv: list[str] | None = None) -> int:
    """view_tensorboard.py: find the runs, start TensorBoard, print the diagnosis, serve until Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        import tensorboard  # noqa: F401 - fail before searching for runs
    except ImportError:
        raise UserError(TENSORBOARD_MISSING.format(python=sys.executable)) from None
    logdir = args.logdir.expanduser().absolute()
    runs = find_runs(logdir)
    target = logdir if args.all else runs[-1]
    url, server = start_tensorboard(target, args.host, args.port)
    if warning := host_warning(args.host):  # after the start: a bad host gets its error line alone
        print(warning, file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops it as cleanly as Ctrl-C
    try:
        wait_for_http(url)
        shown = f"{len(runs)} runs under {logdir}" if args.all else f"run {target}"
        print(f"TensorBoard {url}  ({shown})", flush=True)
        print_diagnosis(runs, args.all)
        print("Press Ctrl-C to stop TensorBoard.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    print("TensorBoard stopped.", flush=True)
    return EXIT_OK
