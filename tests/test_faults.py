"""Fault injection: every failure a user meets ends in one clear line or a handled recovery.

Each case runs the real entry point as a subprocess (signals, exit codes and tracebacks are only
honest that way) on the prepared sample with the tiny model, and checks the exit code, the one
line, that no traceback was printed, and that nothing of the user's was lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.helpers import REPO, SAMPLE, copy_corpus, read_scalars, run_dirs, tiny_args

pytestmark = pytest.mark.slow
SCRIPT = str(REPO / "train_ruslan_glowtts.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train_argv(dataset: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, SCRIPT, "--dataset-path", str(dataset), "--output-path", str(output),
            *tiny_args(), *extra]


def _run(argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=timeout, check=False)


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]


def _one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """Exit `code`, stderr exactly one line `error: ...` with these fragments, stdout empty."""
    assert result.returncode == code, (result.stdout[-2000:], result.stderr[-2000:])
    _no_traceback(result.stdout + result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert result.stdout == "", result.stdout[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _meta(run: Path) -> dict:
    return json.loads((run / "run.json").read_text(encoding="utf-8"))


def _start_and_signal(argv: list[str], marker: str, signum: int, timeout: float = 240, *,
                      group: bool = False) -> tuple[int, str]:
    """Start argv, send `signum` once `marker` appears in its output, return (code, output).
    With group, the signal goes to the whole process group, as a terminal's Ctrl-C does."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=REPO,
                            start_new_session=group)
    output: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if marker in line:
                if group:
                    os.killpg(proc.pid, signum)
                else:
                    proc.send_signal(signum)
                break
            assert time.monotonic() < deadline, "marker never seen"
        rest, _ = proc.communicate(timeout=timeout)
        output.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(output)


