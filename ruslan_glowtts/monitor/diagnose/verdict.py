"""The verdict: the findings, the explosion rules' firings and how the run ended, judged into one
word with its reasons and the step where the trouble began: a Judgement. One function per verdict
(each returns its Judgement, or None when it does not apply), tried in this order; first match wins:

  diverged      the run ended on Coqui's `NaN loss` error (whatever the point count); it ended on
                another exception right after a catastrophic or non-finite blow-up; non-finite
                grad_norm or loss in a burst or at the end of the log; or the last norm is
                still catastrophic (>= catastrophic_factor x the limit)
  exploding     an explosion rule (catastrophic, level, jump, trend) fired and grad_norm has not
                come back into the healthy band
  too_early     no grad_norm measured yet; or no rule fired and fewer than `min_points` points
                follow the grace steps
  warning       an explosion rule fired but grad_norm came back; or anything else outside
                "healthy": above 100 once, p95 above 50, a rise that will leave the band within
                one more window, isolated non-finite steps, loss or eval loss rising, a recent
                health-guard alarm
  healthy       grad_norm in 1-50 and never above 100, not constantly rising, loss not rising
  cannot_judge  an event file is corrupt and the rest shows no trouble (decided in diagnosis.py)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ruslan_glowtts.monitor.diagnose.findings import (
    EVAL_TAG,
    GRAD_TAGS,
    LOSS_TAG,
    LR_TAG,
    GradFindings,
    add_grad_shape,
    eval_findings,
    grad_findings,
    loss_findings,
    replay_rules,
    true_stretches,
)
from ruslan_glowtts.monitor.events import RunEvents, Series
from ruslan_glowtts.monitor.explosion_rules import Alarm, RuleSettings

EXPLOSION_KINDS = ("catastrophic", "level", "jump", "trend")


class Verdict(StrEnum):
    """The verdicts, worst first. A StrEnum: run.json readers, the JSON output and the exit-code
    table keep seeing the plain words."""

    DIVERGED = "diverged"
    EXPLODING = "exploding"
    TOO_EARLY = "too_early"
    WARNING = "warning"
    HEALTHY = "healthy"
    CANNOT_JUDGE = "cannot_judge"  # decided in diagnosis.py, from unreadable event files


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reasons: list[str]
    onset: int | None  # the step where the trouble began (exploding, warning, diverged), else None
    stats: dict[str, Any]  # the findings the verdict rests on (the JSON output's "stats")


def format_number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def trouble_onset(grad: GradFindings, rules: RuleSettings) -> int | None:
    """First step of the final stretch where grad_norm's trailing median is above the band."""
    ok = ~np.isnan(grad.log)
    steps, logs = grad.steps[ok], grad.log[ok]
    window = rules.for_points(grad.every).jump_window
    if len(logs) < window:
        return None
    trailing = np.median(sliding_window_view(logs, window), axis=1)
    above = np.concatenate((np.zeros(window - 1, dtype=bool), trailing > math.log10(rules.healthy_max)))
    stretches = true_stretches(above)
    if not stretches or stretches[-1][1] != len(logs):
        return None
    return int(steps[max(stretches[-1][0] - window + 1, 0)])


def first_alarm(alarms: list[Alarm], *kinds: str) -> Alarm | None:
    return next((alarm for alarm in alarms if alarm.kind in kinds), None)


@dataclass
class Evidence:
    """What every verdict is judged from: the findings, the explosion rules' firings over the
    logged points, the guard's counts and how the run ended."""

    rules: RuleSettings
    health: dict[str, Any]  # findings.health_findings
    ending: dict[str, Any]  # run_context.run_ending
    fp16: bool
    grad: GradFindings | None  # None: no grad_norm tag logged
    loss: Series | None
    alarms: list[Alarm]  # every firing of every rule (only when grad_norm was measured)
    guarded: bool  # grad_norm is the guard's Health/ tag: it skipped the non-finite updates
    stats: dict[str, Any]

    @property
    def grad_stats(self) -> dict[str, Any]:
        return self.grad.stats if self.grad is not None else {}

    @property
    def measured(self) -> bool:
        """grad_norm was computed (Coqui logs 0 at every step when grad_clip is 0)."""
        return bool(self.grad_stats.get("measured"))

    @property
    def every(self) -> int:
        return self.grad.every if self.grad is not None else 1

    @property
    def nonfinite_source(self) -> str:
        """Where the non-finite norms went, for the reasons."""
        return (
            "the guard skipped them"
            if self.guarded
            else ("Coqui logs a NaN/Inf grad_norm as 0 and, in fp32, still applies that update")
        )

    @cached_property
    def explosions(self) -> list[Alarm]:
        return [alarm for alarm in self.alarms if alarm.kind in EXPLOSION_KINDS]

    @cached_property
    def onset(self) -> int | None:
        return trouble_onset(self.grad, self.rules) if self.grad is not None and self.measured else None

    @cached_property
    def trend_window_text(self) -> str:
        return f"the last {self.grad_stats['trend_points']} points ({self.grad_stats['trend_steps']} steps)"


