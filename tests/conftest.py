"""Shared fixtures: the bundled sample at the training rate, the suite's one tiny GlowTTS smoke
run, in-process runs. Plain helpers and constants are in tests/helpers.py."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    GLOWTTS_SCRIPT,
    SAMPLE,
    SMOKE_STEPS,
    copy_corpus,
    run_cli,
    run_dirs,
    tiny_args,
    tiny_vocoder_args,
)

# A suite started in the background (`cmd &`, nohup) inherits an ignored SIGINT, and so would every
# run the tests start: their Ctrl-C tests would hang. Tests send SIGINT as a terminal would.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def sample_22k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample resampled to 22050 Hz (read-only for tests: copy before changing)."""
    return copy_corpus(SAMPLE, tmp_path_factory.mktemp("sample22k"), rate=22050)


@pytest.fixture(scope="session")
def prepared_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample through `prepare` (22.05 kHz, normalised text, feature cache); read-only."""
    from ruslan_glowtts.prep.prepare import PrepareOptions, prepare

    base = tmp_path_factory.mktemp("prepared")
    dst = base / "prepared"
    prepare(PrepareOptions(src=copy_corpus(SAMPLE, base / "src"), dst=dst, jobs=2))
    return dst


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture):
    """Run train_ruslan_glowtts.main(argv) in-process; return (exit code, stdout, stderr)."""
    import train_ruslan_glowtts

    def _run(*argv: str) -> tuple[int, str, str]:
        code = train_ruslan_glowtts.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return _run


@pytest.fixture(scope="session")
def tiny_glowtts_run(prepared_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite's one smoke run: SMOKE_STEPS steps of the tiny GlowTTS, stable preset, on the
    prepared sample, ending with checkpoint_<SMOKE_STEPS>.pth (read-only for tests: copy it to
    change it). test_training reads its folder, test_listening speaks and diagnoses it,
    test_synthesize and test_vocoder build on it."""
    import train_ruslan_glowtts

    output = tmp_path_factory.mktemp("glowtts") / "runs"
    code = train_ruslan_glowtts.main(
        [
            "--preset",
            "stable",
            "--dataset-path",
            str(prepared_sample),
            "--output-path",
            str(output),
            "--max-steps",
            str(SMOKE_STEPS),
            *tiny_args(),
        ]
    )
    assert code == 0
    (run,) = run_dirs(output)
    return run


@pytest.fixture(scope="session")
def base_run(prepared_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step tiny GlowTTS run with checkpoints at steps 2 and 4, made by the script as a
    subprocess (read-only: copy it). tests/test_faults.py and tests/test_run_faults.py build on it."""
    output = tmp_path_factory.mktemp("base_runs")
    result = run_cli(
        [
            sys.executable,
            GLOWTTS_SCRIPT,
            "--dataset-path",
            str(prepared_sample),
            "--output-path",
            str(output),
            *tiny_args(),
            "--max-steps",
            "4",
            "--set",
            "save_step=2",
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = run_dirs(output)
    assert {p.name for p in run.glob("checkpoint_*.pth")} == {"checkpoint_2.pth", "checkpoint_4.pth"}
    return run


NAN_AT = {0: 2, 1: 3}  # optimizer index (0 discriminator, 1 generator) -> step whose loss is made NaN


@pytest.fixture(scope="session")
def tiny_vocoder_run(prepared_sample: Path, tiny_glowtts_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step tiny HiFi-GAN run matched to tiny_glowtts_run, with one NaN discriminator loss
    (step 2) and one NaN generator loss (step 3) injected, which the guard must skip."""
    from TTS.vocoder.models.gan import GAN

    import train_ruslan_hifigan

    original = GAN.train_step
    calls = {0: 0, 1: 0}

    def train_step(self, batch, criterion, optimizer_idx=None):
        outputs, loss_dict = original(self, batch, criterion, optimizer_idx)
        if self.training and loss_dict:
            step = calls[optimizer_idx] + (2 if optimizer_idx == 0 else 0)  # D has losses from step 2 on
            calls[optimizer_idx] += 1
            if NAN_AT[optimizer_idx] == step:
                loss_dict["loss"] = loss_dict["loss"] * float("nan")
        return outputs, loss_dict

    output = tmp_path_factory.mktemp("hifigan") / "runs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GAN, "train_step", train_step)
        code = train_ruslan_hifigan.main(
            [
                "--dataset-path",
                str(prepared_sample),
                "--tts-run",
                str(tiny_glowtts_run),
                "--output-path",
                str(output),
                "--max-steps",
                "4",
                *tiny_vocoder_args(),
            ]
        )
    assert code == 0
    (run,) = run_dirs(output)
    return run
