"""RUSLAN GlowTTS training kit: GlowTTS on Russian speech with Coqui TTS, with stability presets
and a health guard. The entry points are train_ruslan_glowtts.py, view_tensorboard.py,
`python -m ruslan_glowtts.prepare` and `python -m ruslan_glowtts.diagnose`."""

from pathlib import Path

KIT_ROOT = Path(__file__).resolve().parents[1]
