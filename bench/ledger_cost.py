"""Section 7 of docs/BENCHMARKS.md: what the utterance ledger costs a training step (not a test).

    python bench/run.py ledger           # ~5 minutes on 2 cores
    python bench/run.py ledger --quick
    OMP_NUM_THREADS=1 python bench/run.py ledger   # on a machine shared with other jobs: two spinning
                                                   # OpenMP threads per process make every step erratic

One KitTrainer with the full-size GlowTTS, fp32 on CPU, batch 4, one batch: optimize() is run
step after step and the ledger's own calls inside it are timed directly (the per-sample terms,
the host copy, the formatting and the write: everything `UtteranceLedger.record` does), against
the whole optimize() call. The ledger is not switched off for a paired comparison: its cost is
well below the step-to-step noise of a whole step (section 4's guard pairs show quartiles of
several %), so only a direct timing can resolve it. The file's bytes per sighting are read back
from the ledger it wrote.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any


def measure(trainer: Any, data: dict[str, Any], steps: int) -> dict[str, Any]:
    """trainer, data: bench/run.py's one_batch_trainer for the stable preset on the prepared corpus."""
    import torch

    from ruslan_glowtts.monitor.ledger import ledger_files, per_sample_terms

    spent = [0.0]
    record = trainer.ledger.record

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = record(*args, **kwargs)
        spent[0] += time.perf_counter() - started
        return result

    trainer.ledger.record = timed
    step_s, ledger_s = [], []
    for _ in range(steps + 1):
        spent[0] = 0.0
        started = time.perf_counter()
        trainer.optimize(data, trainer.optimizer[0], None, trainer.criterion[0], trainer.scheduler[0])
        written = time.perf_counter()
        trainer.ledger.write_ready()  # the lines are written after the step, as KitTrainer does
        spent[0] += time.perf_counter() - written
        step_s.append(time.perf_counter() - started)
        ledger_s.append(spent[0])
    step_s, ledger_s = step_s[1:], ledger_s[1:]  # the first step warms up
    # The terms alone, from one step's outputs (the part that would run on a GPU).
    outputs, _ = trainer.compute_loss(data, trainer.criterion[0])
    started = time.perf_counter()
    for _ in range(20):
        per_sample_terms(outputs, data)
    terms_s = (time.perf_counter() - started) / 20
    trainer.ledger.close()
    (path,) = ledger_files([Path(trainer.output_path)])
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("u\t")]
    shares = sorted(b / a for a, b in zip(step_s, ledger_s, strict=True))
    return {
        "step_s": statistics.median(step_s),
        "ledger_s": statistics.median(ledger_s),
        "ledger_max_s": max(ledger_s),
        "terms_s": terms_s,
        "share": statistics.median(shares),
        "share_max": shares[-1],
        "steps": len(step_s),
        "batch": int(data["mel_lengths"].shape[0]),
        "bytes_per_sighting": path.stat().st_size / max(len(lines), 1),
        "threads": torch.get_num_threads(),
        "frames": int(data["mel_lengths"].max()),
    }


def section(r: dict[str, Any], machine: str, quick: bool) -> str:
    ruslan_mb = r["bytes_per_sighting"] * 32 * 100_000 / 2**20
    lines = [
        "## 7. Utterance ledger",
        "",
        (
            f"`{'OMP_NUM_THREADS=' + os.environ['OMP_NUM_THREADS'] + ' ' if os.environ.get('OMP_NUM_THREADS') else ''}"
            f"python bench/run.py ledger{' --quick' if quick else ''}` (bench/ledger_cost.py) writes this section; "
            f"{machine}. Full-size GlowTTS, fp32 on CPU ({r['threads']} torch thread(s)), batch {r['batch']} (longest "
            f"utterance {r['frames']} mel frames), {r['steps']} steps of `KitTrainer.optimize` on one batch; the ledger's own call "
            "(`UtteranceLedger.record`: the per-sample terms, the host copy, formatting, one `os.write`) timed inside "
            "each step."
        ),
        "",
        "| | |",
        "|---|---|",
        f"| optimize(), median | {r['step_s'] * 1000:.0f} ms |",
        f"| the ledger in it, median (max) | {r['ledger_s'] * 1000:.2f} ms ({r['ledger_max_s'] * 1000:.2f} ms) |",
        (
            f"| share of the step, median (max) | {r['share']:.3%} ({r['share_max']:.3%}): "
            f"{'met' if r['share'] <= 0.01 else 'missed'} (target <= 1 %) |"
        ),
        f"| of which the per-sample terms | {r['terms_s'] * 1000:.2f} ms |",
        (
            f"| file size | {r['bytes_per_sighting']:.0f} bytes per utterance per update; e.g. ~{ruslan_mb:.0f} MB per rank "
            "for 100,000 updates at batch 32 |"
        ),
        "",
        (
            "On a GPU the step never waits for the ledger: the terms are computed on the device, copied to pinned "
            "host memory with `non_blocking=True`, and a CUDA event is recorded; the lines are written once "
            "`event.query()` says the copy is done (checked at the next update, never waited for), and only "
            "`flush`/`close` (end of the run) wait. No `.item()`, `.tolist()` or `float()` touches a device tensor "
            "in the step (ruslan_glowtts/monitor/ledger.py)."
        ),
        "",
    ]
    return "\n".join(lines)
