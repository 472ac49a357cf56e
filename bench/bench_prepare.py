"""Benchmark of `python -m ruslan_glowtts.prepare` and of the feature cache (not a test).

    python bench/bench_prepare.py                 # 1,000 files, writes docs/bench_prepare.md
    python bench/bench_prepare.py --files 200 --loader-items 100 --out /tmp/b.md   # quicker

1. Generates a RUSLAN-format corpus of N files (44.1 kHz mono 16-bit, 4-6 s, mean 5 s: the
   bundled sample's utterances concatenated) in a temp folder.
2. Times prepare on it with --jobs 2 (subprocess), samples the RSS of the whole process tree,
   then times a second run (no work: the fixed cost) and extrapolates to RUSLAN's 22,200 files.
3. Measures data-loader items/s in one process (num_workers=0): Coqui's stock TTSDataset on the
   44.1 kHz source with audio.resample = true, on the prepared 22.05 kHz files, and a TTSDataset
   that takes its mels from the feature cache (a stand-in for the training loader's cache path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE = REPO / "data" / "sample"
META = "metadata_RUSLAN_22200.csv"
RUSLAN_FILES = 22_200
RATE = 44_100


def make_corpus(root: Path, files: int) -> float:
    """A RUSLAN-layout corpus of `files` utterances; returns the mean duration in seconds."""
    (root / "RUSLAN").mkdir(parents=True)
    texts = [line.split("|", 1) for line in (SAMPLE / META).read_text(encoding="utf-8").splitlines()]
    audio = [sf.read(SAMPLE / "RUSLAN" / f"{id_}.wav", dtype="int16")[0] for id_, _ in texts]
    pause = np.zeros(int(0.2 * RATE), dtype=np.int16)
    lines, total = [], 0.0
    for i in range(files):
        a, b = i % len(texts), (i * 7 + 3) % len(texts)
        seconds = 4.0 + (i % 21) * 0.1
        clip = np.concatenate([audio[a], pause, audio[b], pause])
        clip = np.tile(clip, int(np.ceil(seconds * RATE / len(clip))))[: int(seconds * RATE)]
        id_ = f"{i:06d}_RUSLAN"
        sf.write(root / "RUSLAN" / f"{id_}.wav", clip, RATE, subtype="PCM_16")
        lines.append(f"{id_}|{texts[a][1]} {texts[b][1]}")
        total += seconds
    (root / META).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return total / files


def _tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and all its descendants (shared pages counted per process)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            with open(f"/proc/{p}/task/{p}/children") as children:
                stack += [int(c) for c in children.read().split()]
        except (OSError, StopIteration):
            continue
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_prepare(src: Path, dst: Path, jobs: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "ruslan_glowtts.prepare", "--src", str(src), "--dst", str(dst),
               "--jobs", str(jobs)]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak_tree = 0

    def sample() -> None:
        nonlocal peak_tree
        while process.poll() is None:
            peak_tree = max(peak_tree, _tree_rss_kb(process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = process.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"prepare failed ({process.returncode}):\n{out}")
    report = json.loads((dst / "report.json").read_text(encoding="utf-8"))
    return {"wall": wall, "peak_tree_mb": peak_tree / 1024, "run": report["run"], "summary": report["summary"]}


# ----------------------------------------------------------------------------------------------
# Loader


class _MelPassThrough:
    """Coqui's collate_fn calls ap.melspectrogram(wav); for cached items "wav" already is the mel."""

    def __init__(self, ap: Any) -> None:
        self._ap = ap

    def melspectrogram(self, mel: np.ndarray) -> np.ndarray:
        return mel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ap, name)


