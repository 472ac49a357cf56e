"""The training data loader: Coqui's TTSDataset, fed from the feature cache, robust to broken audio.

- Features: Coqui computes every utterance's mel spectrogram in the loader, every epoch. When
  `prepare` has cached them for the run's exact audio settings (ruslan_glowtts/prep/feature_cache.py),
  the dataset reads the cached mel instead: identical values, no STFT. Otherwise it computes them
  as Coqui does (and says so once).
- Broken audio: Coqui's loader crashes the run on a file that stopped loading after the startup
  checks (replaced, truncated, NaN samples that its silence trim turns into an empty array,
  librosa's "Audio buffer is not finite" when resampling). The kit's dataset skips such a sample
  with one warning naming the file and loads the next one instead; the batch carries the names
  to the trainer (SKIPPED_KEY), which counts them (Health/skipped_samples, run.json) and stops
  the run when more than 1 % of the data fails (max_unloadable).
- Training batches: utterances of similar length, drawn anew every epoch
  (ruslan_glowtts/training/batch_sampler.py, `bucket_by_length`); evaluation batches stay Coqui's.
- Loader workers keep running between epochs (no re-fork and re-import every epoch) and run
  numpy with one BLAS thread each (process_tuning: measured in docs/BENCHMARKS.md).

RuslanGlowTTS (training/model.py) is Coqui's GlowTTS with this loader; its checkpoints and config.json are plain
GlowTTS ones (Coqui's `tts` CLI and `load_config` read them as usual).
"""

from __future__ import annotations

import logging
import math
import signal
from typing import Any, ClassVar

import numpy as np
import soundfile as sf
import torch
from TTS.tts.datasets.dataset import TTSDataset

from ruslan_glowtts.common.process_tuning import keep_freed_memory, limit_blas_threads
from ruslan_glowtts.prep.feature_cache import FeatureCache, mel_of
from ruslan_glowtts.training.batch_sampler import bucket_length

logger = logging.getLogger(__name__)
_worker_limits: list[Any] = []  # keeps each worker's BLAS thread limit alive

SKIPPED_KEY = "kit_skipped_samples"  # batch key: [(audio file, why)] skipped while loading this batch
EMPTY_KEY = "kit_empty_batch"  # set on a batch none of whose samples loaded: the trainer skips it
MAX_UNLOADABLE_SHARE = 0.01
MIN_UNLOADABLE_TOLERATED = 2  # a tiny corpus still tolerates a couple of bad files
RESCUE_TRIES = 16  # neighbours tried in place of a sample that fails to load


def max_unloadable(num_samples: int) -> int:
    """How many distinct samples may fail to load before the run stops (exit 2)."""
    return max(MIN_UNLOADABLE_TOLERATED, math.floor(MAX_UNLOADABLE_SHARE * num_samples))


