"""What the logged curves show, before any verdict: grad_norm, loss, eval loss and the health
guard's own tags, each as a dict of statistics.

The loss trend uses Tukey's resistant line, every other statistic medians and MAD: a GlowTTS
grad_norm is heavy-tailed and a mean or a least-squares slope follows single spikes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ruslan_glowtts.common.run_layout import (
    COQUI_TRAIN_PREFIX,
    EVAL_LOSS,
    HEALTH_ALARM,
    HEALTH_ESCALATION,
    HEALTH_GRAD_NORM,
    HEALTH_SKIPPED_STEPS,
    TRAIN_GRAD_NORM,
    TRAIN_LOSS,
    TRAIN_LR,
)
from ruslan_glowtts.monitor.events import RunEvents, Series
from ruslan_glowtts.monitor.explosion_rules import (
    Alarm,
    Detector,
    RuleSettings,
    quarter_growth,
)

GRAD_TAGS = (HEALTH_GRAD_NORM, TRAIN_GRAD_NORM)  # the guard's pre-clip norm first
LOSS_TAG = TRAIN_LOSS
LR_TAG = TRAIN_LR
EVAL_TAG = EVAL_LOSS


# ---------------------------------------------------------------------------------------------
# Robust statistics


def robust_sigma(residuals: np.ndarray) -> float:
    """Robust standard deviation: 1.4826 x median absolute deviation (= sigma for Gaussian noise)."""
    return float(1.4826 * np.median(np.abs(residuals - np.median(residuals)))) if len(residuals) else 0.0


def centered_median(x: np.ndarray, half: int) -> np.ndarray:
    padded = np.pad(x, half, mode="edge")
    return np.median(sliding_window_view(padded, 2 * half + 1), axis=1)


def resistant_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Tukey's resistant line: slope between the medians of the first and last thirds. A few
    spikes cannot tilt it, unlike least squares."""
    third = len(x) // 3
    dx = float(np.median(x[-third:]) - np.median(x[:third]))
    return float(np.median(y[-third:]) - np.median(y[:third])) / dx if third and dx else 0.0


def true_stretches(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) index pairs, end exclusive, of the contiguous True stretches."""
    edges = np.diff(np.concatenate(([0], mask.astype(int), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


# ---------------------------------------------------------------------------------------------
# grad_norm


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


def grad_findings(tag: str, series: Series, rules: RuleSettings, fp16: bool) -> GradFindings:
    steps, values = series.steps, series.values
    nonfinite = ~np.isfinite(values)
    zeros = values == 0
    coqui = tag.startswith(COQUI_TRAIN_PREFIX)
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
    post_steps, post_values = steps[post], values[post]
    good = np.isfinite(post_values) & (post_values > 0)
    log = np.where(good, np.log10(np.where(good, post_values, 1.0)), np.nan)
    finite = post_values[good]

    stats: dict[str, Any] = {
        "tag": tag,
        "measured": measured,
        "points": len(steps),
        "first_step": int(steps[0]),
        "last_step": int(steps[-1]),
        "steps_per_point": every,
        "grace_steps": rules.grace_steps,
        "judged_points": len(post_steps),
        "nonfinite": int(nonfinite.sum()) if measured else 0,
        "logged_zeros": int(zeros.sum()) if measured else 0,
        "nonfinite_steps": [int(s) for s in steps[nonfinite][:20]] if measured else [],
    }
    if len(finite):
        # Named after the run's own thresholds (its health settings), which need not be 50 and 100.
        above_band, above_limit = finite > rules.healthy_max, finite > rules.grad_norm_limit
        index_of_max = int(np.argmax(np.where(good, post_values, -np.inf)))
        stats.update(
            median=float(np.median(finite)),
            p95=float(np.percentile(finite, 95)),
            max=float(finite.max()),
            max_step=int(post_steps[index_of_max]),
            share_above_healthy_max=float(above_band.mean()),
            share_above_limit=float(above_limit.mean()),
            points_above_limit=int(above_limit.sum()),
            recent_median=float(np.median(finite[-rules.for_points(every).level_window :])),
            first_above_limit_step=int(post_steps[good][above_limit][0]) if above_limit.any() else None,
        )
    all_values = np.where(nonfinite | calibration, np.nan, values) if measured else values
    return GradFindings(stats, post_steps, log, nonfinite, steps, all_values, every, calibration)


def replay_rules(grad: GradFindings, loss: Series | None, rules: RuleSettings) -> list[Alarm]:
    """The guard's rules over the logged points (explosion_rules), every firing of each rule."""
    losses = dict(zip(loss.steps.tolist(), loss.values.tolist(), strict=True)) if loss is not None else {}
    detector = Detector(rules.for_points(grad.every), realarm_after=1, unit="points")
    alarms: list[Alarm] = []
    for step, value, skip in zip(
        grad.all_steps.tolist(), grad.all_values.tolist(), grad.calibration.tolist(), strict=True
    ):
        if not skip:
            alarms += detector.observe(step, value, losses.get(step))
    return alarms


