"""Benchmark of length-bucketed batches (issue 11), run by `python bench/run.py batching`.

Writes the section "## 6. Length-bucketed batches" of docs/BENCHMARKS.md; nothing here asserts.

1. Corpus: generated with RUSLAN's length spread (log-normal, mean ~5 s, clipped to 0.5-15 s),
   made of the bundled sample's espeak-ng utterances strung together, text cut in proportion to
   the audio: speech-like, with text length growing with duration as in RUSLAN. Through prepare.
2. Padded share of the frames computed, per epoch, for each batching: the stock recipe (Coqui's
   length-sorted, unshuffled order), the kit's random batches (as before this change), the kit's
   buckets, and the frame budget; on the generated corpus and on 22,200 simulated lengths.
3. Step cost, full-size GlowTTS, fp32 CPU, batch 8: the real loaders (Coqui's GlowTTS loader for
   the stock order, the kit's for the others) give each variant's batches of one epoch; a
   stratified sample of them (one per equal-count stratum of padded frames) is trained on with one
   model and Coqui's RAdam (forward, backward, clip, step), the variants interleaved in blocks
   (repeats), so machine drift hits all alike. Epoch time = batches per epoch x mean step time.
4. Loss equivalence: the tiny GlowTTS of the tests trained by train_ruslan_glowtts.py for the
   same number of epochs (same samples seen) with random vs bucketed batches, several seeds:
   training loss over the last epoch and eval loss at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ruslan_glowtts.training.batch_sampler import LengthBucketBatchSampler, padded_share  # noqa: E402
from tests.helpers import TINY_ARCH  # noqa: E402

SAMPLE = REPO / "data" / "sample"
META = "metadata_RUSLAN_22200.csv"
RATE = 22_050
HOP = 256
RUSLAN_FILES = 22_200
VARIANTS = ("stock recipe", "kit random", "kit buckets", "kit frame budget")
SIGMA = 0.45  # log-normal spread: p99 ~14 s at a 5 s mean, like RUSLAN's tail


def ruslan_seconds(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(5.0) - SIGMA**2 / 2, SIGMA, count), 0.5, 15.0)


def make_length_corpus(root: Path, files: int, seed: int) -> np.ndarray:
    """A RUSLAN-layout corpus (22.05 kHz, 16-bit) with RUSLAN's length spread; returns seconds."""
    import soxr

    (root / "RUSLAN").mkdir(parents=True)
    rows = [line.split("|", 1) for line in (SAMPLE / META).read_text(encoding="utf-8").splitlines()]
    clips = []
    for id_, text in rows:
        audio, rate = sf.read(SAMPLE / "RUSLAN" / f"{id_}.wav", dtype="float32")
        clips.append((soxr.resample(audio, rate, RATE).astype(np.float32), text.strip()))
    pause = np.zeros(int(0.15 * RATE), dtype=np.float32)
    rng = np.random.default_rng(seed + 1)
    seconds = ruslan_seconds(files, seed)
    lines = []
    for i, length in enumerate(seconds):
        audio, texts, total = [], [], 0
        while total < length * RATE:
            clip, text = clips[rng.integers(len(clips))]
            audio += [clip, pause]
            texts.append(text)
            total += len(clip) + len(pause)
        text = " ".join(texts)
        keep = max(8, round(len(text) * length * RATE / total))
        cut = text[:keep].rsplit(" ", 1)[0] if " " in text[:keep] else text[:keep]
        id_ = f"{i:06d}_RUSLAN"
        sf.write(root / "RUSLAN" / f"{id_}.wav", np.concatenate(audio)[: int(length * RATE)], RATE, subtype="PCM_16")
        lines.append(f"{id_}|{cut.rstrip(' ,;:-')}.")
    (root / META).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return seconds


