"""GPU check: stock fp32 vs kit fp32 vs kit bf16 on one CUDA GPU; run by bench/gpu_check.sh.

    python3 bench/gpu_check.py --out DIR [--steps 80] [--batch 8]

On the sample-derived corpus (prepared, 3.5 s utterances), trains full-size GlowTTS for a fixed
number of steps three times: Coqui's stock recipe in fp32, the kit's entry point in fp32, and
the kit in bf16 (preset stable's precision where the GPU supports it). Reports samples/s (median
of 5-step windows after warm-up), peak GPU memory (nvidia-smi, sampled), that every logged loss
is finite, and the first steps' losses of the kit's fp32 and bf16 runs side by side. Then two
measurements inside a step on the GPU: monotonic alignment search (Cython on the CPU: a device-to-
host copy per forward) and Coqui's RAdam vs torch.optim.RAdam(foreach=True) (time per step, and
the largest parameter difference after 10 identical steps). Last, the batching comparison of
bench/batching.py on the GPU: stock order, kit random, kit buckets, frame budget (samples/s and
peak allocated memory). Writes DIR/gpu_check.md and .json.
--only-fp16 runs just the fp16 check (~1 min): a short kit run in fp16 must log
TrainIterStats/amp_scaler as Coqui's own optimize does, so diagnose recognises a guarded fp16 run.
Without CUDA it still runs, on the CPU, to check itself (numbers then mean nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from prepare_parts import make_corpus, run_prepare  # noqa: E402
from run import PY, step_parts, train_run  # noqa: E402


def gpu_memory_sampler() -> tuple[threading.Event, list[int]]:
    """Sample nvidia-smi's memory.used (MiB) until the event is set; the list holds the peak."""
    stop, peak = threading.Event(), [0]

    def sample() -> None:
        while not stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5, check=False).stdout
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


def bucketed_batches(work: Path, batch: int, device: str, files: int = 600) -> dict[str, Any]:
    """Stock order vs the kit's random, bucketed and frame-budget batches on the GPU (issue 11)."""
    import batching

    batching.make_length_corpus(work / "len_src", files, seed=0)
    batching.prepare(work / "len_src", work / "len")
    loaders = batching.variant_loaders(work / "len", batch, 8 * 500)
    result = {"files": files, "padding": batching.padding_table(loaders, batch, 8 * 500)}
    result["steps"] = batching.step_costs(loaders, work / "len", batch, 4, 3, device)
    return result


