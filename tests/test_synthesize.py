"""One command from text to WAVs: the compatibility check (hifigan_v2-like and 24 kHz vocoders
refused, settings named), bad input, and end to end with the tiny GlowTTS and HiFi-GAN runs of
tests/conftest.py, with and without the vocoder; the GlowTTS run's test audio through it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ruslan_glowtts.training.config import RuslanGlowTTSConfig
from ruslan_glowtts.voice import synthesize
from ruslan_glowtts.voice.audio_compat import differences, feature_settings
from tests.helpers import SMOKE_STEPS

KIT_AUDIO = RuslanGlowTTSConfig().audio.to_dict()
# en/ljspeech/hifigan_v2's features (its config.json): 0-8000 Hz and the natural log with gain 1
HIFIGAN_V2_AUDIO = KIT_AUDIO | {"mel_fmin": 0.0, "mel_fmax": 8000.0, "log_func": "np.log", "spec_gain": 1.0}
# a 24 kHz vocoder with otherwise the kit's settings (the mel bands then end at 12 kHz)
AUDIO_24K = KIT_AUDIO | {"sample_rate": 24000}


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    code = synthesize.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_differences_name_every_unconverted_setting():
    assert differences(KIT_AUDIO, dict(KIT_AUDIO)) == []
    assert differences(KIT_AUDIO, HIFIGAN_V2_AUDIO) == [
        "mel_fmax 11025 (unset: Nyquist) vs 8000",
        "log_func np.log10 vs np.log",
        "spec_gain 20 vs 1",
    ]
    assert differences(KIT_AUDIO, AUDIO_24K) == [
        "sample_rate 22050 vs 24000",
        "mel_fmax 11025 (unset: Nyquist) vs 12000 (unset: Nyquist)",
    ]
    # normalisation is converted by Coqui's Synthesizer: not a mismatch
    assert differences(KIT_AUDIO, KIT_AUDIO | {"max_norm": 1.0, "symmetric_norm": False}) == []
    # hop and window given in milliseconds resolve as Coqui's AudioProcessor does
    in_ms = KIT_AUDIO | {"hop_length": None, "win_length": None, "frame_shift_ms": 12.5, "frame_length_ms": 50}
    assert feature_settings(in_ms)["hop_length"] == 275 and feature_settings(in_ms)["win_length"] == 1102


def _vocoder_with(tiny_vocoder_run: Path, tmp_path: Path, audio: dict) -> Path:
    run = tmp_path / "vocoder"
    shutil.copytree(tiny_vocoder_run, run)
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    config["audio"] = audio
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return run


@pytest.mark.slow
@pytest.mark.parametrize(
    "audio,named",
    [
        (HIFIGAN_V2_AUDIO, ("mel_fmax", "log_func", "spec_gain")),
        (AUDIO_24K, ("sample_rate 22050 vs 24000", "mel_fmax")),
    ],
)
def test_a_mismatched_vocoder_is_refused_naming_the_settings(
    tiny_glowtts_run, tiny_vocoder_run, tmp_path, capsys, audio, named
):
    vocoder = _vocoder_with(tiny_vocoder_run, tmp_path, audio)
    out = tmp_path / "out"
    code, _, err = _main(capsys, "--tts", tiny_glowtts_run, "--vocoder", vocoder, "--text", "Привет.", "--out", out)
    (line,) = err.strip().splitlines()
    assert code == 2 and line.startswith("error: vocoder ") and all(n in line for n in named)
    assert not out.exists()  # refused before anything is written


@pytest.mark.slow
def test_bad_input_is_one_line_exit_2(tiny_glowtts_run, tiny_vocoder_run, tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    no_checkpoint = tmp_path / "fresh_run"
    no_checkpoint.mkdir()
    shutil.copy(tiny_glowtts_run / "config.json", no_checkpoint / "config.json")
    cases = [
        (["--tts", tmp_path / "missing", "--text", "а"], "no such run folder or checkpoint"),
        (["--tts", no_checkpoint, "--text", "а"], "the run has no checkpoint"),
        (["--tts", tiny_glowtts_run, "--file", empty], "no text to speak"),
        (["--tts", tiny_glowtts_run, "--file", tmp_path / "nope.txt"], "no such file"),
        (["--tts", tiny_glowtts_run, "--vocoder", tiny_glowtts_run, "--text", "а"], "not a vocoder"),
        (["--tts", tiny_vocoder_run, "--text", "а"], "this is a vocoder"),
        (["--tts", tiny_glowtts_run, "--text", "а", "--file", empty], "not allowed with argument"),
        (["--tts", tiny_glowtts_run, "--text", "Hello world"], "no letter of the model's vocabulary"),
    ]
    for argv, message in cases:
        code, _, err = _main(capsys, *argv, "--out", out)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, (argv, err)
    assert not out.exists()


def _check_wav(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32")
    assert rate == 22050 and audio.ndim == 1 and np.isfinite(audio).all()
    return audio


@pytest.mark.slow
def test_one_wav_per_sentence_with_the_vocoder(tiny_glowtts_run, tiny_vocoder_run, tmp_path, capsys):
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("В 1812 году началась война.\n\nМороз и солнце; день чудесный!\n", encoding="utf-8")
    out = tmp_path / "out"
    code, stdout, _ = _main(
        capsys, "--tts", tiny_glowtts_run, "--vocoder", tiny_vocoder_run, "--file", sentences, "--out", out
    )
    assert code == 0 and "with HiFi-GAN" in stdout
    assert sorted(p.name for p in out.glob("*.wav")) == ["001.wav", "002.wav"]
    for wav in out.glob("*.wav"):
        audio = _check_wav(wav)
        # Coqui appends 10,000 samples of silence; a 4-step GlowTTS still predicts ~0.1-10 s of speech
        assert 0.1 < (len(audio) - 10_000) / 22050 < 10
    index = (out / "index.tsv").read_text(encoding="utf-8")
    assert "В тысяча восемьсот двенадцатом году началась война." in index  # prepare's normaliser


@pytest.mark.slow
def test_without_a_vocoder_griffin_lim_and_it_says_so(tiny_glowtts_run, tmp_path, capsys, caplog):
    out = tmp_path / "gl"
    checkpoint = tiny_glowtts_run / f"checkpoint_{SMOKE_STEPS}.pth"
    code, stdout, _ = _main(capsys, "--tts", checkpoint, "--text", "Всё смешалось.", "--out", out)
    assert code == 0 and "Griffin-Lim (no --vocoder)" in stdout
    assert any("using Griffin-Lim" in r.getMessage() for r in caplog.records)
    _check_wav(out / "001.wav")


@pytest.mark.slow
def test_coqui_tts_ignores_vocoder_name_with_a_model_path(tiny_glowtts_run):
    """The README's pitfall, checked rather than relied on: with model_path, coqui-tts 0.28's TTS()
    drops vocoder_name (nothing is downloaded) and would speak with Griffin-Lim."""
    from TTS.api import TTS

    checkpoint = tiny_glowtts_run / f"checkpoint_{SMOKE_STEPS}.pth"
    api = TTS(
        model_path=str(checkpoint),
        config_path=str(tiny_glowtts_run / "config.json"),
        vocoder_name="vocoder_models/en/ljspeech/hifigan_v2",
        progress_bar=False,
    )
    assert api.synthesizer is not None and api.synthesizer.vocoder_model is None


@pytest.mark.slow
def test_glowtts_test_audio_goes_through_the_vocoder(tiny_glowtts_run, tiny_vocoder_run, monkeypatch):
    from TTS.config import load_config

    from ruslan_glowtts.training.model import RuslanGlowTTS
    from ruslan_glowtts.voice.preview import VocoderPreview, attach_vocoder

    config = load_config(str(tiny_glowtts_run / "config.json"))
    model = RuslanGlowTTS(config)
    model.load_checkpoint(config, str(tiny_glowtts_run / f"checkpoint_{SMOKE_STEPS}.pth"), eval=True)
    frames = []
    vocode = VocoderPreview.vocode

    def counting_vocode(self, tts_ap, mel):
        frames.append(mel.shape[0])
        return vocode(self, tts_ap, mel)

    monkeypatch.setattr(VocoderPreview, "vocode", counting_vocode)
    attach_vocoder(model, synthesize.vocoder_for_run(tiny_vocoder_run, config.audio, "the tiny run"))
    outputs = model.test_run(None)
    assert len(frames) == len(config.test_sentences) == len(outputs["audios"]) == 4
    for n, audio in zip(frames, outputs["audios"].values(), strict=True):
        # the generator upsamples by hop_length, after Coqui's HifiganGenerator.inference pads 5 frames each side
        assert audio.shape == ((n + 10) * 256,) and np.isfinite(audio).all()
    assert {"0-prediction", "0-alignment"} <= set(outputs["figures"])
