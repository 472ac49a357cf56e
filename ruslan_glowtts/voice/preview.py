"""The GlowTTS run's TensorBoard test audio through a trained vocoder (`--vocoder RUN`).

Coqui's GlowTTS test_run always vocodes the test sentences with Griffin-Lim. With a vocoder given,
the kit replaces the model's test_run by one that synthesises the same sentences, figures
included, and turns the mels into audio with the vocoder, converting the value normalisation the
way Coqui's Synthesizer does (denormalise with the TTS settings, normalise with the vocoder's).
The vocoder's features were checked against the run's before training started (audio_compat).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ruslan_glowtts.voice.synthesize import Model

logger = logging.getLogger(__name__)


class VocoderPreview:
    """A vocoder's generator, loaded for inference on the CPU (test audio is a few sentences)."""

    def __init__(self, vocoder: Model) -> None:
        from TTS.config import load_config
        from TTS.utils.audio import AudioProcessor
        from TTS.vocoder.models import setup_model

        config = load_config(str(vocoder.config_path))
        self.ap = AudioProcessor(config.audio)
        self.model = setup_model(config)
        self.model.load_checkpoint(config, str(vocoder.checkpoint), eval=True)
        self.model.eval()
        self.name = vocoder.name

    @torch.inference_mode()
    def vocode(self, tts_ap: Any, mel: torch.Tensor) -> np.ndarray:
        """Waveform of one [frames, num_mels] mel predicted by the TTS model."""
        spec = tts_ap.denormalize(mel.detach().float().cpu().numpy().T)  # [num_mels, frames]
        vocoder_input = torch.as_tensor(self.ap.normalize(spec), dtype=torch.float32).unsqueeze(0)
        return self.model.inference(vocoder_input).squeeze().cpu().numpy()


def attach_vocoder(model: Any, vocoder: Model) -> None:
    """Make `model` (a GlowTTS) speak its test sentences through `vocoder` in test_run."""
    preview = VocoderPreview(vocoder)
    logger.info("Test audio: vocoder %s (instead of Griffin-Lim)", preview.name)

    def test_run(trainer: Any) -> dict[str, Any]:
        from TTS.tts.utils.visual import plot_alignment, plot_spectrogram

        audios, figures = {}, {}
        for idx, sentence in enumerate(model.config.test_sentences):
            aux = model.get_aux_input_from_test_sentences(sentence)
            outputs = model.synthesize(
                aux["text"], speaker=aux.get("speaker"), language=aux.get("language"), use_griffin_lim=False
            )
            mel = outputs["outputs"]["model_outputs"]
            audios[f"{idx}-audio"] = preview.vocode(model.ap, mel[0])
            figures[f"{idx}-prediction"] = plot_spectrogram(mel, model.ap, output_fig=False)
            figures[f"{idx}-alignment"] = plot_alignment(outputs["alignments"], output_fig=False)
        return {"figures": figures, "audios": audios}

    model.test_run = test_run