def fp16_amp_scaler(prepared: Path, work: Path, steps: int, batch: int) -> dict[str, Any]:
    """A kit run in fp16 (GradScaler; CUDA only) logs amp_scaler, and diagnose sees an fp16 run."""
    from ruslan_glowtts.monitor.diagnose import diagnose
    from ruslan_glowtts.monitor.diagnose.run_context import run_context
    from ruslan_glowtts.monitor.events import read_run
    from ruslan_glowtts.training.coqui_compat import AMP_SCALER_TAG

    output = work / "kit_fp16"
    command = [PY, "train_ruslan_glowtts.py", "--preset", "stable", "--dataset-path", str(prepared), "--max-steps",
               str(steps), "--output-path", str(output), "--set", "precision=fp16", "--set", f"batch_size={batch}",
               "--set", "plot_step=1", "--set", "run_eval=false", "--set", "test_delay_epochs=100000"]
    code = subprocess.call(command, cwd=REPO)
    run_dirs = [p for p in output.iterdir() if p.is_dir()] if output.is_dir() else []
    if len(run_dirs) != 1:  # report it and go on to the other measurements
        print(f"fp16 amp_scaler check: exit {code}, run folders {run_dirs}", flush=True)
        return {"exit_code": code, "ok": False, "run_dirs": [str(p) for p in run_dirs]}
    (run_dir,) = run_dirs
    scale = read_run(run_dir).scalars.get(AMP_SCALER_TAG)
    result = {"exit_code": code, "amp_scaler_points": 0 if scale is None else len(scale.values),
              "amp_scaler_last": None if scale is None else float(scale.values[-1]),
              "diagnose_sees_fp16": bool(run_context(run_dir)["fp16"] and scale is not None),
              "verdict": diagnose(run_dir).verdict}
    result["ok"] = code == 0 and result["amp_scaler_points"] > 0 and result["diagnose_sees_fp16"]
    print(f"fp16 amp_scaler check: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=80, help="trainer steps per run (10 are data-dependent init)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--only-fp16", action="store_true", help="only the fp16 amp_scaler check (~1 min)")
    args = p.parse_args()
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device: CPU dry run"
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    print(f"device: {device}; torch {torch.__version__}; bf16 {'supported' if bf16 else 'not supported'}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    make_corpus(work / "src", 96, seconds=(3.5, 3.5))
    run_prepare(work / "src", work / "prepared", 8)
    prepared = work / "prepared"
    fp16 = fp16_amp_scaler(prepared, work, 30, args.batch) if torch.cuda.is_available() else {"ok": None}
    (args.out / "fp16_check.json").write_text(json.dumps(fp16, indent=2), encoding="utf-8")
    if args.only_fp16:
        sys.exit(0 if fp16["ok"] else 1)

    kit = [PY, "train_ruslan_glowtts.py", "--preset", "stable", "--dataset-path", str(prepared),
           "--max-steps", str(args.steps), "--set", f"batch_size={args.batch}", "--set", "plot_step=1",
           "--set", "run_eval=false", "--set", "print_step=1000", "--set", "test_delay_epochs=100000"]
    variants = {
        "stock fp32": [PY, "bench/stock_recipe.py", "--dataset-path", str(prepared), "--batch-size",
                       str(args.batch), "--max-steps", str(args.steps), "--output-path"],
        "kit fp32": [*kit, "--set", "mixed_precision=false", "--output-path"],
        "kit bf16": [*kit, "--output-path"],
    }
    results: dict[str, Any] = {"device": device, "torch": torch.__version__, "bf16_supported": bf16,
                               "steps": args.steps, "batch": args.batch, "fp16_amp_scaler": fp16, "runs": {}}
    for name, command in variants.items():
        output = work / name.replace(" ", "_")
        stop, peak = gpu_memory_sampler()
        run = train_run(name, [*command, str(output)], output, args.batch)
        stop.set()
        values = losses(Path(run["run_dir"]))
        run.update(peak_gpu_mib=peak[0], losses_finite=all(math.isfinite(v) for v in values.values()),
                   first_losses={k: round(v, 4) for k, v in sorted(values.items())[:10]})
        results["runs"][name] = run
        print(f"{name}: {run['samples_per_s']:.1f} samples/s, peak GPU {peak[0]} MiB, "
              f"losses finite: {run['losses_finite']}", flush=True)
    results["inside_a_step"] = step_parts(prepared, args.batch, 9, "cuda" if torch.cuda.is_available() else "cpu")
    results["batching"] = bucketed_batches(work, args.batch, "cuda" if torch.cuda.is_available() else "cpu")
    print(json.dumps(results["inside_a_step"], indent=1), flush=True)

    runs, stock = results["runs"], results["runs"]["stock fp32"]["samples_per_s"]
    lines = [f"## GPU check: {device}", "",
             (f"torch {torch.__version__}; full-size GlowTTS, batch {args.batch}, {args.steps} trainer steps per run "
              "(10 of them data-dependent init); samples/s = batch / median 5-step window after 5 warm-up steps."), "",
             f"fp16 run logs amp_scaler and diagnose sees fp16: {fp16['ok']} ({fp16.get('amp_scaler_points')} points)",
             "",
             "| run | samples/s | vs stock | first step after (s) | peak GPU memory (MiB) | losses finite |",
             "|---|---|---|---|---|---|"]
    for name, run in runs.items():
        lines.append(f"| {name} | {run['samples_per_s']:.1f} | {run['samples_per_s'] / stock:.2f}x | "
                     f"{run['first_step_s']:.1f} | {run['peak_gpu_mib']} | {run['losses_finite']} |")
    fp32, bf = runs["kit fp32"]["first_losses"], runs["kit bf16"]["first_losses"]
    lines += ["", "First losses, kit fp32 vs kit bf16 (same seed, same batches):", "",
              "| step | fp32 | bf16 |", "|---|---|---|"]
    lines += [f"| {step} | {fp32[step]} | {bf.get(step, '')} |" for step in fp32]
    s = results["inside_a_step"]
    lines += ["", "| inside a step (GPU) | |", "|---|---|",
              f"| forward + backward | {s['forward_backward_s'] * 1000:.1f} ms |",
              f"| monotonic alignment search (CPU Cython + copies) | {s['mas_s'] * 1000:.1f} ms |",
              f"| Coqui RAdam step ({s['parameter_tensors']} tensors) | {s['coqui_radam_s'] * 1000:.2f} ms |",
              f"| torch.optim.RAdam(foreach=True) step | {s['torch_radam_foreach_s'] * 1000:.2f} ms |",
              (f"| after {s['optimizer_steps']} identical steps: largest move / largest difference | "
               f"{s['radam_largest_move']:.1e} / {s['radam_largest_difference']:.1e} |"), ""]
    b = results["batching"]
    random_rate = b["steps"]["kit random"]["samples_per_s"]
    lines += ["", (f"Length-bucketed batches (bench/batching.py step costs, {b['files']} utterances with RUSLAN's "
               f"length spread, batch {args.batch}, fp32; peak = the epoch's batch with the most padded frames):"), "",
              "| batching | padded share | samples/s (range) | vs kit random | peak allocated (MiB) |",
              "|---|---|---|---|---|"]
    for name, s_ in b["steps"].items():
        lines.append(f"| {name} | {b['padding'][name]['padded_share']:.1%} | {s_['samples_per_s']:.1f} "
                     f"({s_['range'][0]:.1f}-{s_['range'][1]:.1f}) | {s_['samples_per_s'] / random_rate:.2f}x | "
                     f"{s_['peak_mib']:.0f} |")
    lines.append("")
    (args.out / "gpu_check.md").write_text("\n".join(lines), encoding="utf-8")
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
