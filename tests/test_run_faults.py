"""The run lifecycle's guarantees, for both models, tried as a new user would (issue 18).

Every case runs the real entry point as a subprocess against a GlowTTS run and a HiFi-GAN run:
the wrong model kind, two processes on one run folder, step counts across resumes, a signal to
the whole process group, a full disk during a save, path shapes, non-finite audio, and the
synthesize/diagnose inputs that used to end in a traceback. Each checks the exit code, the one
line, that no traceback was printed and that nothing of the user's was changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    GLOWTTS_SCRIPT,
    HIFIGAN_SCRIPT,
    REPO,
    SAMPLE,
    SUBPROCESS_ENV,
    copy_corpus,
    nan_wavs,
    no_traceback,
    one_line_error,
    read_scalars,
    run_cli,
    run_dirs,
    start_and_signal,
    tiny_args,
    tiny_vocoder_args,
)

pytestmark = pytest.mark.slow

MODELS = ("glowtts", "hifigan")
NAMES = {"glowtts": "GlowTTS", "hifigan": "HiFi-GAN"}
OTHER = {"glowtts": "hifigan", "hifigan": "glowtts"}
LOCK = "run.lock"  # ruslan_glowtts/common/run_layout.py: LOCK_FILE


def _script(model: str) -> str:
    return GLOWTTS_SCRIPT if model == "glowtts" else HIFIGAN_SCRIPT


def _tiny(model: str, *extra: str) -> list[str]:
    # The vocoder's discriminator (70 M parameters, ~8 s a step on 2 cores) starts at step 100: never here.
    return (
        tiny_args(*extra)
        if model == "glowtts"
        else tiny_vocoder_args("--set", "steps_to_start_discriminator=100", *extra)
    )


def _new_run(model: str, dataset: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        _script(model),
        "--dataset-path",
        str(dataset),
        "--output-path",
        str(output),
        *_tiny(model),
        *extra,
    ]


def _continue(model: str, run: Path, *extra: str) -> list[str]:
    return [sys.executable, _script(model), "--continue-path", str(run), *extra]


def _meta(run: Path) -> dict:
    return json.loads((run / "run.json").read_text(encoding="utf-8"))


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below `folder` with its size and modification time: what "untouched" means."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def vocoder_base_run(prepared_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step HiFi-GAN run (generator only), checkpoint_2.pth (read-only: copy it)."""
    output = tmp_path_factory.mktemp("vocoder_base")
    result = run_cli(_new_run("hifigan", prepared_sample, output, "--max-steps", "2"))
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = run_dirs(output)
    return run


@pytest.fixture
def base_runs(base_run: Path, vocoder_base_run: Path) -> dict[str, Path]:
    return {"glowtts": base_run, "hifigan": vocoder_base_run}


BASE_STEPS = {"glowtts": 4, "hifigan": 2}  # the last checkpoint of each base run


def _copy_run(run: Path, dst: Path) -> Path:
    return Path(shutil.copytree(run, dst / run.name))


def _checkpoint(run: Path) -> Path:
    return max(run.glob("checkpoint_*.pth"), key=lambda p: int(p.stem.split("_")[1]))


# -- the wrong model kind ------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_continue_path_of_the_other_models_run_is_refused_before_anything_is_written(
    model, base_runs, prepared_sample, tmp_path
):
    other = _copy_run(base_runs[OTHER[model]], tmp_path)
    before = _snapshot(other)
    result = run_cli(_continue(model, other, "--dataset-path", str(prepared_sample), "--max-steps", "6"))
    one_line_error(result, 2, "--continue-path", f"is a {NAMES[OTHER[model]]} run, not a {NAMES[model]} run")
    assert _snapshot(other) == before


WIDER = {"glowtts": "hidden_channels_enc=48", "hifigan": "generator_model_params.upsample_initial_channel=24"}


@pytest.mark.parametrize("model", MODELS)
def test_restore_path_of_a_model_of_another_size_is_refused_then_allowed(model, base_runs, prepared_sample, tmp_path):
    # --allow-partial-restore is a shared flag: the refusal names it, and both trainers accept it.
    checkpoint = _checkpoint(base_runs[model])
    argv = _new_run(
        model, prepared_sample, tmp_path / "runs", "--restore-path", str(checkpoint), "--set", WIDER[model]
    ) + ["--max-steps", "1"]
    one_line_error(run_cli(argv), 2, "layers of the config's model match", "--allow-partial-restore")
    assert not (tmp_path / "runs").exists()
    result = run_cli([*argv, "--allow-partial-restore"])
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    no_traceback(text)
    assert text.count("--allow-partial-restore: restoring only") == 1