def gather_evidence(
    run: RunEvents, rules: RuleSettings, health: dict[str, Any], fp16: bool, ending: dict[str, Any]
) -> Evidence:
    """The findings of every logged curve, and the explosion rules replayed over grad_norm."""
    stats: dict[str, Any] = {}
    grad_found = run.get(*GRAD_TAGS)
    loss_found = run.get(LOSS_TAG)
    loss = loss_found[1] if loss_found else None
    grad = grad_findings(*grad_found, rules, fp16) if grad_found else None
    alarms: list[Alarm] = []
    if grad is not None and grad.stats["measured"]:
        alarms = replay_rules(grad, loss, rules)
        add_grad_shape(grad, alarms, rules)
        stats["grad_norm"] = grad.stats
        fired: dict[str, dict[str, int]] = {}
        for alarm in alarms:  # which rules fired, first where and how often (every point counts once)
            fired.setdefault(alarm.kind, {"first_step": alarm.step, "fired": 0})["fired"] += 1
        stats["rules"] = fired
    elif grad is not None:
        stats["grad_norm"] = grad.stats
    every = grad.every if grad is not None else 1
    if loss is not None:
        stats["loss"] = loss_findings(loss, rules, every)
    if (eval_found := run.get(EVAL_TAG)) is not None:
        stats["eval_loss"] = eval_findings(eval_found[1])
    if (lr_found := run.get(LR_TAG)) is not None:
        lrs = lr_found[1].values
        stats["learning_rate"] = {"first": float(lrs[0]), "last": float(lrs[-1]), "max": float(np.nanmax(lrs))}
    if health:
        stats["health"] = health
    guarded = grad_found is not None and grad_found[0].startswith("Health/")
    return Evidence(rules, health, ending, fp16, grad, loss, alarms, guarded, stats)


def judge(
    run: RunEvents,
    rules: RuleSettings,
    health: dict[str, Any],
    fp16: bool = False,
    ending: dict[str, Any] | None = None,
) -> Judgement:
    """The verdict of a run's curves; `health` from findings.health_findings, `ending` from
    run_context.run_ending(). The first verdict that applies wins, in the module docstring's order."""
    evidence = gather_evidence(run, rules, health, fp16, ending or {"kind": "unknown"})
    for verdict_of in (diverged, exploding, too_early, warning):
        if (judgement := verdict_of(evidence)) is not None:
            return judgement
    return healthy(evidence)


def diverged(ev: Evidence) -> Judgement | None:
    """The run died of it, non-finite values in a burst or at the end of the log, or norms so far
    above the limit at the end that the weights are gone."""
    rules, grad, grad_stats, ending = ev.rules, ev.grad, ev.grad_stats, ev.ending
    limit = rules.grad_norm_limit
    catastrophic = first_alarm(ev.alarms, "catastrophic")
    bad_grad = grad.nonfinite_mask if grad is not None and ev.measured else np.zeros(0, dtype=bool)
    bad_loss = ~np.isfinite(ev.loss.values) if ev.loss is not None else np.zeros(0, dtype=bool)
    burst = first_alarm(ev.alarms, "nonfinite", "diverged")
    # Without the guard a non-finite last step means NaN weights now (Coqui applied the update);
    # with it, that step was skipped and only a burst counts.
    grad_ends_nonfinite = bool(len(bad_grad) and bad_grad[-1] and not ev.guarded)
    loss_ends_nonfinite = bool(len(bad_loss) and bad_loss[-1])
    last_norm = (
        float(grad.all_values[np.isfinite(grad.all_values)][-1])
        if grad is not None and np.isfinite(grad.all_values).any()
        else None
    )
    ends_huge = catastrophic is not None and last_norm is not None and (last_norm >= rules.catastrophic_factor * limit)
    # Coqui prints a crash's error to the console only: a run that crashed while its last norm was
    # above the limit (or after a catastrophic or non-finite stretch) died of its blow-up.
    blown = catastrophic or burst or grad_ends_nonfinite or (last_norm is not None and last_norm > limit)
    died = ending["kind"] == "nan_loss" or (ending["kind"] == "crashed" and bool(blown))
    if not (died or burst or grad_ends_nonfinite or loss_ends_nonfinite or ends_huge):
        return None
    reasons: list[str] = []
    first = None
    if died:
        reasons.append(
            f"the run ended on {ending['text']}"
            + ("" if ending["kind"] == "nan_loss" else f", right after grad_norm reached {format_number(last_norm)}")
        )
        first = ending.get("step")
    if catastrophic is not None:
        reasons.append(f"step {catastrophic.step}: {catastrophic.message}")
        first = catastrophic.step if first is None else min(first, catastrophic.step)
    if ends_huge and last_norm is not None:
        reasons.append(
            f"the last logged grad_norm is {format_number(last_norm)}, {last_norm / limit:.0f}x the "
            f"limit {limit:g}: the weights have diverged"
        )
    if grad is not None and bad_grad.any() and (burst or grad_ends_nonfinite):
        first_bad = int(grad.all_steps[bad_grad][0])
        reasons.append(
            f"grad_norm is non-finite at {int(bad_grad.sum())} logged step(s), first at step "
            f"{first_bad}"
            + (
                f" ({grad_stats['logged_zeros']} logged as 0: {ev.nonfinite_source})"
                if grad_stats.get("logged_zeros")
                else ""
            )
            + (f", {rules.nonfinite_burst}+ within {rules.nonfinite_window} points" if burst else "")
            + (", including the last one" if grad_ends_nonfinite else "")
        )
        first = first_bad if first is None else min(first, first_bad)
    if ev.loss is not None and bad_loss.any() and (burst or loss_ends_nonfinite):
        loss_first = int(ev.loss.steps[bad_loss][0])
        first = loss_first if first is None else min(first, loss_first)
        reasons.append(f"loss is non-finite at {int(bad_loss.sum())} logged step(s), first at step {loss_first}")
    return Judgement(Verdict.DIVERGED, reasons, first, ev.stats)


