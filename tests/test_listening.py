"""One smoke-trained tiny GlowTTS on the sample, then: hear it with Coqui's own `tts` CLI (a
Russian sentence to a 22,050 Hz wav from the run's checkpoint and config.json), and diagnose it
(verdict, JSON, PNG). Both need a real run: the suite's one smoke run (conftest.tiny_glowtts_run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from ruslan_glowtts.monitor import diagnose as dg
from tests.helpers import SMOKE_STEPS

pytestmark = pytest.mark.slow

SENTENCE = "Съешь же ещё этих мягких французских булок, да выпей чаю."


@pytest.fixture
def smoke_run(tiny_glowtts_run) -> Path:
    return tiny_glowtts_run


def test_tts_cli_speaks_russian_from_the_checkpoint(smoke_run, tmp_path):
    tts = Path(sys.executable).with_name("tts")  # the venv's console script, next to its python
    assert tts.is_file(), f"Coqui's tts CLI not found at {tts}"
    wav = tmp_path / "out.wav"
    result = subprocess.run(
        [
            str(tts),
            "--text",
            SENTENCE,
            "--model_path",
            str(smoke_run / f"checkpoint_{SMOKE_STEPS}.pth"),
            "--config_path",
            str(smoke_run / "config.json"),
            "--out_path",
            str(wav),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    info = sf.info(wav)
    assert info.samplerate == 22050 and info.frames > 0 and info.channels == 1


def test_diagnose_a_real_run_gives_verdict_json_and_png(smoke_run, tmp_path, capsys):
    code = dg.main([str(smoke_run)])
    text = capsys.readouterr().out
    assert code == 0 and "Verdict:  TOO_EARLY" in text and "Preset:   stable" in text  # a few steps say little

    png = tmp_path / "curves.png"
    assert dg.main([str(smoke_run), "--json", "--plot", str(png)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "too_early" and report["reasons"]
    assert report["stats"]["grad_norm"]["tag"] == "Health/grad_norm"  # the guard's raw pre-clip norm
    assert report["stats"]["grad_norm"]["points"] >= 3 and report["stats"]["loss"]["points"] >= 3
    assert report["run"]["tier_chain"] == ["stable", "safer", "safest"]
    # If it had exploded, the next tier would restart from this run's checkpoint with the same tiny model.
    dataset = json.loads((smoke_run / "run.json").read_text(encoding="utf-8"))["dataset_path"]
    assert report["next_tier_command"].startswith(
        f"python train_ruslan_glowtts.py --preset safer --dataset-path {dataset} "
        f"--restore-path {smoke_run / f'checkpoint_{SMOKE_STEPS}.pth'} --set hidden_channels_enc=32"
    )
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