def prepare(src: Path, dst: Path, jobs: int = 2) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ruslan_glowtts.prepare",
            "--src",
            str(src),
            "--dst",
            str(dst),
            "--jobs",
            str(jobs),
            "--max-duration",
            "16",
        ],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kit_config(dataset: Path, *sets: str) -> Any:
    from ruslan_glowtts.common.presets import load_preset
    from ruslan_glowtts.training.config import build_config, parse_set_option
    from ruslan_glowtts.training.run import resolve_precision

    config, _ = build_config(
        preset=load_preset("stable"), dataset_path=dataset, cli_layers=[(parse_set_option(s), "bench") for s in sets]
    )
    resolve_precision(config)
    return config


def _stock_config(dataset: Path, batch: int) -> Any:
    """bench/stock_recipe.py's config: Coqui's GlowTTS defaults (sorted, unshuffled batches)."""
    from stock_recipe import russian_characters
    from TTS.tts.configs.glow_tts_config import GlowTTSConfig
    from TTS.tts.configs.shared_configs import BaseDatasetConfig

    config = GlowTTSConfig(
        batch_size=batch,
        num_loader_workers=0,
        text_cleaner="basic_cleaners",
        use_phonemes=False,
        characters=russian_characters(),
        mixed_precision=False,
        datasets=[BaseDatasetConfig(formatter="ruslan", meta_file_train=META, path=str(dataset))],
    )
    config.audio.sample_rate = RATE
    return config


def variant_loaders(dataset: Path, batch: int, max_frames: int) -> dict[str, tuple[Any, list[list[int]]]]:
    """Each variant's training dataset and its epoch-0 batches (dataset indices), from the real loaders."""
    from TTS.tts.datasets import load_tts_samples
    from TTS.tts.models.glow_tts import GlowTTS

    from ruslan_glowtts.training.model import RuslanGlowTTS

    out: dict[str, tuple[Any, list[list[int]]]] = {}
    stock = _stock_config(dataset, batch)
    samples, _ = load_tts_samples(stock, eval_split=False)
    loader = GlowTTS(stock).get_data_loader(stock, samples=samples, verbose=False)
    order = list(iter(loader.sampler))  # SequentialSampler over Coqui's length-sorted list
    out["stock recipe"] = (loader.dataset, [order[i : i + batch] for i in range(0, len(order), batch)])
    for name, sets in {
        "kit random": ["bucket_by_length=false"],
        "kit buckets": [],
        "kit frame budget": [f"max_frames_per_batch={max_frames}"],
    }.items():
        # The stock recipe has no length caps; the corpus is 0.5-15 s already: keep every utterance.
        config = _kit_config(
            dataset, f"batch_size={batch}", "num_loader_workers=0", "max_audio_len=400000", "max_text_len=1000", *sets
        )
        samples, _ = load_tts_samples(config, eval_split=False)
        loader = RuslanGlowTTS(config).get_data_loader(config, samples=samples, verbose=False)
        if name == "kit random":  # torch's RandomSampler, seeded as the Trainer seeds it
            import torch

            torch.manual_seed(config.training_seed)
            order = list(iter(loader.sampler))
            batches = [order[i : i + batch] for i in range(0, len(order), batch)]
        else:
            batches = loader.batch_sampler.epoch_batches(0)
        out[name] = (loader.dataset, batches)
    return out


