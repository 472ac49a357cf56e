"""Where things are in a RUSLAN folder, as downloaded and as `prepare` writes it.

The one place these names are spelled: prepare writes them, training and the vocoder read them.

    metadata_RUSLAN_22200.csv   `id|text` lines (RUSLAN's own name; the base config's meta_file_train)
    RUSLAN/<id>.wav             the audio (the folder Coqui's `ruslan` formatter also assumes)
    dataset.toml                config layer 2, written by prepare (base < dataset.toml < preset < CLI)
    features/<key>/             prepare's mel cache (ruslan_glowtts/prep/feature_cache.py)
    report.json, duration_histogram.png
    .prepare/                   prepare's state; marks the folder as prepare's
"""

from __future__ import annotations

from pathlib import Path

METADATA_FILE = "metadata_RUSLAN_22200.csv"
WAV_DIR = "RUSLAN"
DATASET_TOML = "dataset.toml"
FEATURES_DIR = "features"
REPORT = "report.json"
HISTOGRAM = "duration_histogram.png"
STATE_DIR = ".prepare"


def metadata_path(root: Path) -> Path:
    return Path(root) / METADATA_FILE


def wav_path(root: Path, id_: str) -> Path:
    """The audio of utterance `id_`, as Coqui's `ruslan` formatter finds it."""
    return Path(root) / WAV_DIR / f"{id_}.wav"


def dataset_toml_path(root: Path) -> Path:
    return Path(root) / DATASET_TOML
