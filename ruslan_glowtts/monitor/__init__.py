"""Stage 3, watching a run: the explosion rules, the live health guard that applies them, the event
reader, diagnose (`python -m ruslan_glowtts.diagnose`) and the TensorBoard launcher. Nothing here
imports torch except the guard, so diagnose starts fast."""
