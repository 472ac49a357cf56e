"""The explosion rules on real runs: tests/data/real_runs/ (made by scripts/make_real_runs.py,
labelled by hand in labels.json from the curves and the process exits). No training here: the
committed event files are read.

Checked for every run: diagnose's verdict fits what happened, and the guard's rules replayed
over the run's trace raise no explosion alarm on a healthy run and raise one within
GUARD_MAX_LAG steps of the onset on every blow-up. docs/JUDGMENT.md is the same table.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "real_runs"
GUARD_MAX_LAG = 25  # steps from a blow-up's onset to the guard's first alarm, at most

_spec = importlib.util.spec_from_file_location("judgment_table", REPO / "scripts" / "judgment_table.py")
table = importlib.util.module_from_spec(_spec)
sys.modules["judgment_table"] = table
_spec.loader.exec_module(table)

# What diagnose may say, by what happened. A healthy run shorter than its grace steps plus 50
# points is too early to call; a run whose blow-up is not visible in its curves (it died within
# a few steps) cannot be called diverged from its folder, but it must not be told to keep training.
VERDICTS = {
    "healthy": {"healthy", "too_early"},
    "healthy_spike": {"healthy", "warning", "too_early"},
    "blew_up": {"exploding", "diverged"},
    "nan_crash": {"diverged"},
    "crashed": {"diverged", "exploding", "too_early", "warning"},
}


@pytest.fixture(scope="module")
def judged() -> dict[str, table.Judged]:
    return {j.name: j for j in table.judge_corpus()}


def test_the_corpus_is_small_and_labelled():
    size = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert size < 2 * 2**20
    runs = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert runs == set(table.labels())
    whats = {label["what"] for label in table.labels().values()}
    assert {"healthy", "nan_crash"} <= whats <= set(VERDICTS)
    runners = {table.json.loads((CORPUS / r / "process.json").read_text())["runner"] for r in runs}
    assert runners == {"stock", "kit"}


@pytest.mark.parametrize("name", sorted(table.labels()))
def test_diagnose_verdict_fits_what_happened(judged, name):
    j = judged[name]
    what = j.label["what"]
    if not j.label.get("visible", True):
        # Died within a few logged points and Coqui's log does not hold the error: the folder cannot
        # say why, but it says the run crashed, and never "keep training".
        assert j.ending == "crashed" and "keep training" not in j.diagnosis.recommendation
        return
    assert j.verdict in VERDICTS[what], (j.verdict, j.diagnosis.reasons)
    if what in ("nan_crash", "crashed"):
        assert j.ending in ("nan_loss", "crashed", "guard_stop")
    if j.verdict in ("exploding", "diverged"):
        assert j.diagnosis.exit_code == 3 and j.diagnosis.command


@pytest.mark.parametrize("name", sorted(table.labels()))
def test_guard_alarms_on_blow_ups_and_never_on_healthy_runs(judged, name):
    j = judged[name]
    what, onset = j.label["what"], j.label.get("onset_step")
    if what in ("healthy", "healthy_spike") or onset is None:
        assert j.guard_alarm is None, j.guard_alarm
        return
    if not j.label.get("visible", True):
        return  # nothing in the trace to see (one or two points before the crash)
    assert j.guard_alarm is not None, "no alarm on a blow-up"
    assert onset <= j.guard_alarm.step <= onset + GUARD_MAX_LAG, (onset, j.guard_alarm)


def test_the_judgment_table_is_up_to_date(judged):
    text = table.render(sorted(judged.values(), key=lambda j: j.name))
    assert (REPO / "docs" / "JUDGMENT.md").read_text(encoding="utf-8") == text
