"""GPU check: the kit against Coqui's stock recipe on one CUDA GPU; run by bench/gpu_check.sh.

    python3 bench/gpu_check.py --out DIR [--files 2000] [--curve-steps 300] [--timed 30]

1. Corpus: `--files` generated utterances with RUSLAN's length spread (bench/batching.py), prepared.
2. Loss curves, the entry points as users run them (subprocesses, real loaders), full-size
   GlowTTS, batch 8, fp32, `--curve-steps` steps each: Coqui's recipe with the kit's schedule fixes
   (bench/stock_recipe.py --matched: warmup counted in steps, shuffled batches; Coqui's RAdam, loss,
   alignment search and Trainer), and the kit with the same hyperparameters (preset `default`:
   lr 1e-3, clip 5, warmup 4000, batch 8) on two seeds, whose difference is the seed-to-seed
   spread. Also end-to-end samples/s, time to the first step, peak GPU memory (nvidia-smi), the
   kit's compile count and time.
3. Step matrix, in one process so that both see the very same batches: Coqui's Trainer with
   Coqui's GlowTTS vs KitTrainer with RuslanGlowTTS (preset stable's step: guard, FlatRAdam,
   compiled decoder, GPU alignment search), fp32 and bf16, batch 8 and 32: samples/s over
   `--timed` steps (loader excluded for both), peak allocated memory, host syncs per step
   (torch.cuda.set_sync_debug_mode), and for fp32 kernel launches per step and the GPU-busy share
   of a step (torch.profiler). The GPU alignment search's paths are compared with Cython's on the
   real batches.
Writes DIR/gpu_check.md and DIR/gpu_check.json as it goes (a failed part is recorded, the rest runs).
Without CUDA it runs on the CPU to check itself (numbers then mean nothing).
--only-fp16 runs the older fp16 check: a short kit run in fp16 must log TrainIterStats/amp_scaler.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import batching  # noqa: E402
from run import PY, train_run  # noqa: E402

from tests.helpers import TINY_ARCH  # noqa: E402  (--tiny: a quick self-check of this script on a CPU)

KIT_FLAGS = [
    "--set",
    "plot_step=1",
    "--set",
    "run_eval=false",
    "--set",
    "print_step=1000",
    "--set",
    "test_delay_epochs=100000",
    "--set",
    "num_loader_workers=4",
]


# ---------------------------------------------------------------------------------------------
# Helpers


def gpu_memory_sampler() -> tuple[threading.Event, list[int]]:
    """Sample nvidia-smi's memory.used (MiB) until the event is set; the list holds the peak."""
    stop, peak = threading.Event(), [0]

    def sample() -> None:
        while not stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=False,
                ).stdout
                peak[0] = max(peak[0], max(int(v) for v in out.split()))
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    return stop, peak


def losses(run_dir: Path) -> dict[int, float]:
    from ruslan_glowtts.monitor.events import read_run

    series = read_run(run_dir).scalars["TrainIterStats/loss"]
    return dict(zip(series.steps.tolist(), series.values.tolist(), strict=True))


def smoothed(curve: dict[int, float], at: list[int], window: int = 25) -> list[float | None]:
    """Mean loss over the `window` logged steps up to each step of `at`."""
    steps = sorted(curve)
    out: list[float | None] = []
    for step in at:
        values = [curve[s] for s in steps if step - window < s <= step and math.isfinite(curve[s])]
        out.append(round(statistics.fmean(values), 4) if values else None)
    return out


def compile_line(log: Path) -> str:
    lines = [
        line.strip()
        for line in log.read_text(errors="replace").splitlines()
        if "Compiled GlowTTS's decoder" in line or "Compiling the decoder failed" in line
    ]
    return lines[-1] if lines else "no compile"


# ---------------------------------------------------------------------------------------------
# 2. Loss curves from the entry points


