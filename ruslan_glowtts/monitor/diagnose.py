"""Read a run's curves and say what they mean, with the exact command to run next.

    python -m ruslan_glowtts.diagnose RUN_DIR [--json] [--plot FILE.png]

Works on any Coqui GlowTTS run (TrainIterStats/*, EvalStats/*) and uses the kit's health guard
tags (Health/grad_norm, Health/skipped_steps, Health/alarm, Health/escalation) when present.

The explosion rules are the health guard's own (ruslan_glowtts/monitor/explosion_rules.py), replayed over
the logged grad_norm and loss points with the run's own `health` settings from config.json; the
windows are mapped from updates to points (one point per plot_step for Coqui's TrainIterStats,
one per update for the guard's Health/grad_norm). How the run ended (run.json, the tail of
trainer_0_log.txt) is part of the verdict. Verdicts, first match wins:
  diverged      the run ended on Coqui's `NaN loss` error (whatever the point count); it ended on
                another exception right after a catastrophic or non-finite blow-up; non-finite
                grad_norm or loss in a burst or at the end of the log; or the last norm is
                still catastrophic (>= catastrophic_factor x the limit)
  exploding     an explosion rule (catastrophic, level, jump, trend) fired and grad_norm has not
                come back into the healthy band
  too_early     no rule fired and fewer than `min_points` points follow the grace steps
  warning       an explosion rule fired but grad_norm came back; or anything else outside
                "healthy": above 100 once, p95 above 50, a rise that will leave the band within
                one more window, isolated non-finite steps, loss or eval loss rising, a recent
                health-guard alarm
  healthy       grad_norm in 1-50 and never above 100, not constantly rising, loss not rising
  cannot_judge  an event file is corrupt and the rest shows no trouble (it is named in a warning)
Exit codes: 0 healthy or too_early, 1 warning, 2 bad input or cannot_judge, 3 exploding or diverged.

The loss trend uses Tukey's resistant line, every other statistic medians and MAD: a GlowTTS
grad_norm is heavy-tailed and a mean or a least-squares slope follows single spikes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ruslan_glowtts.common.errors import EXIT_EXPLODED, EXIT_USAGE, OneLineErrorParser, UserError
from ruslan_glowtts.monitor.events import RunEvents, Series, read_run
from ruslan_glowtts.monitor.explosion_rules import Alarm, Detector, RuleSettings, quarter_growth
from ruslan_glowtts.common.next_steps import PREPARE_HINT, next_tier_command
from ruslan_glowtts.common.presets import Preset, load_preset, tier_chain
from ruslan_glowtts.common.runs import KNOWN_GOOD, RUN_META
from ruslan_glowtts.training.coqui_compat import AMP_SCALER_TAG, NAN_LOSS_LOG_PATTERN, mentions_nan_loss

logger = logging.getLogger(__name__)

EXIT_CODES = {"healthy": 0, "too_early": 0, "warning": 1, "exploding": EXIT_EXPLODED, "diverged": EXIT_EXPLODED,
              "cannot_judge": EXIT_USAGE}
CHECKPOINT_RE = re.compile(r"^(?:checkpoint|best_model)_(\d+)\.pth$")

GRAD_TAGS = ("Health/grad_norm", "TrainIterStats/grad_norm")
LOSS_TAG = "TrainIterStats/loss"
LR_TAG = "TrainIterStats/current_lr"
EVAL_TAG = "EvalStats/avg_loss"


@dataclass
class Diagnosis:
    run_dir: Path
    verdict: str
    reasons: list[str]
    recommendation: str  # one sentence
    recommended_preset: str | None  # the tier to switch to now; None = keep the current one
    command: str | None  # what to run now; None = keep training
    next_tier_command: str | None  # what to run if (or now that) this tier explodes
    stats: dict[str, Any]
    run: dict[str, Any]
    markers: dict[str, list[float]] = field(default_factory=dict)  # steps of skips, alarms, escalations

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": self.reasons, "recommended_preset": self.recommended_preset,
                "recommendation": self.recommendation, "command": self.command,
                "next_tier_command": self.next_tier_command, "exit_code": self.exit_code,
                "stats": _clean(self.stats), "run": _clean(self.run)}


# ---------------------------------------------------------------------------------------------
# Robust statistics


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/Inf to None."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _sigma(residuals: np.ndarray) -> float:
    """Robust standard deviation: 1.4826 x median absolute deviation (= sigma for Gaussian noise)."""
    return float(1.4826 * np.median(np.abs(residuals - np.median(residuals)))) if len(residuals) else 0.0


def _centered_median(x: np.ndarray, half: int) -> np.ndarray:
    padded = np.pad(x, half, mode="edge")
    return np.median(sliding_window_view(padded, 2 * half + 1), axis=1)


def _resistant_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Tukey's resistant line: slope between the medians of the first and last thirds. A few
    spikes cannot tilt it, unlike least squares."""
    third = len(x) // 3
    dx = float(np.median(x[-third:]) - np.median(x[:third]))
    return float(np.median(y[-third:]) - np.median(y[:third])) / dx if third and dx else 0.0