def _dataset(config: Any, samples: list[dict[str, Any]], cache: Any = None) -> Any:
    from TTS.tts.datasets.dataset import TTSDataset
    from TTS.tts.utils.text.tokenizer import TTSTokenizer
    from TTS.utils.audio import AudioProcessor

    class CachedFeatureDataset(TTSDataset):
        def load_data(self, idx: int) -> dict[str, Any]:
            item = self.samples[idx]
            mel = cache.load(item["audio_file"])
            if mel is None:  # not cached: Coqui's own path
                return super().load_data(idx)
            return {"raw_text": item["text"], "token_ids": self.get_token_ids(idx, item["text"], item["language"]),
                    "wav": mel, "pitch": None, "energy": None, "attn": None, "item_idx": item["audio_file"],
                    "speaker_name": item["speaker_name"], "language_name": item["language"],
                    "wav_file_name": os.path.basename(item["audio_file"]),
                    "audio_unique_name": item["audio_unique_name"]}

    tokenizer, _ = TTSTokenizer.init_from_config(config)
    ap = AudioProcessor(config.audio)
    cls = TTSDataset if cache is None else CachedFeatureDataset
    # The arguments BaseTTS.get_data_loader passes for GlowTTS (no f0, no linear spec, no wav).
    dataset = cls(outputs_per_step=1, compute_linear_spec=False, samples=samples, ap=ap, return_wav=False,
                  batch_group_size=0, min_text_len=0, max_text_len=10**6, min_audio_len=0, max_audio_len=10**9,
                  use_noise_augment=False, tokenizer=tokenizer, start_by_longest=False)
    if cache is not None:
        dataset.ap = _MelPassThrough(ap)
    dataset.preprocess_samples()
    return dataset


def loader_items_per_second(config: Any, items: int, cache: Any = None, blas_threads: int | None = None) -> float:
    import torch
    from threadpoolctl import threadpool_limits
    from TTS.tts.datasets import load_tts_samples

    samples, _ = load_tts_samples(config, eval_split=False)
    dataset = _dataset(config, samples[:items], cache)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=False, collate_fn=dataset.collate_fn,
                                         num_workers=0, drop_last=False)
    with threadpool_limits(limits=blas_threads):
        next(iter(loader))  # warm-up: lazy imports, numba
        started = time.perf_counter()
        count = sum(len(batch["token_id_lengths"]) for batch in loader)
        elapsed = time.perf_counter() - started
    return count / elapsed


def _config(dataset: Path, **audio: Any) -> Any:
    from ruslan_glowtts.config import build_config, parse_set_option
    from ruslan_glowtts.presets import load_preset

    sets = [(parse_set_option(f"audio.{k}={json.dumps(v)}"), "bench") for k, v in audio.items()]
    config, _ = build_config(preset=load_preset("stable"), dataset_path=dataset, cli_layers=sets)
    return config


# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--loader-items", type=int, default=200, help="utterances per stock-loader measurement")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench_prepare.md")
    parser.add_argument("--keep", action="store_true", help="keep the generated corpus")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    src, dst = workdir / "src", workdir / "prepared"
    t0 = time.perf_counter()
    mean_seconds = make_corpus(src, args.files)
    print(f"generated {args.files} files ({mean_seconds:.2f} s mean) in {time.perf_counter() - t0:.1f} s: {src}")

    load_before = os.getloadavg()[0]
    cpu_start = _children_cpu()
    first = run_prepare(src, dst, args.jobs)
    first_cpu = _children_cpu() - cpu_start
    print(f"prepare: {first['wall']:.1f} s wall, {first_cpu:.1f} s CPU, {first['run']}")
    cpu_start = _children_cpu()
    second = run_prepare(src, dst, args.jobs)
    second_cpu = _children_cpu() - cpu_start
    load_after = os.getloadavg()[0]
    print(f"re-run (no work): {second['wall']:.1f} s wall, {second_cpu:.1f} s CPU, {second['run']}")
    # The processing phase (after imports and the one-time warm-up) grows with the corpus; the rest
    # of the first run is fixed cost, slightly overstated (it includes reading 1,000 metadata lines).
    processing = first["run"]["processing_seconds"]
    fixed = first["wall"] - processing
    per_file = processing / args.files
    extrapolated = fixed + per_file * RUSLAN_FILES
    conservative = first["wall"] * RUSLAN_FILES / args.files
    # CPU-bound view, insensitive to other load on the machine: the processing phase's CPU time
    # (parent + workers) spread over the cores, plus the fixed cost.
    cpu_per_file = first["run"]["processing_cpu_seconds"] / args.files
    cpu_bound = fixed + cpu_per_file * RUSLAN_FILES / args.jobs
    children_maxrss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    from ruslan_glowtts.feature_cache import FeatureCache

    items = min(args.loader_items, args.files)
    prepared_config = _config(dst)
    cache = FeatureCache.for_config(dst, prepared_config.audio)
    assert cache is not None, "prepare built no usable cache"
    from ruslan_glowtts.process_tuning import keep_freed_memory

    stock = [
        ("stock, 44.1 kHz source, audio.resample = true", _config(src, resample=True), None, None, items),
        ("stock, prepared 22.05 kHz", prepared_config, None, None, items),
        ("feature cache", prepared_config, cache, None, args.files),
    ]
    tuned = [  # the same after ruslan_glowtts.process_tuning (what a loader worker_init_fn could do)
        ("stock, prepared 22.05 kHz, tuned process", prepared_config, None, 1, items),
        ("feature cache, tuned process", prepared_config, cache, 1, args.files),
    ]
    results = []
    for group in (stock, tuned):
        if group is tuned:
            keep_freed_memory()
        for name, config, use_cache, blas, n in group:
            rate = loader_items_per_second(config, n, use_cache, blas)
            results.append((name, n, rate))
            print(f"loader: {name}: {rate:.1f} items/s ({n} items)")
    stock_resample, stock_22k = results[0][2], results[1][2]
    cache_rate = results[2][2]

    feature_mb = sum(p.stat().st_size for p in cache.folder.glob("*.npy")) / 2**20
    lines = [
        f"## Prepare benchmark ({args.files} generated files, {mean_seconds:.1f} s mean, 44.1 kHz)",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}; `--jobs {args.jobs}`. Command: "
        f"`python bench/bench_prepare.py --files {args.files} --loader-items {args.loader_items}`.",
        "",
        "| prepare | value |",
        "|---|---|",
        f"| first run, {args.files} files (wall) | {first['wall']:.1f} s |",
        f"| of which processing the files (parallel phase) | {processing:.1f} s "
        f"({args.files / processing:.0f} files/s, {per_file * 1000:.1f} ms per file on {args.jobs} cores) |",
        f"| of which fixed cost (imports, warm-up, metadata, outputs) | {fixed:.1f} s |",
        f"| re-run, nothing to do | {second['wall']:.1f} s ({second['run']['processed']} files processed) |",
        f"| extrapolated to {RUSLAN_FILES:,} files: fixed + per file x {RUSLAN_FILES:,} | "
        f"{extrapolated:.0f} s ({extrapolated / 60:.1f} min) |",
        f"| extrapolated, conservative: first run x {RUSLAN_FILES / args.files:.1f} | "
        f"{conservative:.0f} s ({conservative / 60:.1f} min) |",
        f"| CPU time, first run (all processes) / re-run | {first_cpu:.1f} s / {second_cpu:.1f} s |",
        f"| extrapolated from CPU time, {args.jobs} idle cores: fixed + processing CPU per file x "
        f"{RUSLAN_FILES:,} / {args.jobs} | {cpu_bound:.0f} s ({cpu_bound / 60:.1f} min; "
        f"{cpu_per_file * 1000:.1f} ms CPU per file, parent and workers) |",
        f"| load average before / after the prepare runs (other processes on the machine) | "
        f"{load_before:.2f} / {load_after:.2f} |",
        f"| peak RSS, largest single process (getrusage) | {children_maxrss_mb:.0f} MB |",
        f"| peak RSS, whole process tree (sampled, shared pages counted per process) | "
        f"{first['peak_tree_mb']:.0f} MB |",
        f"| feature cache size | {feature_mb:.1f} MB ({feature_mb / args.files * RUSLAN_FILES / 1024:.1f} GB "
        f"for {RUSLAN_FILES:,} files) |",
        "",
        "| data loader, one process (num_workers=0), batch 8 | items/s | vs stock 44.1 kHz | vs stock 22.05 kHz |",
        "|---|---|---|---|",
    ]
    for name, n, rate in results:
        lines.append(f"| {name} ({n} items) | {rate:.1f} | {rate / stock_resample:.1f}x | {rate / stock_22k:.1f}x |")
    lines += ["", "Tuned process = one BLAS thread and glibc keeping freed buffers "
              "(`ruslan_glowtts.process_tuning`); the stock rows run with numpy's defaults, as Coqui does."]
    lines += [
        "",
        f"Targets: {RUSLAN_FILES:,} files in <= 5 min on 2 cores: "
        f"{'met' if extrapolated <= 300 else 'MISSED'} ({extrapolated / 60:.1f} min); loader with the cache "
        f">= 10x stock: {'met' if cache_rate >= 10 * max(stock_resample, stock_22k) else 'MISSED'} "
        f"({cache_rate / stock_resample:.0f}x / {cache_rate / stock_22k:.0f}x).",
        "",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"written to {args.out}")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