def curves(prepared: Path, work: Path, steps: int, tiny: bool = False) -> dict[str, Any]:
    common = ["--dataset-path", str(prepared), "--max-steps", str(steps)]
    kit_tiny = [arg for setting in TINY_ARCH for arg in ("--set", setting)] if tiny else []
    variants = {
        "stock (matched)": [PY, "bench/stock_recipe.py", *common, "--batch-size", "8", "--matched", "--output-path"],
        "kit seed 1": [
            PY,
            "train_ruslan_glowtts.py",
            "--preset",
            "default",
            *common,
            *KIT_FLAGS,
            *kit_tiny,
            "--seed",
            "1",
            "--output-path",
        ],
        "kit seed 2": [
            PY,
            "train_ruslan_glowtts.py",
            "--preset",
            "default",
            *common,
            *KIT_FLAGS,
            *kit_tiny,
            "--seed",
            "2",
            "--output-path",
        ],
    }
    runs: dict[str, Any] = {}
    for name, command in variants.items():
        output = work / name.replace(" ", "_").replace("(", "").replace(")", "")
        stop, peak = gpu_memory_sampler()
        try:
            run = train_run(name, [*command, str(output)], output, 8)
        except (SystemExit, Exception) as exc:  # noqa: BLE001 - record it, go on
            runs[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name}: FAILED {exc}", flush=True)
            continue
        finally:
            stop.set()
        curve = losses(Path(run["run_dir"]))
        run.update(
            peak_gpu_mib=peak[0],
            curve=curve,
            losses_finite=all(math.isfinite(v) for v in curve.values()),
            compile=compile_line(output / "log.txt") if "kit" in name else "",
        )
        runs[name] = run
        print(
            f"{name}: {run['samples_per_s']:.1f} samples/s, first step after {run['first_step_s']:.1f} s, "
            f"peak GPU {peak[0]} MiB, {run['compile']}",
            flush=True,
        )
    at = list(range(50, steps + 1, 50))
    table = {name: smoothed(run["curve"], at) for name, run in runs.items() if "curve" in run}
    return {
        "steps": steps,
        "at": at,
        "smoothed": table,
        "runs": {name: {k: v for k, v in run.items() if k != "curve"} for name, run in runs.items()},
    }


# ---------------------------------------------------------------------------------------------
# 3. The step matrix, in one process


def _batches(config: Any, samples: list[dict], model: Any, batch: int, count: int, seed: int) -> list[Any]:
    """`count` collated batches of `batch` utterances drawn at random, each made by the model's own
    loader from exactly those utterances (the same utterances for every model)."""
    import copy

    rng = random.Random(seed)
    picks = [rng.sample(range(len(samples)), batch) for _ in range(count)]
    config = copy.deepcopy(config)
    config.batch_size, config.shuffle, config.drop_last = batch, False, False
    if hasattr(config, "bucket_by_length"):
        config.bucket_by_length = False  # exactly these utterances in one batch (the kit still pads its lengths)
    out = []
    for pick in picks:
        loader = model.get_data_loader(config, is_eval=False, samples=[samples[i] for i in pick], verbose=False)
        (collated,) = list(loader)
        out.append(collated)
    return out


def _stock_trainer(prepared: Path, work: Path, precision: str, tiny: bool) -> Any:
    from stock_recipe import russian_characters
    from trainer import Trainer, TrainerArgs
    from TTS.tts.configs.glow_tts_config import GlowTTSConfig
    from TTS.tts.configs.shared_configs import BaseDatasetConfig
    from TTS.tts.datasets import load_tts_samples
    from TTS.tts.models.glow_tts import GlowTTS

    config = GlowTTSConfig(
        batch_size=8,
        num_loader_workers=0,
        run_eval=False,
        test_delay_epochs=-1,
        text_cleaner="basic_cleaners",
        use_phonemes=False,
        characters=russian_characters(),
        mixed_precision=precision == "bf16",
        precision="bf16",
        print_step=25,
        plot_step=25,
        data_dep_init_steps=0,
        output_path=str(work / f"stock_{precision}"),
        save_step=10**9,
        datasets=[BaseDatasetConfig(formatter="ruslan", meta_file_train=batching.META, path=str(prepared))],
    )
    config.audio.sample_rate = batching.RATE
    if tiny:
        for setting in TINY_ARCH:  # e.g. hidden_channels_enc=32, encoder_params.num_layers=1
            key, value = setting.split("=")
            owner, _, leaf = key.rpartition(".")
            if owner:
                getattr(config, owner)[leaf] = int(value)
            else:
                setattr(config, leaf, int(value))
    samples, _ = load_tts_samples(config, eval_split=False)
    model = GlowTTS(config)
    trainer = Trainer(
        TrainerArgs(),
        config,
        config.output_path,
        model=model,
        train_samples=samples,
        eval_samples=samples[:1],
        parse_command_line_args=False,
    )
    return trainer, config, samples


