"""Length-bucketed batches: determinism, per-epoch order, padding, frame budget, grad-accum, DDP
disjointness (two gloo processes) and resume through the real trainer."""

from __future__ import annotations

import itertools
import json
import os
import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from ruslan_glowtts.training.batch_sampler import LengthBucketBatchSampler, padded_share
from tests.helpers import run_dirs, tiny_args


def ruslan_like_frames(count: int = 22_200, seed: int = 0) -> np.ndarray:
    """Mel frames of a log-normal length spread like RUSLAN's (0.5-15 s, mean ~5 s)."""
    rng = np.random.default_rng(seed)
    seconds = np.clip(rng.lognormal(np.log(5.0) - 0.45**2 / 2, 0.45, count), 0.5, 15.0)
    return (seconds * 22050 / 256).astype(np.int64) + 1


def flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


def test_same_seed_same_batches_new_order_every_epoch():
    lengths = ruslan_like_frames(2000)
    a = LengthBucketBatchSampler(lengths, batch_size=8, seed=7)
    b = LengthBucketBatchSampler(lengths, batch_size=8, seed=7)
    assert a.epoch_batches(3) == b.epoch_batches(3)
    assert a.epoch_batches(0) != a.epoch_batches(1)
    assert LengthBucketBatchSampler(lengths, batch_size=8, seed=8).epoch_batches(0) != a.epoch_batches(0)
    # every utterance exactly once per epoch, in batches of 8 (one short batch per pool at most)
    for epoch in range(3):
        batches = a.epoch_batches(epoch)
        assert sorted(flat(batches)) == list(range(len(lengths)))
        assert all(len(batch) <= 8 for batch in batches)
    # batch compositions change between epochs, not only their order
    first = {tuple(sorted(batch)) for batch in a.epoch_batches(0)}
    second = {tuple(sorted(batch)) for batch in a.epoch_batches(1)}
    assert len(first & second) < 0.1 * len(first)


def test_iterating_follows_set_epoch_and_advances_without_it():
    sampler = LengthBucketBatchSampler(ruslan_like_frames(400), batch_size=8, seed=1)
    sampler.set_epoch(5)
    assert list(sampler) == sampler.epoch_batches(5)
    assert list(sampler) == sampler.epoch_batches(6)  # a plain Trainer never calls set_epoch
    sampler.set_epoch(2, skip=3)
    assert len(sampler) == len(sampler.epoch_batches(2)) - 3
    assert list(sampler) == sampler.epoch_batches(2)[3:]


def test_buckets_pad_little_where_random_batches_pad_much():
    lengths = ruslan_like_frames()
    sampler = LengthBucketBatchSampler(lengths, batch_size=8, seed=0)
    order = np.random.default_rng(0).permutation(len(lengths))
    random_batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    assert padded_share(random_batches, lengths) > 0.3
    assert padded_share(sampler.epoch_batches(0), lengths) < 0.05


def test_frame_budget_is_respected():
    lengths = ruslan_like_frames(3000)
    budget = 8 * 600  # 8 utterances of ~7 s
    sampler = LengthBucketBatchSampler(lengths, batch_size=8, max_frames=budget, seed=3)
    batches = sampler.epoch_batches(0)
    assert sorted(flat(batches)) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * lengths[batch].max() <= budget
    sizes = [len(b) for b in batches]
    assert max(sizes) > 8 > min(sizes)  # short utterances share a batch with many, long ones with few
    lone = LengthBucketBatchSampler(np.array([100, 5000, 120]), batch_size=2, max_frames=1000, seed=0)
    assert sorted(map(sorted, lone.epoch_batches(0))) == [[0, 2], [1]]  # over budget: a batch of its own