def frames(dataset: Any) -> np.ndarray:
    return np.array([int(s["audio_length"]) // HOP + 1 for s in dataset.samples])


def padding_table(loaders: dict[str, tuple[Any, list[list[int]]]], batch: int, max_frames: int) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name, (dataset, batches) in loaders.items():
        lengths = frames(dataset)
        padded = [len(b) * int(lengths[b].max()) for b in batches]
        table[name] = {
            "padded_share": padded_share(batches, lengths),
            "batches": len(batches),
            "mean_batch": float(np.mean([len(b) for b in batches])),
            "largest_batch_frames": max(padded),
            "mean_batch_frames": float(np.mean(padded)),
        }
    # The same on 22,200 simulated RUSLAN lengths (more neighbours per pool).
    lengths = (ruslan_seconds(RUSLAN_FILES, 1) * RATE / HOP).astype(np.int64) + 1
    order = np.random.default_rng(0).permutation(len(lengths))
    sort = np.argsort(lengths, kind="stable")
    simulated = {
        "stock recipe": [sort[i : i + batch] for i in range(0, len(sort), batch)],
        "kit random": [order[i : i + batch] for i in range(0, len(order), batch)],
        "kit buckets": LengthBucketBatchSampler(lengths, batch_size=batch, seed=0).epoch_batches(0),
        "kit frame budget": LengthBucketBatchSampler(
            lengths, batch_size=batch, max_frames=max_frames, seed=0
        ).epoch_batches(0),
    }
    for name, batches in simulated.items():
        table[name]["simulated_padded_share"] = padded_share(batches, lengths)
        table[name]["simulated_batches"] = len(batches)
    return table


def step_costs(
    loaders: dict[str, tuple[Any, list[list[int]]]],
    dataset: Path,
    batch: int,
    per_block: int,
    repeats: int,
    device: str = "cpu",
    model_sets: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Seconds per training step on a stratified sample of each variant's epoch, interleaved; on
    CUDA also each variant's peak allocated memory."""
    import torch
    from TTS.utils.radam import RAdam

    from ruslan_glowtts.training.model import RuslanGlowTTS

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    config = _kit_config(dataset, f"batch_size={batch}", "num_loader_workers=0", *model_sets)
    torch.manual_seed(0)
    model = RuslanGlowTTS(config).to(device)
    model.train()
    model.run_data_dep_init = False
    criterion = model.get_criterion()
    optimizer = RAdam(model.parameters(), lr=1e-5, betas=(0.9, 0.998), weight_decay=1e-6)
    picks: dict[str, list[list[list[int]]]] = {}
    count = per_block * repeats
    for name, (ds, batches) in loaders.items():
        # Equal-count strata of the epoch's batches by padded frames; from each, the batch nearest
        # the stratum's mean padded frames (step cost is close to linear in them, so the strata's
        # representatives average to the epoch's mean step, long tail included).
        lengths = frames(ds)
        cost = np.array([len(b) * int(lengths[b].max()) for b in batches])
        order = np.argsort(cost, kind="stable")
        chosen = []
        for stratum in np.array_split(order, count):
            chosen.append(batches[int(stratum[np.argmin(np.abs(cost[stratum] - cost[stratum].mean()))])])
        # Snake order over the blocks (0, 1, 1, 0, 0, 1, ...): each block gets low and high strata alike.
        picks[name] = [[] for _ in range(repeats)]
        for i, batch_ in enumerate(chosen):
            lap, pos = divmod(i, repeats)
            picks[name][pos if lap % 2 == 0 else repeats - 1 - pos].append(batch_)

    def step(ds: Any, indices: list[int]) -> float:
        data = model.format_batch(ds.collate_fn([ds[i] for i in indices]))
        data = {k: v.to(device) if torch.is_tensor(v) else v for k, v in data.items()}
        sync()
        started = time.perf_counter()
        _, losses = model.train_step(data, criterion)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - started

    for name, (ds, batches) in loaders.items():  # warm-up: allocator, numba, lazy imports
        step(ds, picks[name][0][0])
    blocks: dict[str, list[dict[str, float]]] = {name: [] for name in loaders}
    peak_mib = {name: 0.0 for name in loaders}
    all_times: dict[str, list[float]] = {name: [] for name in loaders}
    names = list(loaders)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who goes first
            ds, batches = loaders[name]
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            times = [step(ds, b) for b in picks[name][r]]
            all_times[name] += times
            if cuda:
                peak_mib[name] = max(peak_mib[name], torch.cuda.max_memory_allocated() / 2**20)
            samples_per_epoch = sum(map(len, batches))
            epoch_s = len(batches) * statistics.mean(times)
            blocks[name].append(
                {"step_s": statistics.median(times), "epoch_s": epoch_s, "samples_per_s": samples_per_epoch / epoch_s}
            )
            print(f"   repeat {r + 1} {name}: {samples_per_epoch / epoch_s:.2f} samples/s", flush=True)
    if cuda:  # the epoch's peak: its batch with the most padded frames
        for name, (ds, batches) in loaders.items():
            lengths = frames(ds)
            torch.cuda.reset_peak_memory_stats()
            step(ds, max(batches, key=lambda b: len(b) * int(lengths[b].max())))
            peak_mib[name] = max(peak_mib[name], torch.cuda.max_memory_allocated() / 2**20)
    out = {}
    for name, b in blocks.items():
        batches = loaders[name][1]
        epoch_s = len(batches) * statistics.mean(all_times[name])  # every stratum once
        out[name] = {
            "blocks": b,
            "peak_mib": peak_mib[name],
            "step_times": all_times[name],
            "samples_per_s": sum(map(len, batches)) / epoch_s,
            "epoch_s": epoch_s,
            "range": (min(x["samples_per_s"] for x in b), max(x["samples_per_s"] for x in b)),
            "ruslan_epoch_h": epoch_s * RUSLAN_FILES / sum(map(len, batches)) / 3600,
        }
    return out


TINY = [
    *TINY_ARCH,
    "data_dep_init_steps=2",
    "num_loader_workers=0",
    "num_eval_loader_workers=0",
    "test_delay_epochs=100000",
    "plot_step=1",
    "print_step=1000",
    "eval_split_size=24",
    "lr=1e-3",
    "lr_scheduler_params.warmup_steps=50",
    "save_step=100000",
]


def equivalence(dataset: Path, work: Path, seeds: list[int], epochs: int, batch: int) -> dict[str, Any]:
    import train_ruslan_glowtts
    from ruslan_glowtts.monitor.events import read_run

    results: dict[str, list[dict[str, float]]] = {"random": [], "buckets": []}
    for seed in seeds:
        for name, runs in results.items():
            output = work / f"eq_{name}_{seed}"
            sets = [
                *TINY,
                f"epochs={epochs}",
                f"batch_size={batch}",
                f"bucket_by_length={str(name == 'buckets').lower()}",
            ]
            argv = [
                "--preset",
                "stable",
                "--dataset-path",
                str(dataset),
                "--output-path",
                str(output),
                "--seed",
                str(seed),
            ]
            for s in sets:
                argv += ["--set", s]
            # In this process (imports done once): the entry point's own main(), as the tests call it.
            code = train_ruslan_glowtts.main(argv)
            if code != 0:
                raise SystemExit(f"equivalence run {name} seed {seed} failed ({code})")
            (run,) = [p for p in output.iterdir() if p.is_dir()]
            scalars = read_run(run).scalars
            train = scalars["TrainIterStats/loss"]
            evals = scalars["EvalStats/avg_loss"]
            steps_per_epoch = len(train.values) / epochs
            last_epoch = train.values[-int(steps_per_epoch) :]
            runs.append(
                {
                    "seed": seed,
                    "first_loss": float(np.mean(train.values[: int(steps_per_epoch)])),
                    "last_epoch_loss": float(np.mean(last_epoch)),
                    "eval_loss": float(evals.values[-1]),
                    "eval_losses": evals.values.tolist(),
                    "steps": len(train.values),
                }
            )
            print(
                f"   {name} seed {seed}: eval loss {runs[-1]['eval_loss']:.4f}, "
                f"last-epoch train loss {runs[-1]['last_epoch_loss']:.4f}",
                flush=True,
            )
    return results


def run(work: Path, quick: bool) -> dict[str, Any]:
    # A full-size step at batch 8 takes 2-8 s on 2 quiet cores (tens of seconds on a busy machine):
    # 12 stratified steps per variant in 3 interleaved blocks.
    # --quick times the tiny model instead (it checks the harness; its step numbers mean nothing).
    files, per_block, repeats = (300, 1, 2) if quick else (1200, 4, 3)
    model_sets = tuple(TINY_ARCH) if quick else ()
    eq_files, seeds, epochs = (80, [1, 2], 2) if quick else (120, [1, 2, 3], 3)
    batch, max_frames = 8, 8 * 500  # the budget: batch 8 of ~5.8 s (about the 75th percentile)
    result: dict[str, Any] = {
        "load": [os.getloadavg()[0]],
        "files": files,
        "batch": batch,
        "max_frames": max_frames,
        "per_block": per_block,
        "repeats": repeats,
        "eq_files": eq_files,
        "seeds": seeds,
        "epochs": epochs,
    }
    print(f"6a. corpus: {files} generated utterances (RUSLAN's length spread), prepare", flush=True)
    seconds = make_length_corpus(work / "len_src", files, seed=0)
    result["corpus"] = {
        "mean_s": float(seconds.mean()),
        "min_s": float(seconds.min()),
        "max_s": float(seconds.max()),
        "p50_s": float(np.percentile(seconds, 50)),
        "p99_s": float(np.percentile(seconds, 99)),
    }
    prepare(work / "len_src", work / "len")
    loaders = variant_loaders(work / "len", batch, max_frames)
    result["padding"] = padding_table(loaders, batch, max_frames)
    print(f"   {json.dumps(result['padding'])}", flush=True)
    print(f"6b. step cost: full-size GlowTTS, batch {batch}, {repeats} x {per_block} steps per variant", flush=True)
    result["steps"] = step_costs(loaders, work / "len", batch, per_block, repeats, model_sets=model_sets)
    print(f"6c. loss equivalence: tiny GlowTTS, {len(seeds)} seeds x random/buckets, {epochs} epochs", flush=True)
    make_length_corpus(work / "eq_src", eq_files, seed=10)
    prepare(work / "eq_src", work / "eq")
    result["equivalence"] = equivalence(work / "eq", work, seeds, epochs, batch)
    result["load"].append(os.getloadavg()[0])
    return result


def _spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


def section(r: dict[str, Any], machine: str, quick: bool) -> str:
    pad, steps, eq = r["padding"], r["steps"], r["equivalence"]
    random_rate, stock_rate = steps["kit random"]["samples_per_s"], steps["stock recipe"]["samples_per_s"]
    bucket = steps["kit buckets"]
    c = r["corpus"]
    goal_pad = pad["kit buckets"]["padded_share"] <= 0.10
    # Block estimates of one variant more than 1.5x apart: machine noise decides the ratio, say so.
    noise = max(steps[n]["range"][1] / steps[n]["range"][0] for n in VARIANTS)
    noisy = f", but noisy: one variant's blocks differ {noise:.1f}x" if noise > 1.5 else ""
    goal_random = bucket["samples_per_s"] >= 1.3 * random_rate
    goal_stock = bucket["samples_per_s"] >= 1.2 * stock_rate
    rnd_eval = [x["eval_loss"] for x in eq["random"]]
    bkt_eval = [x["eval_loss"] for x in eq["buckets"]]
    rnd_train = [x["last_epoch_loss"] for x in eq["random"]]
    bkt_train = [x["last_epoch_loss"] for x in eq["buckets"]]
    all_steps = [t for n in VARIANTS for t in steps[n]["step_times"]]
    per_utt = {n: pad[n]["mean_batch_frames"] / pad[n]["mean_batch"] for n in VARIANTS}  # padded frames/utterance
    spread = max(rnd_eval) - min(rnd_eval)
    gap = abs(statistics.mean(bkt_eval) - statistics.mean(rnd_eval))
    goal_eq = gap <= spread
    lines = [
        "## 6. Length-bucketed batches",
        "",
        (
            f"`python bench/run.py batching{' --quick' if quick else ''}` (bench/batching.py) writes this section; "
            f"{machine}. Load average at start/end: {r['load'][0]:.2f}/{r['load'][1]:.2f} (compare the ratios "
            "within this run, not absolute times)."
        ),
        "",
        (
            f"Corpus: {r['files']} generated utterances with RUSLAN's length spread (log-normal, mean {c['mean_s']:.1f} s, "
            f"median {c['p50_s']:.1f} s, p99 {c['p99_s']:.1f} s, {c['min_s']:.1f}-{c['max_s']:.1f} s): the bundled "
            "sample's utterances strung together and cut to length, text cut in proportion, so text length grows "
            "with duration as in RUSLAN; prepared with `prepare` (feature cache). Batch 8; frame budget "
            f"`max_frames_per_batch = {r['max_frames']}` (8 utterances of ~5.8 s)."
        ),
        "",
        "### Goals",
        "",
        "| goal | measured | |",
        "|---|---|---|",
        (
            f"| padded share with buckets <= 10 % (random: 43 %) | {pad['kit buckets']['padded_share']:.1%} "
            f"(random {pad['kit random']['padded_share']:.1%}) | {'met' if goal_pad else 'missed'} |"
        ),
        (
            f"| samples/s per CPU step >= 1.3x the kit's random batches | {bucket['samples_per_s'] / random_rate:.2f}x "
            f"(padded frames per utterance predict {per_utt['kit random'] / per_utt['kit buckets']:.2f}x) | "
            f"{'met' if goal_random else 'missed'}{noisy} |"
        ),
        (
            f"| samples/s per CPU step >= 1.2x the stock recipe | {bucket['samples_per_s'] / stock_rate:.2f}x "
            f"(padded frames per utterance predict {per_utt['stock recipe'] / per_utt['kit buckets']:.2f}x) | "
            f"{'met' if goal_stock else 'missed'}{noisy} |"
        ),
        (
            f"| loss after the same samples within the seed-to-seed spread of random batches | eval loss: buckets "
            f"{statistics.mean(bkt_eval):.4f} vs random {statistics.mean(rnd_eval):.4f} (difference {gap:.4f}; random "
            f"seeds span {spread:.4f}) | {'met' if goal_eq else 'missed'} |"
        ),
        "",
        "### Padding: share of computed frames (batch size x longest in the batch) that are padding",
        "",
        (
            f"| batching | generated corpus ({r['files']}) | 22,200 simulated RUSLAN lengths | batches per epoch | "
            "utterances per batch | padded frames per batch: mean / largest |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        p = pad[name]
        lines.append(
            f"| {name} | {p['padded_share']:.1%} | {p['simulated_padded_share']:.1%} | {p['batches']} | "
            f"{p['mean_batch']:.1f} | {p['mean_batch_frames']:.0f} / {p['largest_batch_frames']} |"
        )
    lines += [
        "",
        (
            "The stock recipe pads little because it never shuffles: every epoch is the same length-sorted "
            "order, shortest first (the kit's base config explains why it shuffles). The largest batch sets "
            "the peak activation memory; the frame budget bounds it."
        ),
        "",
        "### Step cost: full-size GlowTTS, fp32 CPU, batch 8",
        "",
        (
            f"Each variant's epoch-0 batches from the real loaders; {r['per_block'] * r['repeats']} of them per "
            "variant, one from each of that many equal-count strata of padded frames (the batch nearest the stratum's "
            "mean: a stratified sample of the epoch, long tail included), trained on "
            "with one model and Coqui's RAdam (forward, backward, clip, optimizer step); variants interleaved in "
            f"{r['repeats']} blocks of {r['per_block']} steps, the first variant rotating. Epoch time = batches "
            "per epoch x mean step time; samples/s = utterances per epoch / epoch time; "
            "samples/s from all the variant's steps (every stratum once); in brackets the blocks' own estimates, each "
            "from its share of the strata (low and high strata alike), which shows the repeat-to-repeat noise. Loading "
            "is not timed (workers overlap it; sections 2-3)."
        ),
        "",
        (
            "| batching | samples/s (blocks) | vs kit random | vs stock | median step (s) | RUSLAN epoch, 22,200 "
            "utterances (h) |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        s = steps[name]
        lines.append(
            f"| {name} | {s['samples_per_s']:.2f} ({s['range'][0]:.2f}-{s['range'][1]:.2f}) | "
            f"{s['samples_per_s'] / random_rate:.2f}x | {s['samples_per_s'] / stock_rate:.2f}x | "
            f"{statistics.median(s['step_times']):.2f} | {s['ruslan_epoch_h']:.2f} |"
        )
    lines += [
        "",
        (
            "Reading it: if step cost follows padded frames, buckets and the frame budget land near the stock "
            "recipe's sorted order (which pads least of all, never shuffling) and well above random batches (the "
            "goals table gives that prediction next to each measured ratio); against the stock recipe's whole "
            "training loop the kit's further gain is its loader (feature cache, sections 2-3), not batching. "
            f"In this run single full-size steps took {min(all_steps):.0f}-{max(all_steps):.0f} s and each variant "
            f"trained on {r['per_block'] * r['repeats']} batches: a measured ratio far from its prediction, or blocks "
            "that disagree, mean machine noise, not a property of the batching (the load averages above say how "
            "busy the machine was; the GPU check measures the same on a GPU)."
        ),
        "",
        "### Loss equivalence: what the model learns",
        "",
        (
            f"The tests' tiny GlowTTS (train_ruslan_glowtts.py, preset stable with lr 1e-3 and a 50-step warmup so "
            f"that it learns within the run) on {r['eq_files']} generated utterances of the same kind ({24} held out "
            f"for eval), batch 8, {r['epochs']} epochs: every run sees the same utterances the same number of "
            "times. Loss = GlowTTS's loss per step (it is normalised per frame); train = mean over the last "
            "epoch's steps; eval = EvalStats/avg_loss after the last epoch. The audio is espeak-ng speech with "
            "its own text, so there is something to learn (the loss falls from the first epoch's mean)."
        ),
        "",
        "| seed | random: first epoch / last epoch / eval | buckets: first epoch / last epoch / eval |",
        "|---|---|---|",
    ]
    for a, b in zip(eq["random"], eq["buckets"], strict=True):
        lines.append(
            f"| {a['seed']} | {a['first_loss']:.4f} / {a['last_epoch_loss']:.4f} / {a['eval_loss']:.4f} | "
            f"{b['first_loss']:.4f} / {b['last_epoch_loss']:.4f} / {b['eval_loss']:.4f} |"
        )
    lines += [
        (
            f"| spread over seeds | last epoch {_spread(rnd_train)}, eval {_spread(rnd_eval)} | last epoch "
            f"{_spread(bkt_train)}, eval {_spread(bkt_eval)} |"
        ),
        "",
        "### When to use the frame budget",
        "",
        (
            "`--set max_frames_per_batch=N` makes batches of about N padded mel frames (22,050 Hz / 256 hop: "
            "86 frames per second) instead of `batch_size` utterances: many short utterances or a few long "
            "ones. Use it when a GPU runs out of memory on the longest batches, or when a step should cost "
            "about the same whatever the lengths. Samples per step then vary (the table above: mean utterances "
            "per batch), and so does the gradient's noise; Coqui's loss is a per-frame mean, so each step "
            "weighs its frames equally and the lr needs no per-batch scaling, but pick N so that the mean "
            "batch is close to the batch size the preset's lr was tuned for (8 x ~5 s ~ 3,500-4,000 frames)."
        ),
        "",
    ]
    return "\n".join(lines)