def _kit_trainer(prepared: Path, work: Path, precision: str, tiny: bool) -> Any:
    import torch
    from trainer import TrainerArgs
    from TTS.tts.datasets import load_tts_samples

    from ruslan_glowtts.common.presets import load_preset
    from ruslan_glowtts.training import compilation
    from ruslan_glowtts.training.config import build_config, parse_set_option
    from ruslan_glowtts.training.model import RuslanGlowTTS
    from ruslan_glowtts.training.run import resolve_precision
    from ruslan_glowtts.training.trainer import KitTrainer

    sets = [
        "num_loader_workers=0",
        "run_eval=false",
        "data_dep_init_steps=0",
        "health.checkpoint_every=0",
        f"output_path={json.dumps(str(work / f'kit_{precision}'))}",
        f"mixed_precision={'true' if precision == 'bf16' else 'false'}",
        *(TINY_ARCH if tiny else []),
    ]
    config, _ = build_config(
        preset=load_preset("stable"),
        dataset_path=prepared,
        cli_layers=[(parse_set_option(s), "gpu_check") for s in sets],
    )
    resolve_precision(config)
    samples, _ = load_tts_samples(config, eval_split=False)
    model = RuslanGlowTTS(config)
    compiled = compilation.attach(model, config.compile_model, cuda_graphs=config.compile_cuda_graphs)
    trainer = KitTrainer(
        TrainerArgs(),
        config,
        config.output_path,
        model=model,
        train_samples=samples,
        eval_samples=samples[:1],
        parse_command_line_args=False,
    )
    if model.pads_lengths() and torch.cuda.is_available() and not (compiled is not None and compiled.cuda_graphs):
        torch.backends.cudnn.benchmark = True  # as the GlowTTS recipe sets it: padded shapes repeat
    return trainer, config, samples, compiled


def _steps(trainer: Any, batches: list[Any], kit: bool) -> None:
    for i, batch in enumerate(batches):
        trainer.train_step(batch, len(batches), i, time.time())
    if kit:
        trainer.log_step_values(wait=True)


def _syncs(trainer: Any, batches: list[Any], kit: bool) -> float:
    """Host syncs per step, as torch.cuda.set_sync_debug_mode counts them (warnings)."""
    import torch

    if not torch.cuda.is_available():
        return math.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for i, batch in enumerate(batches):
                trainer.train_step(batch, len(batches), i, time.time())
        finally:
            torch.cuda.set_sync_debug_mode("default")
    if kit:
        trainer.log_step_values(wait=True)
    found = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return len(found) / len(batches)