@pytest.mark.parametrize("model", MODELS)
def test_restore_path_of_the_other_models_checkpoint_is_refused(model, base_runs, prepared_sample, tmp_path):
    checkpoint = _checkpoint(base_runs[OTHER[model]])
    result = run_cli(
        _new_run(model, prepared_sample, tmp_path / "runs", "--restore-path", str(checkpoint), "--max-steps", "1")
    )
    one_line_error(
        result, 2, "--restore-path", f"is a {NAMES[OTHER[model]]} checkpoint, not a {NAMES[model]} checkpoint"
    )
    assert not (tmp_path / "runs").exists()


def test_tts_run_must_be_a_glowtts_run(vocoder_base_run, prepared_sample, tmp_path):
    result = run_cli(
        _new_run("hifigan", prepared_sample, tmp_path / "runs", "--tts-run", str(vocoder_base_run), "--max-steps", "1")
    )
    one_line_error(result, 2, "--tts-run", "is a HiFi-GAN run, not a GlowTTS run")
    stray = tmp_path / "stray" / "config.json"
    stray.parent.mkdir()
    stray.write_text(json.dumps({"lr": 1e-3}), encoding="utf-8")  # any JSON file named config.json
    result = run_cli(
        _new_run("hifigan", prepared_sample, tmp_path / "runs", "--tts-run", str(stray), "--max-steps", "1")
    )
    one_line_error(result, 2, "--tts-run", "not a GlowTTS run")
    assert not (tmp_path / "runs").exists()


def test_diagnose_refuses_a_vocoder_run(vocoder_base_run):
    result = run_cli([sys.executable, "-m", "ruslan_glowtts.diagnose", str(vocoder_base_run)])
    one_line_error(result, 2, "is a HiFi-GAN run, not a GlowTTS run")


