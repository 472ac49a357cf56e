"""report.json, the duration histogram and the printed summary of a prepare run.

report.json is for machines and for looking things up: counts per problem with what each
problem means and what was done about it, one entry per utterance that had a problem or a
substantive text change (with its metadata line number), length statistics and the recommended
training caps. The printed summary is for a human deciding whether the corpus is fit to train.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruslan_glowtts.common.atomic_files import write_bytes, write_text
from ruslan_glowtts.common.corpus_layout import DATASET_TOML, HISTOGRAM, REPORT
from ruslan_glowtts.prep.audio_audit import AUDIO_PROBLEMS
from ruslan_glowtts.prep.length_limits import LENGTH_PROBLEMS, describe
from ruslan_glowtts.prep.metadata import LINE_PROBLEMS
from ruslan_glowtts.prep.problems import EXCLUDE_PROBLEMS, Problem
from ruslan_glowtts.prep.text_normalization import TEXT_CHANGES, TEXT_PROBLEMS

logger = logging.getLogger(__name__)

# Text changes that are pure typography: counted, but not listed per file.
ROUTINE_TEXT_CHANGES = {"unicode", "whitespace", "quotes", "dashes", "punctuation"}
MEANINGS: dict[str, str] = {
    code: meaning
    for table in (LINE_PROBLEMS, AUDIO_PROBLEMS, TEXT_PROBLEMS, LENGTH_PROBLEMS, EXCLUDE_PROBLEMS)
    for code, (_, meaning) in table.items()
}


@dataclass
class Utterance:
    """One metadata line and everything prepare found out about it."""

    line: int
    id: str
    source_text: str
    text: str = ""
    text_changes: tuple[str, ...] = ()
    problems: list[Problem] = field(default_factory=list)
    frames: int = 0  # samples of the prepared WAV at the training rate
    audio: dict[str, Any] = field(default_factory=dict)  # what the audit measured

    @property
    def usable(self) -> bool:
        return not any(p.excluded for p in self.problems)

    def file_entry(self) -> dict[str, Any] | None:
        listed_changes = [c for c in self.text_changes if c not in ROUTINE_TEXT_CHANGES]
        if not self.problems and not listed_changes:
            return None
        entry: dict[str, Any] = {
            "line": self.line,
            "id": self.id,
            "usable": self.usable,
            "problems": [p.to_json() for p in self.problems],
        }
        if self.text_changes:
            entry["text"] = {"source": self.source_text, "normalised": self.text, "changes": list(self.text_changes)}
        return entry


def build_report(
    utterances: list[Utterance], *, header: dict[str, Any], caps: dict[str, Any], rate: int, run: dict[str, Any]
) -> dict[str, Any]:
    usable = [u for u in utterances if u.usable]
    counts: Counter = Counter()
    actions: dict[str, Counter] = {}
    for u in utterances:
        for p in u.problems:
            counts[p.code] += 1
            actions.setdefault(p.code, Counter())[p.action] += 1
    changes = Counter(c for u in utterances for c in u.text_changes)
    seconds = [u.frames / rate for u in usable]
    return {
        "summary": {
            "lines": len(utterances),
            "usable": len(usable),
            "excluded": len(utterances) - len(usable),
            "usable_hours": round(sum(seconds) / 3600, 3),
            "with_problems": sum(1 for u in utterances if u.problems),
        },
        **header,
        "problems": {
            code: {"count": n, "action": _action(actions[code]), "meaning": MEANINGS.get(code, "")}
            for code, n in counts.most_common()
        },
        "text_changes": {code: {"count": n, "meaning": TEXT_CHANGES[code]} for code, n in changes.most_common()},
        "recommended": caps,
        "stats": {
            "duration_seconds": describe(seconds),
            "text_length_chars": describe([len(u.text) for u in usable], digits=1),
            "source_sample_rates": dict(Counter(str(u.audio.get("rate")) for u in utterances if u.audio.get("rate"))),
            "source_channels": dict(Counter(str(u.audio["channels"]) for u in utterances if u.audio.get("channels"))),
        },
        "run": run,
        "files": [entry for u in utterances if (entry := u.file_entry()) is not None],
    }


def _action(actions: Counter) -> str:
    """One action per code; 'fixed' and 'warning' mix only for edge silence (--trim-silence)."""
    return "/".join(sorted(actions)) if len(actions) > 1 else next(iter(actions))


def write_report(dst: Path, report: dict[str, Any]) -> Path:
    path = dst / REPORT
    write_text(path, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return path


def write_histogram(
    dst: Path, utterances: list[Utterance], *, rate: int, caps: dict[str, Any], digest_file: Path
) -> Path:
    """Durations and text lengths of the usable utterances, with the recommended caps marked.
    Skipped (matplotlib costs seconds) when its inputs are those of the existing PNG."""
    path = dst / HISTOGRAM
    usable = [u for u in utterances if u.usable]
    inputs = json.dumps([[u.frames for u in usable], [len(u.text) for u in usable], caps, rate], sort_keys=True)
    digest = hashlib.sha256(inputs.encode()).hexdigest()
    if path.is_file() and digest_file.is_file() and digest_file.read_text().strip() == digest:
        return path
    # Figure + Agg canvas, not pyplot: no global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    left.hist([u.frames / rate for u in usable], bins=60, color="#4477aa")
    left.set(title=f"Duration of {len(usable)} usable utterances", xlabel="seconds", ylabel="utterances")
    right.hist([len(u.text) for u in usable], bins=60, color="#66aa55")
    right.set(title="Normalised text length", xlabel="characters", ylabel="utterances")
    if caps:
        left.axvline(
            caps["max_audio_len"] / rate,
            color="#cc3311",
            linestyle="--",
            label=f"max_audio_len ({caps['max_audio_len'] / rate:g} s)",
        )
        right.axvline(
            caps["max_text_len"] - 1, color="#cc3311", linestyle="--", label=f"max_text_len ({caps['max_text_len']})"
        )
        left.legend()
        right.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    write_bytes(path, buffer.getvalue(), only_if_changed=True)
    write_text(digest_file, digest + "\n")
    return path


def summary_lines(report: dict[str, Any], dst: Path) -> list[str]:
    s = report["summary"]
    lines = [f"Prepared {s['usable']} of {s['lines']} utterances ({s['usable_hours']:.2f} h) into {dst}"]
    for action, title in (("excluded", "Excluded"), ("fixed", "Fixed"), ("warning", "Warnings")):
        items = [f"{code} {info['count']}" for code, info in report["problems"].items() if action in info["action"]]
        if items:
            lines.append(f"  {title}: {', '.join(items)}")
    listed = [f"{code} {info['count']}" for code, info in report["text_changes"].items()]
    if listed:
        lines.append(f"  Text normalised: {', '.join(listed)}")
    caps = report["recommended"]
    if caps:
        lines.append(
            f"  Training caps (in {DATASET_TOML}): max_audio_len = {caps['max_audio_len']} "
            f"({caps['max_audio_seconds']:g} s), max_text_len = {caps['max_text_len']}; "
            f"{caps['dropped_at_training']} longer utterance(s) will be skipped"
        )
    run = report["run"]
    lines.append(
        f"  This run: {run['processed']} file(s) processed, {run['reused']} unchanged and skipped, "
        f"{run['features_computed']} feature file(s) computed, {run['seconds']:.1f} s"
    )
    lines.append(f"  Details: {dst / REPORT} (per file, with line numbers), {dst / HISTOGRAM}")
    return lines
