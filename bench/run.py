"""Benchmarks against Coqui's stock GlowTTS recipe, in one sitting; writes docs/BENCHMARKS.md.

    python bench/run.py             # ~25 minutes on 2 cores
    python bench/run.py --quick     # a few minutes: checks the harness, numbers are rough
    python bench/run.py batching    # only section 6: length-bucketed batches (bench/batching.py)
    python bench/run.py ledger      # only section 7: the utterance ledger's cost (bench/ledger_cost.py)

Everything runs here, fp32 on CPU, in this process and its children:
1. prepare on a generated RUSLAN-format corpus (44.1 kHz, 5 s mean), extrapolated to 22,200 files;
2. data loader items/s in one process (num_workers=0): Coqui's GlowTTS loader on the 44.1 kHz
   source with audio.resample = true and on the prepared 22.05 kHz files, vs the kit's loader
   reading prepare's feature cache;
3. training: bench/stock_recipe.py vs train_ruslan_glowtts.py on the same prepared utterances,
   full-size GlowTTS, batch 4, interleaved repeats:
   step time from the wall-clock stamps of the per-step TensorBoard events (median of 5-step
   windows after warm-up), time from process start to the first optimizer step, peak RSS
   (/usr/bin/time -v);
4. costs inside a step: the health guard (paired on/off steps in one process, its own code
   timed directly, a known-good save amortised), monotonic alignment search, the optimizer
   (Coqui's RAdam vs torch.optim.RAdam(foreach=True));
5. padding: random vs length-sorted batches on a simulated RUSLAN length distribution.
Benchmarks are not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from prepare_parts import children_cpu, make_corpus, run_prepare  # noqa: E402

RUSLAN_FILES = 22_200
PY = sys.executable
WARMUP_STEPS = 5  # optimizer steps after data-dependent init left out of the step-time windows
WINDOW = 5


# ---------------------------------------------------------------------------------------------
# 1-2. prepare and the data loader


def _config(dataset: Path, *sets: str) -> Any:
    from ruslan_glowtts.common.presets import load_preset
    from ruslan_glowtts.training.config import build_config, parse_set_option

    config, _ = build_config(
        preset=load_preset("stable"), dataset_path=dataset, cli_layers=[(parse_set_option(s), "bench") for s in sets]
    )
    return config


def loader_rate(model_class: Any, config: Any, items: int) -> float:
    """Items/s of a model's own training data loader, one process, after one warm-up batch."""
    from TTS.tts.datasets import load_tts_samples

    config.num_loader_workers = 0
    config.shuffle = False
    samples, _ = load_tts_samples(config, eval_split=False)
    model = model_class(config)
    loader = model.get_data_loader(config, is_eval=False, samples=samples[:items], verbose=False)
    batches = iter(loader)
    next(batches)  # lazy imports, numba compilation, file cache
    started = time.perf_counter()
    count = sum(len(batch["token_id_lengths"]) for batch in batches)
    return count / (time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# 3. training runs


def _step_stamps(run_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    stamps = []
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={SCALARS: 0})
        acc.Reload()
        if "TrainIterStats/loss" in acc.Tags()["scalars"]:
            stamps += [(e.step, e.wall_time) for e in acc.Scalars("TrainIterStats/loss")]
    return sorted(stamps)


def train_run(name: str, command: list[str], output: Path, batch: int) -> dict[str, Any]:
    """Run one training subprocess; step times from its event stamps, peak RSS from time -v."""
    output.mkdir(parents=True)
    log = output / "log.txt"
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").is_file() else []
    started = time.time()
    with open(log, "w") as handle:
        code = subprocess.call([*timer, *command], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    if code != 0:
        raise SystemExit(f"{name} failed ({code}); see {log}")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    rss = int(found.group(1)) / 1024 if found else float("nan")
    (run_dir,) = [p for p in output.iterdir() if p.is_dir()]
    stamps = _step_stamps(run_dir)
    deltas = [b[1] - a[1] for a, b in itertools.pairwise(stamps) if b[0] == a[0] + 1][WARMUP_STEPS:]
    if len(deltas) < WINDOW:
        raise SystemExit(
            f"{name}: only {len(deltas)} steps left to time after data-dependent init and "
            f"{WARMUP_STEPS} warm-up steps; give it more steps"
        )
    windows = [statistics.median(deltas[i : i + WINDOW]) for i in range(0, len(deltas) - WINDOW + 1, WINDOW)]
    step = statistics.median(windows)
    return {
        "name": name,
        "step_s": step,
        "steps_per_s": 1 / step,
        "samples_per_s": batch / step,
        "first_step_s": stamps[0][1] - started,
        "peak_rss_mb": rss,
        "steps_timed": len(deltas),
        "run_dir": str(run_dir),
    }


def training(prepared: Path, work: Path, steps: int, repeats: int, batch: int) -> dict[str, list[dict[str, Any]]]:
    ours = [
        PY,
        "train_ruslan_glowtts.py",
        "--preset",
        "stable",
        "--dataset-path",
        str(prepared),
        "--max-steps",
        str(steps),
        "--set",
        f"batch_size={batch}",
        "--set",
        "plot_step=1",
        "--set",
        "run_eval=false",
        "--set",
        "print_step=1000",
        "--set",
        "test_delay_epochs=100000",
    ]
    variants = {
        "stock recipe": [
            PY,
            "bench/stock_recipe.py",
            "--dataset-path",
            str(prepared),
            "--batch-size",
            str(batch),
            "--max-steps",
            str(steps),
            "--output-path",
        ],
        "kit": [*ours, "--output-path"],
    }
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for repeat in range(repeats):  # interleaved, so that drift on the machine hits all alike
        for name, command in variants.items():
            output = work / f"{name.replace(' ', '_').replace(',', '')}_{repeat}"
            result = train_run(name, [*command, str(output)], output, batch)
            results[name].append(result)
            print(
                f"  {name} #{repeat + 1}: {result['step_s'] * 1000:.0f} ms/step, first step after "
                f"{result['first_step_s']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    return results


# ---------------------------------------------------------------------------------------------
# 4. costs inside a step


def detector_cost(updates: int = 20_000) -> float:
    """Microseconds per update of the explosion detector on a healthy-looking stream."""
    from ruslan_glowtts.monitor.guard import Detector
    from ruslan_glowtts.training.config import HealthConfig

    detector = Detector(HealthConfig())
    norms = np.random.default_rng(0).uniform(1, 50, updates)
    started = time.perf_counter()
    for step, value in enumerate(norms):
        detector.observe(step, float(value))
    return (time.perf_counter() - started) / updates * 1e6


def one_batch_trainer(config: Any) -> tuple[Any, dict[str, Any]]:
    """A KitTrainer (full-size GlowTTS, the kit's step) and one formatted batch, for timing
    optimize() step after step without fit(); at step 1, off the checkpoint boundary."""
    import torch
    from trainer import TrainerArgs
    from TTS.tts.datasets import load_tts_samples

    from ruslan_glowtts.training import coqui_compat
    from ruslan_glowtts.training.model import RuslanGlowTTS
    from ruslan_glowtts.training.run import resolve_precision
    from ruslan_glowtts.training.trainer import KitTrainer

    resolve_precision(config)  # as train() does: no bf16 autocast on a CPU
    samples, _ = load_tts_samples(config, eval_split=False)
    torch.manual_seed(0)
    trainer = KitTrainer(
        TrainerArgs(),
        config,
        config.output_path,
        model=RuslanGlowTTS(config),
        train_samples=samples,
        eval_samples=samples[:1],
        parse_command_line_args=False,
    )
    data = trainer.format_batch(next(iter(trainer.get_train_dataloader(samples, verbose=False))))
    coqui_compat.set_global_step(trainer, 1)  # optimize() does not advance it
    return trainer, data


def close_trainer(trainer: Any) -> None:
    """What KitTrainer.fit() does on its way out, for a trainer whose fit() never ran."""
    from ruslan_glowtts.training import coqui_compat

    trainer.dashboard_logger.finish()
    coqui_compat.remove_run_log_handlers(Path(trainer.output_path), "ruslan_glowtts")


def replace_section(doc: Path, heading: str, text: str) -> None:
    """Replace the section of docs/BENCHMARKS.md that starts with `heading` (or insert it before
    ## GPU), keeping the rest."""
    text = text.rstrip("\n") + "\n\n"
    current = doc.read_text(encoding="utf-8") if doc.is_file() else "# Benchmarks\n"
    start = current.find(heading)
    if start >= 0:
        end = current.find("\n## ", start + 1)
        current = current[:start] + text + (current[end + 1 :] if end >= 0 else "")
    elif (gpu := current.find("## GPU")) >= 0:
        current = current[:gpu] + text + current[gpu:]
    else:
        current = current.rstrip("\n") + "\n\n" + text
    doc.write_text(current, encoding="utf-8")


def guard_overhead(prepared: Path, work: Path, batch: int, pairs: int) -> dict[str, float]:
    """The guard's cost per step, measured so that machine drift cancels: one KitTrainer, one
    batch, optimize() alternating guard on / off step by step (paired differences), plus the
    guard's own code timed directly, plus a known-good checkpoint save amortised over its interval."""
    from ruslan_glowtts.monitor.guard import _save_weights
    from ruslan_glowtts.training.step_values import ReadValues

    config = _config(
        prepared,
        f"batch_size={batch}",
        "num_loader_workers=0",
        "run_eval=false",
        "data_dep_init_steps=0",
        f"output_path={json.dumps(str(work / 'guard'))}",
    )
    trainer, data = one_batch_trainer(config)
    guard_s = [0.0]
    for name in ("observe_update", "record_batch"):
        method = getattr(trainer.guard, name)

        def timed(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = _method(*args, **kwargs)
            guard_s[0] += time.perf_counter() - started
            return result

        setattr(trainer.guard, name, timed)
    on, off, guard_code = [], [], []
    for i in range(2 * pairs + 2):
        config.health.enabled = i % 2 == 0
        guard_s[0] = 0.0
        started = time.perf_counter()
        _, values, _ = trainer.optimize(data, trainer.optimizer[0], None, trainer.criterion[0], trainer.scheduler[0])
        if config.health.enabled:
            # The guard judges the update when its values reach the host (StepValueQueue; at once on a CPU).
            trainer.on_step_values(ReadValues(1, {k: float(v) for k, v in values.items()}))
        (on if config.health.enabled else off).append(time.perf_counter() - started)
        if config.health.enabled:
            started = time.perf_counter()
            trainer.guard.end_of_step(trainer)  # the per-step check (no checkpoint at these steps)
            guard_code.append(guard_s[0] + time.perf_counter() - started)
    on, off, guard_code = on[1:], off[1:], guard_code[1:]  # the first pair warms up
    started = time.perf_counter()
    _save_weights(trainer, work / "known_good_probe.pth", 0)
    save_s = time.perf_counter() - started
    step = statistics.median(on)
    close_trainer(trainer)
    ratios = sorted((a - b) / b for a, b in zip(on, off, strict=True))
    return {
        "paired": statistics.median(ratios),
        "paired_q1": ratios[len(ratios) // 4],
        "paired_q3": ratios[(3 * len(ratios)) // 4],
        "step_on_s": step,
        "step_off_s": statistics.median(off),
        "pairs": len(on),
        "guard_code_share": statistics.median(guard_code) / step,
        "checkpoint_save_s": save_s,
        "checkpoint_share": save_s / (config.health.checkpoint_every * step),
    }


def step_parts(prepared: Path, batch: int, steps: int, device: str = "cpu") -> dict[str, float]:
    """Forward+backward time of the full model and the time in monotonic alignment search, and
    one optimizer step with Coqui's RAdam vs torch's multi-tensor RAdam from the same parameters
    and gradients, with the largest parameter difference after `steps` + 1 steps (same maths?)."""
    import torch
    from TTS.tts.datasets import load_tts_samples
    from TTS.utils.radam import RAdam as CoquiRAdam

    from ruslan_glowtts.training import alignment as glow  # the forward pass's alignment search (GPU or Cython)
    from ruslan_glowtts.training.model import RuslanGlowTTS
    from ruslan_glowtts.training.optimizer import FlatRAdam

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    config = _config(prepared, f"batch_size={batch}", "num_loader_workers=0")
    samples, _ = load_tts_samples(config, eval_split=False)
    torch.manual_seed(0)
    model = RuslanGlowTTS(config).to(device)
    model.train()
    model.run_data_dep_init = False
    data = model.format_batch(next(iter(model.get_data_loader(config, samples=samples[: batch * 2], verbose=False))))
    data = {k: v.to(device) if torch.is_tensor(v) else v for k, v in data.items()}
    criterion = model.get_criterion()
    mas, spent = glow.maximum_path, [0.0]

    def timed_mas(*args: Any, **kwargs: Any) -> Any:
        sync()
        started = time.perf_counter()
        result = mas(*args, **kwargs)
        sync()
        spent[0] += time.perf_counter() - started
        return result

    glow.maximum_path = timed_mas
    try:
        totals = []
        for _ in range(steps + 1):
            spent[0] = 0.0
            sync()
            started = time.perf_counter()
            _, losses = model.train_step(data, criterion)
            losses["loss"].backward()
            sync()
            totals.append((time.perf_counter() - started, spent[0]))
            model.zero_grad(set_to_none=False)
    finally:
        glow.maximum_path = mas

    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    kwargs = {"lr": 2e-4, "betas": (0.9, 0.998), "weight_decay": 1e-6}

    def optimizer_steps(make: Any) -> tuple[float, list[Any]]:
        with torch.no_grad():
            for p, s, g in zip(params, start, grads, strict=True):
                p.copy_(s)
                p.grad = g.clone()
        optimizer = make(params)
        optimizer.step()  # warm-up: state allocation
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            optimizer.step()
        sync()
        return (time.perf_counter() - started) / steps, [p.detach().clone() for p in params]

    coqui, coqui_params = optimizer_steps(lambda ps: CoquiRAdam(ps, **kwargs))
    foreach, foreach_params = optimizer_steps(
        lambda ps: torch.optim.RAdam(ps, foreach=True, decoupled_weight_decay=True, **kwargs)
    )
    flat, flat_params = optimizer_steps(lambda ps: FlatRAdam(ps, **kwargs))  # last: it re-points the parameters
    moved = max(float((a - s).abs().max()) for a, s in zip(coqui_params, start, strict=True))
    differ = max(float((a - b).abs().max()) for a, b in zip(coqui_params, foreach_params, strict=True))
    flat_differ = max(float((a - b).abs().max()) for a, b in zip(coqui_params, flat_params, strict=True))
    return {
        "forward_backward_s": statistics.median(t for t, _ in totals[1:]),
        "mas_s": statistics.median(m for _, m in totals[1:]),
        "coqui_radam_s": coqui,
        "torch_radam_foreach_s": foreach,
        "flat_radam_s": flat,
        "flat_radam_largest_difference": flat_differ,
        "optimizer_steps": steps + 1,
        "radam_largest_move": moved,
        "radam_largest_difference": differ,
        "parameter_tensors": len(params),
        "parameters": sum(p.numel() for p in params),
    }


# ---------------------------------------------------------------------------------------------
# 5. padding


def padding_share(batch: int, utterances: int = 22_200, seed: int = 0) -> dict[str, float]:
    """Share of padded frames in random batches vs batches of length-sorted neighbours (shuffled
    as whole batches), on a log-normal length distribution with RUSLAN's mean of ~5 s."""
    rng = np.random.default_rng(seed)
    sigma = 0.45
    lengths = np.clip(rng.lognormal(np.log(5.0) - sigma**2 / 2, sigma, utterances), 0.5, 15.0)

    def share(order: np.ndarray) -> float:
        groups = lengths[order][: len(order) // batch * batch].reshape(-1, batch)
        return float(1 - groups.sum() / (groups.max(axis=1) * batch).sum())

    return {
        "random": share(rng.permutation(utterances)),
        "sorted": share(np.argsort(lengths)),
        "mean_s": float(lengths.mean()),
        "p99_s": float(np.percentile(lengths, 99)),
    }


# ---------------------------------------------------------------------------------------------
# Report


def _machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from importlib.metadata import version

    return (
        f"{os.cpu_count()} cores ({model}), {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GB; "
        f"Python {platform.python_version()}, torch {version('torch')}, coqui-tts {version('coqui-tts')}, "
        f"coqui-tts-trainer {version('coqui-tts-trainer')}; {datetime.date.today().isoformat()}"
    )


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(args: argparse.Namespace, r: dict[str, Any]) -> str:
    pre, loader, train, parts, pad, g = r["prepare"], r["loader"], r["training"], r["parts"], r["padding"], r["guard"]
    stock, kit = train["stock recipe"], train["kit"]
    stock_step, kit_step = (_median(x, "step_s") for x in (stock, kit))
    spread = {
        name: f"{min(x['step_s'] for x in runs):.2f}-{max(x['step_s'] for x in runs):.2f}"
        for name, runs in train.items()
    }
    stock_first, kit_first = _median(stock, "first_step_s"), _median(kit, "first_step_s")
    cache_ratio_44 = loader["kit, feature cache"] / loader["Coqui, 44.1 kHz, resample on the fly"]
    cache_ratio_22 = loader["kit, feature cache"] / loader["Coqui, prepared 22.05 kHz"]
    guard = g["paired"]
    guard_total = g["guard_code_share"] + g["checkpoint_share"]
    detector = r["detector_us"] * 1e-6 / kit_step
    lines = [
        "# Benchmarks",
        "",
        "Benchmarks, not tests: re-run them with `python bench/run.py` (about 25 minutes on 2 cores;",
        "`--quick` for a rough check). All numbers below come from one run of that command. Compare",
        "ratios, not absolute times: this machine's speed varies from day to day (a bare GlowTTS",
        "forward+backward at batch 4 took ~1.7 s on the day of this run, ~0.5 s on another).",
        "",
        (
            f"Machine: {_machine()}. Command: `python bench/run.py{' --quick' if args.quick else ''}`; "
            f"load average before/after: {r['load'][0]:.2f}/{r['load'][1]:.2f}."
        ),
        "",
        "## Summary: ratios against the stock Coqui recipe, same machine, same run",
        "",
        "| measure | stock | kit | ratio | target |",
        "|---|---|---|---|---|",
        (
            f"| data loader, items/s per worker (44.1 kHz source) | {loader['Coqui, 44.1 kHz, resample on the fly']:.0f} "
            f"| {loader['kit, feature cache']:.0f} | {cache_ratio_44:.1f}x | >= 10x: {'met' if cache_ratio_44 >= 10 else 'missed'} |"
        ),
        (
            f"| training step, fp32 CPU, batch {args.batch} (s; median of {args.repeats} runs, range in section 3) | "
            f"{stock_step:.3f} | {kit_step:.3f} | {kit_step / stock_step:.2f}x time | <= 1.0x: "
            f"{'met' if kit_step <= stock_step else 'missed'} (runs spread {spread['stock recipe']} / {spread['kit']} s) |"
        ),
        (
            f"| training samples/s | {_median(stock, 'samples_per_s'):.2f} | {_median(kit, 'samples_per_s'):.2f} | "
            f"{stock_step / kit_step:.2f}x | |"
        ),
        (
            f"| process start to first optimizer step (s) | {stock_first:.1f} | {kit_first:.1f} | "
            f"{kit_first / stock_first:.2f}x | <= stock: {'met' if kit_first <= stock_first else 'missed'} |"
        ),
        (
            f"| peak RSS, training (MB) | {_median(stock, 'peak_rss_mb'):.0f} | {_median(kit, 'peak_rss_mb'):.0f} | "
            f"{_median(kit, 'peak_rss_mb') / _median(stock, 'peak_rss_mb'):.2f}x | |"
        ),
        (
            f"| health guard: its own code per step, plus known-good saves amortised | | | {guard_total:+.3%} | "
            f"<= 2%: {'met' if guard_total <= 0.02 else 'missed'} (paired on/off steps: {guard:+.1%}, "
            f"quartiles {g['paired_q1']:+.1%} to {g['paired_q3']:+.1%}: step-to-step noise) |"
        ),
        (
            f"| prepare, {RUSLAN_FILES:,} files extrapolated (min) | | {pre['extrapolated_s'] / 60:.1f} | | "
            f"<= 5 min: {'met' if pre['extrapolated_s'] <= 300 else 'missed'} |"
        ),
        "",
        "## 1. prepare",
        "",
        (
            f"`python -m ruslan_glowtts.prepare --jobs 2` on {args.files} generated files (44.1 kHz, "
            f"{pre['mean_s']:.1f} s mean; the sample's utterances concatenated)."
        ),
        "",
        "| | |",
        "|---|---|",
        (
            f"| first run (wall) | {pre['wall_s']:.1f} s: {pre['processing_s']:.1f} s processing "
            f"({pre['per_file_ms']:.1f} ms per file on 2 cores) + {pre['fixed_s']:.1f} s fixed (imports, warm-up, report) |"
        ),
        f"| re-run, nothing to do | {pre['rerun_s']:.1f} s |",
        (
            f"| extrapolated to {RUSLAN_FILES:,} files (fixed + per file x {RUSLAN_FILES:,}) | "
            f"{pre['extrapolated_s']:.0f} s ({pre['extrapolated_s'] / 60:.1f} min) |"
        ),
        f"| CPU time, first run (all processes) | {pre['cpu_s']:.1f} s |",
        f"| peak RSS, whole process tree (sampled) | {pre['peak_tree_mb']:.0f} MB (streaming: it does not grow with the corpus) |",
        f"| feature cache size | {pre['cache_mb']:.0f} MB ({pre['cache_mb'] / args.files * RUSLAN_FILES / 1024:.1f} GB for {RUSLAN_FILES:,} files) |",
        "",
        "## 2. Data loader, one process (num_workers=0), batch 8",
        "",
        (
            "The models' own training loaders (`GlowTTS.get_data_loader` for Coqui, the kit's "
            "`RuslanGlowTTS.get_data_loader`), iterated after one warm-up batch."
        ),
        "",
        "| loader | items/s | vs Coqui 44.1 kHz |",
        "|---|---|---|",
    ]
    base = loader["Coqui, 44.1 kHz, resample on the fly"]
    lines += [f"| {name} | {rate:.1f} | {rate / base:.1f}x |" for name, rate in loader.items()]
    lines += [
        "",
        (
            f"With the cache the loader reads one .npy per utterance instead of computing an STFT: "
            f"{cache_ratio_44:.0f}x Coqui's rate on the 44.1 kHz source and {cache_ratio_22:.0f}x on prepared files."
        ),
        "",
        f"## 3. Training, full-size GlowTTS ({parts['parameters'] / 1e6:.1f} M parameters), batch {args.batch}, fp32 on CPU",
        "",
        (
            f"Same prepared utterances ({args.train_seconds} s each) for all; {args.steps} trainer steps per run (10 of them "
            f"GlowTTS's data-dependent init), {args.repeats} interleaved repeats; step time = median of {WINDOW}-step "
            f"windows of wall-clock time between consecutive steps (loader, step and logging), after {WARMUP_STEPS} "
            "warm-up steps. The stock recipe keeps its own settings (4 loader workers, unshuffled batches, a "
            "best_model.pth every epoch); the kit its own (2 persistent workers, feature cache)."
        ),
        "",
        "| run | s/step | steps/s | samples/s | first optimizer step after (s) | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in train.items():
        for i, run in enumerate(runs, 1):
            lines.append(
                f"| {name} #{i} | {run['step_s']:.3f} | {run['steps_per_s']:.2f} | {run['samples_per_s']:.2f} | "
                f"{run['first_step_s']:.1f} | {run['peak_rss_mb']:.0f} |"
            )
    lines += [
        "",
        "## 4. Inside a step",
        "",
        "| | |",
        "|---|---|",
        f"| forward + backward, batch {args.batch} | {parts['forward_backward_s'] * 1000:.0f} ms |",
        (
            f"| of which monotonic alignment search (Cython, on the CPU; on a GPU it adds a device-to-host copy) | "
            f"{parts['mas_s'] * 1000:.1f} ms ({parts['mas_s'] / parts['forward_backward_s']:.1%}) |"
        ),
        f"| optimizer step, Coqui's RAdam ({parts['parameter_tensors']} tensors one by one) | {parts['coqui_radam_s'] * 1000:.1f} ms |",
        (
            f"| optimizer step, torch.optim.RAdam(foreach=True, decoupled_weight_decay=True) | "
            f"{parts['torch_radam_foreach_s'] * 1000:.1f} ms |"
        ),
        f"| optimizer step, the kit's FlatRAdam (the default) | {parts['flat_radam_s'] * 1000:.1f} ms |",
        (
            f"| same maths? after {parts['optimizer_steps']} identical steps (lr 2e-4): largest parameter move / "
            f"largest difference from Coqui's, torch's foreach / FlatRAdam | {parts['radam_largest_move']:.1e} / "
            f"{parts['radam_largest_difference']:.1e} / {parts['flat_radam_largest_difference']:.1e} |"
        ),
        f"| health guard's detector, per update | {r['detector_us']:.0f} us ({detector:.3%} of a kit step) |",
        (
            f"| health guard's code per step (norm/loss read, detector, TensorBoard scalar, batch record, end-of-step check) | "
            f"{g['guard_code_share']:.3%} of the step |"
        ),
        (
            f"| known-good checkpoint (weights only): one save, every 500 steps | {g['checkpoint_save_s']:.2f} s, "
            f"{g['checkpoint_share']:.3%} of the step time |"
        ),
        (
            f"| health guard, step time on vs off ({g['pairs']} alternating pairs, one process, one batch) | "
            f"median {g['step_on_s']:.3f} s vs {g['step_off_s']:.3f} s; median paired difference {guard:+.2%} "
            f"(quartiles {g['paired_q1']:+.1%} to {g['paired_q3']:+.1%}) |"
        ),
        "",
        (
            "The guard's other work per update is what Coqui already does (the gradient norm) plus one "
            "host-device read of the norm and the loss, which replaces Coqui's own read of the norm after the step."
        ),
        "",
        "## 5. Padding (simulated lengths)",
        "",
        (
            f"Log-normal utterance lengths with RUSLAN's mean ({pad['mean_s']:.1f} s, p99 {pad['p99_s']:.1f} s, "
            f"clipped to 0.5-15 s), batches of 8: random batches pad {pad['random']:.0%} of the frames they "
            f"compute, length-sorted batches {pad['sorted']:.1%}. Compute per step grows with the padded length, "
            "so bucketing by length is the largest remaining CPU/GPU lever: section 6 measures the kit's "
            "length-bucketed batches (`python bench/run.py batching`)."
        ),
        "",
        "## GPU",
        "",
        "See docs/GPU.md (bench/gpu_check.sh) for the GPU comparison: stock fp32, kit fp32, kit bf16.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "part",
        nargs="?",
        choices=["all", "batching", "ledger"],
        default="all",
        help="batching: only section 6, length-bucketed batches (bench/batching.py, ~20 min); "
        "ledger: only section 7, the utterance ledger's cost (bench/ledger_cost.py, ~5 min); "
        "each written into the existing file",
    )
    p.add_argument("--quick", action="store_true", help="smaller corpus, fewer steps and repeats")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args()
    args.files, args.steps, args.repeats, args.batch, args.train_seconds = (
        (200, 30, 1, 4, 3.5) if args.quick else (1000, 60, 3, 4, 3.5)
    )
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="ruslan_bench_"))
    if args.part == "batching":
        batching_only(args, work)
        return
    if args.part == "ledger":
        ledger_only(args, work)
        return
    results: dict[str, Any] = {"load": [os.getloadavg()[0]]}

    print(f"1. prepare: {args.files} files", flush=True)
    src, prepared = work / "src", work / "prepared"
    mean_s = make_corpus(src, args.files)
    cpu = children_cpu()
    first = run_prepare(src, prepared, 2)
    cpu = children_cpu() - cpu
    again = run_prepare(src, prepared, 2)
    processing = first["run"]["processing_seconds"]
    fixed = first["wall"] - processing
    cache = next(prepared.glob("features/*"))
    results["prepare"] = {
        "mean_s": mean_s,
        "wall_s": first["wall"],
        "processing_s": processing,
        "fixed_s": fixed,
        "per_file_ms": processing / args.files * 1000,
        "rerun_s": again["wall"],
        "extrapolated_s": fixed + processing / args.files * RUSLAN_FILES,
        "cpu_s": cpu,
        "peak_tree_mb": first["peak_tree_mb"],
        "cache_mb": sum(f.stat().st_size for f in cache.glob("*.npy")) / 2**20,
    }
    print(f"   {results['prepare']}", flush=True)

    print("2. data loader", flush=True)
    from TTS.tts.models.glow_tts import GlowTTS

    from ruslan_glowtts.training.model import RuslanGlowTTS

    items = 120 if args.quick else 400
    results["loader"] = {
        "Coqui, 44.1 kHz, resample on the fly": loader_rate(
            GlowTTS, _config(src, "audio.resample=true", "max_audio_len=1000000"), items
        ),
        "Coqui, prepared 22.05 kHz": loader_rate(GlowTTS, _config(prepared), items),
        "kit, feature cache": loader_rate(RuslanGlowTTS, _config(prepared), args.files),
    }
    print(f"   {results['loader']}", flush=True)

    print(f"3. training: {args.repeats} x stock / kit, {args.steps} steps each", flush=True)
    train_src, train_data = work / "train_src", work / "train_prepared"
    make_corpus(train_src, 48, seconds=(args.train_seconds, args.train_seconds))
    run_prepare(train_src, train_data, 2)
    results["training"] = training(train_data, work / "runs", args.steps, args.repeats, args.batch)

    print("4. inside a step", flush=True)
    results["detector_us"] = detector_cost()
    results["parts"] = step_parts(train_data, args.batch, 3 if args.quick else 6)
    results["guard"] = guard_overhead(train_data, work, args.batch, 6 if args.quick else 15)
    results["padding"] = padding_share(8)
    results["load"].append(os.getloadavg()[0])

    text = report(args, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n" + text.split("## 1.")[0])
    print(f"written to {args.out}; raw results in {work / 'results.json'}")
    if not args.keep:
        import shutil

        shutil.rmtree(work)


def batching_only(args: argparse.Namespace, work: Path) -> None:
    import batching

    results = batching.run(work, args.quick)
    text = batching.section(results, _machine(), args.quick)
    replace_section(args.out, "## 6. Length-bucketed batches", text)
    (work / "batching.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n" + text)
    print(f"section 6 written to {args.out}; raw results in {work / 'batching.json'}")
    if not args.keep:
        import shutil

        shutil.rmtree(work)


def ledger_only(args: argparse.Namespace, work: Path) -> None:
    import ledger_cost

    load = [os.getloadavg()[0]]
    src, prepared = work / "src", work / "prepared"
    make_corpus(src, 48, seconds=(args.train_seconds, args.train_seconds))
    run_prepare(src, prepared, 2)
    config = _config(
        prepared,
        f"batch_size={args.batch}",
        "num_loader_workers=0",
        "run_eval=false",
        "data_dep_init_steps=0",
        f"output_path={json.dumps(str(work / 'ledger'))}",
    )
    trainer, data = one_batch_trainer(config)
    results = ledger_cost.measure(trainer, data, 10 if args.quick else 40)
    close_trainer(trainer)
    load.append(os.getloadavg()[0])
    machine = f"{_machine()}; load average at start/end {load[0]:.2f}/{load[1]:.2f}"
    text = ledger_cost.section(results, machine, args.quick)
    replace_section(args.out, "## 7. Utterance ledger", text)
    (work / "ledger.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n" + text)
    print(f"section 7 written to {args.out}; raw results in {work / 'ledger.json'}")
    if not args.keep:
        import shutil

        shutil.rmtree(work)


if __name__ == "__main__":
    main()
