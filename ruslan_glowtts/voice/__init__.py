"""Stage 4, a trained run -> speech: synthesis (`python -m ruslan_glowtts.synthesize`), the
TTS/vocoder feature compatibility check and the vocoder preview in TensorBoard."""
