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
  numpy with one BLAS thread each (process_tuning: measured in docs/BENCHMARKS.md). They ignore
  SIGINT and SIGTERM: a signal to the whole process group (Ctrl-C in a terminal, SLURM, `timeout`)
  is the main process's to handle; it stops at the end of the step and shuts them down.
- The vocoder's loader (KitGANDataset) skips what fails to load the same way.

RuslanGlowTTS (training/model.py) is Coqui's GlowTTS with this loader; its checkpoints and config.json are plain
GlowTTS ones (Coqui's `tts` CLI and `load_config` read them as usual).
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import default_collate
from TTS.tts.datasets.dataset import TTSDataset
from TTS.vocoder.datasets.gan_dataset import GANDataset

from ruslan_glowtts.common.process_tuning import keep_freed_memory, limit_blas_threads
from ruslan_glowtts.prep.feature_cache import FeatureCache, mel_of
from ruslan_glowtts.training.batch_sampler import bucket_length

logger = logging.getLogger(__name__)
_worker_limits: list[Any] = []  # keeps each worker's BLAS thread limit alive

SKIPPED_KEY = "kit_skipped_samples"  # batch key: [(audio file, why)] skipped while loading this batch
EMPTY_KEY = "kit_empty_batch"  # set on a batch none of whose samples loaded: the trainer skips it
GAN_ITEMS_KEY = "kit_gan_items"  # the vocoder's batch as Coqui's GAN expects it, beside SKIPPED_KEY
MAX_UNLOADABLE_SHARE = 0.01
MIN_UNLOADABLE_TOLERATED = 2  # a tiny corpus still tolerates a couple of bad files
RESCUE_TRIES = 16  # neighbours tried in place of a sample that fails to load


def max_unloadable(num_samples: int) -> int:
    """How many distinct samples may fail to load before the run stops (exit 2)."""
    return max(MIN_UNLOADABLE_TOLERATED, math.floor(MAX_UNLOADABLE_SHARE * num_samples))


Item = TypeVar("Item")
_reported: set[str] = set()  # files already named in a warning (per process)


def load_or_skip(
    load: Callable[[int], Item], idx: int, count: int, file_of: Callable[[int], str]
) -> tuple[Item | None, list[tuple[str, str]]]:
    """load(idx), or, when that fails, the next of up to RESCUE_TRIES neighbours that loads; the
    files skipped on the way, with why, each named once in a warning. (None, skipped) when none
    loads (a one-utterance eval set, a run of broken files)."""
    skipped: list[tuple[str, str]] = []
    for attempt in range(min(RESCUE_TRIES, count)):
        index = (idx + attempt) % count
        try:
            return load(index), skipped
        except Exception as exc:  # noqa: BLE001 - any file that fails to load is skipped, not fatal
            filename = file_of(index)
            why = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            skipped.append((filename, why))
            if filename not in _reported:
                _reported.add(filename)
                logger.warning(
                    " ! Skipping %s: %s (python -m ruslan_glowtts.prepare checks and excludes such files)",
                    filename,
                    why,
                )
    return None, skipped


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
    ap: MelFeatures  # Coqui's AudioProcessor, wrapped in __init__

    def __init__(
        self, *args: Any, feature_cache: FeatureCache | None = None, pad_lengths: bool = False, **kwargs: Any
    ) -> None:
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
        item, skipped = load_or_skip(
            self._load_checked, idx, len(self.samples), lambda index: self.samples[index]["audio_file"]
        )
        if item is None:
            return {SKIPPED_KEY: skipped, EMPTY_KEY: True}
        item[SKIPPED_KEY] = skipped
        return item

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


def _why_unusable(filename: str, otherwise: str = "nothing left after the silence trim") -> str:
    """Why a file that loaded gave no usable waveform (Coqui's silence trim empties a NaN one)."""
    raw, _ = sf.read(filename, dtype="float32")
    if raw.size == 0:
        return "empty audio"
    if not np.isfinite(raw).all():
        return "non-finite samples (NaN/Inf)"
    return otherwise


class KitGANDataset(GANDataset):
    """Coqui's GANDataset (the vocoder's (mel, waveform) segments) that skips a file that fails to
    load, as KitTTSDataset does: Coqui's would end the run on it (NaN samples trim to a waveform
    shorter than its cached mel, and its length assertion fails). Items are dicts that carry the
    skipped files to the trainer; collate_gan_items makes the batch."""

    def _file_of(self, idx: int) -> str:
        item = self.item_list[idx]
        return item if isinstance(item, str) else item[0]

    def load_item(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            mel, audio = super().load_item(idx)
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(_why_unusable(self._file_of(idx), otherwise=text)) from exc
        if not (torch.isfinite(mel).all() and torch.isfinite(audio).all()):
            raise ValueError("non-finite values (NaN/Inf)")
        return mel, audio

    def __getitem__(self, idx: int) -> dict[str, Any]:
        item, skipped = load_or_skip(super().__getitem__, idx, len(self.item_list), self._file_of)
        return {GAN_ITEMS_KEY: item, SKIPPED_KEY: skipped}


def collate_gan_items(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """The vocoder's batch: Coqui's (default-collated) items under GAN_ITEMS_KEY, the files skipped
    under SKIPPED_KEY, EMPTY_KEY when none loaded."""
    skipped = [entry for item in batch for entry in item[SKIPPED_KEY]]
    loaded = [item[GAN_ITEMS_KEY] for item in batch if item[GAN_ITEMS_KEY] is not None]
    collated: dict[str, Any] = {GAN_ITEMS_KEY: default_collate(loaded)} if loaded else {EMPTY_KEY: True}
    if skipped:
        collated[SKIPPED_KEY] = skipped
    return collated


def init_loader_worker(worker_id: int) -> None:
    # A signal to the whole process group (Ctrl-C in a terminal, SIGTERM from SLURM, `timeout` or
    # `kill -- -PGID`) reaches the workers too: the main process stops the run at the end of the
    # step and shuts them down. A worker's own KeyboardInterrupt would only print a traceback, and
    # a worker killed by SIGTERM would end the run as a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _worker_limits.append(limit_blas_threads())
    keep_freed_memory()