def exploding(ev: Evidence) -> Judgement | None:
    """An explosion rule fired and grad_norm has not come back into the healthy band."""
    rules, grad_stats = ev.rules, ev.grad_stats
    recent = grad_stats.get("recent_median")
    if not ev.explosions or (recent is not None and recent <= rules.healthy_max):
        return None
    firsts = sorted(
        (alarm for alarm in (first_alarm(ev.explosions, kind) for kind in EXPLOSION_KINDS) if alarm),
        key=lambda alarm: alarm.step,
    )
    reasons = [f"step {alarm.step}: {alarm.kind} rule: {alarm.message}" for alarm in firsts]
    if recent is not None:
        reasons.append(
            f"grad_norm's median over the last {rules.for_points(ev.every).level_window} points is "
            f"{format_number(recent)}, outside the healthy band 1-{rules.healthy_max:g}"
        )
    if grad_stats.get("first_above_limit_step") is not None:
        reasons.append(
            f"{grad_stats['share_above_limit']:.0%} of points are above {rules.grad_norm_limit:g}, first at "
            f"step {grad_stats['first_above_limit_step']}; max {format_number(grad_stats['max'])} at step "
            f"{grad_stats['max_step']}"
        )
    start = min(alarm.step for alarm in ev.explosions)
    return Judgement(Verdict.EXPLODING, reasons, ev.onset if ev.onset is not None else start, ev.stats)


def too_early(ev: Evidence) -> Judgement | None:
    """No grad_norm measured yet, or no rule fired and too few points after the grace steps."""
    rules, grad_stats = ev.rules, ev.grad_stats
    if ev.grad is None:
        return Judgement(
            Verdict.TOO_EARLY, ["no grad_norm logged yet (" + " or ".join(GRAD_TAGS) + ")"], None, ev.stats
        )
    if not ev.measured:
        return Judgement(
            Verdict.TOO_EARLY,
            [("grad_norm is 0 at every logged step: Coqui computes it only when grad_clip > 0")],
            None,
            ev.stats,
        )
    if ev.explosions or (grad_stats["judged_points"] >= rules.min_points and "median" in grad_stats):
        return None
    reasons = []
    ready = int(grad_stats["first_step"] + rules.grace_steps + rules.min_points * ev.every)
    if ev.ending["kind"] == "crashed":
        reasons.append(
            f"the run stopped at step {grad_stats['last_step']} after {grad_stats['points']} grad_norm "
            "point(s); neither the catastrophic nor the non-finite rule fired, so its curves do not "
            "say why"
        )
    elif grad_stats["last_step"] >= grad_stats["first_step"] + rules.grace_steps:
        reasons.append(
            f"only {grad_stats['judged_points']} grad_norm point(s) after the first "
            f"{rules.grace_steps} steps (up to step {grad_stats['last_step']}); {rules.min_points} "
            f"are needed to judge a trend: look again after step {ready}"
        )
    else:
        reasons.append(
            f"the run is at step {grad_stats['last_step']}, within its first {rules.grace_steps} "
            f"steps, where only the catastrophic and non-finite rules judge (GlowTTS's early swings); "
            f"{rules.min_points} points after them are needed: look again after step {ready}"
        )
    if grad_stats.get("max", 0) > rules.grad_norm_limit:
        reasons.append(
            f"already above {rules.grad_norm_limit:g} at step {grad_stats['max_step']} "
            f"(max {format_number(grad_stats['max'])}): look again soon"
        )
    return Judgement(Verdict.TOO_EARLY, reasons, None, ev.stats)


