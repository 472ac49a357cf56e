"""Length-bucketed, shuffled training batches (and an optional frame budget per batch).

Random batches of 8 from RUSLAN's lengths (0.5-15 s, mean ~5 s) pad ~43 % of the frames they
compute (docs/BENCHMARKS.md); GlowTTS's compute per step grows with the padded length, so that is
time spent on zeros. Coqui's answer (`batch_group_size`) sorts once and shuffles within groups,
meant for shuffle = false. This sampler does what ESPnet's sorted batches, fairseq's max_tokens
and Lhotse's bucketing samplers do, reshuffled every epoch:

1. the epoch's random permutation of the training set, cut into pools of `pool_batches` batches;
2. each pool sorted by length, cut into batches of neighbours (similar lengths, little padding):
   `batch_size` utterances each, or, with `max_frames`, as many as fit a padded-frame budget;
3. the batches of all pools shuffled, so lengths do not come in order.

Every epoch draws new pools, so batch compositions change from epoch to epoch. The order is a
pure function of (seed, epoch, lengths, number of ranks): the same for a seed, different per
epoch, identical on every rank. Under DDP each rank takes every world_size-th batch of that one
list (disjoint, the same number on every rank); with gradient accumulation the epoch's batch
count per rank is a multiple of grad_accum_steps, so no accumulation window is cut short. The
few batches dropped to get there are different ones every epoch.

Lengths come from what the dataset already knows without reading audio: the `audio_length` (in
samples, from the WAV header) that Coqui's TTSDataset.preprocess_samples records for its final,
filtered and re-ordered sample list, which is the list the loader indexes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


def frames_of(samples: Sequence[dict], hop_length: int) -> np.ndarray:
    """Mel frames of each sample, from the `audio_length` (samples) Coqui's dataset recorded."""
    return np.array([int(s["audio_length"]) // hop_length + 1 for s in samples], dtype=np.int64)


def bucket_length(length: int, *, minimum: int = 32, per_octave: int = 8) -> int:
    """The smallest length >= `length` on a fixed grid: `minimum`, then `per_octave` steps per
    doubling (64, 72, 80, ... 128, 144, ... 1024, 1152, ...). Padding each batch up to it keeps the
    number of distinct shapes small (~35 for RUSLAN's 0.5-15 s), so CUDA graphs and cudnn.benchmark
    see repeated shapes, for at most 1/per_octave more frames (about half that on average).
    Every grid value above `minimum` is a multiple of 8 (GlowTTS squeezes frames in pairs)."""
    if length <= minimum:
        return minimum
    shift = max(0, (length - 1).bit_length() - 1 - (per_octave.bit_length() - 1))
    step = 1 << shift
    return -(-length // step) * step


def padded_share(batches: Sequence[Sequence[int]], lengths: np.ndarray) -> float:
    """Share of the computed frames (batch size x longest in the batch) that are padding."""
    computed = sum(len(b) * int(lengths[b].max()) for b in batches if len(b))
    real = sum(int(lengths[b].sum()) for b in batches)
    return 1.0 - real / computed if computed else 0.0


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length utterances, in a new random order every epoch.

    lengths: frames per dataset index. batch_size: utterances per batch (with max_frames > 0, the
    pool size unit only). max_frames: padded frames per batch (count x longest) instead of a
    fixed count; an utterance longer than the budget gets a batch of its own. seed: the run's
    training seed. num_replicas/rank: DDP. multiple_of: grad_accum_steps.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        *,
        batch_size: int,
        max_frames: int = 0,
        pool_batches: int = 64,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        multiple_of: int = 1,
    ) -> None:
        super().__init__()
        if batch_size < 1 or pool_batches < 1 or multiple_of < 1 or max_frames < 0:
            raise ValueError("batch_size, pool_batches and multiple_of must be >= 1, max_frames >= 0")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.size == 0:
            raise ValueError("no samples to batch")
        self.batch_size = batch_size
        self.max_frames = max_frames
        self.pool_size = batch_size * pool_batches
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.multiple_of = multiple_of
        self.epoch = 0
        self._skip = 0
        self._epoch_set = False  # set_epoch called since the last __iter__
        self._iterated = False
        self._cache: tuple[int, list[list[int]]] | None = None
        too_long = int((self.lengths > max_frames).sum()) if max_frames else 0
        if too_long:
            logger.warning(
                " ! %d utterances are longer than max_frames_per_batch = %d frames: each gets a "
                "batch of its own (lower max_audio_len or raise the budget)",
                too_long,
                max_frames,
            )

    # -- the epoch's batches -------------------------------------------------------------------
    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's order; `skip` leaves out this rank's first batches (a resumed epoch)."""
        self.epoch = epoch
        self._skip = max(0, skip)
        self._epoch_set = True

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All ranks' batches of an epoch, in order (rank r takes entries r, r + world, ...)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        batches: list[list[int]] = []
        for start in range(0, len(order), self.pool_size):
            pool = order[start : start + self.pool_size]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]  # ties keep the random order
            batches += self._cut(pool)
        batches = [batches[i] for i in rng.permutation(len(batches))]
        unit = self.num_replicas * self.multiple_of
        if len(batches) >= unit:
            return batches[: len(batches) // unit * unit]
        # Fewer batches than ranks x accumulation (tiny data): repeat some so every rank gets one window.
        return [batches[i % len(batches)] for i in range(unit)]

    def _cut(self, pool: np.ndarray) -> list[list[int]]:
        if not self.max_frames:
            return [pool[i : i + self.batch_size].tolist() for i in range(0, len(pool), self.batch_size)]
        batches: list[list[int]] = []
        current: list[int] = []
        for index in pool.tolist():  # ascending lengths: the newest is the longest
            if current and (len(current) + 1) * int(self.lengths[index]) > self.max_frames:
                batches.append(current)
                current = []
            current.append(index)
        if current:
            batches.append(current)
        return batches

    def rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of an epoch (cached: DataLoader and Coqui ask len() repeatedly)."""
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self.epoch_batches(epoch)[self.rank :: self.num_replicas])
        return self._cache[1]

    # -- Sampler protocol ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[list[int]]:
        if not self._epoch_set and self._iterated:
            self.epoch += 1  # nobody called set_epoch (a plain Trainer): still a new order per epoch
        self._iterated, self._epoch_set = True, False
        skip, self._skip = self._skip, 0
        yield from self.rank_batches(self.epoch)[skip:]

    def __len__(self) -> int:
        # Constant in count mode; in frame-budget mode the current epoch's count.
        return max(0, len(self.rank_batches(self.epoch)) - self._skip)