def _runs_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) index pairs, end exclusive, of the contiguous True stretches."""
    edges = np.diff(np.concatenate(([0], mask.astype(int), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


# ---------------------------------------------------------------------------------------------
# grad_norm, loss, eval loss


@dataclass
class GradFindings:
    stats: dict[str, Any]
    steps: np.ndarray  # post-grace points
    log: np.ndarray  # log10 of the finite positive post-grace values (NaN elsewhere)
    nonfinite_mask: np.ndarray  # over all points
    all_steps: np.ndarray
    all_values: np.ndarray  # NaN where non-finite (Coqui's logged zeros included)
    every: int  # updates per logged point (plot_step for Coqui's tags, 1 for the guard's)
    calibration: np.ndarray  # fp16 GradScaler's first overflows: not fed to the rules


def _grad_findings(tag: str, series: Series, rules: RuleSettings, fp16: bool) -> GradFindings:
    steps, values = series.steps, series.values
    nonfinite = ~np.isfinite(values)
    zeros = values == 0
    coqui = tag.startswith("TrainIterStats/")
    measured = not (coqui and zeros.all())
    if measured:
        # A real norm is never exactly 0: Coqui logs a NaN/Inf grad_norm as 0 (trainer.py, optimize),
        # and the guard logs 0 for an update whose loss was already NaN (no gradient computed).
        nonfinite = nonfinite | zeros
    calibration = np.zeros(len(values), dtype=bool)
    if fp16:
        # GradScaler starts at 2^16 and halves on each overflow: the first skipped steps are its
        # calibration, not a divergence (those updates are not applied).
        calibration[: rules.nonfinite_window] = nonfinite[: rules.nonfinite_window]
        nonfinite[: rules.nonfinite_window] = False
    every = max(int(np.median(np.diff(steps))), 1) if len(steps) > 1 else 1

    start = int(steps[0]) + rules.grace_steps
    post = steps >= start
    if post.sum() == 0:
        post = np.ones_like(post)
    p_steps, p_values = steps[post], values[post]
    good = np.isfinite(p_values) & (p_values > 0)
    log = np.where(good, np.log10(np.where(good, p_values, 1.0)), np.nan)
    finite = p_values[good]

    stats: dict[str, Any] = {
        "tag": tag, "measured": measured, "points": len(steps), "first_step": int(steps[0]),
        "last_step": int(steps[-1]), "steps_per_point": every, "grace_steps": rules.grace_steps,
        "judged_points": len(p_steps), "nonfinite": int(nonfinite.sum()) if measured else 0,
        "logged_zeros": int(zeros.sum()) if measured else 0,
        "nonfinite_steps": [int(s) for s in steps[nonfinite][:20]] if measured else [],
    }
    if len(finite):
        above_50, above_100 = finite > rules.healthy_max, finite > rules.grad_norm_limit
        imax = int(np.argmax(np.where(good, p_values, -np.inf)))
        stats.update(
            median=float(np.median(finite)), p95=float(np.percentile(finite, 95)), max=float(finite.max()),
            max_step=int(p_steps[imax]), share_above_50=float(above_50.mean()),
            share_above_100=float(above_100.mean()), points_above_100=int(above_100.sum()),
            recent_median=float(np.median(finite[-rules.for_points(every).level_window:])),
            first_above_100_step=int(p_steps[good][above_100][0]) if above_100.any() else None,
        )
    all_values = np.where(nonfinite | calibration, np.nan, values) if measured else values
    return GradFindings(stats, p_steps, log, nonfinite, steps, all_values, every, calibration)


def _replay(f: GradFindings, loss: Series | None, rules: RuleSettings) -> list[Alarm]:
    """The guard's rules over the logged points (explosion_rules), every firing of each rule."""
    losses = dict(zip(loss.steps.tolist(), loss.values.tolist(), strict=True)) if loss is not None else {}
    detector = Detector(rules.for_points(f.every), realarm_after=1, unit="points")
    alarms: list[Alarm] = []
    for step, value, skip in zip(f.all_steps.tolist(), f.all_values.tolist(), f.calibration.tolist(), strict=True):
        if not skip:
            alarms += detector.observe(step, value, losses.get(step))
    return alarms


def _grad_shape(f: GradFindings, alarms: list[Alarm], rules: RuleSettings) -> None:
    """Trend, jumps and spikes of grad_norm, as the rules saw them."""
    stats = f.stats
    stats.update(trend_growth=None, trend_rising=False, trend_points=0, trend_steps=0, jumps=[], spikes=0,
                 spike_steps=[])
    ok = ~np.isnan(f.log)
    x, y = f.steps[ok], f.log[ok]
    if len(y) >= 8:
        # Growth of the last quarter's median over the first's, over the trend window (the trend rule's measure).
        w = min(rules.for_points(f.every).trend_window, len(y))
        first, last, rising = quarter_growth(y[-w:] * math.log(10))
        stats.update(trend_growth=last / first, trend_rising=rising, trend_points=w, trend_steps=int(x[-1] - x[-w]))
    previous = None
    apart = rules.for_points(f.every).jump_window * f.every  # firings closer than this are one jump
    for a in alarms:
        if a.kind == "jump" and (previous is None or a.step - previous > apart):
            stats["jumps"].append({"step": a.step, "from": a.data["from"], "to": a.data["to"],
                                   "factor": a.data["to"] / a.data["from"]})
        previous = a.step if a.kind == "jump" else previous
    spikes = [a.step for a in alarms if a.kind == "spike"]
    stats.update(spikes=len(spikes), spike_steps=spikes[:20])


