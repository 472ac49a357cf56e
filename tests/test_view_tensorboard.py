"""view_tensorboard.py: TensorBoard on 127.0.0.1, a free port when the asked one is busy, HTTP 200,
the diagnosis of the opened run, and nothing left running after Ctrl-C; one-line errors.

Only ever talks to 127.0.0.1.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from ruslan_glowtts.monitor import tensorboard_launcher as tl
from tests.helpers import REPO


def write_run(run_dir: Path, n: int = 30) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    for step in range(n):
        writer.add_scalar("TrainIterStats/grad_norm", 5.0 + step % 3, step)
        writer.add_scalar("TrainIterStats/loss", 4.0 - step / n, step)
    writer.close()
    return run_dir


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    old = write_run(tmp_path / "runs" / "old-run")
    write_run(tmp_path / "runs" / "new-run")
    past = time.time() - 3600
    for events in old.iterdir():  # "latest" is the run written last
        os.utime(events, (past, past))
    return tmp_path / "runs"


def _lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)


def _wait_for(sink: queue.Queue, text: str, seen: list[str], timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = sink.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"{text!r} not printed within {timeout} s; got: {''.join(seen)}")


def test_serves_latest_run_on_loopback_then_stops_clean(logdir):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "view_tensorboard.py"), str(logdir), "--port", str(busy_port)],
        cwd=logdir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    seen: list[str] = []
    try:
        line = _wait_for(out, "TensorBoard http://", seen)
        url = line.split()[1]
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert url == f"http://127.0.0.1:{port}/" and port != busy_port  # the busy port was skipped
        assert "new-run" in line
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
        listening = [c for c in psutil.Process(proc.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", port)]
        _wait_for(out, "Press Ctrl-C", seen)
        assert any("Verdict:" in s for s in seen) and any("new-run" in s for s in seen)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        busy.close()
    assert f"port {busy_port} is busy" in proc.stderr.read()
    assert not psutil.pid_exists(proc.pid) and not any(c.is_running() for c in children)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def _one_line_error(capsys, argv: list[str], message: str) -> None:
    assert tl.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err


def test_no_runs_says_where_it_looked_and_how_to_train(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    _one_line_error(
        capsys, [str(tmp_path / "runs")], f"no runs found in {tmp_path / 'runs'} (looked for events.out.tfevents.*"
    )
    _one_line_error(capsys, [str(tmp_path / "missing")], "python train_ruslan_glowtts.py --dataset-path DIR")


def test_logdir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    _one_line_error(capsys, [str(tmp_path / "f")], "is not a folder")


def test_unreadable_logdir(logdir, capsys, monkeypatch):
    # Tests run as root, for whom chmod 000 changes nothing: make the walk fail instead.
    def walk(top, onerror=None, **kwargs):
        onerror(PermissionError(13, "Permission denied", str(top)))
        return iter(())

    monkeypatch.setattr(os, "walk", walk)
    _one_line_error(capsys, [str(logdir)], f"cannot read {logdir}: Permission denied")


def test_tensorboard_missing(logdir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` raise ImportError
    _one_line_error(capsys, [str(logdir)], "TensorBoard is not installed")


def test_bad_port_value(capsys):
    _one_line_error(capsys, ["--port", "x"], "expected a port number 1-65535")


def test_network_host_gets_a_warning():
    assert tl.host_warning("127.0.0.1") is None and tl.host_warning("localhost") is None
    assert "anyone who can reach this machine" in tl.host_warning("0.0.0.0")


def test_busy_port_is_detected():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not tl.port_is_free("127.0.0.1", s.getsockname()[1])