# -- two processes, one run folder ---------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_new_runs_started_together_get_a_folder_each(model, prepared_sample, tmp_path):
    output = tmp_path / "runs"
    argv = _new_run(model, prepared_sample, output, "--max-steps", "2")
    procs = [
        subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=SUBPROCESS_ENV, cwd=REPO
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, text in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, text[-3000:]
        no_traceback(text)
    runs = run_dirs(output)
    assert len(runs) == 2, [p.name for p in runs]
    for run in runs:
        assert _meta(run)["status"] == "max_steps" and (run / "checkpoint_2.pth").is_file()
        assert not (run / LOCK).exists()


@pytest.mark.parametrize("model", MODELS)
def test_a_second_continue_of_a_running_run_is_refused_and_a_stale_lock_taken_over(model, base_runs, tmp_path):
    run = _copy_run(base_runs[model], tmp_path)
    first = subprocess.Popen(
        _continue(model, run, "--max-steps", "100000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=SUBPROCESS_ENV,
        cwd=REPO,
    )
    try:
        assert first.stdout is not None
        for line in first.stdout:  # the lock is held from before the model is restored
            if "Model restored from step" in line:
                break
        second = run_cli(_continue(model, run, "--max-steps", str(BASE_STEPS[model] + 1)))
        one_line_error(second, 2, "--continue-path", f"in use by process {first.pid}")
    finally:
        first.send_signal(signal.SIGTERM)
        text, _ = first.communicate(timeout=240)
    assert first.returncode == 143, text[-3000:]
    no_traceback(text)
    assert not (run / LOCK).exists() and _meta(run)["status"] == "terminated"

    # A lock left by a process that is gone (killed with SIGKILL, a machine that rebooted)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}), encoding="utf-8")
    step = _meta(run)["final_step"]
    resumed = run_cli(_continue(model, run, "--max-steps", str(step + 1)))
    text = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, text[-3000:]
    no_traceback(text)
    assert text.count(f"stale lock of process {dead.pid}") == 1
    assert not (run / LOCK).exists() and _meta(run)["status"] == "max_steps"


# -- exact steps ---------------------------------------------------------------------------------


def _logged_steps(run: Path, tag: str = "Health/grad_norm") -> list[int]:
    """Every step at which `tag` was logged, over all event files, duplicates kept (the kit's own
    reader keeps one value per step; a step trained twice must show here)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps: list[int] = []
    for path in sorted(run.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            steps += [event.step for event in acc.Scalars(tag)]
    return sorted(steps)


@pytest.mark.parametrize("model", MODELS)
def test_max_steps_is_exact_across_resumes(model, base_runs, tmp_path):
    run = _copy_run(base_runs[model], tmp_path)
    base = BASE_STEPS[model]
    first = _logged_steps(run)[0]  # GlowTTS: data-dependent init steps make no update
    for end in (base + 1, base + 3):
        result = run_cli(_continue(model, run, "--max-steps", str(end)))
        text = result.stdout + result.stderr
        assert result.returncode == 0, text[-3000:]
        no_traceback(text)
        assert f"Model restored from step {end - 1 if end == base + 1 else base + 1}" in text
        assert torch.load(run / f"checkpoint_{end}.pth", map_location="cpu", weights_only=False)["step"] == end
        assert not (run / f"checkpoint_{end + 1}.pth").exists()
        # every step trained exactly once: no step skipped, none trained twice
        assert _logged_steps(run) == list(range(first, end)), _logged_steps(run)
        assert _meta(run)["final_step"] == end and _meta(run)["status"] == "max_steps"

    before = _snapshot(run)
    result = run_cli(_continue(model, run, "--max-steps", str(base + 3)))
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    no_traceback(text)
    assert f"already at step {base + 3}" in result.stdout
    assert _snapshot(run) == before  # nothing trained, nothing written


# -- signals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_sigterm_to_the_process_group_ends_the_run_like_sigterm_to_the_main_process(model, prepared_sample, tmp_path):
    # SLURM, `timeout` and `kill -- -PGID` signal every process of the group: the loader workers too.
    output = tmp_path / "runs"
    argv = _new_run(
        model,
        prepared_sample,
        output,
        "--set",
        "num_loader_workers=2",
        "--set",
        "print_step=1",
        "--set",
        "save_step=100000",
        "--max-steps",
        "100000",
    )
    returncode, text = start_and_signal(argv, "GLOBAL_STEP: 2", signal.SIGTERM, group=True)
    no_traceback(text)
    assert returncode == 143, text[-3000:]
    (run,) = run_dirs(output)
    meta = _meta(run)
    assert meta["status"] == "terminated" and meta["exit_code"] == 143
    assert (run / f"checkpoint_{meta['final_step']}.pth").is_file() and not (run / LOCK).exists()
    assert f"terminated by SIGTERM at step {meta['final_step']}" in text


# -- a full disk ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(where: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs mounted at `where` (root only: skipped elsewhere)."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of `folder` until only `leave` bytes are free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    with open(folder / "filler", "wb") as handle:
        remaining = max(free - leave, 0)
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            handle.write(chunk[: min(remaining, len(chunk))])
            remaining -= min(remaining, len(chunk))


@pytest.mark.parametrize("model", MODELS)
def test_a_full_disk_during_a_save_is_one_line_recorded_in_run_json(model, base_run, prepared_sample, tmp_path):
    with _tmpfs(tmp_path / "disk", "64m") as disk:
        if model == "glowtts":
            # A resumed run on a disk with room for its logs but not for one more checkpoint (~1.4 MB).
            run = _copy_run(base_run, disk)
            older = (run / "checkpoint_4.pth").read_bytes()
            _fill(disk, leave=700_000)
            result = run_cli(_continue(model, run, "--max-steps", "6"))
            saved = "checkpoint_6.pth"
        else:
            # The vocoder's checkpoint (~280 MB with its discriminator) does not fit at all.
            result = run_cli(_new_run(model, prepared_sample, disk / "runs", "--max-steps", "1"))
            (run,) = run_dirs(disk / "runs")
            saved, older = "checkpoint_1.pth", None
        text = result.stdout + result.stderr
        assert result.returncode == 1, text[-3000:]
        no_traceback(text)
        assert f"> CHECKPOINT : {run / saved}" not in text
        cause = [line for line in text.splitlines() if "No space left on device" in line]
        assert cause and saved in cause[-1], text[-3000:]
        meta = _meta(run)
        assert meta["status"] == "crashed" and "No space left on device" in meta["message"]
        assert not (run / saved).exists() and not [p for p in run.iterdir() if ".tmp-" in p.name]
        if older is not None:
            assert (run / "checkpoint_4.pth").read_bytes() == older  # the older checkpoint survives intact
        assert not (run / LOCK).exists()


# -- paths, checked before anything is written ---------------------------------------------------


def _loop(tmp_path: Path) -> Path:
    a, b = tmp_path / "loop_a", tmp_path / "loop_b"
    a.symlink_to(b)
    b.symlink_to(a)
    return a


PATH_CASES = {
    "dataset_symlink_loop": (
        lambda t, d, r: ["--dataset-path", str(_loop(t)), "--output-path", str(t / "runs")],
        ("--dataset-path", "symlink loop"),
    ),
    "output_symlink_loop": (
        lambda t, d, r: ["--dataset-path", str(d), "--output-path", str(_loop(t))],
        ("--output-path", "symlink loop"),
    ),
    "dataset_is_a_file": (
        lambda t, d, r: ["--dataset-path", str(d / "metadata_RUSLAN_22200.csv"), "--output-path", str(t / "runs")],
        ("--dataset-path", "is a file"),
    ),
    "output_is_a_file": (
        lambda t, d, r: ["--dataset-path", str(d), "--output-path", str(d / "metadata_RUSLAN_22200.csv")],
        ("--output-path", "is a file"),
    ),
    "restore_is_a_folder": (
        lambda t, d, r: ["--dataset-path", str(d), "--output-path", str(t / "runs"), "--restore-path", str(r)],
        ("--restore-path", "is a folder"),
    ),
}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("case", sorted(PATH_CASES))
def test_path_shapes_are_one_line_before_anything_is_written(model, case, base_runs, prepared_sample, tmp_path):
    make_args, fragments = PATH_CASES[case]
    args = make_args(tmp_path, prepared_sample, base_runs[model])
    result = run_cli([sys.executable, _script(model), *args, *_tiny(model), "--max-steps", "1"])
    one_line_error(result, 2, *fragments)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("model", MODELS)
def test_continue_path_shapes_are_one_line(model, base_runs, tmp_path):
    run = _copy_run(base_runs[model], tmp_path)
    one_line_error(run_cli(_continue(model, _checkpoint(run), "--max-steps", "1")), 2, "--continue-path", "is a file")
    config = run / "config.json"
    config.write_bytes(config.read_bytes()[: config.stat().st_size // 2])  # a copy cut off
    before = _snapshot(run)
    one_line_error(run_cli(_continue(model, run, "--max-steps", "1")), 2, "--continue-path", "config.json")
    assert _snapshot(run) == before


@pytest.mark.parametrize("model", MODELS)
def test_a_read_only_output_path_is_one_line(model, prepared_sample, tmp_path):
    with _tmpfs(tmp_path / "ro", "1m", read_only=True) as folder:
        result = run_cli(_new_run(model, prepared_sample, folder / "runs", "--max-steps", "1"))
        one_line_error(result, 2, "--output-path", "read-only")


# -- the vocoder's data --------------------------------------------------------------------------


def test_vocoder_refusals_are_one_line():
    # The bundled sample is 44.1 kHz: refused before training, without the config's log lines.
    result = run_cli([sys.executable, HIFIGAN_SCRIPT, "--dataset-path", str(SAMPLE), "--output-path", "/nonexistent"])
    one_line_error(result, 2, "but the config trains at 22050 Hz")


@pytest.mark.parametrize("model", MODELS)
def test_non_finite_audio_is_skipped_and_counted(model, sample_22k, prepared_sample, tmp_path):
    if model == "glowtts":
        # The GlowTTS loader reads prepare's cached mels, not the WAVs: train on the WAVs, resampled.
        corpus, extra = copy_corpus(sample_22k, tmp_path / "corpus"), ["--set", "audio.resample=true"]
    else:
        # The vocoder reads each WAV beside its cached mel.
        corpus, extra = copy_corpus(prepared_sample, tmp_path / "corpus"), []
        for name in ("dataset.toml", "features"):
            source = prepared_sample / name
            (shutil.copytree if source.is_dir() else shutil.copy)(source, corpus / name)
    (victim,) = nan_wavs(corpus, 1)
    # GlowTTS: 22 training utterances in 6 batches; the vocoder: 11 batches of 2. One epoch loads each.
    result = run_cli(_new_run(model, corpus, tmp_path / "runs", *extra, "--max-steps", "12"))
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    no_traceback(text)
    assert text.count(f"Skipping {victim}") == 1
    (run,) = run_dirs(tmp_path / "runs")
    assert list(_meta(run)["unloadable_samples"]) == [str(victim)]
    assert read_scalars(run, "Health/skipped_samples")


# -- synthesize and diagnose ---------------------------------------------------------------------


def _synthesize(*args: str) -> list[str]:
    return [sys.executable, "-m", "ruslan_glowtts.synthesize", *map(str, args)]


@pytest.mark.parametrize("flag", ["--tts", "--vocoder"])
def test_synthesize_a_truncated_checkpoint_is_one_line_and_makes_no_out_folder(flag, base_runs, tmp_path):
    model = "glowtts" if flag == "--tts" else "hifigan"
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(base_runs[model] / "config.json", run / "config.json")
    data = _checkpoint(base_runs[model]).read_bytes()
    (run / "checkpoint_9.pth").write_bytes(data[: len(data) // 2])
    runs = {"--tts": base_runs["glowtts"], "--vocoder": base_runs["hifigan"], flag: run}
    result = run_cli(
        _synthesize(
            "--tts", runs["--tts"], "--vocoder", runs["--vocoder"], "--text", "Привет.", "--out", tmp_path / "out"
        )
    )
    one_line_error(result, 2, flag, "cannot be loaded")
    assert not (tmp_path / "out").exists()


def test_synthesize_output_shapes_are_one_line_before_loading(base_run, tmp_path):
    (tmp_path / "file").write_text("x", encoding="utf-8")
    result = run_cli(_synthesize("--tts", base_run, "--text", "Привет.", "--out", tmp_path / "file"))
    one_line_error(result, 2, "--out", "is a file")
    with _tmpfs(tmp_path / "ro", "1m", read_only=True) as folder:
        result = run_cli(_synthesize("--tts", base_run, "--text", "Привет.", "--out", folder / "out"))
        one_line_error(result, 2, "--out", "read-only")


def test_synthesize_text_a_bom_and_emoji(base_run, tmp_path):
    sentences = tmp_path / "s.txt"
    sentences.write_text("\ufeffПривет, мир.\nКак дела?\n", encoding="utf-8")
    result = run_cli(_synthesize("--tts", base_run, "--file", sentences, "--out", tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    index = (tmp_path / "out" / "index.tsv").read_text(encoding="utf-8")
    assert "\ufeff" not in index and "\tПривет, мир.\t" in index
    line = one_line_error(run_cli(_synthesize("--tts", base_run, "--text", "😀🎉", "--out", tmp_path / "o2")), 2)
    assert "Latin" not in line and "no letter" in line
    assert not (tmp_path / "o2").exists()


def test_synthesize_sigterm_keeps_an_index_of_the_wavs_written(base_run, tmp_path):
    sentences = tmp_path / "s.txt"
    sentences.write_text("".join(f"Предложение номер {n}.\n" for n in range(1, 200)), encoding="utf-8")
    out = tmp_path / "out"
    returncode, text = start_and_signal(
        _synthesize("--tts", base_run, "--file", sentences, "--out", out), "002.wav", signal.SIGTERM
    )
    no_traceback(text)
    assert returncode == 143, text[-3000:]
    wavs = sorted(p.name for p in out.glob("*.wav"))
    rows = (out / "index.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(wavs) >= 2 and [row.split("\t")[0] for row in rows] == wavs


def test_diagnose_plot_must_be_a_png_file(base_run, tmp_path):
    diagnose = [sys.executable, "-m", "ruslan_glowtts.diagnose", str(base_run), "--plot"]
    one_line_error(run_cli([*diagnose, str(tmp_path / "x.txt")]), 2, "--plot", ".png")
    (tmp_path / "plots").mkdir()
    one_line_error(run_cli([*diagnose, str(tmp_path / "plots")]), 2, "--plot", "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots"]