def add_grad_shape(grad: GradFindings, alarms: list[Alarm], rules: RuleSettings) -> None:
    """Trend, jumps and spikes of grad_norm, as the rules saw them (into grad.stats)."""
    stats = grad.stats
    stats.update(
        trend_growth=None, trend_rising=False, trend_points=0, trend_steps=0, jumps=[], spikes=0, spike_steps=[]
    )
    ok = ~np.isnan(grad.log)
    steps, logs = grad.steps[ok], grad.log[ok]
    if len(logs) >= 8:
        # Growth of the last quarter's median over the first's, over the trend window (the trend rule's measure).
        window = min(rules.for_points(grad.every).trend_window, len(logs))
        first, last, rising = quarter_growth(logs[-window:] * math.log(10))
        stats.update(
            trend_growth=last / first,
            trend_rising=rising,
            trend_points=window,
            trend_steps=int(steps[-1] - steps[-window]),
        )
    previous = None
    apart = rules.for_points(grad.every).jump_window * grad.every  # firings closer than this are one jump
    for alarm in alarms:
        if alarm.kind == "jump" and (previous is None or alarm.step - previous > apart):
            stats["jumps"].append(
                {
                    "step": alarm.step,
                    "from": alarm.data["from"],
                    "to": alarm.data["to"],
                    "factor": alarm.data["to"] / alarm.data["from"],
                }
            )
        previous = alarm.step if alarm.kind == "jump" else previous
    spikes = [alarm.step for alarm in alarms if alarm.kind == "spike"]
    stats.update(spikes=len(spikes), spike_steps=spikes[:20])


# ---------------------------------------------------------------------------------------------
# loss, eval loss, the guard's tags


def loss_findings(series: Series, rules: RuleSettings, every: int) -> dict[str, Any]:
    steps, values = series.steps, series.values
    nonfinite = ~np.isfinite(values)
    start = int(steps[0]) + rules.grace_steps
    keep = (steps >= start) & ~nonfinite
    if keep.sum() < 6:
        keep = ~nonfinite
    x, y = steps[keep], values[keep]
    stats: dict[str, Any] = {
        "tag": LOSS_TAG,
        "points": len(steps),
        "nonfinite": int(nonfinite.sum()),
        "last_finite": not bool(nonfinite[-1]),
        "trend_change": None,
        "spikes": 0,
    }
    if len(y) == 0:
        return stats
    edge = max(1, min(rules.for_points(every).level_window, len(y) // 3))
    stats.update(start=float(np.median(y[:edge])), end=float(np.median(y[-edge:])), last=float(y[-1]), edge_points=edge)
    if len(y) < 6:
        return stats
    # Loss can be negative (GlowTTS's log-likelihood term), so its trend is linear, not log.
    window = rules.for_points(every).trend_window
    trend_x, trend_y = x[-window:], y[-window:]
    residuals = y - centered_median(y, 8)
    sigma = robust_sigma(residuals)
    spike = residuals > rules.spike_z * sigma if sigma > 0 else np.zeros_like(residuals, dtype=bool)
    stats.update(
        trend_change=resistant_slope(trend_x, trend_y) * float(trend_x[-1] - trend_x[0]),
        trend_points=len(trend_x),
        noise_sigma=sigma,
        spikes=int(spike.sum()),
        spike_steps=[int(s) for s in x[spike][:20]],
    )
    return stats


def eval_findings(series: Series) -> dict[str, Any]:
    ok = np.isfinite(series.values)
    steps, values = series.steps[ok], series.values[ok]
    stats: dict[str, Any] = {"points": len(series), "nonfinite": int((~ok).sum())}
    if len(values):
        best = int(np.argmin(values))
        rising = 0
        for previous, current in zip(values[::-1][1:], values[::-1][:-1], strict=True):  # consecutive rises at the end
            if current <= previous:
                break
            rising += 1
        stats.update(
            first=float(values[0]),
            best=float(values[best]),
            best_step=int(steps[best]),
            last=float(values[-1]),
            last_step=int(steps[-1]),
            rising_evals=rising,
        )
    return stats


def health_findings(run: RunEvents) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The guard's counts (skipped steps, alarms, escalation tier, text notes) and the steps to mark
    on the plot."""
    stats: dict[str, Any] = {}
    markers: dict[str, list[float]] = {"skipped": [], "alarms": [], "escalations": []}
    if (found := run.get(HEALTH_SKIPPED_STEPS)) is not None:
        _, series = found
        counts = np.nan_to_num(series.values)
        grew = np.diff(np.concatenate(([0.0], counts))) > 0
        markers["skipped"] = [int(v) for v in series.steps[grew]]
        stats["skipped_steps"] = int(counts.max())
    if (found := run.get(HEALTH_ALARM)) is not None:
        _, series = found
        fired = series.steps[series.values > 0]
        markers["alarms"] = [int(v) for v in fired]
        stats.update(alarms=len(fired), last_alarm_step=int(fired[-1]) if len(fired) else None)
    if (found := run.get(HEALTH_ESCALATION)) is not None:
        _, series = found
        markers["escalations"] = [int(v) for v in series.steps]
        stats["escalation_index"] = int(series.values[-1]) if np.isfinite(series.values[-1]) else None
    if run.texts:
        stats["notes"] = [{"step": step, "tag": tag, "text": text} for step, tag, text in run.texts[-10:]]
    return stats, markers
