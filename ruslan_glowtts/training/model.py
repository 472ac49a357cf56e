"""RuslanGlowTTS: Coqui's GlowTTS, unchanged as a network, with the kit's training data loader.

The loader is the only difference (training/data_loader.py: cached features, unloadable files
skipped, persistent workers; training/batch_sampler.py: length-bucketed batches), so checkpoints
load into Coqui's own GlowTTS and `tts`/Synthesizer read them as usual.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from TTS.tts.datasets.dataset import TTSDataset
from TTS.tts.models.glow_tts import GlowTTS

from ruslan_glowtts.prep.feature_cache import FeatureCache
from ruslan_glowtts.training.batch_sampler import (
    LengthBucketBatchSampler,
    frames_of,
    padded_share,
)
from ruslan_glowtts.training.coqui_compat import tts_data_loader
from ruslan_glowtts.training.data_loader import KitTTSDataset, init_loader_worker

logger = logging.getLogger(__name__)


class RuslanGlowTTS(GlowTTS):
    def get_data_loader(self, config: Any, *, is_eval: bool = False, samples: list[dict] | None = None,
                        verbose: bool = True) -> DataLoader:
        # Coqui's BaseTTS.get_data_loader (coqui_compat.tts_data_loader) with the kit's dataset
        # class, persistent loader workers and, for training, length-bucketed batches.
        workers = config.num_eval_loader_workers if is_eval else config.num_loader_workers
        bucketed = not is_eval and getattr(config, "bucket_by_length", False)
        return tts_data_loader(
            self, config, is_eval=is_eval, samples=samples, dataset_class=KitTTSDataset,
            dataset_kwargs={"feature_cache": FeatureCache.for_config(Path(config.datasets[0].path), config.audio,
                                                                     meta_file=config.datasets[0].meta_file_train)},
            loader_kwargs={"num_workers": workers, "pin_memory": torch.cuda.is_available(),
                           "persistent_workers": workers > 0, "worker_init_fn": init_loader_worker if workers > 0 else None},
            batch_sampler=(lambda dataset, distributed: self.length_batch_sampler(config, dataset,
                                                                                  distributed=distributed))
            if bucketed else None,
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
