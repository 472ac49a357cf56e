"""RuslanGlowTTS: Coqui's GlowTTS, unchanged as a network, trained faster and fed by the kit's loader.

The network and its parameters are Coqui's, so checkpoints load into Coqui's own GlowTTS and
`tts`/Synthesizer read them as usual. What differs is how a training step runs:
- the loader (training/data_loader.py: cached features, unloadable files skipped, persistent
  workers; training/batch_sampler.py: length-bucketed batches, padded to repeating shapes);
- the forward pass (coqui_compat.glowtts_forward): the alignment search on the GPU
  (training/alignment.py) with its inputs in float32, the decoder compiled on a GPU
  (training/compilation.py);
- the loss: Coqui's maths without a host-device sync per step (coqui_compat.glowtts_loss);
- the optimizer: FlatRAdam (training/optimizer.py), Coqui's RAdam maths in one step for the whole
  model, or Coqui's own with radam_impl = "coqui".
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
from ruslan_glowtts.training.compilation import compiled_decoder
from ruslan_glowtts.training.coqui_compat import glowtts_forward, glowtts_loss, patch_wavenet, tts_data_loader
from ruslan_glowtts.training.data_loader import KitTTSDataset, init_loader_worker
from ruslan_glowtts.training.optimizer import make_radam

logger = logging.getLogger(__name__)


patch_wavenet()  # the same maths without a CPU tensor as a slice bound (eager and compiled alike)


class RuslanGlowTTS(GlowTTS):
    def forward(
        self,
        x: torch.Tensor,
        x_lengths: torch.Tensor,
        y: torch.Tensor,
        y_lengths: torch.Tensor | None = None,
        aux_input: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        compiled = compiled_decoder(self)
        use_compiled = (
            compiled is not None
            and self.training
            and torch.is_grad_enabled()
            and not getattr(self, "run_data_dep_init", False)
        )
        return glowtts_forward(self, x, x_lengths, y, y_lengths, aux_input, decoder=compiled if use_compiled else None)

    def pads_lengths(self) -> bool:
        """Training batches padded to the length grid: pad_lengths = on, or auto with a compiled decoder."""
        setting = getattr(self.config, "pad_lengths", "off")
        return setting == "on" or (setting == "auto" and compiled_decoder(self) is not None)

    def get_criterion(self) -> torch.nn.Module:
        return glowtts_loss()

    def get_optimizer(self) -> torch.optim.Optimizer:
        if str(self.config.optimizer).lower() != "radam":
            raise NotImplementedError  # another optimizer named in the config: Coqui builds it
        return make_radam(
            self.parameters(),
            impl=getattr(self.config, "radam_impl", "flat"),
            lr=self.config.lr,
            optimizer_params=dict(self.config.optimizer_params or {}),
        )

    def get_data_loader(
        self, config: Any, *, is_eval: bool = False, samples: list[dict] | None = None, verbose: bool = True
    ) -> DataLoader:
        # Coqui's BaseTTS.get_data_loader (coqui_compat.tts_data_loader) with the kit's dataset
        # class, persistent loader workers and, for training, length-bucketed batches.
        workers = config.num_eval_loader_workers if is_eval else config.num_loader_workers
        bucketed = not is_eval and getattr(config, "bucket_by_length", False)
        return tts_data_loader(
            self,
            config,
            is_eval=is_eval,
            samples=samples,
            dataset_class=KitTTSDataset,
            dataset_kwargs={
                "feature_cache": FeatureCache.for_config(
                    Path(config.datasets[0].path), config.audio, meta_file=config.datasets[0].meta_file_train
                ),
                "pad_lengths": not is_eval and self.pads_lengths(),
            },
            loader_kwargs={
                "num_workers": workers,
                "pin_memory": torch.cuda.is_available(),
                "persistent_workers": workers > 0,
                "worker_init_fn": init_loader_worker if workers > 0 else None,
            },
            batch_sampler=(
                lambda dataset, distributed: self.length_batch_sampler(config, dataset, distributed=distributed)
            )
            if bucketed
            else None,
        )

    @staticmethod
    def length_batch_sampler(
        config: Any, dataset: TTSDataset, *, distributed: bool = False
    ) -> LengthBucketBatchSampler:
        """Length-bucketed batches over the dataset's final (filtered, re-ordered) sample list;
        the trainer sets the epoch (KitTrainer) so each epoch, and a resumed one, gets its order."""
        replicas, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        sampler = LengthBucketBatchSampler(
            frames_of(dataset.samples, config.audio.hop_length),
            batch_size=config.batch_size,
            max_frames=config.max_frames_per_batch,
            pool_batches=config.bucket_pool_batches,
            seed=config.training_seed,
            num_replicas=replicas,
            rank=rank,
            multiple_of=getattr(config, "grad_accum_steps", 1),
        )
        first = sampler.rank_batches(0)
        logger.info(
            "Length-bucketed batches: %d per epoch%s, %.1f utterances each on average, %.1f %% padded frames",
            len(first),
            f" on each of {replicas} ranks" if replicas > 1 else "",
            sum(map(len, first)) / len(first),
            100 * padded_share(first, sampler.lengths),
        )
        return sampler
