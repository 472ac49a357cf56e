"""The verdict: the findings, the explosion rules' firings and how the run ended, judged into one
word with its reasons and the step where the trouble began. First match wins:

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
  cannot_judge  an event file is corrupt and the rest shows no trouble (decided in diagnosis.py)
"""

from __future__ import annotations

import math
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
from ruslan_glowtts.monitor.events import RunEvents
from ruslan_glowtts.monitor.explosion_rules import Alarm, RuleSettings

EXPLOSION_KINDS = ("catastrophic", "level", "jump", "trend")


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


def judge(run: RunEvents, rules: RuleSettings, health: dict[str, Any], fp16: bool = False,
          ending: dict[str, Any] | None = None) -> tuple[str, list[str], int | None, dict[str, Any]]:
    """(verdict, reasons, onset step of the trouble or None, stats); `health` from
    findings.health_findings, `ending` from run_context.run_ending(). The explosion rules are
    explosion_rules', replayed over the points."""
    ending = ending or {"kind": "unknown"}
    stats: dict[str, Any] = {}
    reasons: list[str] = []
    grad_found = run.get(*GRAD_TAGS)
    loss = run.get(LOSS_TAG)
    grad = grad_findings(*grad_found, rules, fp16) if grad_found else None
    alarms: list[Alarm] = []
    if grad is not None and grad.stats["measured"]:
        alarms = replay_rules(grad, loss[1] if loss else None, rules)
        add_grad_shape(grad, alarms, rules)
        stats["grad_norm"] = grad.stats
        fired: dict[str, dict[str, int]] = {}
        for alarm in alarms:  # which rules fired, first where and how often (every point counts once)
            fired.setdefault(alarm.kind, {"first_step": alarm.step, "fired": 0})["fired"] += 1
        stats["rules"] = fired
    elif grad is not None:
        stats["grad_norm"] = grad.stats
    every = grad.every if grad is not None else 1
    if loss:
        stats["loss"] = loss_findings(loss[1], rules, every)
    if (eval_found := run.get(EVAL_TAG)) is not None:
        stats["eval_loss"] = eval_findings(eval_found[1])
    if (lr_found := run.get(LR_TAG)) is not None:
        lrs = lr_found[1].values
        stats["learning_rate"] = {"first": float(lrs[0]), "last": float(lrs[-1]), "max": float(np.nanmax(lrs))}
    if health:
        stats["health"] = health
    grad_stats = grad.stats if grad else {}
    guarded = bool(grad_found) and grad_found[0].startswith("Health/")
    source = "the guard skipped them" if guarded else (
        "Coqui logs a NaN/Inf grad_norm as 0 and, in fp32, still applies that update")
    limit = rules.grad_norm_limit
    catastrophic = first_alarm(alarms, "catastrophic")

    # --- diverged: the run died of it, non-finite values in a burst or at the end of the log, or
    # norms so far above the limit at the end that the weights are gone.
    bad_grad = grad.nonfinite_mask if grad is not None and grad_stats.get("measured") else np.zeros(0, dtype=bool)
    bad_loss = ~np.isfinite(loss[1].values) if loss else np.zeros(0, dtype=bool)
    burst = first_alarm(alarms, "nonfinite", "diverged")
    # Without the guard a non-finite last step means NaN weights now (Coqui applied the update);
    # with it, that step was skipped and only a burst counts.
    grad_ends_nonfinite = bool(len(bad_grad) and bad_grad[-1] and not guarded)
    loss_ends_nonfinite = bool(len(bad_loss) and bad_loss[-1])
    last_norm = float(grad.all_values[np.isfinite(grad.all_values)][-1]) if grad is not None and np.isfinite(
        grad.all_values).any() else None
    ends_huge = catastrophic is not None and last_norm is not None and (
        last_norm >= rules.catastrophic_factor * limit)
    # Coqui prints a crash's error to the console only: a run that crashed while its last norm was
    # above the limit (or after a catastrophic or non-finite stretch) died of its blow-up.
    blown = catastrophic or burst or grad_ends_nonfinite or (last_norm is not None and last_norm > limit)
    died = ending["kind"] == "nan_loss" or (ending["kind"] == "crashed" and bool(blown))
    if died or burst or grad_ends_nonfinite or loss_ends_nonfinite or ends_huge:
        first = None
        if died:
            reasons.append(f"the run ended on {ending['text']}" + (
                "" if ending["kind"] == "nan_loss" else f", right after grad_norm reached {format_number(last_norm)}"))
            first = ending.get("step")
        if catastrophic is not None:
            reasons.append(f"step {catastrophic.step}: {catastrophic.message}")
            first = catastrophic.step if first is None else min(first, catastrophic.step)
        if ends_huge:
            reasons.append(f"the last logged grad_norm is {format_number(last_norm)}, {last_norm / limit:.0f}x the "
                           f"limit {limit:g}: the weights have diverged")
        if bad_grad.any() and (burst or grad_ends_nonfinite):
            first_bad = int(grad.all_steps[bad_grad][0])
            reasons.append(f"grad_norm is non-finite at {int(bad_grad.sum())} logged step(s), first at step "
                           f"{first_bad}" + (f" ({grad_stats['logged_zeros']} logged as 0: {source})"
                                              if grad_stats.get("logged_zeros") else "")
                           + (f", {rules.nonfinite_burst}+ within {rules.nonfinite_window} points" if burst else "")
                           + (", including the last one" if grad_ends_nonfinite else ""))
            first = first_bad if first is None else min(first, first_bad)
        if bad_loss.any() and (burst or loss_ends_nonfinite):
            loss_first = int(loss[1].steps[bad_loss][0])
            first = loss_first if first is None else min(first, loss_first)
            reasons.append(f"loss is non-finite at {int(bad_loss.sum())} logged step(s), first at step {loss_first}")
        return "diverged", reasons, first, stats

    if grad is None or not grad_stats.get("measured"):
        if grad is not None:
            reasons.append("grad_norm is 0 at every logged step: Coqui computes it only when grad_clip > 0")
        else:
            reasons.append("no grad_norm logged yet (" + " or ".join(GRAD_TAGS) + ")")
        return "too_early", reasons, None, stats

    onset = trouble_onset(grad, rules)
    explosions = [alarm for alarm in alarms if alarm.kind in EXPLOSION_KINDS]
    recent = grad_stats.get("recent_median")
    back = recent is not None and recent <= rules.healthy_max
    if explosions and not back:
        # An explosion rule fired and grad_norm has not come back into the band.
        firsts = sorted((alarm for alarm in (first_alarm(explosions, kind) for kind in EXPLOSION_KINDS) if alarm),
                        key=lambda alarm: alarm.step)
        exploding = [f"step {alarm.step}: {alarm.kind} rule: {alarm.message}" for alarm in firsts]
        if recent is not None:
            exploding.append(f"grad_norm's median over the last {rules.for_points(every).level_window} points is "
                             f"{format_number(recent)}, outside the healthy band 1-{rules.healthy_max:g}")
        if grad_stats.get("first_above_100_step") is not None:
            exploding.append(f"{grad_stats['share_above_100']:.0%} of points are above {limit:g}, first at step "
                             f"{grad_stats['first_above_100_step']}; max {format_number(grad_stats['max'])} at step "
                             f"{grad_stats['max_step']}")
        start = min(alarm.step for alarm in explosions)
        return "exploding", exploding, onset if onset is not None else start, stats

    if not explosions and (grad_stats["judged_points"] < rules.min_points or "median" not in grad_stats):
        ready = int(grad_stats["first_step"] + rules.grace_steps + rules.min_points * every)
        if ending["kind"] == "crashed":
            reasons.append(f"the run stopped at step {grad_stats['last_step']} after {grad_stats['points']} grad_norm "
                           "point(s); neither the catastrophic nor the non-finite rule fired, so its curves do not "
                           "say why")
        elif grad_stats["last_step"] >= grad_stats["first_step"] + rules.grace_steps:
            reasons.append(f"only {grad_stats['judged_points']} grad_norm point(s) after the first "
                           f"{rules.grace_steps} steps (up to step {grad_stats['last_step']}); {rules.min_points} "
                           f"are needed to judge a trend: look again after step {ready}")
        else:
            reasons.append(f"the run is at step {grad_stats['last_step']}, within its first {rules.grace_steps} "
                           f"steps, where only the catastrophic and non-finite rules judge (GlowTTS's early swings); "
                           f"{rules.min_points} points after them are needed: look again after step {ready}")
        if grad_stats.get("max", 0) > limit:
            reasons.append(f"already above {limit:g} at step {grad_stats['max_step']} "
                           f"(max {format_number(grad_stats['max'])}): look again soon")
        return "too_early", reasons, None, stats

    # --- warning
    warn = []
    if explosions:
        first = explosions[0]
        warn.append(f"step {first.step}: {first.kind} rule: {first.message}; grad_norm came back into the band "
                    f"(recent median {format_number(recent)})")
    if grad_stats.get("max", 0) > limit:
        warn.append(f"grad_norm went above {limit:g} at {grad_stats['points_above_100']} point(s) "
                    f"(max {format_number(grad_stats['max'])} at step {grad_stats['max_step']}), but its recent "
                    f"median is back at {format_number(recent)}")
    elif grad_stats["p95"] > rules.healthy_max:
        warn.append(f"grad_norm's p95 is {format_number(grad_stats['p95'])}: {grad_stats['share_above_50']:.0%} of "
                    f"points are above the healthy band 1-{rules.healthy_max:g}")
    if recent > rules.healthy_max:
        warn.append(f"grad_norm's recent median {format_number(recent)} is above the healthy band "
                    f"1-{rules.healthy_max:g}")
    growth = grad_stats["trend_growth"]
    window = f"the last {grad_stats['trend_points']} points ({grad_stats['trend_steps']} steps)"
    if grad_stats["trend_rising"] and growth >= rules.trend_factor and recent * growth > rules.healthy_max:
        # The trend rule's rise, still inside the band: one more window at this rate leaves it.
        warn.append(f"grad_norm grew x{growth:.2g} over {window}; at this rate it leaves the band "
                    f"(now {format_number(recent)}) within the next {grad_stats['trend_steps']} steps")
    if grad_stats["nonfinite"] and not fp16:
        warn.append(f"{grad_stats['nonfinite']} isolated non-finite grad_norm step(s) at "
                    f"{grad_stats['nonfinite_steps'][:5]} ({source})")
    loss_stats = stats.get("loss", {})
    if loss_stats.get("trend_change") is not None and loss_stats["trend_change"] > max(3 * loss_stats["noise_sigma"],
                                                                                       1e-6):
        warn.append(f"loss rose by {loss_stats['trend_change']:.3g} over the last {loss_stats['trend_points']} points "
                    f"(3x its noise is {3 * loss_stats['noise_sigma']:.2g})")
    eval_stats = stats.get("eval_loss", {})
    if eval_stats.get("rising_evals", 0) >= 3:
        warn.append(f"eval loss rose at each of the last {eval_stats['rising_evals']} evaluations "
                    f"(best {eval_stats['best']:.3g} at step {eval_stats['best_step']}, now {eval_stats['last']:.3g})")
    last_alarm = health.get("last_alarm_step")
    if last_alarm is not None and grad_stats["trend_points"] and (
            last_alarm >= int(grad.steps[~np.isnan(grad.log)][-grad_stats["trend_points"]])):
        warn.append(f"the health guard raised {health['alarms']} alarm(s), the last at step {last_alarm}")
    if warn:
        return "warning", warn, onset, stats

    reasons.append(f"grad_norm stays in the healthy band: median {format_number(grad_stats['median'])}, p95 "
                   f"{format_number(grad_stats['p95'])}, max {format_number(grad_stats['max'])} "
                   f"(band 1-{rules.healthy_max:g}, never above {limit:g})")
    if growth is not None:
        reasons.append(f"grad_norm trend over {window}: x{growth:.2g}" + (" (rising, still far from the band's top)"
                                                                          if growth >= rules.trend_factor else ""))
    if "start" in loss_stats:
        word = "fell" if loss_stats["end"] < loss_stats["start"] else "did not fall"
        reasons.append(f"loss {word}: {loss_stats['start']:.3g} -> {loss_stats['end']:.3g} (medians of the first "
                       f"and last {loss_stats['edge_points']} points)")
    return "healthy", reasons, None, stats