@pytest.fixture(scope="module")
def base_run(prepared_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4 (read-only: copy it)."""
    output = tmp_path_factory.mktemp("base_runs")
    result = _run(_train_argv(prepared_sample, output, "--max-steps", "4", "--set", "save_step=2"))
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = run_dirs(output)
    assert {p.name for p in run.glob("checkpoint_*.pth")} == {"checkpoint_2.pth", "checkpoint_4.pth"}
    return run


def _copy_run(run: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, dst / run.name))


# -- signals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code", "status"), [(signal.SIGTERM, 143, "terminated"),
                                                        (signal.SIGINT, 130, "interrupted")])
def test_signal_mid_training_saves_and_continue_resumes_from_that_step(prepared_sample, tmp_path, signum, code,
                                                                        status):
    output = tmp_path / "runs"
    argv = _train_argv(prepared_sample, output, "--set", "print_step=1", "--set", "save_step=1000")
    returncode, text = _start_and_signal(argv, "GLOBAL_STEP: 4", signum)
    _no_traceback(text)
    assert returncode == code, text[-3000:]
    (run,) = run_dirs(output)
    meta = _meta(run)
    assert meta["status"] == status and meta["exit_code"] == code
    step = meta["final_step"]
    assert step >= 4 and (run / f"checkpoint_{step}.pth").is_file()
    assert f"{status} by" in text and f"checkpoint_{step}.pth saved" in text

    resumed = _run([sys.executable, SCRIPT, "--continue-path", str(run), "--max-steps", str(step + 2)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _no_traceback(resumed.stdout + resumed.stderr)
    assert f"Model restored from step {step}" in resumed.stdout + resumed.stderr
    assert torch.load(run / f"checkpoint_{step + 2}.pth", weights_only=False)["step"] == step + 2
    assert _meta(run)["status"] == "max_steps"


def test_ctrl_c_in_a_terminal_with_loader_workers(prepared_sample, tmp_path):
    # A terminal's Ctrl-C reaches the loader workers too; they must not print tracebacks.
    output = tmp_path / "runs"
    argv = _train_argv(prepared_sample, output, "--set", "print_step=1", "--set", "num_loader_workers=2",
                       "--set", "num_eval_loader_workers=1")
    returncode, text = _start_and_signal(argv, "GLOBAL_STEP: 3", signal.SIGINT, group=True)
    _no_traceback(text)
    assert returncode == 130, text[-3000:]
    (run,) = run_dirs(output)
    meta = _meta(run)
    assert meta["status"] == "interrupted" and (run / f"checkpoint_{meta['final_step']}.pth").is_file()


@pytest.mark.parametrize(("signum", "code", "line"), [(signal.SIGINT, 130, "interrupted (Ctrl-C) during start-up"),
                                                      (signal.SIGTERM, 143, "terminated (SIGTERM) during start-up")])
def test_signal_during_start_up_is_one_line(prepared_sample, tmp_path, signum, code, line):
    # -X importtime reports each finished import on stderr: once the kit's cli is imported, the
    # script is in main(), with seconds of torch/Coqui imports and checks still ahead.
    argv = [sys.executable, "-X", "importtime", *_train_argv(prepared_sample, tmp_path / "runs")[1:]]
    returncode, text = _start_and_signal(argv, "ruslan_glowtts.training.cli", signum, timeout=120)
    _no_traceback(text)
    assert returncode == code, text[-2000:]
    assert text.count(line) == 1
    assert not (tmp_path / "runs").exists()


def test_signal_during_vocoder_start_up_is_one_line(prepared_sample, tmp_path):
    # The HiFi-GAN script shares the start-up guard (ruslan_glowtts/common/cli.py).
    argv = [sys.executable, "-X", "importtime", str(REPO / "train_ruslan_hifigan.py"), "--dataset-path",
            str(prepared_sample), "--output-path", str(tmp_path / "runs"), "--max-steps", "2"]
    returncode, text = _start_and_signal(argv, "ruslan_glowtts.training.cli", signal.SIGINT, timeout=120)
    _no_traceback(text)
    assert returncode == 130, text[-2000:]
    assert text.count("interrupted (Ctrl-C) during start-up") == 1
    assert not (tmp_path / "runs").exists()


# -- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_continue_skips_a_broken_newest_checkpoint(base_run, tmp_path, damage):
    run = _copy_run(base_run, tmp_path)
    newest = run / "checkpoint_4.pth"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    previous = (run / "checkpoint_2.pth").read_bytes()
    leftover = run / ".checkpoint_6.pth.tmp-12345"  # what a save killed before its rename leaves
    leftover.write_bytes(b"half")
    result = _run([sys.executable, SCRIPT, "--continue-path", str(run), "--max-steps", "4"])
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    _no_traceback(text)
    assert text.count("checkpoint_4.pth cannot be loaded") == 1 and "Model restored from step 2" in text
    assert (run / "checkpoint_2.pth").read_bytes() == previous
    assert not leftover.exists()
    # Coqui resumes at step 3; step 4's checkpoint is saved again, now whole, in place of the broken one
    assert torch.load(newest, weights_only=False)["step"] == 4
    assert _meta(run)["status"] == "max_steps"


def test_continue_with_no_loadable_checkpoint_is_exit_2(base_run, tmp_path):
    run = _copy_run(base_run, tmp_path)
    for checkpoint in run.glob("checkpoint_*.pth"):
        checkpoint.write_bytes(b"not a checkpoint")
    result = _run([sys.executable, SCRIPT, "--continue-path", str(run)])
    _one_line_error(result, 2, "none of its 2 checkpoints loads", "checkpoint_4.pth cannot be loaded")
    assert _meta(run)["status"] == "max_steps"  # run.json untouched


def test_checkpoints_are_written_atomically(base_run):
    # No temp file is left, and the save goes through the kit's atomic writer.
    assert not [p for p in base_run.iterdir() if ".tmp-" in p.name]
    import ruslan_glowtts.training.trainer  # noqa: F401 - installs the writer
    from ruslan_glowtts.training.coqui_compat import atomic_checkpoint_writes_installed

    assert atomic_checkpoint_writes_installed()


def test_restore_path_to_a_file_that_is_not_a_checkpoint(prepared_sample, tmp_path):
    bogus = tmp_path / "weights.pth"
    bogus.write_text("hello", encoding="utf-8")
    result = _run(_train_argv(prepared_sample, tmp_path / "runs", "--restore-path", str(bogus)))
    _one_line_error(result, 2, "--restore-path", "cannot be loaded")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("allow", [False, True])
def test_restore_path_from_a_model_of_another_size(base_run, prepared_sample, tmp_path, allow):
    argv = _train_argv(prepared_sample, tmp_path / "runs", "--restore-path", str(base_run / "checkpoint_4.pth"),
                       "--set", "hidden_channels_enc=48", "--max-steps", "1")
    if not allow:
        _one_line_error(_run(argv), 2, "layers of the config's model match", "--allow-partial-restore")
        assert not (tmp_path / "runs").exists()
        return
    result = _run(argv + ["--allow-partial-restore"])
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    _no_traceback(text)
    assert text.count("--allow-partial-restore: restoring only") == 1


# -- data ----------------------------------------------------------------------------------------


def test_caps_that_leave_no_utterance_stop_before_any_folder(prepared_sample, tmp_path):
    result = _run(_train_argv(prepared_sample, tmp_path / "runs", "--set", "max_audio_len=15",
                              "--set", "min_audio_len=0"))
    _one_line_error(result, 2, "the length caps leave 0 of", "in samples")
    assert not (tmp_path / "runs").exists()


def test_garbage_wav_after_prepare_is_one_line(prepared_sample, tmp_path):
    corpus = copy_corpus(prepared_sample, tmp_path / "corpus")
    (corpus / "dataset.toml").write_bytes((prepared_sample / "dataset.toml").read_bytes())
    victim = sorted((corpus / "RUSLAN").glob("*.wav"))[3]
    victim.write_bytes(os.urandom(4096))
    result = _run(_train_argv(corpus, tmp_path / "runs"))
    _one_line_error(result, 2, "cannot be read as audio", victim.name, "ruslan_glowtts.prepare")
    assert not (tmp_path / "runs").exists()


def _nan_wavs(corpus: Path, count: int) -> list[Path]:
    victims = sorted((corpus / "RUSLAN").glob("*.wav"))[:count]
    for wav in victims:
        audio, rate = sf.read(wav, dtype="float32")
        audio[len(audio) // 3: len(audio) // 3 + 50] = np.nan
        sf.write(wav, audio, rate, subtype="FLOAT")
    return victims


def test_nan_wav_with_resample_is_skipped_and_counted(sample_22k, tmp_path):
    corpus = copy_corpus(sample_22k, tmp_path / "corpus")
    (victim,) = _nan_wavs(corpus, 1)
    result = _run(_train_argv(corpus, tmp_path / "runs", "--set", "audio.resample=true", "--max-steps", "12"))
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    _no_traceback(text)
    assert text.count(f"Skipping {victim}") == 1
    (run,) = run_dirs(tmp_path / "runs")
    assert list(_meta(run)["unloadable_samples"]) == [str(victim)]

    assert read_scalars(run, "Health/skipped_samples")


def test_too_many_unloadable_samples_stop_with_exit_2(sample_22k, tmp_path):
    corpus = copy_corpus(sample_22k, tmp_path / "corpus")
    victims = _nan_wavs(corpus, 6)  # a quarter of the sample: well above the tolerated 2
    result = _run(_train_argv(corpus, tmp_path / "runs", "--set", "audio.resample=true", "--max-steps", "30"))
    text = result.stdout + result.stderr
    assert result.returncode == 2, text[-3000:]
    _no_traceback(text)
    assert "samples failed to load, more than the 2 tolerated" in result.stdout
    (run,) = run_dirs(tmp_path / "runs")
    meta = _meta(run)
    assert meta["status"] == "bad_data" and meta["exit_code"] == 2
    assert set(meta["unloadable_samples"]) <= {str(v) for v in victims}


# -- prepare -------------------------------------------------------------------------------------


def _big_corpus(dst: Path, copies: int) -> Path:
    """The sample repeated under new ids: enough files for prepare to be caught mid-run."""

    (dst / "RUSLAN").mkdir(parents=True)
    lines = []
    for line in (SAMPLE / "metadata_RUSLAN_22200.csv").read_text(encoding="utf-8").splitlines():
        id_, text = line.split("|", 1)
        for n in range(copies):
            (dst / "RUSLAN" / f"{id_}_{n}.wav").write_bytes((SAMPLE / "RUSLAN" / f"{id_}.wav").read_bytes())
            lines.append(f"{id_}_{n}|{text}")
    (dst / "metadata_RUSLAN_22200.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


def _prepare_argv(src: Path, dst: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ruslan_glowtts.prepare", "--src", str(src), "--dst", str(dst), *extra]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_prepare_killed_mid_run_prints_no_worker_traceback_and_resumes(tmp_path, signum):
    src = _big_corpus(tmp_path / "src", copies=8)
    dst = tmp_path / "dst"
    returncode, text = _start_and_signal(_prepare_argv(src, dst, "--jobs", "2"), "utterance(s) to process", signum)
    _no_traceback(text)  # the workers' output shares the pipe: it is read until they are all gone
    assert "BrokenPipeError" not in text
    if signum == signal.SIGTERM:
        assert returncode == 143, text[-2000:]
        assert text.strip().splitlines()[-1].startswith("terminated (SIGTERM): finished files are kept")
    else:
        assert returncode == -signal.SIGKILL
    result = _run(_prepare_argv(src, dst, "--jobs", "2"))
    assert result.returncode == 0, result.stderr[-2000:]
    _no_traceback(result.stdout + result.stderr)
    report = json.loads((dst / "report.json").read_text(encoding="utf-8"))
    assert report["summary"]["usable"] == 24 * 8


def test_prepare_ctrl_c_during_start_up_is_one_line(tmp_path):

    # -X importtime: the kit's first import inside prepare.py; librosa's and Coqui's follow
    argv = [sys.executable, "-X", "importtime", *_prepare_argv(SAMPLE, tmp_path / "dst")[1:]]
    returncode, text = _start_and_signal(argv, "ruslan_glowtts.common.atomic_files", signal.SIGINT, timeout=120)
    _no_traceback(text)
    assert returncode == 130, text[-2000:]
    assert text.strip().splitlines()[-1].startswith("interrupted")
    assert not (tmp_path / "dst").exists()


def test_prepare_reports_a_wav_cut_short_as_truncated(tmp_path):

    src = copy_corpus(SAMPLE, tmp_path / "src")
    victim = sorted((src / "RUSLAN").glob("*.wav"))[5]
    data = victim.read_bytes()
    victim.write_bytes(data[: 44 + (len(data) - 44) // 2])  # the header still announces the full length
    result = _run(_prepare_argv(src, tmp_path / "dst"))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "dst" / "report.json").read_text(encoding="utf-8"))
    entry = next(f for f in report["files"] if f["id"] == victim.stem)
    (truncated,) = [p for p in entry["problems"] if p["code"] == "truncated"]
    assert "the header announces" in truncated["detail"]


def test_prepare_exit_2_leaves_no_trace_in_dst(tmp_path):

    src = copy_corpus(SAMPLE, tmp_path / "src")
    result = _run(_prepare_argv(src, tmp_path / "dst", "--preset", "no-such-tier"))
    _one_line_error(result, 2, "no-such-tier")
    assert not (tmp_path / "dst").exists()


# -- view_tensorboard ----------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "fragment"), [(["--port", "99999"], "expected a port number 1-65535"),
                                                (["--port", "http"], "expected a port number"),
                                                (["--host", "a..b"], "not a valid host name"),
                                                (["--host", "203.0.113.7"], "is 203.0.113.7 an address of this")])
def test_view_tensorboard_bad_port_or_host_is_one_line(base_run, args, fragment):
    result = _run([sys.executable, str(REPO / "view_tensorboard.py"), str(base_run.parent), *args], timeout=120)
    _one_line_error(result, 2, fragment)


def test_view_tensorboard_ctrl_c_in_its_first_second(base_run):
    argv = [sys.executable, "-X", "importtime", str(REPO / "view_tensorboard.py"), str(base_run.parent)]
    returncode, text = _start_and_signal(argv, "ruslan_glowtts.common.errors", signal.SIGINT, timeout=120)
    _no_traceback(text)
    assert returncode in (0, 130), text[-2000:]  # 0 when the server was up already: "TensorBoard stopped."
    assert text.strip().splitlines()[-1] in ("interrupted", "TensorBoard stopped.")
