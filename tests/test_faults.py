"""Fault injection: every failure a user meets ends in one clear line or a handled recovery.

Each case runs the real entry point as a subprocess (signals, exit codes and tracebacks are only
honest that way) on the prepared sample with the tiny model, and checks the exit code, the one
line, that no traceback was printed, and that nothing of the user's was lost.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    GLOWTTS_SCRIPT,
    REPO,
    SAMPLE,
    copy_corpus,
    nan_wavs,
    no_traceback,
    one_line_error,
    run_cli,
    run_dirs,
    start_and_signal,
    tiny_args,
)

pytestmark = pytest.mark.slow


def _train_argv(dataset: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        GLOWTTS_SCRIPT,
        "--dataset-path",
        str(dataset),
        "--output-path",
        str(output),
        *tiny_args(),
        *extra,
    ]


def _meta(run: Path) -> dict:
    return json.loads((run / "run.json").read_text(encoding="utf-8"))


def _copy_run(run: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, dst / run.name))


# -- signals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "code", "status"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_signal_mid_training_saves_and_continue_resumes_from_that_step(prepared_sample, tmp_path, signum, code, status):
    output = tmp_path / "runs"
    argv = _train_argv(prepared_sample, output, "--set", "print_step=1", "--set", "save_step=1000")
    returncode, text = start_and_signal(argv, "GLOBAL_STEP: 4", signum)
    no_traceback(text)
    assert returncode == code, text[-3000:]
    (run,) = run_dirs(output)
    meta = _meta(run)
    assert meta["status"] == status and meta["exit_code"] == code
    step = meta["final_step"]
    assert step >= 4 and (run / f"checkpoint_{step}.pth").is_file()
    assert f"{status} by" in text and f"checkpoint_{step}.pth saved" in text

    resumed = run_cli([sys.executable, GLOWTTS_SCRIPT, "--continue-path", str(run), "--max-steps", str(step + 2)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    no_traceback(resumed.stdout + resumed.stderr)
    assert f"Model restored from step {step}" in resumed.stdout + resumed.stderr
    assert torch.load(run / f"checkpoint_{step + 2}.pth", weights_only=False)["step"] == step + 2
    assert _meta(run)["status"] == "max_steps"


def test_ctrl_c_in_a_terminal_with_loader_workers(prepared_sample, tmp_path):
    # A terminal's Ctrl-C reaches the loader workers too; they must not print tracebacks.
    output = tmp_path / "runs"
    argv = _train_argv(
        prepared_sample,
        output,
        "--set",
        "print_step=1",
        "--set",
        "num_loader_workers=2",
        "--set",
        "num_eval_loader_workers=1",
    )
    returncode, text = start_and_signal(argv, "GLOBAL_STEP: 3", signal.SIGINT, group=True)
    no_traceback(text)
    assert returncode == 130, text[-3000:]
    (run,) = run_dirs(output)
    meta = _meta(run)
    assert meta["status"] == "interrupted" and (run / f"checkpoint_{meta['final_step']}.pth").is_file()


@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [
        (signal.SIGINT, 130, "interrupted (Ctrl-C) during start-up"),
        (signal.SIGTERM, 143, "terminated (SIGTERM) during start-up"),
    ],
)
def test_signal_during_start_up_is_one_line(prepared_sample, tmp_path, signum, code, line):
    # -X importtime reports each finished import on stderr: once the kit's cli is imported, the
    # script is in main(), with seconds of torch/Coqui imports and checks still ahead.
    argv = [sys.executable, "-X", "importtime", *_train_argv(prepared_sample, tmp_path / "runs")[1:]]
    returncode, text = start_and_signal(argv, "ruslan_glowtts.training.cli", signum, timeout=120)
    no_traceback(text)
    assert returncode == code, text[-2000:]
    assert text.count(line) == 1
    assert not (tmp_path / "runs").exists()


def test_signal_during_vocoder_start_up_is_one_line(prepared_sample, tmp_path):
    # The HiFi-GAN script shares the start-up guard (ruslan_glowtts/common/cli.py).
    argv = [
        sys.executable,
        "-X",
        "importtime",
        str(REPO / "train_ruslan_hifigan.py"),
        "--dataset-path",
        str(prepared_sample),
        "--output-path",
        str(tmp_path / "runs"),
        "--max-steps",
        "2",
    ]
    returncode, text = start_and_signal(argv, "ruslan_glowtts.training.run", signal.SIGINT, timeout=120)
    no_traceback(text)
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
    result = run_cli([sys.executable, GLOWTTS_SCRIPT, "--continue-path", str(run), "--max-steps", "4"])
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    no_traceback(text)
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
    result = run_cli([sys.executable, GLOWTTS_SCRIPT, "--continue-path", str(run)])
    one_line_error(result, 2, "none of its 2 checkpoints loads", "checkpoint_4.pth cannot be loaded")
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
    result = run_cli(_train_argv(prepared_sample, tmp_path / "runs", "--restore-path", str(bogus)))
    one_line_error(result, 2, "--restore-path", "cannot be loaded")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("allow", [False, True])
def test_restore_path_from_a_model_of_another_size(base_run, prepared_sample, tmp_path, allow):
    argv = _train_argv(
        prepared_sample,
        tmp_path / "runs",
        "--restore-path",
        str(base_run / "checkpoint_4.pth"),
        "--set",
        "hidden_channels_enc=48",
        "--max-steps",
        "1",
    )
    if not allow:
        one_line_error(run_cli(argv), 2, "layers of the config's model match", "--allow-partial-restore")
        assert not (tmp_path / "runs").exists()
        return
    result = run_cli(argv + ["--allow-partial-restore"])
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    no_traceback(text)
    assert text.count("--allow-partial-restore: restoring only") == 1


# -- data ----------------------------------------------------------------------------------------


def test_caps_that_leave_no_utterance_stop_before_any_folder(prepared_sample, tmp_path):
    result = run_cli(
        _train_argv(prepared_sample, tmp_path / "runs", "--set", "max_audio_len=15", "--set", "min_audio_len=0")
    )
    one_line_error(result, 2, "the length caps leave 0 of", "in samples")
    assert not (tmp_path / "runs").exists()


def test_garbage_wav_after_prepare_is_one_line(prepared_sample, tmp_path):
    corpus = copy_corpus(prepared_sample, tmp_path / "corpus")
    (corpus / "dataset.toml").write_bytes((prepared_sample / "dataset.toml").read_bytes())
    victim = sorted((corpus / "RUSLAN").glob("*.wav"))[3]
    victim.write_bytes(os.urandom(4096))
    result = run_cli(_train_argv(corpus, tmp_path / "runs"))
    one_line_error(result, 2, "cannot be read as audio", victim.name, "ruslan_glowtts.prepare")
    assert not (tmp_path / "runs").exists()


def test_too_many_unloadable_samples_stop_with_exit_2(sample_22k, tmp_path):
    corpus = copy_corpus(sample_22k, tmp_path / "corpus")
    victims = nan_wavs(corpus, 6)  # a quarter of the sample: well above the tolerated 2
    result = run_cli(_train_argv(corpus, tmp_path / "runs", "--set", "audio.resample=true", "--max-steps", "30"))
    text = result.stdout + result.stderr
    assert result.returncode == 2, text[-3000:]
    no_traceback(text)
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
    returncode, text = start_and_signal(_prepare_argv(src, dst, "--jobs", "2"), "utterance(s) to process", signum)
    no_traceback(text)  # the workers' output shares the pipe: it is read until they are all gone
    assert "BrokenPipeError" not in text
    if signum == signal.SIGTERM:
        assert returncode == 143, text[-2000:]
        assert text.strip().splitlines()[-1].startswith("terminated (SIGTERM): finished files are kept")
    else:
        assert returncode == -signal.SIGKILL
    result = run_cli(_prepare_argv(src, dst, "--jobs", "2"))
    assert result.returncode == 0, result.stderr[-2000:]
    no_traceback(result.stdout + result.stderr)
    report = json.loads((dst / "report.json").read_text(encoding="utf-8"))
    assert report["summary"]["usable"] == 24 * 8


def test_prepare_ctrl_c_during_start_up_is_one_line(tmp_path):

    # -X importtime: the kit's first import inside prepare.py; librosa's and Coqui's follow
    argv = [sys.executable, "-X", "importtime", *_prepare_argv(SAMPLE, tmp_path / "dst")[1:]]
    returncode, text = start_and_signal(argv, "ruslan_glowtts.common.atomic_files", signal.SIGINT, timeout=120)
    no_traceback(text)
    assert returncode == 130, text[-2000:]
    assert text.strip().splitlines()[-1].startswith("interrupted")
    assert not (tmp_path / "dst").exists()


def test_prepare_reports_a_wav_cut_short_as_truncated(tmp_path):

    src = copy_corpus(SAMPLE, tmp_path / "src")
    victim = sorted((src / "RUSLAN").glob("*.wav"))[5]
    data = victim.read_bytes()
    victim.write_bytes(data[: 44 + (len(data) - 44) // 2])  # the header still announces the full length
    result = run_cli(_prepare_argv(src, tmp_path / "dst"))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "dst" / "report.json").read_text(encoding="utf-8"))
    entry = next(f for f in report["files"] if f["id"] == victim.stem)
    (truncated,) = [p for p in entry["problems"] if p["code"] == "truncated"]
    assert "the header announces" in truncated["detail"]


def test_prepare_exit_2_leaves_no_trace_in_dst(tmp_path):

    src = copy_corpus(SAMPLE, tmp_path / "src")
    result = run_cli(_prepare_argv(src, tmp_path / "dst", "--preset", "no-such-tier"))
    one_line_error(result, 2, "no-such-tier")
    assert not (tmp_path / "dst").exists()


# -- view_tensorboard ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--port", "99999"], "expected a port number 1-65535"),
        (["--port", "http"], "expected a port number"),
        (["--host", "a..b"], "not a valid host name"),
        (["--host", "203.0.113.7"], "is 203.0.113.7 an address of this"),
    ],
)
def test_view_tensorboard_bad_port_or_host_is_one_line(base_run, args, fragment):
    result = run_cli([sys.executable, str(REPO / "view_tensorboard.py"), str(base_run.parent), *args], timeout=120)
    one_line_error(result, 2, fragment)


def test_view_tensorboard_ctrl_c_in_its_first_second(base_run):
    argv = [sys.executable, "-X", "importtime", str(REPO / "view_tensorboard.py"), str(base_run.parent)]
    returncode, text = start_and_signal(argv, "ruslan_glowtts.common.errors", signal.SIGINT, timeout=120)
    no_traceback(text)
    assert returncode in (0, 130), text[-2000:]  # 0 when the server was up already: "TensorBoard stopped."
    assert text.strip().splitlines()[-1] in ("interrupted", "TensorBoard stopped.")
