"""Plain helpers and constants the test modules share: paths, the tiny model's settings, corpus
copies, run folders and logged scalars. No pytest fixtures here (those are in conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
GLOWTTS_SCRIPT = str(REPO / "train_ruslan_glowtts.py")
HIFIGAN_SCRIPT = str(REPO / "train_ruslan_hifigan.py")
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# A GlowTTS small enough for CPU tests (~0.1 M parameters instead of 28.6 M): every code path of
# the real model (encoder, flows, duration predictor, MAS), a fraction of the arithmetic. Its
# architecture (`--set` values) is also the tiny model of bench/ and scripts/.
TINY_ARCH = [
    "hidden_channels_enc=32",
    "hidden_channels_dec=32",
    "hidden_channels_dp=32",
    "num_flow_blocks_dec=2",
    "num_block_layers=2",
    "encoder_params.num_layers=1",
    "encoder_params.hidden_channels_ffn=64",
]
TINY_MODEL = [
    *TINY_ARCH,
    "data_dep_init_steps=2",
    "batch_size=4",
    "eval_batch_size=4",
    "num_loader_workers=0",
    "num_eval_loader_workers=0",
    "test_delay_epochs=1000",
    "plot_step=1",
    "print_step=50",
]


# The length of the suite's one smoke run (conftest.tiny_glowtts_run): enough optimizer updates after
# data-dependent init for the Noam warmup to show its rise.
SMOKE_STEPS = 8


def tiny_args(*extra: str) -> list[str]:
    args: list[str] = []
    for option in TINY_MODEL:
        args += ["--set", option]
    return args + list(extra)


# A HiFi-GAN small enough for CPU tests: a tiny generator (16 initial channels, one resblock kernel;
# upsampling 8 x 8 x 4 = hop 256) with Coqui's full discriminator, which only trains from step 2
# (it is 70 M parameters: ~8 s per step on 2 cores). 1024-sample segments (the mel-L1 loss needs
# more than n_fft / 2), no loader workers, no eval within the few steps.
TINY_VOCODER = [
    "generator_model_params.upsample_factors=[8, 8, 4]",
    "generator_model_params.upsample_kernel_sizes=[16, 16, 8]",
    "generator_model_params.upsample_initial_channel=16",
    "generator_model_params.resblock_kernel_sizes=[3]",
    "generator_model_params.resblock_dilation_sizes=[[1, 3, 5]]",
    "steps_to_start_discriminator=2",
    "batch_size=2",
    "eval_batch_size=1",
    "seq_len=1024",
    "pad_short=0",
    "eval_split_size=2",
    "num_loader_workers=0",
    "num_eval_loader_workers=0",
    "print_step=1",
    "plot_step=1",
]


def tiny_vocoder_args(*extra: str) -> list[str]:
    args: list[str] = []
    for option in TINY_VOCODER:
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


def nan_wavs(corpus: Path, count: int) -> list[Path]:
    """Put NaN samples into the first `count` WAVs of a corpus copy (written as float WAVs, which
    keep them): files that became unusable after prepare."""
    victims = sorted((corpus / "RUSLAN").glob("*.wav"))[:count]
    for wav in victims:
        audio, rate = sf.read(wav, dtype="float32")
        audio[len(audio) // 3 : len(audio) // 3 + 50] = np.nan
        sf.write(wav, audio, rate, subtype="FLOAT")
    return victims


def run_dirs(output: Path) -> list[Path]:
    return sorted(p for p in output.iterdir() if p.is_dir()) if output.exists() else []


def read_scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """Every logged value of a scalar tag, by step (the kit's own reader: no reservoir sampling);
    {} when the tag was never logged."""
    from ruslan_glowtts.monitor.events import read_run

    series = read_run(run_dir).scalars.get(tag)
    return {} if series is None else dict(zip(series.steps.tolist(), series.values.tolist(), strict=True))


def tiny_config(*extra: str):
    """The tiny GlowTTS's resolved config (stable preset, no dataset) for tests that build a model."""
    from ruslan_glowtts.common.presets import load_preset
    from ruslan_glowtts.training.config import build_config, parse_set_option

    config, _ = build_config(
        preset=load_preset("stable"),
        dataset_path=None,
        cli_layers=[(parse_set_option(s), "test") for s in [*TINY_MODEL, *extra]],
    )
    return config


def tiny_model(*extra: str):
    """A tiny RuslanGlowTTS in training mode, past data-dependent init (call torch.manual_seed first)."""
    from ruslan_glowtts.training.model import RuslanGlowTTS

    model = RuslanGlowTTS(tiny_config(*extra))
    model.train()
    model.run_data_dep_init = False
    return model


def glowtts_losses(model, x, x_lengths, y, y_lengths) -> dict:
    """The model's forward pass and its own criterion, as GlowTTS's train_step calls them: the loss
    dict ("loss", "log_mle", "loss_dur"). x: [B, T] token ids, y: [B, frames, 80] mels."""
    out = model(x, x_lengths, y, y_lengths)
    return model.get_criterion()(
        out["z"],
        out["y_mean"],
        out["y_log_scale"],
        out["logdet"],
        y_lengths,
        out["durations_log"],
        out["total_durations_log"],
        x_lengths,
    )


# -- the real entry points as subprocesses (signals, exit codes and tracebacks are only honest that way)


def run_cli(argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, env=SUBPROCESS_ENV, cwd=REPO, timeout=timeout, check=False
    )


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]


def one_line_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """Exit `code`, stderr exactly one line `error: ...` with these fragments, stdout empty."""
    assert result.returncode == code, (result.stdout[-2000:], result.stderr[-2000:])
    no_traceback(result.stdout + result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert result.stdout == "", result.stdout[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def start_and_signal(
    argv: list[str], marker: str, signum: int, timeout: float = 240, *, group: bool = False
) -> tuple[int, str]:
    """Start argv, send `signum` once `marker` appears in its output, return (code, output).
    With group, the signal goes to the whole process group, as a terminal's Ctrl-C, SLURM and
    `timeout` do."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=SUBPROCESS_ENV,
        cwd=REPO,
        start_new_session=group,
    )
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
