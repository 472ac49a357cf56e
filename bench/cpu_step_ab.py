"""CPU step time of the kit now against an earlier checkout of it, interleaved (not a test).

    git worktree add /tmp/kit-base a32c77a        # the earlier kit, beside this one
    python bench/cpu_step_ab.py --base /tmp/kit-base --work /tmp/cpu_ab [--repeats 3] [--steps 30]

Both train the full-size GlowTTS (preset stable, fp32 on a CPU, batch 4, one loader worker) on
the same prepared corpus (48 generated utterances of 3-5 s), each from its own checkout's entry
point, alternating; the step time is bench/run.py's (median of 5-step windows of the
per-step TensorBoard stamps after warm-up). Prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from prepare_parts import make_corpus, run_prepare  # noqa: E402
from run import PY, train_run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True, help="a checkout of the earlier kit")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="trainer steps per run (10 are data-dependent init)")
    args = p.parse_args()
    prepared = args.work / "prepared"
    if not prepared.is_dir():
        make_corpus(args.work / "src", 48, seconds=(3.0, 5.0))
        run_prepare(args.work / "src", prepared, 2)
    roots = {"earlier": args.base.resolve(), "now": REPO}
    steps: dict[str, list[float]] = {name: [] for name in roots}
    for repeat in range(args.repeats):
        for name, root in roots.items():
            output = args.work / f"{name}_{repeat}"
            command = [
                PY,
                str(root / "train_ruslan_glowtts.py"),
                "--preset",
                "stable",
                "--dataset-path",
                str(prepared),
                "--max-steps",
                str(args.steps),
                "--output-path",
                str(output),
            ]
            for setting in (
                "batch_size=4",
                "plot_step=1",
                "run_eval=false",
                "print_step=1000",
                "test_delay_epochs=100000",
                "num_loader_workers=1",
            ):
                command += ["--set", setting]
            run = train_run(name, command, output, 4)
            steps[name].append(run["step_s"])
            print(f"{name} #{repeat + 1}: {run['step_s']:.3f} s/step", flush=True)
    medians = {name: statistics.median(values) for name, values in steps.items()}
    for name, value in medians.items():
        print(f"{name}: median {value:.3f} s/step over {len(steps[name])} runs")
    print(f"now / earlier: {medians['now'] / medians['earlier']:.3f}")


if __name__ == "__main__":
    main()
