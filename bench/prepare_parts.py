"""Benchmark parts for `python -m ruslan_glowtts.prepare`, used by bench/run.py (not a test).

- make_corpus: a RUSLAN-format corpus of N files (44.1 kHz mono 16-bit, the bundled sample's
  utterances concatenated), so a benchmark needs no download.
- run_prepare: times prepare in a subprocess and samples the RSS of its whole process tree.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
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


def make_corpus(root: Path, files: int, seconds: tuple[float, float] = (4.0, 6.0)) -> float:
    """A RUSLAN-layout corpus of `files` utterances, durations spread evenly over `seconds`;
    returns the mean duration in seconds."""
    (root / "RUSLAN").mkdir(parents=True)
    texts = [line.split("|", 1) for line in (SAMPLE / META).read_text(encoding="utf-8").splitlines()]
    audio = [sf.read(SAMPLE / "RUSLAN" / f"{id_}.wav", dtype="int16")[0] for id_, _ in texts]
    pause = np.zeros(int(0.2 * RATE), dtype=np.int16)
    lines, total = [], 0.0
    for i in range(files):
        a, b = i % len(texts), (i * 7 + 3) % len(texts)
        length = seconds[0] + (i % 21) / 20 * (seconds[1] - seconds[0])
        clip = np.concatenate([audio[a], pause, audio[b], pause])
        clip = np.tile(clip, int(np.ceil(length * RATE / len(clip))))[: int(length * RATE)]
        id_ = f"{i:06d}_RUSLAN"
        sf.write(root / "RUSLAN" / f"{id_}.wav", clip, RATE, subtype="PCM_16")
        lines.append(f"{id_}|{texts[a][1]} {texts[b][1]}")
        total += length
    (root / META).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return total / files


def tree_rss_kb(pid: int) -> int:
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


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_prepare(src: Path, dst: Path, jobs: int) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "ruslan_glowtts.prepare",
        "--src",
        str(src),
        "--dst",
        str(dst),
        "--jobs",
        str(jobs),
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak_tree = 0

    def sample() -> None:
        nonlocal peak_tree
        while process.poll() is None:
            peak_tree = max(peak_tree, tree_rss_kb(process.pid))
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
