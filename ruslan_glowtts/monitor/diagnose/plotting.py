"""`--plot FILE.png`: grad_norm, loss and learning rate of a diagnosed run in one figure."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.monitor.diagnose.findings import (
    EVAL_TAG,
    GRAD_TAGS,
    LOSS_TAG,
    LR_TAG,
)
from ruslan_glowtts.monitor.events import RunEvents

if TYPE_CHECKING:
    from ruslan_glowtts.monitor.diagnose.diagnosis import Diagnosis


def plot(diagnosis: Diagnosis, events: RunEvents, path: Path) -> None:
    """One PNG: grad_norm (log axis, 50/100 bands, non-finite steps, skips, alarms, escalations),
    loss (and eval loss), learning rate."""
    # The object-oriented API without pyplot: no global backend or figure state is touched.
    from matplotlib.figure import Figure

    thresholds = diagnosis.run["thresholds"]  # the rules' settings (explosion_rules.RuleSettings)
    markers = diagnosis.markers
    fig = Figure(figsize=(11, 8.5), layout="constrained")
    ax_grad, ax_loss, ax_lr = fig.subplots(3, 1, sharex=True, height_ratios=[2, 1.3, 1])
    fig.suptitle(
        f"{diagnosis.run_dir.name}: {diagnosis.verdict.upper()}  (preset {diagnosis.run.get('preset') or '?'})",
        fontsize=11,
    )

    if (grad := events.get(*GRAD_TAGS)) is not None:
        tag, series = grad
        ok = np.isfinite(series.values) & (series.values > 0)
        ax_grad.plot(series.steps[ok], series.values[ok], lw=0.7, color="tab:blue", label=tag)
        ax_grad.set_yscale("log")
        ax_grad.axhspan(
            1,
            thresholds["healthy_max"],
            color="tab:green",
            alpha=0.08,
            label=f"healthy 1-{thresholds['healthy_max']:g}",
        )
        ax_grad.axhline(thresholds["healthy_max"], color="tab:orange", ls="--", lw=1)
        ax_grad.axhline(
            thresholds["grad_norm_limit"],
            color="tab:red",
            ls="--",
            lw=1,
            label=f"limit {thresholds['grad_norm_limit']:g}",
        )
        bad = series.steps[~ok] if diagnosis.stats.get("grad_norm", {}).get("measured", True) else series.steps[:0]
        top = ax_grad.get_xaxis_transform()  # x in data, y in axes fraction: marks sit at the top
        if len(bad):
            ax_grad.scatter(
                bad,
                np.full(len(bad), 0.97),
                transform=top,
                marker="x",
                color="red",
                s=18,
                label=f"non-finite / logged 0 ({len(bad)})",
            )
        for key, marker, color, label in (
            ("skipped", "v", "tab:purple", "skipped step"),
            ("alarms", "^", "red", "guard alarm"),
        ):
            if markers.get(key):
                ax_grad.scatter(
                    markers[key],
                    np.full(len(markers[key]), 0.03),
                    transform=top,
                    marker=marker,
                    color=color,
                    s=22,
                    label=f"{label} ({len(markers[key])})",
                )
        ax_grad.set_ylabel("grad_norm")
    for ax in (ax_grad, ax_loss, ax_lr):
        for i, step in enumerate(markers.get("escalations", [])):
            ax.axvline(
                step, color="tab:purple", lw=1.2, ls=":", label="escalation" if ax is ax_grad and i == 0 else None
            )
        if diagnosis.run.get("onset_step") is not None and diagnosis.verdict in ("exploding", "diverged"):
            ax.axvline(
                diagnosis.run["onset_step"],
                color="red",
                lw=0.8,
                alpha=0.5,
                label="trouble began" if ax is ax_grad else None,
            )
    if (loss := events.get(LOSS_TAG)) is not None:
        ok = np.isfinite(loss[1].values)
        ax_loss.plot(loss[1].steps[ok], loss[1].values[ok], lw=0.7, color="tab:blue", label="train loss")
    if (eval_loss := events.get(EVAL_TAG)) is not None:
        ax_loss.plot(eval_loss[1].steps, eval_loss[1].values, "o-", ms=3, color="tab:orange", label="eval loss")
    ax_loss.set_ylabel("loss")
    if (lr := events.get(LR_TAG)) is not None:
        ax_lr.plot(lr[1].steps, lr[1].values, lw=1, color="tab:gray")
        if np.nanmin(lr[1].values) > 0:
            ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    for ax in (ax_grad, ax_loss):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=7)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise UserError(f"cannot write the plot {path}: {exc.strerror or exc}") from None