@pytest.mark.parametrize("max_frames", [0, 4000])
def test_grad_accum_and_ranks_get_whole_windows(max_frames):
    lengths = ruslan_like_frames(1001)
    for epoch in range(3):
        ranks = [
            LengthBucketBatchSampler(
                lengths, batch_size=8, max_frames=max_frames, seed=2, num_replicas=2, rank=r, multiple_of=3
            )
            for r in range(2)
        ]
        per_rank = [s.rank_batches(epoch) for s in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) and len(per_rank[0]) % 3 == 0
        seen = Counter(flat(per_rank[0]) + flat(per_rank[1]))
        assert max(seen.values()) == 1  # disjoint
        assert len(seen) > 0.9 * len(lengths)  # only the remainder batches left out
    tiny = LengthBucketBatchSampler([10, 20, 30], batch_size=4, seed=0, multiple_of=2)
    assert len(tiny) == 2  # fewer batches than one accumulation window: repeated, never empty


# ---------------------------------------------------------------------------------------------
# DDP: two gloo processes build the real training loader


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, dataset: str, out: str) -> None:
    import torch.distributed as dist
    from TTS.tts.datasets import load_tts_samples

    from ruslan_glowtts.common.presets import load_preset
    from ruslan_glowtts.training.config import build_config, parse_set_option
    from ruslan_glowtts.training.model import RuslanGlowTTS

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        sets = ["batch_size=2", "num_loader_workers=0", "grad_accum_steps=2"]
        config, _ = build_config(
            preset=load_preset("stable"),
            dataset_path=Path(dataset),
            cli_layers=[(parse_set_option(s), "test") for s in sets],
        )
        samples, _ = load_tts_samples(config, eval_split=False)
        loader = RuslanGlowTTS(config).get_data_loader(config, samples=samples, verbose=False)
        names = {}
        for epoch in range(2):
            loader.batch_sampler.set_epoch(epoch)
            names[epoch] = [list(batch["audio_unique_names"]) for batch in loader]
            assert len(names[epoch]) == len(loader)
        Path(out, f"rank{rank}.json").write_text(json.dumps(names))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_get_disjoint_batches_of_equal_count(prepared_sample, tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(prepared_sample), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in ("0", "1"):
        a, b = ranks[0][epoch], ranks[1][epoch]
        assert len(a) == len(b) > 0 and len(a) % 2 == 0  # same count, whole accumulation windows
        names_a, names_b = set(itertools.chain.from_iterable(a)), set(itertools.chain.from_iterable(b))
        assert not names_a & names_b
    assert ranks[0]["0"] != ranks[0]["1"]  # a new order in the second epoch


# ---------------------------------------------------------------------------------------------
# Resume through the real trainer


@pytest.fixture
def record_batches(monkeypatch):
    from ruslan_glowtts.training.trainer import KitTrainer

    seen: list[list[str]] = []
    original = KitTrainer.format_batch

    def recording(self, batch):
        seen.append(list(batch["audio_unique_names"]))
        return original(self, batch)

    monkeypatch.setattr(KitTrainer, "format_batch", recording)
    return seen


@pytest.mark.slow
def test_resume_continues_the_epochs_batch_order(sample_22k, tmp_path, record_batches, run_main):
    common = ["--dataset-path", str(sample_22k), *tiny_args("--set", "run_eval=false")]
    code, _, err = run_main(*common, "--output-path", str(tmp_path / "straight"), "--max-steps", "11")
    assert code == 0, err
    straight = list(record_batches)
    record_batches.clear()
    code, _, err = run_main(*common, "--output-path", str(tmp_path / "resumed"), "--max-steps", "4")
    assert code == 0, err
    (run,) = run_dirs(tmp_path / "resumed")
    code, _, err = run_main("--continue-path", str(run), "--dataset-path", str(sample_22k), "--max-steps", "11")
    assert code == 0, err
    resumed = list(record_batches)
    # 23 training utterances, batch 4: 6 batches per epoch; stopped 4 batches into epoch 0, the
    # resumed run trains on the epoch's other 2, then epoch 1 as the uninterrupted run did.
    assert len(resumed) >= 9
    assert resumed == straight[: len(resumed)]


# ---------------------------------------------------------------------------------------------
# Config and the real loader


def _config(dataset: Path | None, *sets: str):
    from ruslan_glowtts.common.presets import load_preset
    from ruslan_glowtts.training.config import build_config, parse_set_option

    config, _ = build_config(
        preset=load_preset("stable"), dataset_path=dataset, cli_layers=[(parse_set_option(s), "test") for s in sets]
    )
    return config


def test_buckets_are_on_by_default_and_checked():
    from ruslan_glowtts.common.errors import UserError

    config = _config(None)
    assert config.bucket_by_length and config.max_frames_per_batch == 0
    with pytest.raises(UserError, match="max_frames_per_batch needs bucket_by_length"):
        _config(None, "bucket_by_length=false", "max_frames_per_batch=4000")
    with pytest.raises(UserError, match="bucket_pool_batches must be >= 1"):
        _config(None, "bucket_pool_batches=0")


def test_training_loader_buckets_the_filtered_sample_list(prepared_sample):
    from TTS.tts.datasets import load_tts_samples

    from ruslan_glowtts.training.model import RuslanGlowTTS

    # A text cap that filters some utterances out: the sampler must index what is left.
    config = _config(prepared_sample, "batch_size=4", "num_loader_workers=0", "max_text_len=40")
    samples, _ = load_tts_samples(config, eval_split=False)
    model = RuslanGlowTTS(config)
    loader = model.get_data_loader(config, samples=samples, verbose=False)
    sampler = loader.batch_sampler
    assert isinstance(sampler, LengthBucketBatchSampler)
    kept = loader.dataset.samples
    assert 0 < len(kept) < len(samples)
    assert sampler.lengths.tolist() == [s["audio_length"] // 256 + 1 for s in kept]
    names = [name for batch in loader for name in batch["audio_unique_names"]]
    assert sorted(names) == sorted(s["audio_unique_name"] for s in kept)
    eval_loader = model.get_data_loader(config, is_eval=True, samples=samples, verbose=False)
    assert not isinstance(eval_loader.batch_sampler, LengthBucketBatchSampler)  # evaluation stays Coqui's
    off = _config(prepared_sample, "batch_size=4", "num_loader_workers=0", "bucket_by_length=false")
    assert not isinstance(
        model.get_data_loader(off, samples=samples, verbose=False).batch_sampler, LengthBucketBatchSampler
    )


def test_bucket_length_grid():
    from ruslan_glowtts.training.batch_sampler import bucket_length

    grid = sorted({bucket_length(n) for n in range(1, 1400)})
    assert grid[:3] == [32, 36, 40] and 1024 in grid and 1152 in grid
    assert len(grid) <= 45  # a small fixed set of shapes for RUSLAN's 0.5-15 s (~43-1300 frames)
    for n in range(1, 1400):
        padded = bucket_length(n)
        assert padded >= n and (padded <= 32 or padded - n < n / 8 + 1)  # under 1/8 extra frames
        assert padded % 2 == 0  # GlowTTS squeezes frame pairs
    assert bucket_length(20, minimum=16) == 20 and bucket_length(5, minimum=16) == 16


def test_padding_to_the_grid_changes_no_loss():
    import torch

    from ruslan_glowtts.training.data_loader import pad_to_buckets
    from tests.helpers import glowtts_losses, tiny_model

    torch.manual_seed(0)
    model = tiny_model()
    model.eval()  # no dropout: the same numbers with and without the padding
    g = torch.Generator().manual_seed(0)
    batch = {
        "token_id": torch.randint(1, 30, (3, 21), generator=g),
        "mel": torch.randn(3, 75, 80, generator=g),
        "stop_targets": torch.zeros(3, 75),
    }
    x_lengths, y_lengths = torch.tensor([21, 17, 9]), torch.tensor([75, 60, 40])
    padded = dict(batch)
    pad_to_buckets(padded)
    assert padded["mel"].shape == (3, 80, 80) and padded["token_id"].shape == (3, 22)
    assert padded["stop_targets"].shape == (3, 80)
    with torch.no_grad():
        losses = [glowtts_losses(model, b["token_id"], x_lengths, b["mel"], y_lengths) for b in (batch, padded)]
    for key in ("loss", "log_mle", "loss_dur"):
        assert torch.allclose(losses[0][key], losses[1][key], rtol=1e-5), key
