"""A Diagnosis as text (the default output), as one line (the TensorBoard launcher's summary) and
as JSON (`--json`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ruslan_glowtts.monitor.diagnose.verdict import format_number

if TYPE_CHECKING:
    from ruslan_glowtts.monitor.diagnose.diagnosis import Diagnosis


def json_safe(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/Inf to None."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def to_json(diagnosis: Diagnosis) -> dict[str, Any]:
    return {
        "verdict": diagnosis.verdict,
        "reasons": diagnosis.reasons,
        "recommended_preset": diagnosis.recommended_preset,
        "recommendation": diagnosis.recommendation,
        "command": diagnosis.command,
        "next_tier_command": diagnosis.next_tier_command,
        "exit_code": diagnosis.exit_code,
        "stats": json_safe(diagnosis.stats),
        "run": json_safe(diagnosis.run),
        "suspects": diagnosis.suspects.to_json() if diagnosis.suspects is not None else None,
    }


def format_report(diagnosis: Diagnosis) -> str:
    run, stats = diagnosis.run, diagnosis.stats
    chain = " -> ".join(run.get("tier_chain") or []) or "unknown"
    lines = [
        f"Run:      {diagnosis.run_dir}",
        f"Preset:   {run.get('preset') or 'not a kit preset'} (tier chain: {chain}; from {run['tier_source']})",
        f"Ended:    {(run.get('ending') or {}).get('text', 'unknown')}",
        f"Verdict:  {diagnosis.verdict.upper()}",
    ]
    lines += [f"  - {reason}" for reason in diagnosis.reasons]
    if grad := stats.get("grad_norm"):
        text = f"{grad['tag']}, {grad['points']} points, steps {grad['first_step']}-{grad['last_step']}"
        if "median" in grad:
            text += (
                f": median {format_number(grad['median'])}, p95 {format_number(grad['p95'])}, "
                f"max {format_number(grad['max'])} (step {grad['max_step']}); "
                f"{grad['share_above_healthy_max']:.1%} above {run['thresholds']['healthy_max']:g}, "
                f"{grad['share_above_limit']:.1%} above {run['thresholds']['grad_norm_limit']:g}"
            )
        if grad.get("trend_growth") is not None:
            text += f"; trend x{grad['trend_growth']:.3g} over the last {grad['trend_steps']} steps"
        text += (
            f"; {len(grad.get('jumps', []))} jump(s), {grad.get('spikes', 0)} spike(s), {grad['nonfinite']} non-finite"
        )
        lines.append(f"grad_norm: {text}")
    if (loss := stats.get("loss")) and "start" in loss:
        change = (
            f"; trend {loss['trend_change']:+.3g} over the last {loss['trend_points']} points"
            if loss.get("trend_change") is not None
            else ""
        )
        lines.append(
            f"loss:      {loss['start']:.3g} -> {loss['end']:.3g}{change}; {loss['spikes']} spike(s), "
            f"{loss['nonfinite']} non-finite"
        )
    if (evals := stats.get("eval_loss")) and "best" in evals:
        lines.append(
            f"eval loss: {evals['points']} evaluation(s), best {evals['best']:.3g} at step "
            f"{evals['best_step']}, last {evals['last']:.3g} at step {evals['last_step']}"
        )
    if health := stats.get("health"):
        parts = [f"{health['skipped_steps']} skipped step(s)"] if "skipped_steps" in health else []
        parts += [f"{health['alarms']} alarm(s)"] if "alarms" in health else []
        parts += [f"escalation tier index {health['escalation_index']}"] if "escalation_index" in health else []
        lines.append("guard:     " + (", ".join(parts) or "text notes only"))
        lines += [f"           step {note['step']} {note['tag']}: {note['text']}" for note in health.get("notes", [])]
    if diagnosis.suspects is not None:  # issue 19: the ledger's suspect utterances
        from ruslan_glowtts.monitor.diagnose.suspects import format_section

        lines += format_section(diagnosis.suspects)
    lines.append(f"Next:     {diagnosis.recommendation}")
    if diagnosis.command:
        lines.append(f"          {diagnosis.command}")
    elif diagnosis.next_tier_command and (
        diagnosis.verdict == "warning" or run.get("ending", {}).get("kind") == "crashed"
    ):
        lines.append(f"          (then: {diagnosis.next_tier_command})")
    lines.append(
        f"Exit code {diagnosis.exit_code} (0 healthy or too early, 1 warning, 2 cannot judge, 3 exploding or diverged)"
    )
    return "\n".join(lines)


def one_line(diagnosis: Diagnosis) -> str:
    return f"{diagnosis.run_dir.name}: {diagnosis.verdict.upper()}" + (
        f" - {diagnosis.reasons[0]}" if diagnosis.reasons else ""
    )
