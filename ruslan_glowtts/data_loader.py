"""The training data loader: Coqui's TTSDataset, fed from the feature cache, robust to broken audio.

- Features: Coqui computes every utterance's mel spectrogram in the loader, every epoch. When
  `prepare` has cached them for the run's exact audio settings (ruslan_glowtts/feature_cache.py),
  the dataset reads the cached mel instead: identical values, no STFT. Otherwise it computes them
  as Coqui does (and says so once).
- Broken audio: Coqui's loader trims silence with librosa, which turns a waveform holding NaN
  samples into an empty array; `TTSDataset.load_wav` then asserts and the run crashes in the
  loader. The kit's dataset passes such a waveform on untrimmed, so its batch gets a NaN loss and
  the health guard skips that one update (and names the file), and training goes on.
- Training batches: utterances of similar length, drawn anew every epoch
  (ruslan_glowtts/batch_sampler.py, `bucket_by_length`); evaluation batches stay Coqui's.
- Loader workers keep running between epochs (no re-fork and re-import every epoch) and run
  numpy with one BLAS thread each (process_tuning: measured in docs/BENCHMARKS.md).

RuslanGlowTTS is Coqui's GlowTTS with this loader; its checkpoints and config.json are plain
GlowTTS ones (Coqui's `tts` CLI and `load_config` read them as usual).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from TTS.tts.datasets.dataset import TTSDataset
from TTS.tts.models.glow_tts import GlowTTS

from ruslan_glowtts.batch_sampler import LengthBucketBatchSampler, frames_of, padded_share
from ruslan_glowtts.feature_cache import FeatureCache, mel_of
from ruslan_glowtts.process_tuning import keep_freed_memory, limit_blas_threads

logger = logging.getLogger(__name__)
_worker_limits: list[Any] = []  # keeps each worker's BLAS thread limit alive


class MelFeatures:
    """The `ap` that KitTTSDataset's collate_fn calls: Coqui's AudioProcessor, except that a
    waveform with non-finite samples gives an all-NaN mel (librosa refuses to STFT it), so its
    batch's loss is NaN and the health guard skips that update, and that a 2-D array is taken to
    be a mel spectrogram already."""

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
    _reported: set[str] = set()  # files already named in a warning (per process)

    def __init__(self, *args: Any, feature_cache: FeatureCache | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ap = MelFeatures(self.ap)
        self.feature_cache = feature_cache

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
        raw, _ = sf.read(filename, dtype="float32", always_2d=True)
        raw = raw.mean(axis=1)
        if filename not in self._reported:
            self._reported.add(filename)
            problem = "non-finite samples" if not np.isfinite(raw).all() else "nothing left after silence trim"
            logger.warning(" ! %s: %s; its batches will be skipped by the health guard "
                           "(python -m ruslan_glowtts.prepare excludes such files)", filename, problem)
        return raw


def _init_worker(worker_id: int) -> None:
    _worker_limits.append(limit_blas_threads())
    keep_freed_memory()


class RuslanGlowTTS(GlowTTS):
    def get_data_loader(self, config: Any, *, is_eval: bool = False, samples: list[dict] | None = None,
                        verbose: bool = True) -> DataLoader:
        # Coqui's BaseTTS.get_data_loader with the kit's dataset class, for a single-speaker,
        # grapheme GlowTTS (RUSLAN): no speaker/language mappings, f0, energy or linear specs.
        dataset = KitTTSDataset(
            outputs_per_step=1,
            compute_linear_spec=False,
            ap=self.ap,
            samples=samples,
            tokenizer=self.tokenizer,
            return_wav=False,
            batch_group_size=0 if is_eval else config.batch_group_size * config.batch_size,
            min_text_len=config.min_text_len,
            max_text_len=config.max_text_len,
            min_audio_len=config.min_audio_len,
            max_audio_len=config.max_audio_len,
            phoneme_cache_path=config.phoneme_cache_path,
            precompute_num_workers=config.precompute_num_workers,
            use_noise_augment=False if is_eval else config.use_noise_augment,
            start_by_longest=config.start_by_longest,
            feature_cache=FeatureCache.for_config(Path(config.datasets[0].path), config.audio,
                                                  meta_file=config.datasets[0].meta_file_train),
        )
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.barrier()
        dataset.preprocess_samples()
        workers = config.num_eval_loader_workers if is_eval else config.num_loader_workers
        common = {"collate_fn": dataset.collate_fn, "num_workers": workers, "pin_memory": torch.cuda.is_available(),
                  "persistent_workers": workers > 0, "worker_init_fn": _init_worker if workers > 0 else None}
        if not is_eval and getattr(config, "bucket_by_length", False):
            batch_sampler = self.length_batch_sampler(config, dataset, distributed=distributed)
            return DataLoader(dataset, batch_sampler=batch_sampler, **common)
        sampler = self.get_sampler(config, dataset)
        return DataLoader(
            dataset,
            batch_size=config.eval_batch_size if is_eval else config.batch_size,
            shuffle=config.shuffle if sampler is None else False,
            drop_last=config.drop_last,
            sampler=sampler,
            **common,
        )

    @staticmethod
    def length_batch_sampler(config: Any, dataset: TTSDataset, *, distributed: bool = False) -> LengthBucketBatchSampler:
        """Length-bucketed batches over the dataset's final (filtered, re-ordered) sample list;
        the trainer sets the epoch (KitTrainer) so each epoch, and a resumed one, gets its order."""
        replicas, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        sampler = LengthBucketBatchSampler(
            frames_of(dataset.samples, config.audio.hop_length), batch_size=config.batch_size,
            max_frames=config.max_frames_per_batch, pool_batches=config.bucket_pool_batches,
            seed=config.training_seed, num_replicas=replicas, rank=rank,
            multiple_of=getattr(config, "grad_accum_steps", 1),
        )
        first = sampler.rank_batches(0)
        logger.info("Length-bucketed batches: %d per epoch%s, %.1f utterances each on average, %.1f %% padded frames",
                    len(first), f" on each of {replicas} ranks" if replicas > 1 else "",
                    sum(map(len, first)) / len(first), 100 * padded_share(first, sampler.lengths))
        return sampler
