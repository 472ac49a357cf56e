"""Shared fixtures: the bundled sample at the training rate, a tiny GlowTTS, in-process runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[1]
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
    from ruslan_glowtts.prepare import PrepareOptions, prepare

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
    from ruslan_glowtts.event_reader import read_run

    series = read_run(run_dir).scalars.get(tag)
    return {} if series is None else dict(zip(series.steps.tolist(), series.values.tolist(), strict=True))
