"""The one outer main of every command (ruslan_glowtts/common/cli.py): exit codes, one-line
failures, and that every command goes through it."""

from __future__ import annotations

import ast
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ruslan_glowtts.common import cli
from ruslan_glowtts.common.cli import OneLineErrorParser
from ruslan_glowtts.common.errors import UserError, hold_logs

REPO = Path(__file__).resolve().parents[1]


def _run(capsys, fn, *argv: str, **options) -> tuple[int, str, str]:
    code = cli.run_tool(fn, list(argv), **options)
    out, err = capsys.readouterr()
    return code, out, err


def test_user_error_is_one_line_exit_2_and_drops_held_logs(capsys):
    def main(argv):
        hold_logs()
        logging.getLogger("x").warning("Overriding: lr = 1  (--set)")  # held back, then dropped
        raise UserError("--dataset-path nowhere: no such folder")

    code, out, err = _run(capsys, main)
    assert code == 2 and out == ""
    assert err == "error: --dataset-path nowhere: no such folder\n"


def test_bad_flag_through_the_one_line_parser(capsys):
    def main(argv):
        p = OneLineErrorParser(prog="t")
        p.add_argument("--n", type=int)
        p.parse_args(argv)
        return 0

    code, _, err = _run(capsys, main, "--n", "x")
    assert code == 2 and err.startswith("error: argument --n: invalid int value") and err.count("\n") == 1


def test_ctrl_c_and_sigterm_are_one_line_130_and_143(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    def terminated(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises in here
        return 0

    before = signal.getsignal(signal.SIGTERM)
    assert _run(capsys, interrupted, interrupted="stopped by you") == (130, "", "stopped by you\n")
    assert _run(capsys, terminated, terminated="killed politely") == (143, "", "killed politely\n")
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_a_crash_keeps_its_traceback():
    def main(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        cli.run_tool(main, [])


def test_a_closed_stdout_is_exit_141_without_traceback():
    code = (
        "from ruslan_glowtts.common.cli import run_tool\n"
        "def main(argv):\n"
        "    for i in range(10**6): print('line', i)\n"
        "    return 0\n"
        "raise SystemExit(run_tool(main, []))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()  # `| head`: the reader leaves
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and err == ""


def test_decorator_keeps_main_callable_in_process(capsys):
    @cli.tool(log_level=None, interrupted="bye")
    def main(argv):
        print("args", argv)
        return 7

    assert main(["a"]) == 7 and capsys.readouterr().out == "args ['a']\n"
    assert main.tool_options["interrupted"] == "bye" and main.__wrapped__(["b"]) == 7


# -- every command goes through the wrapper ------------------------------------------------------

WRAPPED_MAINS = [
    "train_ruslan_glowtts",
    "train_ruslan_hifigan",
    "ruslan_glowtts.prep.cli",
    "ruslan_glowtts.voice.synthesize",
    "ruslan_glowtts.monitor.tensorboard_launcher",
    "ruslan_glowtts.monitor.diagnose",
]


@pytest.mark.parametrize("module", WRAPPED_MAINS)
def test_each_tool_main_is_wrapped(module):
    main = importlib.import_module(module).main
    assert hasattr(main, "tool_options"), f"{module}.main is not wrapped by ruslan_glowtts.common.cli.tool"


def _run_as_script_target(path: Path) -> str:
    """The module named by the `run_as_script("...")` call in a script's `if __name__ == "__main__"`."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run_as_script":
            return node.args[0].value
    raise AssertionError(f"{path} does not call common.cli.run_as_script")


@pytest.mark.parametrize(
    ("script", "module"),
    [
        ("ruslan_glowtts/prepare.py", "ruslan_glowtts.prep.cli"),
        ("ruslan_glowtts/synthesize.py", "ruslan_glowtts.voice.synthesize"),
        ("view_tensorboard.py", "ruslan_glowtts.monitor.tensorboard_launcher"),
    ],
)
def test_scripts_import_their_tool_under_the_guard(script, module):
    assert _run_as_script_target(REPO / script) == module
    assert module in WRAPPED_MAINS


@pytest.mark.parametrize("script", ["train_ruslan_glowtts.py", "train_ruslan_hifigan.py"])
def test_training_scripts_import_only_the_wrapper_before_main(script):
    # Anything heavier imported at the top would run before the guard is up.
    tree = ast.parse((REPO / script).read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {n.module if isinstance(n, ast.ImportFrom) else n.names[0].name for n in top}
    assert names <= {"sys", "ruslan_glowtts.common.cli"}, names


def test_python_m_prepare_bad_arguments_is_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "ruslan_glowtts.prepare", "--src"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: argument --src: expected one argument") and result.stderr.count("\n") == 1


# -- the writable-folder check shared by prepare and the training scripts ---------------------------


def test_check_writable_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    cli.check_writable(target, "--dst")
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []


def test_check_writable_names_the_file_in_the_way(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"^output path .*file/runs is not writable: .*file is a file, not a folder$"):
        cli.check_writable(tmp_path / "file" / "runs", "output path")
