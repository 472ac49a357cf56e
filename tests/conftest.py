"""Shared fixtures: the bundled sample at the training rate, a tiny GlowTTS, in-process runs."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[1]

# A suite started in the background (`cmd &`, nohup) inherits an ignored SIGINT, and so would every
# run the tests start: their Ctrl-C tests would hang. Tests send SIGINT as a terminal would.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
SAMPLE = REPO / "data" / "sample"

# A GlowTTS small enough for CPU tests (~0.1 M parameters instead of 28.6 M): every code path of
# the real model (encoder, flows, duration predictor, MAS), a fraction of the arithmetic.
TINY_MODEL = [
    "hidden_channels_enc=32", "hidden_channels_dec=32", "hidden_channels_dp=32",
    "num_flow_blocks_dec=2", "num_block_layers=2",
    "encoder_params.num_layers=1", "encoder_params.hidden_channels_ffn=64",
    "data_dep_init_steps=2", "batch_size=4", "eval_batch_size=4",
    "num_loader_workers=0", "num_eval_loader_workers=0",
    "test_delay_epochs=1000", "plot_step=1", "print_step=50",
]


def tiny_args(*extra: str) -> list[str]:
    args: list[str] = []
    for option in TINY_MODEL:
        args += ["--set", option]
    return args + list(extra)


def copy_corpus(src: Path, dst: Path, rate: int | None = None) -> Path:
    """Copy a RUSLAN-layout corpus, optionally resampled (tests must never touch data/sample)."""
    (dst / "RUSLAN").mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "metadata_RUSLAN_22200.csv", dst / "metadata_RUSLAN_22200.csv")
    for wav in sorted((src / "RUSLAN").glob("*.wav")):
        if rate is None:
            shutil.copy(wav, dst / "RUSLAN" / wav.name)
            continue
        audio, src_rate = sf.read(wav, dtype="float32")
        audio = soxr.resample(audio, src_rate, rate)
        sf.write(dst / "RUSLAN" / wav.name, np.clip(audio, -1, 1), rate, subtype="PCM_16")
    return dst


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


def run_dirs(output: Path) -> list[Path]:
    return sorted(p for p in output.iterdir() if p.is_dir()) if output.exists() else []


def read_scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """Every logged value of a scalar tag, by step (the kit's own reader: no reservoir sampling)."""
    from ruslan_glowtts.monitor.events import read_run

    series = read_run(run_dir).scalars.get(tag)
    return {} if series is None else dict(zip(series.steps.tolist(), series.values.tolist(), strict=True))


# A HiFi-GAN small enough for CPU tests: a tiny generator (16 initial channels, one resblock kernel;
# upsampling 8 x 8 x 4 = hop 256) with Coqui's full discriminator, which only trains from step 2
# (it is 70 M parameters: ~8 s per step on 2 cores). 1024-sample segments (the mel-L1 loss needs
# more than n_fft / 2), no loader workers, no eval within the few steps.
TINY_VOCODER = [
    "generator_model_params.upsample_factors=[8, 8, 4]", "generator_model_params.upsample_kernel_sizes=[16, 16, 8]",
    "generator_model_params.upsample_initial_channel=16", "generator_model_params.resblock_kernel_sizes=[3]",
    "generator_model_params.resblock_dilation_sizes=[[1, 3, 5]]", "steps_to_start_discriminator=2",
    "batch_size=2", "eval_batch_size=1", "seq_len=1024", "pad_short=0", "eval_split_size=2",
    "num_loader_workers=0", "num_eval_loader_workers=0", "print_step=1", "plot_step=1",
]


def tiny_vocoder_args(*extra: str) -> list[str]:
    args: list[str] = []
    for option in TINY_VOCODER:
        args += ["--set", option]
    return args + list(extra)


@pytest.fixture(scope="session")
def tiny_glowtts_run(prepared_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step tiny GlowTTS run on the prepared sample (read-only for tests)."""
    import train_ruslan_glowtts

    output = tmp_path_factory.mktemp("glowtts") / "runs"
    code = train_ruslan_glowtts.main(["--dataset-path", str(prepared_sample), "--output-path", str(output),
                                      "--max-steps", "4", *tiny_args()])
    assert code == 0
    (run,) = run_dirs(output)
    return run


NAN_AT = {0: 2, 1: 3}  # optimizer index (0 discriminator, 1 generator) -> step whose loss is made NaN


@pytest.fixture(scope="session")
def tiny_vocoder_run(prepared_sample: Path, tiny_glowtts_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step tiny HiFi-GAN run matched to tiny_glowtts_run, with one NaN discriminator loss
    (step 2) and one NaN generator loss (step 3) injected, which the guard must skip."""
    import train_ruslan_hifigan
    from TTS.vocoder.models.gan import GAN

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
        code = train_ruslan_hifigan.main(["--dataset-path", str(prepared_sample), "--tts-run", str(tiny_glowtts_run),
                                          "--output-path", str(output), "--max-steps", "4", *tiny_vocoder_args()])
    assert code == 0
    (run,) = run_dirs(output)
    return run