class MelFeatures:
    """The `ap` that KitTTSDataset's collate_fn calls: Coqui's AudioProcessor, except that a 2-D
    array is taken to be a mel spectrogram already, and that a waveform with non-finite samples
    (none reach here: load_data skips them) gives an all-NaN mel instead of a librosa error, which
    the health guard would skip."""

    def __init__(self, ap: Any) -> None:
        self.ap = ap

    def __getattr__(self, name: str) -> Any:
        if name == "ap":  # not set yet (unpickling in a loader worker)
            raise AttributeError(name)
        return getattr(self.ap, name)

    def melspectrogram(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 2:
            return x
        if not np.isfinite(x).all():
            return np.full((self.ap.num_mels, 1 + len(x) // self.ap.hop_length), np.nan, dtype=np.float32)
        return mel_of(self.ap, x)


class KitTTSDataset(TTSDataset):
    _reported: ClassVar[set[str]] = set()  # files already named in a warning (per process, shared on purpose)
    ap: MelFeatures  # Coqui's AudioProcessor, wrapped in __init__

    def __init__(self, *args: Any, feature_cache: FeatureCache | None = None, pad_lengths: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ap = MelFeatures(self.ap)
        self.feature_cache = feature_cache
        self.pad_lengths = pad_lengths

    def preprocess_samples(self) -> None:
        super().preprocess_samples()  # length filtering on the files' true sizes
        if self.feature_cache is not None:
            # Coqui's load_data re-checks len(wav) >= min_audio_len after loading; a cached mel's
            # len() is its number of mel bands, not samples. The filter above already applied.
            self.min_audio_len = 0

    def load_wav(self, filename: str) -> np.ndarray:
        if self.feature_cache is not None and (mel := self.feature_cache.load(filename)) is not None:
            return mel  # [num_mels, frames]: MelFeatures passes it through
        wav = self.ap.load_wav(filename)
        if wav.size and np.isfinite(wav).all():
            return wav
        # Raised here, not left to Coqui: its load_data would silently swap in another sample.
        raise ValueError(_why_unusable(filename))

    def _load_checked(self, idx: int) -> dict[str, Any]:
        item = super().load_data(idx)
        wav = item["wav"]
        if wav.size == 0:
            raise ValueError("no audio (empty, or nothing left after the silence trim)")
        if not np.isfinite(wav).all():
            raise ValueError("non-finite samples (NaN/Inf)")
        return item

    def __getitem__(self, idx: int) -> dict[str, Any]:
        skipped: list[tuple[str, str]] = []
        for attempt in range(min(RESCUE_TRIES, len(self.samples))):
            index = (idx + attempt) % len(self.samples)
            try:
                item = self._load_checked(index)
            except Exception as exc:  # noqa: BLE001 - any file that fails to load is skipped, not fatal
                filename = self.samples[index]["audio_file"]
                why = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                skipped.append((filename, why))
                if filename not in self._reported:
                    self._reported.add(filename)
                    logger.warning(" ! Skipping %s: %s (python -m ruslan_glowtts.prepare checks and excludes "
                                   "such files)", filename, why)
                continue
            item[SKIPPED_KEY] = skipped
            return item
        # Nothing near this index loads (a one-utterance eval set, a run of broken files).
        return {SKIPPED_KEY: skipped, EMPTY_KEY: True}

    def collate_fn(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        skipped = [entry for item in batch for entry in item.pop(SKIPPED_KEY, [])]
        loaded = [item for item in batch if not item.get(EMPTY_KEY)]
        collated = super().collate_fn(loaded) if loaded else {EMPTY_KEY: True}
        if self.pad_lengths and loaded:
            pad_to_buckets(collated)
        if skipped:
            collated[SKIPPED_KEY] = skipped
        return collated


def pad_to_buckets(batch: dict[str, Any]) -> None:
    """Pad a collated batch's text and mel frames up to the bucket grid (batch_sampler.bucket_length),
    in place: the lengths stay the true ones, so every mask, loss and alignment is unchanged."""
    mel, tokens = batch["mel"], batch["token_id"]
    frames, chars = bucket_length(mel.shape[1], minimum=32), bucket_length(tokens.shape[1], minimum=16)
    if frames > mel.shape[1]:
        batch["mel"] = torch.nn.functional.pad(mel, (0, 0, 0, frames - mel.shape[1]))
        stop = batch.get("stop_targets")
        if torch.is_tensor(stop) and stop.dim() == 2:  # [B, T], padded with 1 as Coqui pads it
            batch["stop_targets"] = torch.nn.functional.pad(stop, (0, frames - stop.shape[1]), value=1.0)
    if chars > tokens.shape[1]:
        batch["token_id"] = torch.nn.functional.pad(tokens, (0, chars - tokens.shape[1]))


def _why_unusable(filename: str) -> str:
    """Why a file that loaded gave no usable waveform (Coqui's silence trim empties a NaN one)."""
    raw, _ = sf.read(filename, dtype="float32")
    if raw.size == 0:
        return "empty audio"
    if not np.isfinite(raw).all():
        return "non-finite samples (NaN/Inf)"
    return "nothing left after the silence trim"


def init_loader_worker(worker_id: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the main process stops the run at
    # the end of the step and shuts the workers down; a worker's own KeyboardInterrupt would only
    # print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_limits.append(limit_blas_threads())
    keep_freed_memory()
