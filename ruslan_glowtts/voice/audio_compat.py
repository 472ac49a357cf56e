"""Do a GlowTTS model and a vocoder agree on what a mel spectrogram is?

A vocoder turns exactly the features it was trained on back into audio. Coqui's Synthesizer
converts two things between a TTS model and a vocoder: the value normalisation (it denormalises
with the TTS model's settings and renormalises with the vocoder's: signal_norm, symmetric_norm,
max_norm, clip_norm, min/ref_level_db, mean-var stats) and the sample rate (it stretches the mel in
time). Everything else it passes through unconverted, so a mismatch there gives distorted or noisy
speech without any error (coqui-ai/TTS #2143: glow-tts + hifigan_v2, 0-8000 Hz and natural log
against 0 Hz-Nyquist and log10). These are the settings compared here.

The sample rate is compared too: the kit writes 22,050 Hz and Coqui's time stretch does not move
the mel bands (with mel_fmax unset they end at each rate's own Nyquist frequency).
"""

from __future__ import annotations

from typing import Any

from ruslan_glowtts.common.errors import UserError

# Settings Coqui's Synthesizer does not convert between a TTS model and a vocoder.
UNCONVERTED = (
    "sample_rate",
    "num_mels",
    "fft_size",
    "win_length",
    "hop_length",
    "mel_fmin",
    "mel_fmax",
    "log_func",
    "spec_gain",
    "do_amp_to_db_mel",
    "preemphasis",
)


def _as_dict(audio: Any) -> dict[str, Any]:
    if hasattr(audio, "to_dict"):
        return audio.to_dict()
    return dict(audio)


def feature_settings(audio: Any) -> dict[str, Any]:
    """The mel-defining settings of an audio config (a BaseAudioConfig or its dict), resolved the
    way Coqui's AudioProcessor resolves them: hop/win from frame_shift_ms/frame_length_ms when
    hop_length is unset, mel_fmax None meaning the Nyquist frequency."""
    a = _as_dict(audio)
    rate = int(a["sample_rate"])
    hop: Any = a.get("hop_length")  # config values, converted below as Coqui does
    win: Any = a.get("win_length")
    if hop is None:  # TTS.utils.audio.numpy_transforms.millisec_to_length
        factor = a["frame_length_ms"] / a["frame_shift_ms"]
        win = int(a["frame_length_ms"] / 1000.0 * rate)
        hop = int(win / float(factor))
    fmax = a.get("mel_fmax")
    return {
        "sample_rate": rate,
        "num_mels": int(a["num_mels"]),
        "fft_size": int(a["fft_size"]),
        "win_length": int(win),
        "hop_length": int(hop),
        "mel_fmin": float(a.get("mel_fmin") or 0.0),
        "mel_fmax": float(fmax) if fmax is not None else rate / 2,
        "log_func": str(a.get("log_func", "np.log10")),
        "spec_gain": float(a.get("spec_gain", 20.0)),
        "do_amp_to_db_mel": bool(a.get("do_amp_to_db_mel", True)),
        "preemphasis": float(a.get("preemphasis", 0.0)),
    }


def _show(key: str, value: Any, raw: dict[str, Any]) -> str:
    if key == "mel_fmax" and raw.get("mel_fmax") is None:
        return f"{value:g} (unset: Nyquist)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def differences(tts_audio: Any, vocoder_audio: Any) -> list[str]:
    """'setting GlowTTS-value vs vocoder-value' for every unconverted setting that differs."""
    tts_raw, voc_raw = _as_dict(tts_audio), _as_dict(vocoder_audio)
    tts, voc = feature_settings(tts_raw), feature_settings(voc_raw)
    return [
        f"{key} {_show(key, tts[key], tts_raw)} vs {_show(key, voc[key], voc_raw)}"
        for key in UNCONVERTED
        if tts[key] != voc[key]
    ]


TRAIN_MATCHING = "train a matching vocoder: python train_ruslan_hifigan.py --dataset-path DIR --tts-run RUN"


def check_compatible(
    tts_audio: Any, vocoder_audio: Any, *, tts_name: str, vocoder_name: str, advice: str = TRAIN_MATCHING
) -> None:
    """Raise a one-line UserError naming every setting in which the vocoder's features differ."""
    diffs = differences(tts_audio, vocoder_audio)
    if diffs:
        raise UserError(
            f"vocoder {vocoder_name} does not match the audio features of {tts_name} "
            f"(GlowTTS vs vocoder: {'; '.join(diffs)}); Coqui's Synthesizer does not convert these and the "
            f"speech would come out distorted; {advice}"
        )
