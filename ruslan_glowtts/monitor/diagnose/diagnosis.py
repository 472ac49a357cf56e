"""One run folder to a Diagnosis: its context, the guard's findings and the verdict, turned into
a recommendation and the command to run next."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ruslan_glowtts.common.errors import EXIT_EXPLODED, EXIT_USAGE
from ruslan_glowtts.common.next_steps import PREPARE_HINT
from ruslan_glowtts.common.run_record import RunRecord
from ruslan_glowtts.monitor.diagnose.findings import health_findings
from ruslan_glowtts.monitor.diagnose.run_context import (
    next_command,
    pick_checkpoint,
    run_context,
    run_ending,
)
from ruslan_glowtts.monitor.diagnose.verdict import Verdict, judge
from ruslan_glowtts.monitor.events import RunEvents, read_run
from ruslan_glowtts.monitor.explosion_rules import RuleSettings
from ruslan_glowtts.training.coqui_compat import AMP_SCALER_TAG

EXIT_CODES = {
    Verdict.HEALTHY: 0,
    Verdict.TOO_EARLY: 0,
    Verdict.WARNING: 1,
    Verdict.EXPLODING: EXIT_EXPLODED,
    Verdict.DIVERGED: EXIT_EXPLODED,
    Verdict.CANNOT_JUDGE: EXIT_USAGE,
}


@dataclass
class Diagnosis:
    run_dir: Path
    verdict: Verdict
    reasons: list[str]
    recommendation: str  # one sentence
    recommended_preset: str | None  # the tier to switch to now; None = keep the current one
    command: str | None  # what to run now; None = keep training
    next_tier_command: str | None  # what to run if (or now that) this tier explodes
    stats: dict[str, Any]
    run: dict[str, Any]
    markers: dict[str, list[float]] = field(default_factory=dict)  # steps of skips, alarms, escalations
    suspects: Any = None  # suspects.Suspects: the ledger's suspect utterances (set by the CLI, issue 19)
    record: RunRecord = field(default_factory=RunRecord)  # run.json as read (not in the report)
    config: dict[str, Any] = field(default_factory=dict)  # config.json as read (not in the report)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_json(self) -> dict[str, Any]:
        from ruslan_glowtts.monitor.diagnose.report import to_json

        return to_json(self)


def diagnose(run_dir: Path, events: RunEvents | None = None) -> Diagnosis:
    """The verdict, reasons and recommendation for one run folder (events: read_run(run_dir))."""
    run_dir = Path(run_dir).expanduser().absolute()
    events = events if events is not None else read_run(run_dir)
    ctx = run_context(run_dir)
    # The run's own health settings (config.json) steer the rules, as they steered its guard.
    rules = RuleSettings.from_mapping(ctx["_config"].get("health"))
    health, markers = health_findings(events)
    ending = run_ending(run_dir, ctx["_record"])
    judgement = judge(events, rules, health, ending=ending, fp16=ctx["fp16"] and AMP_SCALER_TAG in events.scalars)
    verdict, reasons, onset, stats = judgement.verdict, judgement.reasons, judgement.onset, judgement.stats
    if events.unreadable and verdict not in (Verdict.EXPLODING, Verdict.DIVERGED):
        # What could be read shows no trouble, but the unread file may hold it: say so, do not guess.
        verdict = Verdict.CANNOT_JUDGE
        reasons = [f"cannot read the event file {path.name}: {why}" for path, why in events.unreadable] + [
            "the verdict would rest on part of the run's curves only"
        ]
    elif events.unreadable:
        reasons += [
            f"the event file {path.name} could not be read ({why}); the verdict rests on the others"
            for path, why in events.unreadable
        ]

    next_preset = ctx["next_preset"]
    checkpoint, why_checkpoint = pick_checkpoint(run_dir, onset, diverged=verdict == Verdict.DIVERGED)
    next_cmd = next_command(ctx, next_preset, checkpoint) if next_preset else None
    ctx.update(
        checkpoint=str(checkpoint) if checkpoint else None,
        checkpoint_note=why_checkpoint,
        onset_step=onset,
        event_files=[str(path) for path in events.files],
        ending=ending,
        thresholds=asdict(rules),
        unreadable_event_files=[str(path) for path, _ in events.unreadable],
    )
    if not ctx["dataset_path"]:
        reasons.append(
            "the dataset path is unknown (no run.json, no datasets[0].path in config.json): "
            "replace DATASET_DIR in the command"
        )
    for item in ctx["lineage"][:-1]:
        reasons.append(f"continues from {item['run']} (preset {item['preset']})")
    if ctx["lineage"] and ctx["lineage"][-1].get("reason"):
        reasons.append(f"started by escalation: {ctx['lineage'][-1]['reason']}")

    preset_name = ctx["preset"] or "this run's settings"
    command = recommended = None
    if verdict in (Verdict.EXPLODING, Verdict.DIVERGED):
        if next_preset:
            recommended, command = next_preset, next_cmd
            recommendation = f"stop this run and start the next tier, {next_preset}, {why_checkpoint}"
        else:
            dataset = ctx["dataset_path"] or "DATASET_DIR"
            command = PREPARE_HINT.format(src=shlex.quote(dataset))
            recommendation = (
                f"{preset_name} is the end of the tier chain: suspect the data; run prepare and read "
                "its report (long or mislabelled utterances)"
            )
    elif ending["kind"] == "crashed":
        # Dead, but nothing in the curves says why: never "keep training".
        recommendation = (
            "the run is not training any more: read the error it printed; if it was Coqui's "
            "`NaN loss`, start the next tier" + (f" ({next_preset})" if next_preset else "")
        )
    elif verdict == Verdict.WARNING:
        recommendation = "keep training and diagnose again in a few hundred steps" + (
            f"; if it turns exploding, switch to {next_preset}" if next_preset else ""
        )
    elif verdict == Verdict.TOO_EARLY:
        recommendation = "keep training and diagnose again later"
    elif verdict == Verdict.CANNOT_JUDGE:
        recommendation = (
            "no verdict: copy the run's event files again (or move the corrupt one aside) and diagnose again"
        )
    else:
        recommendation = "keep training"
    run_info = {key: value for key, value in ctx.items() if not key.startswith("_")}
    return Diagnosis(
        run_dir,
        verdict,
        reasons,
        recommendation,
        recommended,
        command,
        next_cmd,
        stats,
        run_info,
        markers,
        record=ctx["_record"],
        config=ctx["_config"],
    )