def _profile(trainer: Any, batches: list[Any], kit: bool, step_s: float) -> dict[str, Any]:
    """Kernel launches per step and the GPU-busy share of a step (kernel time union / unprofiled step time)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        _steps(trainer, batches, kit)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    events = prof.events()
    names = [e.name for e in events]
    launches = sum(1 for n in names if n.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
    graphs = sum(1 for n in names if n.startswith("cudaGraphLaunch"))
    intervals = sorted((e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA)
    busy, end = 0.0, -math.inf
    for start, stop in intervals:
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    per_step = busy / 1e6 / len(batches)  # microseconds -> seconds
    return {
        "kernel_launches_per_step": launches / len(batches),
        "graph_launches_per_step": graphs / len(batches),
        "gpu_kernel_s_per_step": per_step,
        "gpu_busy_share": per_step / step_s if step_s else math.nan,
    }


def _mas_identical(kit_trainer: Any, batches: list[Any]) -> dict[str, Any]:
    """The GPU kernel's paths vs Cython's on real log-likelihood matrices of these batches."""
    import torch
    from monotonic_alignment_search import maximum_path as cython

    from ruslan_glowtts.training import alignment

    if not torch.cuda.is_available():
        return {"checked": 0}
    seen: list[tuple[Any, Any]] = []
    original = alignment.maximum_path

    def record(value: Any, mask: Any) -> Any:
        seen.append((value.detach().clone(), mask.detach().clone()))
        return original(value, mask)

    alignment.maximum_path = record
    try:
        _steps(kit_trainer, batches, True)
    finally:
        alignment.maximum_path = original
    differ = sum(int(not torch.equal(alignment.maximum_path_triton(v, m).cpu(), cython(v, m).cpu())) for v, m in seen)
    return {"checked": len(seen), "differ": differ}


def matrix(prepared: Path, work: Path, timed: int, warmup: int, tiny: bool = False) -> dict[str, Any]:
    """Each (model, precision) in a process of its own (the same batches in each: seeded picks from
    the same corpus): a CUDA error in one, such as a failed CUDA graph capture, which leaves the
    process's CUDA state unusable, cannot spoil the others' measurements."""
    import torch

    cuda = torch.cuda.is_available()
    precisions = ["fp32", "bf16"] if cuda and torch.cuda.is_bf16_supported() else ["fp32"]
    results: dict[str, Any] = {}
    for precision in precisions:
        for kind in ("stock", "kit"):
            out = work / f"part_{kind}_{precision}.json"
            command = [
                PY,
                str(Path(__file__)),
                "--part",
                f"{kind}:{precision}",
                "--prepared",
                str(prepared),
                "--work",
                str(work),
                "--part-out",
                str(out),
                "--timed",
                str(timed),
                "--warmup",
                str(warmup),
                *(["--tiny"] if tiny else []),
            ]
            code = subprocess.call(command, cwd=REPO)
            part = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
            for batch in (8, 32):
                name = f"{kind} {precision} b{batch}"
                results[name] = part.get(name) or {"error": f"the {kind} {precision} process ended with exit {code}"}
    return results


def matrix_part(
    kind: str, precision: str, prepared: Path, work: Path, timed: int, warmup: int, tiny: bool, out: Path
) -> None:
    """One model in one precision, batch 8 then 32; results written to `out` after each."""
    import torch

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    results: dict[str, Any] = {}
    started = time.perf_counter()
    if kind == "stock":
        trainer, config, samples = _stock_trainer(prepared, work, precision, tiny)
        compiled = None
    else:
        trainer, config, samples, compiled = _kit_trainer(prepared, work, precision, tiny)
    model = trainer.model
    setup_s = time.perf_counter() - started
    for batch in (8, 32):
        name = f"{kind} {precision} b{batch}"
        try:
            batches = _batches(config, samples, model, batch, timed, seed=batch)
            # A first pass over the very batches that are then timed: compiles, CUDA graphs per shape
            # and cudnn's choices happen here (a long run pays them once), not in the timing.
            started = time.perf_counter()
            for _ in range(warmup):
                _steps(trainer, batches, kind == "kit")
            sync()
            warm_s = time.perf_counter() - started
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            waits_before = trainer.step_values.waits if kind == "kit" else 0
            started = time.perf_counter()
            _steps(trainer, batches, kind == "kit")
            sync()
            step_s = (time.perf_counter() - started) / timed
            entry: dict[str, Any] = {
                "samples_per_s": batch / step_s,
                "step_ms": 1000 * step_s,
                "warmup_s": warm_s,
                "setup_s": setup_s,
                "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0,
                "syncs_per_step": _syncs(trainer, batches[:5], kind == "kit"),
            }
            if kind == "kit":  # timed steps whose values the host had to wait for (GPU > 2 steps behind)
                entry["value_waits"] = trainer.step_values.waits - waits_before
            if compiled is not None:
                entry["compiles"], entry["compile_s"] = compiled.compiles, round(compiled.compile_seconds, 1)
                entry["compile_failed"], entry["cuda_graphs"] = compiled.failed, compiled.cuda_graphs
            if precision == "fp32":
                entry.update(_profile(trainer, batches[:5], kind == "kit", step_s))
            if kind == "kit" and precision == "fp32" and batch == 8:
                entry["alignment_vs_cython"] = _mas_identical(trainer, batches[:4])
            results[name] = entry
            print(
                f"{name}: {entry['samples_per_s']:.1f} samples/s ({entry['step_ms']:.1f} ms/step), "
                f"syncs/step {entry['syncs_per_step']}, launches/step {entry.get('kernel_launches_per_step')}, "
                f"GPU busy {entry.get('gpu_busy_share')}, warm-up {warm_s:.1f} s",
                flush=True,
            )
        except Exception as exc:  # noqa: BLE001 - record it, go on
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
            print(f"{name}: FAILED {exc}", flush=True)
        out.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    trainer.dashboard_logger.finish()


# ---------------------------------------------------------------------------------------------
# Report


def report(results: dict[str, Any]) -> str:
    lines = [
        f"## GPU check: {results['device']}",
        "",
        (
            f"torch {results['torch']}; {results['files']} generated utterances with RUSLAN's length spread; "
            "full-size GlowTTS."
        ),
        "",
    ]
    m = results.get("matrix", {})
    if m:
        header = (
            "| precision | batch | stock samples/s | kit samples/s | kit / stock | stock syncs/step "
            "| kit syncs/step | stock launches/step | kit launches/step | stock GPU busy | kit GPU busy "
            "| stock peak MiB | kit peak MiB | kit compiles (s) |"
        )
        lines += [
            (
                f"Step matrix (one process, the same batches for both; loader excluded; {results['timed']} timed "
                f"steps after {results['warmup']} untimed pass(es) over the same batches):"
            ),
            "",
            header,
            "|" + "---|" * 14,
        ]
        for precision in ("fp32", "bf16"):
            for batch in (8, 32):
                s, k = m.get(f"stock {precision} b{batch}", {}), m.get(f"kit {precision} b{batch}", {})
                if not s and not k:
                    continue

                def fmt(entry: dict, key: str, spec: str = ".1f") -> str:
                    value = entry.get(key)
                    return "error" if "error" in entry else ("" if value is None else format(value, spec))

                ratio = (
                    f"{k['samples_per_s'] / s['samples_per_s']:.2f}x"
                    if "samples_per_s" in s and "samples_per_s" in k
                    else ""
                )
                lines.append(
                    f"| {precision} | {batch} | {fmt(s, 'samples_per_s')} | {fmt(k, 'samples_per_s')} | {ratio} "
                    f"| {fmt(s, 'syncs_per_step')} | {fmt(k, 'syncs_per_step')} "
                    f"| {fmt(s, 'kernel_launches_per_step', '.0f')} | {fmt(k, 'kernel_launches_per_step', '.0f')} "
                    f"| {fmt(s, 'gpu_busy_share', '.0%')} | {fmt(k, 'gpu_busy_share', '.0%')} "
                    f"| {fmt(s, 'peak_allocated_mib', '.0f')} | {fmt(k, 'peak_allocated_mib', '.0f')} "
                    f"| {k.get('compiles', '')} ({k.get('compile_s', '')}) |"
                )
        mas = m.get("kit fp32 b8", {}).get("alignment_vs_cython")
        if mas:
            lines += [
                "",
                (
                    f"GPU alignment search vs Coqui's Cython on {mas['checked']} real batches: "
                    f"{mas.get('differ', '?')} differ."
                ),
            ]
    c = results.get("curves", {})
    if c:
        lines += [
            "",
            f"Entry points (subprocesses, real loaders), batch 8, fp32, {c['steps']} steps:",
            "",
            "| run | samples/s | first step after (s) | peak GPU MiB | losses finite | compile |",
            "|---|---|---|---|---|---|",
        ]
        for name, run in c["runs"].items():
            if "error" in run:
                lines.append(f"| {name} | failed: {run['error'][:120]} | | | | |")
                continue
            lines.append(
                f"| {name} | {run['samples_per_s']:.1f} | {run['first_step_s']:.1f} | {run['peak_gpu_mib']} "
                f"| {run['losses_finite']} | {run['compile']} |"
            )
        lines += [
            "",
            "Training loss, mean of the 25 steps up to each step:",
            "",
            "| step | " + " | ".join(c["smoothed"]) + " |",
            "|---|" + "---|" * len(c["smoothed"]),
        ]
        for i, step in enumerate(c["at"]):
            lines.append(f"| {step} | " + " | ".join(str(v[i]) for v in c["smoothed"].values()) + " |")
    for part in ("curves_error", "matrix_error"):
        if part in results:
            lines += ["", f"{part}: {results[part]}"]
    return "\n".join(lines) + "\n"


def save(out: Path, results: dict[str, Any]) -> None:
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    (out / "gpu_check.md").write_text(report(results), encoding="utf-8")


def fp16_amp_scaler(prepared: Path, work: Path, steps: int, batch: int) -> dict[str, Any]:
    """A kit run in fp16 (GradScaler; CUDA only) logs amp_scaler, and diagnose sees an fp16 run."""
    from ruslan_glowtts.monitor.diagnose import diagnose
    from ruslan_glowtts.monitor.diagnose.run_context import run_context
    from ruslan_glowtts.monitor.events import read_run
    from ruslan_glowtts.training.coqui_compat import AMP_SCALER_TAG

    output = work / "kit_fp16"
    command = [
        PY,
        "train_ruslan_glowtts.py",
        "--preset",
        "stable",
        "--dataset-path",
        str(prepared),
        "--max-steps",
        str(steps),
        "--output-path",
        str(output),
        "--set",
        "precision=fp16",
        "--set",
        f"batch_size={batch}",
        *KIT_FLAGS,
    ]
    code = subprocess.call(command, cwd=REPO)
    run_dirs = [p for p in output.iterdir() if p.is_dir()] if output.is_dir() else []
    if len(run_dirs) != 1:
        return {"exit_code": code, "ok": False, "run_dirs": [str(p) for p in run_dirs]}
    (run_dir,) = run_dirs
    scale = read_run(run_dir).scalars.get(AMP_SCALER_TAG)
    result = {
        "exit_code": code,
        "amp_scaler_points": 0 if scale is None else len(scale.values),
        "diagnose_sees_fp16": bool(run_context(run_dir)["fp16"] and scale is not None),
        "verdict": diagnose(run_dir).verdict,
    }
    result["ok"] = code == 0 and result["amp_scaler_points"] > 0 and result["diagnose_sees_fp16"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--files", type=int, default=2000, help="generated utterances (RUSLAN's length spread)")
    p.add_argument("--curve-steps", type=int, default=300, help="steps of each entry-point run (0: skip them)")
    p.add_argument("--timed", type=int, default=30, help="timed steps per variant in the step matrix (0: skip it)")
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed passes over the timed batches first (compiles, CUDA graph recordings, cudnn's choices)",
    )
    p.add_argument("--jobs", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--only-fp16", action="store_true", help="only the fp16 amp_scaler check")
    p.add_argument("--part", help=argparse.SUPPRESS)  # KIND:PRECISION, one process of the step matrix
    p.add_argument("--prepared", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--part-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument(
        "--tiny",
        action="store_true",
        help="the tests' tiny model in the step matrix and the kit's "
        "curves (a quick self-check of this script on a CPU; the stock curve stays full-size)",
    )
    args = p.parse_args()
    if args.part:
        kind, precision = args.part.split(":")
        matrix_part(kind, precision, args.prepared, args.work, args.timed, args.warmup, args.tiny, args.part_out)
        return
    if args.out is None:
        p.error("--out is required")
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device: CPU dry run"
    print(f"device: {device}; torch {torch.__version__}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    results: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "files": args.files,
        "timed": args.timed,
        "warmup": args.warmup,
    }
    started = time.perf_counter()
    batching.make_length_corpus(work / "src", args.files, seed=0)
    batching.prepare(work / "src", work / "prepared", jobs=args.jobs)
    prepared = work / "prepared"
    results["corpus_s"] = round(time.perf_counter() - started, 1)
    print(f"corpus: {args.files} utterances prepared in {results['corpus_s']} s", flush=True)
    if args.only_fp16:
        results["fp16"] = fp16_amp_scaler(prepared, work, 30, 8)
        print(json.dumps(results["fp16"]), flush=True)
        save(args.out, results)
        sys.exit(0 if results["fp16"]["ok"] else 1)
    if args.timed:
        try:
            results["matrix"] = matrix(prepared, work, args.timed, args.warmup, args.tiny)
        except Exception as exc:  # noqa: BLE001 - record it, go on
            results["matrix_error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"
        save(args.out, results)
    if args.curve_steps:
        try:
            results["curves"] = curves(prepared, work, args.curve_steps, args.tiny)
        except Exception as exc:  # noqa: BLE001
            results["curves_error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"
        save(args.out, results)
    results["total_s"] = round(time.perf_counter() - started, 1)
    save(args.out, results)
    print(report(results), flush=True)


if __name__ == "__main__":
    main()