def warning(ev: Evidence) -> Judgement | None:
    """Anything outside "healthy" that is not an explosion yet (module docstring)."""
    rules, grad_stats, limit = ev.rules, ev.grad_stats, ev.rules.grad_norm_limit
    recent: float = grad_stats["recent_median"]  # set with every median: without one, an earlier verdict applied
    warn = []
    if ev.explosions:
        first = ev.explosions[0]
        warn.append(
            f"step {first.step}: {first.kind} rule: {first.message}; grad_norm came back into the band "
            f"(recent median {format_number(recent)})"
        )
    if grad_stats.get("max", 0) > limit:
        warn.append(
            f"grad_norm went above {limit:g} at {grad_stats['points_above_limit']} point(s) "
            f"(max {format_number(grad_stats['max'])} at step {grad_stats['max_step']}), but its recent "
            f"median is back at {format_number(recent)}"
        )
    elif grad_stats["p95"] > rules.healthy_max:
        warn.append(
            f"grad_norm's p95 is {format_number(grad_stats['p95'])}: "
            f"{grad_stats['share_above_healthy_max']:.0%} of points are above the healthy band "
            f"1-{rules.healthy_max:g}"
        )
    if recent > rules.healthy_max:
        warn.append(
            f"grad_norm's recent median {format_number(recent)} is above the healthy band 1-{rules.healthy_max:g}"
        )
    growth = grad_stats["trend_growth"]
    if grad_stats["trend_rising"] and growth >= rules.trend_factor and recent * growth > rules.healthy_max:
        # The trend rule's rise, still inside the band: one more window at this rate leaves it.
        warn.append(
            f"grad_norm grew x{growth:.2g} over {ev.trend_window_text}; at this rate it leaves the band "
            f"(now {format_number(recent)}) within the next {grad_stats['trend_steps']} steps"
        )
    if grad_stats["nonfinite"] and not ev.fp16:
        warn.append(
            f"{grad_stats['nonfinite']} isolated non-finite grad_norm step(s) at "
            f"{grad_stats['nonfinite_steps'][:5]} ({ev.nonfinite_source})"
        )
    loss_stats = ev.stats.get("loss", {})
    if loss_stats.get("trend_change") is not None and loss_stats["trend_change"] > max(
        3 * loss_stats["noise_sigma"], 1e-6
    ):
        warn.append(
            f"loss rose by {loss_stats['trend_change']:.3g} over the last {loss_stats['trend_points']} points "
            f"(3x its noise is {3 * loss_stats['noise_sigma']:.2g})"
        )
    eval_stats = ev.stats.get("eval_loss", {})
    if eval_stats.get("rising_evals", 0) >= 3:
        warn.append(
            f"eval loss rose at each of the last {eval_stats['rising_evals']} evaluations "
            f"(best {eval_stats['best']:.3g} at step {eval_stats['best_step']}, now {eval_stats['last']:.3g})"
        )
    last_alarm = ev.health.get("last_alarm_step")
    if (
        ev.grad is not None
        and last_alarm is not None
        and grad_stats["trend_points"]
        and (last_alarm >= int(ev.grad.steps[~np.isnan(ev.grad.log)][-grad_stats["trend_points"]]))
    ):
        warn.append(f"the health guard raised {ev.health['alarms']} alarm(s), the last at step {last_alarm}")
    return Judgement(Verdict.WARNING, warn, ev.onset, ev.stats) if warn else None


def healthy(ev: Evidence) -> Judgement:
    """grad_norm in the band, never above the limit, no rising trend or loss: what is left."""
    rules, grad_stats = ev.rules, ev.grad_stats
    reasons = [
        (
            f"grad_norm stays in the healthy band: median {format_number(grad_stats['median'])}, p95 "
            f"{format_number(grad_stats['p95'])}, max {format_number(grad_stats['max'])} "
            f"(band 1-{rules.healthy_max:g}, never above {rules.grad_norm_limit:g})"
        )
    ]
    growth = grad_stats["trend_growth"]
    if growth is not None:
        reasons.append(
            f"grad_norm trend over {ev.trend_window_text}: x{growth:.2g}"
            + (" (rising, still far from the band's top)" if growth >= rules.trend_factor else "")
        )
    loss_stats = ev.stats.get("loss", {})
    if "start" in loss_stats:
        word = "fell" if loss_stats["end"] < loss_stats["start"] else "did not fall"
        reasons.append(
            f"loss {word}: {loss_stats['start']:.3g} -> {loss_stats['end']:.3g} (medians of the first "
            f"and last {loss_stats['edge_points']} points)"
        )
    return Judgement(Verdict.HEALTHY, reasons, None, ev.stats)
