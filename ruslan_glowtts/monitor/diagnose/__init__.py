"""Read a run's curves and say what they mean, with the exact command to run next.

    python -m ruslan_glowtts.diagnose RUN_DIR [MORE_RUNS ...] [--json] [--plot FILE.png]

Works on any Coqui GlowTTS run (TrainIterStats/*, EvalStats/*) and uses the kit's health guard
tags (Health/grad_norm, Health/skipped_steps, Health/alarm, Health/escalation) when present.

The explosion rules are the health guard's own (ruslan_glowtts/monitor/explosion_rules.py), replayed over
the logged grad_norm and loss points with the run's own `health` settings from config.json; the
windows are mapped from updates to points (one point per plot_step for Coqui's TrainIterStats,
one per update for the guard's Health/grad_norm). How the run ended (run.json, the tail of
trainer_0_log.txt) is part of the verdict; verdict.py lists the verdicts.
Exit codes: 0 healthy or too_early, 1 warning, 2 bad input or cannot_judge, 3 exploding or diverged.

One module per concern:
  findings.py     statistics of grad_norm, loss, eval loss and the guard's tags (robust: medians, MAD)
  verdict.py      findings + explosion rules + run ending -> a Judgement (one function per verdict)
  run_context.py  run.json, config.json, how the run ended, tier inference, checkpoints, next command
  diagnosis.py    the Diagnosis of one run folder, with its recommendation
  report.py       text, one line, JSON
  plotting.py     the --plot PNG (matplotlib)
  suspects.py     the ledger's suspect utterances, suspects.txt and the data map (issue 19)
  cli.py          argparse and main(argv) -> exit code (wrapped by common.cli.tool)
"""

from ruslan_glowtts.monitor.diagnose.cli import build_parser, main
from ruslan_glowtts.monitor.diagnose.diagnosis import EXIT_CODES, Diagnosis, diagnose
from ruslan_glowtts.monitor.diagnose.findings import (
    EVAL_TAG,
    GRAD_TAGS,
    LOSS_TAG,
    LR_TAG,
)
from ruslan_glowtts.monitor.diagnose.plotting import plot
from ruslan_glowtts.monitor.diagnose.report import format_report, one_line
from ruslan_glowtts.monitor.diagnose.run_context import (
    CHECKPOINT_RE,
    infer_tier,
    run_ending,
)
from ruslan_glowtts.monitor.diagnose.verdict import Judgement, Verdict, judge

__all__ = [
    "CHECKPOINT_RE",
    "EVAL_TAG",
    "EXIT_CODES",
    "GRAD_TAGS",
    "LOSS_TAG",
    "LR_TAG",
    "Diagnosis",
    "Judgement",
    "Verdict",
    "build_parser",
    "diagnose",
    "format_report",
    "infer_tier",
    "judge",
    "main",
    "one_line",
    "plot",
    "run_ending",
]
