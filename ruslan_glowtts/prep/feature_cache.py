"""Mel spectrograms computed once by prepare, read by the training data loader.

Coqui computes the mel of every utterance in the loader, every epoch (~20 ms per 5 s file per
core); reading a cached .npy takes well under 1 ms. The features are exactly Coqui's
training features (see compute_features), float32 of shape [num_mels, frames], so the cache is a
pure speed-up.

Layout: DATASET/features/<key>/<id>.npy plus manifest.json, where <key> is a short hash of the
full `config.audio.to_dict()`: changing any audio setting selects another (absent) folder, so
stale features are never read. The manifest records the audio settings, the count, and a digest
of the metadata file the cache was built for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ruslan_glowtts.common.atomic_files import atomic_output, write_text
from ruslan_glowtts.common.corpus_layout import FEATURES_DIR, METADATA_FILE, WAV_DIR
from ruslan_glowtts.common.process_tuning import one_blas_thread

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# A cache that covers fewer utterances than this is not used: features for a large part of the
# corpus would silently come from a different code path.
MIN_COVERAGE = 0.95


def audio_settings(audio_config: Any) -> dict[str, Any]:
    return audio_config.to_dict() if hasattr(audio_config, "to_dict") else dict(audio_config)


def feature_key(audio_config: Any) -> str:
    """Short hash of every audio setting (sorted JSON)."""
    blob = json.dumps(audio_settings(audio_config), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def cache_folder(dataset_root: Path, audio_config: Any) -> Path:
    return Path(dataset_root) / FEATURES_DIR / feature_key(audio_config)


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def mel_of(ap: Any, wav: np.ndarray) -> np.ndarray:
    """Coqui's mel of a float32 waveform, on one BLAS thread, so that it is bit-identical in prepare,
    in loader workers and in the training process alike (the mel projection is a BLAS product
    whose last bits depend on the thread count, and last bits can flip an alignment decision)."""
    with one_blas_thread():
        return ap.melspectrogram(wav).astype("float32")


def compute_features(ap: Any, wav_path: Path) -> np.ndarray:
    """The training features of one file, as the kit's loader makes them on the fly: Coqui's
    load_wav (with its silence trim), TTSDataset.load_data's cast to float32, then the mel. The
    cast matters: a mel of the float64 waveform differs from the loader's in most elements."""
    return mel_of(ap, np.asarray(ap.load_wav(str(wav_path)), dtype=np.float32))


def write_features(path: Path, mel: np.ndarray) -> None:
    # a handle: np.save would append ".npy" to the temp name
    with atomic_output(path) as temp, open(temp, "wb") as handle:
        np.save(handle, mel, allow_pickle=False)


def write_manifest(folder: Path, audio_config: Any, *, features: int, utterances: int, metadata_sha256: str) -> None:
    manifest = {
        "key": folder.name,
        "features": features,
        "utterances": utterances,
        "metadata_sha256": metadata_sha256,
        "format": "float32 .npy, shape [num_mels, frames], Coqui AudioProcessor.melspectrogram(load_wav(wav))",
        "audio": audio_settings(audio_config),
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
    write_text(folder / MANIFEST, text, only_if_changed=True)


def invalidate(folder: Path) -> None:
    """Remove the manifest, so a half-updated cache is not used while prepare rewrites it."""
    try:
        (folder / MANIFEST).unlink()
    except FileNotFoundError:
        pass


class FeatureCache:
    """Read-only access to one cache folder; holds paths only, never the features."""

    def __init__(self, folder: Path, wav_dir: Path, count: int) -> None:
        self.folder = Path(folder)
        self.count = count
        # Coqui's samples use the resolved dataset path; the caller may pass a symlinked one.
        self._wav_dirs = {os.path.abspath(wav_dir), os.path.realpath(wav_dir)}

    @classmethod
    def for_config(
        cls, dataset_root: Path, audio_config: Any, *, meta_file: str = METADATA_FILE
    ) -> FeatureCache | None:
        """The cache for these audio settings, or None (logged) when there is no usable one."""
        root = Path(dataset_root)
        folder = cache_folder(root, audio_config)
        why = cls._unusable_reason(root, folder, audio_config, meta_file)
        if why:
            logger.info("Feature cache not used (%s): features will be computed on the fly", why)
            return None
        count = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["features"]
        logger.info("Using the feature cache %s (%d utterances)", folder, count)
        return cls(folder, root / WAV_DIR, count)

    @staticmethod
    def _unusable_reason(root: Path, folder: Path, audio_config: Any, meta_file: str) -> str:
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            others = sorted(p.parent.name for p in (root / FEATURES_DIR).glob("*/" + MANIFEST))
            detail = f"; caches exist for other audio settings: {', '.join(others)}" if others else ""
            return (
                f"none for these audio settings in {root / FEATURES_DIR} (key {folder.name}){detail}; "
                f"`python -m ruslan_glowtts.prepare` builds it"
            )
        except (OSError, ValueError) as exc:
            return f"unreadable manifest {folder / MANIFEST}: {exc}"
        if manifest.get("audio") != json.loads(json.dumps(audio_settings(audio_config), default=str)):
            return f"{folder / MANIFEST} was written for other audio settings"
        try:
            digest = file_digest(root / meta_file)
        except OSError:
            return f"no metadata file {root / meta_file}"
        if manifest.get("metadata_sha256") != digest:
            return f"{meta_file} changed since the cache was built; run prepare again"
        features, utterances = manifest.get("features", 0), manifest.get("utterances", 0)
        if not utterances or features < MIN_COVERAGE * utterances:
            return f"it covers {features} of {utterances} utterances"
        return ""

    def path_for(self, audio_file: str | Path) -> Path | None:
        """The cache file of a prepared WAV of this dataset, or None for any other file."""
        audio_file = os.fspath(audio_file)
        directory, name = os.path.split(os.path.abspath(audio_file))
        if directory not in self._wav_dirs or not name.endswith(".wav"):
            return None
        return self.folder / (name[: -len(".wav")] + ".npy")

    def load(self, audio_file: str | Path) -> np.ndarray | None:
        """The cached mel [num_mels, frames] float32 of `audio_file`, or None if it is not cached."""
        path = self.path_for(audio_file)
        if path is None:
            return None
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("Unreadable cached features %s (%s): computing them on the fly", path, exc)
            return None