def _loss_findings(series: Series, rules: RuleSettings, every: int) -> dict[str, Any]:
    steps, values = series.steps, series.values
    nonfinite = ~np.isfinite(values)
    start = int(steps[0]) + rules.grace_steps
    keep = (steps >= start) & ~nonfinite
    if keep.sum() < 6:
        keep = ~nonfinite
    x, y = steps[keep], values[keep]
    stats: dict[str, Any] = {"tag": LOSS_TAG, "points": len(steps), "nonfinite": int(nonfinite.sum()),
                             "last_finite": not bool(nonfinite[-1]), "trend_change": None, "spikes": 0}
    if len(y) == 0:
        return stats
    n = max(1, min(rules.for_points(every).level_window, len(y) // 3))
    stats.update(start=float(np.median(y[:n])), end=float(np.median(y[-n:])), last=float(y[-1]), edge_points=n)
    if len(y) < 6:
        return stats
    # Loss can be negative (GlowTTS's log-likelihood term), so its trend is linear, not log.
    w = rules.for_points(every).trend_window
    tx, ty = x[-w:], y[-w:]
    resid = y - _centered_median(y, 8)
    sigma = _sigma(resid)
    spike = resid > rules.spike_z * sigma if sigma > 0 else np.zeros_like(resid, dtype=bool)
    stats.update(trend_change=_resistant_slope(tx, ty) * float(tx[-1] - tx[0]), trend_points=len(tx),
                 noise_sigma=sigma, spikes=int(spike.sum()), spike_steps=[int(s) for s in x[spike][:20]])
    return stats


def _eval_findings(series: Series) -> dict[str, Any]:
    ok = np.isfinite(series.values)
    steps, values = series.steps[ok], series.values[ok]
    stats: dict[str, Any] = {"points": len(series), "nonfinite": int((~ok).sum())}
    if len(values):
        best = int(np.argmin(values))
        rising = 0
        for prev, cur in zip(values[::-1][1:], values[::-1][:-1], strict=True):  # consecutive rises at the end
            if cur <= prev:
                break
            rising += 1
        stats.update(first=float(values[0]), best=float(values[best]), best_step=int(steps[best]),
                     last=float(values[-1]), last_step=int(steps[-1]), rising_evals=rising)
    return stats


def _health_findings(run: RunEvents) -> tuple[dict[str, Any], dict[str, list[float]]]:
    stats: dict[str, Any] = {}
    markers: dict[str, list[float]] = {"skipped": [], "alarms": [], "escalations": []}
    if (found := run.get("Health/skipped_steps")) is not None:
        _, s = found
        counts = np.nan_to_num(s.values)
        grew = np.diff(np.concatenate(([0.0], counts))) > 0
        markers["skipped"] = [int(v) for v in s.steps[grew]]
        stats["skipped_steps"] = int(counts.max())
    if (found := run.get("Health/alarm")) is not None:
        _, s = found
        fired = s.steps[s.values > 0]
        markers["alarms"] = [int(v) for v in fired]
        stats.update(alarms=len(fired), last_alarm_step=int(fired[-1]) if len(fired) else None)
    if (found := run.get("Health/escalation")) is not None:
        _, s = found
        markers["escalations"] = [int(v) for v in s.steps]
        stats["escalation_index"] = int(s.values[-1]) if np.isfinite(s.values[-1]) else None
    if run.texts:
        stats["notes"] = [{"step": step, "tag": tag, "text": text} for step, tag, text in run.texts[-10:]]
    return stats, markers


# ---------------------------------------------------------------------------------------------
# The verdict


def _g(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _onset(f: GradFindings, rules: RuleSettings) -> int | None:
    """First step of the final stretch where grad_norm's trailing median is above the band."""
    ok = ~np.isnan(f.log)
    x, y = f.steps[ok], f.log[ok]
    w = rules.for_points(f.every).jump_window
    if len(y) < w:
        return None
    trailing = np.median(sliding_window_view(y, w), axis=1)
    above = np.concatenate((np.zeros(w - 1, dtype=bool), trailing > math.log10(rules.healthy_max)))
    stretches = _runs_of(above)
    if not stretches or stretches[-1][1] != len(y):
        return None
    return int(x[max(stretches[-1][0] - w + 1, 0)])


def _first(alarms: list[Alarm], *kinds: str) -> Alarm | None:
    return next((a for a in alarms if a.kind in kinds), None)


def judge(run: RunEvents, rules: RuleSettings, health: dict[str, Any], fp16: bool = False,
          ending: dict[str, Any] | None = None) -> tuple[str, list[str], int | None, dict[str, Any]]:
    """(verdict, reasons, onset step of the trouble or None, stats); `health` from _health_findings,
    `ending` from run_ending(). The explosion rules are explosion_rules', replayed over the points."""
    ending = ending or {"kind": "unknown"}
    stats: dict[str, Any] = {}
    reasons: list[str] = []
    grad = run.get(*GRAD_TAGS)
    loss = run.get(LOSS_TAG)
    f = _grad_findings(*grad, rules, fp16) if grad else None
    alarms: list[Alarm] = []
    if f is not None and f.stats["measured"]:
        alarms = _replay(f, loss[1] if loss else None, rules)
        _grad_shape(f, alarms, rules)
        stats["grad_norm"] = f.stats
        fired: dict[str, dict[str, int]] = {}
        for a in alarms:  # which rules fired, first where and how often (every point counts once)
            fired.setdefault(a.kind, {"first_step": a.step, "fired": 0})["fired"] += 1
        stats["rules"] = fired
    elif f is not None:
        stats["grad_norm"] = f.stats
    every = f.every if f is not None else 1
    if loss:
        stats["loss"] = _loss_findings(loss[1], rules, every)
    if (ev := run.get(EVAL_TAG)) is not None:
        stats["eval_loss"] = _eval_findings(ev[1])
    if (lr := run.get(LR_TAG)) is not None:
        v = lr[1].values
        stats["learning_rate"] = {"first": float(v[0]), "last": float(v[-1]), "max": float(np.nanmax(v))}
    if health:
        stats["health"] = health
    g = f.stats if f else {}
    guarded = bool(grad) and grad[0].startswith("Health/")
    source = "the guard skipped them" if guarded else (
        "Coqui logs a NaN/Inf grad_norm as 0 and, in fp32, still applies that update")
    limit = rules.grad_norm_limit
    catastrophic = _first(alarms, "catastrophic")

    # --- diverged: the run died of it, non-finite values in a burst or at the end of the log, or
    # norms so far above the limit at the end that the weights are gone.
    bad_grad = f.nonfinite_mask if f is not None and g.get("measured") else np.zeros(0, dtype=bool)
    bad_loss = ~np.isfinite(loss[1].values) if loss else np.zeros(0, dtype=bool)
    burst = _first(alarms, "nonfinite", "diverged")
    # Without the guard a non-finite last step means NaN weights now (Coqui applied the update);
    # with it, that step was skipped and only a burst counts.
    ends_g = bool(len(bad_grad) and bad_grad[-1] and not guarded)
    ends_l = bool(len(bad_loss) and bad_loss[-1])
    last_norm = float(f.all_values[np.isfinite(f.all_values)][-1]) if f is not None and np.isfinite(
        f.all_values).any() else None
    ends_huge = catastrophic is not None and last_norm is not None and (
        last_norm >= rules.catastrophic_factor * limit)
    # Coqui prints a crash's error to the console only: a run that crashed while its last norm was
    # above the limit (or after a catastrophic or non-finite stretch) died of its blow-up.
    blown = catastrophic or burst or ends_g or (last_norm is not None and last_norm > limit)
    died = ending["kind"] == "nan_loss" or (ending["kind"] == "crashed" and bool(blown))
    if died or burst or ends_g or ends_l or ends_huge:
        first = None
        if died:
            reasons.append(f"the run ended on {ending['text']}" + (
                "" if ending["kind"] == "nan_loss" else f", right after grad_norm reached {_g(last_norm)}"))
            first = ending.get("step")
        if catastrophic is not None:
            reasons.append(f"step {catastrophic.step}: {catastrophic.message}")
            first = catastrophic.step if first is None else min(first, catastrophic.step)
        if ends_huge:
            reasons.append(f"the last logged grad_norm is {_g(last_norm)}, {last_norm / limit:.0f}x the limit "
                           f"{limit:g}: the weights have diverged")
        if bad_grad.any() and (burst or ends_g):
            first_bad = int(f.all_steps[bad_grad][0])
            reasons.append(f"grad_norm is non-finite at {int(bad_grad.sum())} logged step(s), first at step "
                           f"{first_bad}" + (f" ({g['logged_zeros']} logged as 0: {source})" if g.get("logged_zeros")
                                              else "")
                           + (f", {rules.nonfinite_burst}+ within {rules.nonfinite_window} points" if burst else "")
                           + (", including the last one" if ends_g else ""))
            first = first_bad if first is None else min(first, first_bad)
        if bad_loss.any() and (burst or ends_l):
            loss_first = int(loss[1].steps[bad_loss][0])
            first = loss_first if first is None else min(first, loss_first)
            reasons.append(f"loss is non-finite at {int(bad_loss.sum())} logged step(s), first at step {loss_first}")
        return "diverged", reasons, first, stats

    if f is None or not g.get("measured"):
        if f is not None:
            reasons.append("grad_norm is 0 at every logged step: Coqui computes it only when grad_clip > 0")
        else:
            reasons.append("no grad_norm logged yet (" + " or ".join(GRAD_TAGS) + ")")
        return "too_early", reasons, None, stats

    onset = _onset(f, rules)
    explosions = [a for a in alarms if a.kind in ("catastrophic", "level", "jump", "trend")]
    recent = g.get("recent_median")
    back = recent is not None and recent <= rules.healthy_max
    if explosions and not back:
        # An explosion rule fired and grad_norm has not come back into the band.
        firsts = sorted((a for a in (_first(explosions, k) for k in ("catastrophic", "level", "jump", "trend")) if a),
                        key=lambda a: a.step)
        exploding = [f"step {a.step}: {a.kind} rule: {a.message}" for a in firsts]
        if recent is not None:
            exploding.append(f"grad_norm's median over the last {rules.for_points(every).level_window} points is "
                             f"{_g(recent)}, outside the healthy band 1-{rules.healthy_max:g}")
        if g.get("first_above_100_step") is not None:
            exploding.append(f"{g['share_above_100']:.0%} of points are above {limit:g}, first at step "
                             f"{g['first_above_100_step']}; max {_g(g['max'])} at step {g['max_step']}")
        start = min(a.step for a in explosions)
        return "exploding", exploding, onset if onset is not None else start, stats

    if not explosions and (g["judged_points"] < rules.min_points or "median" not in g):
        ready = int(g["first_step"] + rules.grace_steps + rules.min_points * every)
        if ending["kind"] == "crashed":
            reasons.append(f"the run stopped at step {g['last_step']} after {g['points']} grad_norm point(s); neither "
                           "the catastrophic nor the non-finite rule fired, so its curves do not say why")
        elif g["last_step"] >= g["first_step"] + rules.grace_steps:
            reasons.append(f"only {g['judged_points']} grad_norm point(s) after the first {rules.grace_steps} steps "
                           f"(up to step {g['last_step']}); {rules.min_points} are needed to judge a trend: "
                           f"look again after step {ready}")
        else:
            reasons.append(f"the run is at step {g['last_step']}, within its first {rules.grace_steps} steps, "
                           f"where only the catastrophic and non-finite rules judge (GlowTTS's early swings); "
                           f"{rules.min_points} points after them are needed: look again after step {ready}")
        if g.get("max", 0) > limit:
            reasons.append(f"already above {limit:g} at step {g['max_step']} (max {_g(g['max'])}): look again soon")
        return "too_early", reasons, None, stats

    # --- warning
    warn = []
    if explosions:
        first = explosions[0]
        warn.append(f"step {first.step}: {first.kind} rule: {first.message}; grad_norm came back into the band "
                    f"(recent median {_g(recent)})")
    if g.get("max", 0) > limit:
        warn.append(f"grad_norm went above {limit:g} at {g['points_above_100']} point(s) "
                    f"(max {_g(g['max'])} at step {g['max_step']}), but its recent median is back at {_g(recent)}")
    elif g["p95"] > rules.healthy_max:
        warn.append(f"grad_norm's p95 is {_g(g['p95'])}: {g['share_above_50']:.0%} of points are above the "
                    f"healthy band 1-{rules.healthy_max:g}")
    if recent > rules.healthy_max:
        warn.append(f"grad_norm's recent median {_g(recent)} is above the healthy band 1-{rules.healthy_max:g}")
    growth = g["trend_growth"]
    window = f"the last {g['trend_points']} points ({g['trend_steps']} steps)"
    if g["trend_rising"] and growth >= rules.trend_factor and recent * growth > rules.healthy_max:
        # The trend rule's rise, still inside the band: one more window at this rate leaves it.
        warn.append(f"grad_norm grew x{growth:.2g} over {window}; at this rate it leaves the band "
                    f"(now {_g(recent)}) within the next {g['trend_steps']} steps")
    if g["nonfinite"] and not fp16:
        warn.append(f"{g['nonfinite']} isolated non-finite grad_norm step(s) at {g['nonfinite_steps'][:5]} ({source})")
    ls = stats.get("loss", {})
    if ls.get("trend_change") is not None and ls["trend_change"] > max(3 * ls["noise_sigma"], 1e-6):
        warn.append(f"loss rose by {ls['trend_change']:.3g} over the last {ls['trend_points']} points "
                    f"(3x its noise is {3 * ls['noise_sigma']:.2g})")
    es = stats.get("eval_loss", {})
    if es.get("rising_evals", 0) >= 3:
        warn.append(f"eval loss rose at each of the last {es['rising_evals']} evaluations "
                    f"(best {es['best']:.3g} at step {es['best_step']}, now {es['last']:.3g})")
    alarm = health.get("last_alarm_step")
    if alarm is not None and g["trend_points"] and alarm >= int(f.steps[~np.isnan(f.log)][-g["trend_points"]]):
        warn.append(f"the health guard raised {health['alarms']} alarm(s), the last at step {alarm}")
    if warn:
        return "warning", warn, onset, stats

    reasons.append(f"grad_norm stays in the healthy band: median {_g(g['median'])}, p95 {_g(g['p95'])}, max "
                   f"{_g(g['max'])} (band 1-{rules.healthy_max:g}, never above {limit:g})")
    if growth is not None:
        reasons.append(f"grad_norm trend over {window}: x{growth:.2g}" + (" (rising, still far from the band's top)"
                                                                          if growth >= rules.trend_factor else ""))
    if "start" in ls:
        word = "fell" if ls["end"] < ls["start"] else "did not fall"
        reasons.append(f"loss {word}: {ls['start']:.3g} -> {ls['end']:.3g} (medians of the first and last "
                       f"{ls['edge_points']} points)")
    return "healthy", reasons, None, stats


# ---------------------------------------------------------------------------------------------
# How the run ended

_NAN_LOSS_RE = NAN_LOSS_LOG_PATTERN
_ERROR_RE = re.compile(r"^(\w+(?:\.\w+)*(?:Error|Exception)\b.*)$", re.MULTILINE)
_STEP_RE = re.compile(r"GLOBAL_STEP: (\d+)")
_LOG_TAIL_BYTES = 256 * 1024  # the ending is at the end; a long run's log is large


def run_ending(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """How the run ended, from run.json (kit runs) and the tail of trainer_0_log.txt.

    kind: nan_loss (Coqui's `NaN loss` error), crashed (another exception), guard_stop (the
    guard's stop or escalation), interrupted, finished, or unknown (still running, killed, or a
    stock run whose exception went to the console: Coqui prints tracebacks to stderr and only
    logs "Run is kept in" when it keeps the folder of a crashed run)."""
    status = meta.get("status")
    # The kit's message is "what happened. Next: <command>": the command is printed under Next anyway.
    message = str(meta.get("message") or "").split(". Next:")[0].strip()
    if status in ("crashed", "bad_data"):  # bad_data: too many samples failed to load
        kind = "nan_loss" if mentions_nan_loss(message) else "crashed"
        return {"kind": kind, "source": "run.json", "step": meta.get("final_step"),
                "text": f"a crash: {message.splitlines()[0] if message else 'no message'} (run.json)"}
    if status == "exploded":
        return {"kind": "guard_stop", "source": "run.json", "step": meta.get("final_step"),
                "text": f"the health guard's stop: {message.splitlines()[0] if message else ''} (run.json)"}
    if status in ("finished", "max_steps", "interrupted", "terminated"):
        kind = "interrupted" if status in ("interrupted", "terminated") else "finished"
        return {"kind": kind, "source": "run.json", "step": meta.get("final_step"),
                "text": f"{status} at step {meta.get('final_step')} (run.json)"}
    log = run_dir / "trainer_0_log.txt"
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - _LOG_TAIL_BYTES))
            tail = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        said = f"run.json says {status}" if status else "no run.json status"
        return {"kind": "unknown", "source": None, "step": None, "text": f"unknown ({said}, no {log.name})"}
    except OSError as exc:
        logger.warning("warning: cannot read %s: %s", log, exc.strerror or exc)
        return {"kind": "unknown", "source": None, "step": None, "text": f"unknown ({log.name} unreadable)"}
    steps = _STEP_RE.findall(tail)
    step = int(steps[-1]) if steps else None
    if m := _NAN_LOSS_RE.search(tail):
        return {"kind": "nan_loss", "source": log.name, "step": step,
                "text": f"Coqui's `NaN loss with {m.group(1)}` error ({log.name})"}
    if "Traceback (most recent call last)" in tail:
        errors = _ERROR_RE.findall(tail)
        return {"kind": "crashed", "source": log.name, "step": step,
                "text": f"an exception: {errors[-1] if errors else 'see the traceback'} ({log.name})"}
    if "Keyboard interrupt detected" in tail:
        return {"kind": "interrupted", "source": log.name, "step": step, "text": f"Ctrl-C ({log.name})"}
    if "! Run is kept in" in tail:
        return {"kind": "crashed", "source": log.name, "step": step,
                "text": f"an exception (Coqui kept the folder; the error itself went to the console) ({log.name})"}
    return {"kind": "unknown", "source": log.name, "step": step,
            "text": f"not recorded: still running, or killed ({log.name} has no ending)"}


# ---------------------------------------------------------------------------------------------
# The run's tier and the command to run next


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("cannot read %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _value(preset: Preset, key: str) -> Any:
    return preset.overrides.get(key)


def infer_tier(config: dict[str, Any]) -> tuple[str | None, list[str], str]:
    """For a run without run.json: (current preset or None, the chain after it, explanation).

    An exact (lr, grad_clip) match names the tier; otherwise the next tier is the first of the
    bundled chain at least as conservative in both values and stricter in one."""
    lr, clip = config.get("lr"), config.get("grad_clip")
    if not isinstance(lr, (int, float)) or not isinstance(clip, (int, float)):
        chain = [p.name for p in tier_chain(load_preset("stable"))]
        return None, chain, "config.json has no lr/grad_clip: starting the kit's chain at stable"
    eff_clip = clip if clip > 0 else math.inf  # 0 disables clipping
    chain = tier_chain(load_preset("default"))
    for i, p in enumerate(chain):
        if math.isclose(_value(p, "lr"), lr, rel_tol=1e-6) and math.isclose(_value(p, "grad_clip"), clip, rel_tol=1e-6):
            return p.name, [q.name for q in chain[i + 1:]], f"lr {lr:g} and grad_clip {clip:g} match preset {p.name}"
    for i, p in enumerate(chain):
        p_lr, p_clip = _value(p, "lr"), _value(p, "grad_clip")
        if p_lr <= lr and p_clip <= eff_clip and (p_lr < lr or p_clip < eff_clip):
            return None, [q.name for q in chain[i:]], (f"lr {lr:g}, grad_clip {clip:g}: the first safer tier of "
                                                       f"{' -> '.join(q.name for q in chain)} is {p.name}")
    return None, [], f"lr {lr:g}, grad_clip {clip:g} are already at or below the last tier's values"


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in run_dir.glob("*.pth"):
        if m := CHECKPOINT_RE.match(path.name):
            found.append((int(m.group(1)), path))
    return sorted(found)


def _pick_checkpoint(run_dir: Path, onset: int | None, diverged: bool = False) -> tuple[Path | None, str]:
    """The weights the next tier starts from, and how they were chosen (one clause)."""
    known_good = run_dir / KNOWN_GOOD
    if known_good.is_file():
        return known_good, "from the run's last known-good checkpoint"
    found = _checkpoints(run_dir)
    if not found:
        return None, "from scratch: the run has no checkpoint"
    if onset is not None:
        before = [c for c in found if c[0] <= onset]
        if before:
            return before[-1][1], f"from the last checkpoint saved before the trouble began (step {onset})"
        if diverged:  # weights saved after a divergence are no starting point
            return None, f"from scratch: every checkpoint was saved after the run diverged (step {onset})"
        return found[-1][1], (f"from the last checkpoint, saved after the trouble began (step {onset}); if the new "
                              "run explodes at once, start it without --restore-path")
    return found[-1][1], "from the run's last checkpoint"


def _lineage(run_dir: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """This run and the runs it continues from (run.json parent_run links), oldest first."""
    chain = [{"run": str(run_dir), "preset": meta.get("preset"), "escalation_index": meta.get("escalation_index"),
              "reason": meta.get("reason")}]
    seen = {run_dir.resolve()}
    while parent := meta.get("parent_run"):
        path = Path(parent)
        if path.resolve() in seen or len(chain) > 50:
            break
        seen.add(path.resolve())
        meta = _read_json(path / RUN_META)
        chain.append({"run": str(path), "preset": meta.get("preset"), "escalation_index": meta.get("escalation_index"),
                      "reason": meta.get("reason"), "exists": path.is_dir()})
    return chain[::-1]


def run_context(run_dir: Path) -> dict[str, Any]:
    """What the recommendation needs: preset, tier chain, dataset path, metadata."""
    meta = _read_json(run_dir / RUN_META)
    config = _read_json(run_dir / "config.json")
    ctx: dict[str, Any] = {"dir": str(run_dir), "has_run_json": bool(meta), "preset": meta.get("preset"),
                           "status": meta.get("status"), "final_step": meta.get("final_step"),
                           "lr": config.get("lr"), "grad_clip": config.get("grad_clip"),
                           "fp16": bool(config.get("mixed_precision")) and config.get("precision", "fp16") == "fp16"}
    chain = meta.get("tier_chain")
    if meta.get("preset") and not (isinstance(chain, list) and chain):
        try:
            chain = [p.name for p in tier_chain(load_preset(meta.get("preset_path") or meta["preset"]))]
        except UserError:
            chain = None
    if meta.get("preset") and isinstance(chain, list) and chain:
        ctx.update(tier_chain=chain, next_preset=chain[1] if len(chain) > 1 else None, tier_source="run.json")
    else:
        current, after, why = infer_tier(config)
        ctx.update(preset=current, tier_chain=([current] if current else []) + after,
                   next_preset=after[0] if after else None, tier_source=f"config.json: {why}")
    datasets = config.get("datasets") if isinstance(config.get("datasets"), list) else []
    from_config = datasets[0].get("path") if datasets and isinstance(datasets[0], dict) else None
    ctx["dataset_path"] = meta.get("dataset_path") or from_config or None
    ctx["lineage"] = _lineage(run_dir, meta) if meta.get("parent_run") or meta.get("escalation_index") else []
    ctx["_meta"], ctx["_config"] = meta, config
    return ctx


def _command(ctx: dict[str, Any], next_preset: str, checkpoint: Path | None) -> str:
    overrides = [o for o in ctx["_meta"].get("overrides") or [] if isinstance(o, dict)]
    return next_tier_command(next_preset, ctx["dataset_path"], overrides, checkpoint)


def diagnose(run_dir: Path, events: RunEvents | None = None) -> Diagnosis:
    """The verdict, reasons and recommendation for one run folder (events: read_run(run_dir))."""
    run_dir = Path(run_dir).expanduser().absolute()
    events = events if events is not None else read_run(run_dir)
    ctx = run_context(run_dir)
    # The run's own health settings (config.json) steer the rules, as they steered its guard.
    rules = RuleSettings.from_mapping(ctx["_config"].get("health"))
    health, markers = _health_findings(events)
    ending = run_ending(run_dir, ctx["_meta"])
    verdict, reasons, onset, stats = judge(events, rules, health, ending=ending,
                                           fp16=ctx["fp16"] and AMP_SCALER_TAG in events.scalars)
    if events.unreadable and verdict not in ("exploding", "diverged"):
        # What could be read shows no trouble, but the unread file may hold it: say so, do not guess.
        verdict = "cannot_judge"
        reasons = [f"cannot read the event file {p.name}: {why}" for p, why in events.unreadable] + [
            "the verdict would rest on part of the run's curves only"]
    elif events.unreadable:
        reasons += [f"the event file {p.name} could not be read ({why}); the verdict rests on the others"
                    for p, why in events.unreadable]

    nxt = ctx["next_preset"]
    checkpoint, why_ckpt = _pick_checkpoint(run_dir, onset, diverged=verdict == "diverged")
    next_cmd = _command(ctx, nxt, checkpoint) if nxt else None
    ctx.update(checkpoint=str(checkpoint) if checkpoint else None, checkpoint_note=why_ckpt, onset_step=onset,
               event_files=[str(p) for p in events.files], ending=ending, thresholds=asdict(rules),
               unreadable_event_files=[str(p) for p, _ in events.unreadable])
    if not ctx["dataset_path"]:
        reasons.append("the dataset path is unknown (no run.json, no datasets[0].path in config.json): "
                       "replace DATASET_DIR in the command")
    for item in ctx["lineage"][:-1]:
        reasons.append(f"continues from {item['run']} (preset {item['preset']})")
    if ctx["lineage"] and ctx["lineage"][-1].get("reason"):
        reasons.append(f"started by escalation: {ctx['lineage'][-1]['reason']}")

    preset_name = ctx["preset"] or "this run's settings"
    command = recommended = None
    if verdict in ("exploding", "diverged"):
        if nxt:
            recommended, command = nxt, next_cmd
            recommendation = f"stop this run and start the next tier, {nxt}, {why_ckpt}"
        else:
            ds = ctx["dataset_path"] or "DATASET_DIR"
            command = PREPARE_HINT.format(src=shlex.quote(ds))
            recommendation = (f"{preset_name} is the end of the tier chain: suspect the data; run prepare and read "
                              "its report (long or mislabelled utterances)")
    elif ending["kind"] == "crashed":
        # Dead, but nothing in the curves says why: never "keep training".
        recommendation = ("the run is not training any more: read the error it printed; if it was Coqui's "
                          "`NaN loss`, start the next tier" + (f" ({nxt})" if nxt else ""))
    elif verdict == "warning":
        recommendation = "keep training and diagnose again in a few hundred steps" + (
            f"; if it turns exploding, switch to {nxt}" if nxt else "")
    elif verdict == "too_early":
        recommendation = "keep training and diagnose again later"
    elif verdict == "cannot_judge":
        recommendation = ("no verdict: copy the run's event files again (or move the corrupt one aside) and "
                          "diagnose again")
    else:
        recommendation = "keep training"
    run_info = {k: v for k, v in ctx.items() if not k.startswith("_")}
    return Diagnosis(run_dir, verdict, reasons, recommendation, recommended, command, next_cmd, stats, run_info,
                     markers)


# ---------------------------------------------------------------------------------------------
# Output


def format_report(d: Diagnosis) -> str:
    r, s = d.run, d.stats
    chain = " -> ".join(r.get("tier_chain") or []) or "unknown"
    lines = [f"Run:      {d.run_dir}",
             f"Preset:   {r.get('preset') or 'not a kit preset'} (tier chain: {chain}; from {r['tier_source']})",
             f"Ended:    {(r.get('ending') or {}).get('text', 'unknown')}",
             f"Verdict:  {d.verdict.upper()}"]
    lines += [f"  - {reason}" for reason in d.reasons]
    if g := s.get("grad_norm"):
        text = f"{g['tag']}, {g['points']} points, steps {g['first_step']}-{g['last_step']}"
        if "median" in g:
            text += (f": median {_g(g['median'])}, p95 {_g(g['p95'])}, max {_g(g['max'])} (step {g['max_step']}); "
                     f"{g['share_above_50']:.1%} above {d.run['thresholds']['healthy_max']:g}, "
                     f"{g['share_above_100']:.1%} above {d.run['thresholds']['grad_norm_limit']:g}")
        if g.get("trend_growth") is not None:
            text += f"; trend x{g['trend_growth']:.3g} over the last {g['trend_steps']} steps"
        text += f"; {len(g.get('jumps', []))} jump(s), {g.get('spikes', 0)} spike(s), {g['nonfinite']} non-finite"
        lines.append(f"grad_norm: {text}")
    if (ls := s.get("loss")) and "start" in ls:
        change = (f"; trend {ls['trend_change']:+.3g} over the last {ls['trend_points']} points"
                  if ls.get("trend_change") is not None else "")
        lines.append(f"loss:      {ls['start']:.3g} -> {ls['end']:.3g}{change}; {ls['spikes']} spike(s), "
                     f"{ls['nonfinite']} non-finite")
    if (es := s.get("eval_loss")) and "best" in es:
        lines.append(f"eval loss: {es['points']} evaluation(s), best {es['best']:.3g} at step {es['best_step']}, "
                     f"last {es['last']:.3g} at step {es['last_step']}")
    if h := s.get("health"):
        parts = [f"{h['skipped_steps']} skipped step(s)"] if "skipped_steps" in h else []
        parts += [f"{h['alarms']} alarm(s)"] if "alarms" in h else []
        parts += [f"escalation tier index {h['escalation_index']}"] if "escalation_index" in h else []
        lines.append("guard:     " + (", ".join(parts) or "text notes only"))
        lines += [f"           step {n['step']} {n['tag']}: {n['text']}" for n in h.get("notes", [])]
    lines.append(f"Next:     {d.recommendation}")
    if d.command:
        lines.append(f"          {d.command}")
    elif d.next_tier_command and (d.verdict == "warning" or r.get("ending", {}).get("kind") == "crashed"):
        lines.append(f"          (then: {d.next_tier_command})")
    lines.append(f"Exit code {d.exit_code} (0 healthy or too early, 1 warning, 2 cannot judge, 3 exploding or "
                 "diverged)")
    return "\n".join(lines)


def one_line(d: Diagnosis) -> str:
    return f"{d.run_dir.name}: {d.verdict.upper()}" + (f" - {d.reasons[0]}" if d.reasons else "")


def plot(d: Diagnosis, events: RunEvents, path: Path) -> None:
    """One PNG: grad_norm (log axis, 50/100 bands, non-finite steps, skips, alarms, escalations),
    loss (and eval loss), learning rate."""
    # The object-oriented API without pyplot: no global backend or figure state is touched.
    from matplotlib.figure import Figure

    th = d.run["thresholds"]  # the rules' settings (explosion_rules.RuleSettings)
    fig = Figure(figsize=(11, 8.5), layout="constrained")
    ax_g, ax_l, ax_r = fig.subplots(3, 1, sharex=True, height_ratios=[2, 1.3, 1])
    fig.suptitle(f"{d.run_dir.name}: {d.verdict.upper()}  (preset {d.run.get('preset') or '?'})", fontsize=11)

    if (grad := events.get(*GRAD_TAGS)) is not None:
        tag, s = grad
        ok = np.isfinite(s.values) & (s.values > 0)
        ax_g.plot(s.steps[ok], s.values[ok], lw=0.7, color="tab:blue", label=tag)
        ax_g.set_yscale("log")
        ax_g.axhspan(1, th["healthy_max"], color="tab:green", alpha=0.08, label=f"healthy 1-{th['healthy_max']:g}")
        ax_g.axhline(th["healthy_max"], color="tab:orange", ls="--", lw=1)
        ax_g.axhline(th["grad_norm_limit"], color="tab:red", ls="--", lw=1, label=f"limit {th['grad_norm_limit']:g}")
        bad = s.steps[~ok] if d.stats.get("grad_norm", {}).get("measured", True) else s.steps[:0]
        top = ax_g.get_xaxis_transform()  # x in data, y in axes fraction: marks sit at the top
        if len(bad):
            ax_g.scatter(bad, np.full(len(bad), 0.97), transform=top, marker="x", color="red", s=18,
                         label=f"non-finite / logged 0 ({len(bad)})")
        for key, marker, color, label in (("skipped", "v", "tab:purple", "skipped step"),
                                          ("alarms", "^", "red", "guard alarm")):
            if d.markers.get(key):
                ax_g.scatter(d.markers[key], np.full(len(d.markers[key]), 0.03), transform=top, marker=marker,
                             color=color, s=22, label=f"{label} ({len(d.markers[key])})")
        ax_g.set_ylabel("grad_norm")
    for ax in (ax_g, ax_l, ax_r):
        for i, step in enumerate(d.markers.get("escalations", [])):
            ax.axvline(step, color="tab:purple", lw=1.2, ls=":", label="escalation" if ax is ax_g and i == 0 else None)
        if d.run.get("onset_step") is not None and d.verdict in ("exploding", "diverged"):
            ax.axvline(d.run["onset_step"], color="red", lw=0.8, alpha=0.5,
                       label="trouble began" if ax is ax_g else None)
    if (loss := events.get(LOSS_TAG)) is not None:
        ok = np.isfinite(loss[1].values)
        ax_l.plot(loss[1].steps[ok], loss[1].values[ok], lw=0.7, color="tab:blue", label="train loss")
    if (ev := events.get(EVAL_TAG)) is not None:
        ax_l.plot(ev[1].steps, ev[1].values, "o-", ms=3, color="tab:orange", label="eval loss")
    ax_l.set_ylabel("loss")
    if (lr := events.get(LR_TAG)) is not None:
        ax_r.plot(lr[1].steps, lr[1].values, lw=1, color="tab:gray")
        if np.nanmin(lr[1].values) > 0:
            ax_r.set_yscale("log")
    ax_r.set_ylabel("learning rate")
    ax_r.set_xlabel("step")
    for ax in (ax_g, ax_l):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=7)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise UserError(f"cannot write the plot {path}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------------
# Command line



def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m ruslan_glowtts.diagnose",
        description="Read a run's TensorBoard logs and say whether it is healthy, with the command to run next.",
        epilog="Exit codes: 0 healthy or too early to tell, 1 warning, 2 bad input or an unreadable event file, "
               "3 exploding or diverged.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder (the one holding events.out.tfevents.*)")
    p.add_argument("--json", action="store_true", help="print the diagnosis as JSON (verdict, reasons, "
                   "recommended_preset, command, stats) instead of text")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="also draw grad_norm, loss and learning rate into this PNG")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        args = build_parser().parse_args(argv)
        run_dir = args.run_dir.expanduser().absolute()
        events = read_run(run_dir)
        d = diagnose(run_dir, events)
        if args.plot:
            plot(d, events, args.plot)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(d.to_json(), indent=2, ensure_ascii=False, allow_nan=False))
    else:
        print(format_report(d))
        if args.plot:
            print(f"Plot:     {args.plot}")
    return d.exit_code


def run_as_script() -> None:
    """`python -m ruslan_glowtts.diagnose`."""
    try:
        sys.exit(main())
    except BrokenPipeError:  # `diagnose RUN | head`: the reader left; no traceback for that
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
