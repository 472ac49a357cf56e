"""Suspect utterances: which utterances sit in the updates the guard flagged more often than chance
would put them there, and which ones the model never learns. From the runs' ledgers
(ruslan_glowtts/monitor/ledger.py), across every run of an escalation chain or several runs.

Two lists:
- Spike suspects: an utterance seen in n batches, f of them flagged (skipped as non-finite, a
  spike, an explosion alarm), when a share p of all batches was flagged. Chance would put it in
  n x p flagged batches; lift = f / (n x p). Listed when f >= 3, lift >= 2 and the binomial tail
  P(X >= f | n, p), times the number of utterances tested (Bonferroni), is below 1 %: exposure
  matters (STABILITY.md, "Blaming the data"): on a tiny corpus every utterance is in every
  flagged batch, and nothing is listed.
- Loss outliers: after a warm-up (the first quarter of the ledger's steps), the observations are
  cut into windows of about one pass over the corpus; in each window every observation gets a
  robust z-score (median, MAD) against the others, per term: GlowTTS's NLL per frame and its
  duration loss per token. An utterance's score is its mean z over its observations, the term
  with the larger |z| (dataset cartography's mean, with the spread across windows beside it).
  Listed when |z| >= 3, it was seen at least 6 times after the warm-up, and in the last third of
  the windows its z is still on the same side: it did not join the corpus while the corpus
  learnt. Both directions count: a loss far above the corpus is an utterance the model cannot fit
  (a transcript covering part of its audio, reversed speech); a duration loss far below it means
  its tokens got far fewer frames than the predictor expects (a text much longer than its audio,
  or no speech for the alignment to follow), an NLL far below it audio easier than speech (noise).

Evidence: "strong" when a loss outlier has |z| >= 5 or a spike suspect's corrected p is below
0.1 %; "weak" when something is listed below that; "none" when nothing is; "too little data"
when no utterance has been seen often enough after the warm-up to judge.

Each row joins prepare's report.json (problems) and the prepared metadata (normalised text) of
the run's dataset; duration and characters per second come from the ledger's mel length.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ruslan_glowtts.common.atomic_files import write_text
from ruslan_glowtts.common.corpus_layout import METADATA_FILE, REPORT
from ruslan_glowtts.common.run_layout import RUN_META
from ruslan_glowtts.monitor.ledger import Ledger, ledger_files, read_ledgers

logger = logging.getLogger(__name__)

SUSPECTS_FILE = "suspects.txt"
RANKED = 50  # utterances kept in the JSON ranking


@dataclass(frozen=True)
class SuspectSettings:
    warmup_share: float = 0.25  # of the ledger's step range: GlowTTS's first steps swing
    z_list: float = 3.0
    z_strong: float = 5.0
    min_seen: int = 6  # observations after the warm-up
    min_windows: int = 3
    min_flagged: int = 3
    min_lift: float = 2.0
    p_list: float = 0.01  # Bonferroni-corrected binomial tail
    p_strong: float = 0.001


@dataclass
class Suspects:
    runs: list[str]
    files: list[str]
    observations: int
    batches: int
    utterances: int
    steps: tuple[int, int]
    warmup_step: int
    windows: int
    flagged: int
    flag_kinds: dict[str, int]
    corpus: dict[str, list[float]]  # term -> [median of the first window, of the last]
    loss_outliers: list[dict[str, Any]]
    spike_suspects: list[dict[str, Any]]
    ranking: list[dict[str, Any]]  # every judged utterance by loss score, the first RANKED
    evidence: str  # strong | weak | none | too little data
    evidence_text: str
    notes: list[str] = field(default_factory=list)
    previously_excluded: dict[str, Any] | None = None  # the run's own --exclude-utterances record
    suspects_file: str | None = None
    command: str | None = None  # training again without the suspects
    prepare_command: str | None = None
    datamap: dict[str, Any] = field(default_factory=dict)  # per utterance, for --plot (not in JSON)
    prepared: dict[str, str] = field(default_factory=dict)  # report.json's source and destination (not in JSON)

    @classmethod
    def empty(cls, runs: list, files: list, evidence: str, text: str, notes: list[str] | None = None) -> Suspects:
        """Nothing to judge (no ledger, or a ledger with no batch yet)."""
        return cls(
            [str(r) for r in runs],
            [str(f) for f in files],
            0,
            0,
            0,
            (0, 0),
            0,
            0,
            0,
            {},
            {},
            [],
            [],
            [],
            evidence,
            text,
            list(notes or []),
        )

    @property
    def listed(self) -> list[str]:
        ids = [row["id"] for row in self.loss_outliers + self.spike_suspects]
        return list(dict.fromkeys(ids))

    def to_json(self) -> dict[str, Any]:
        from ruslan_glowtts.monitor.diagnose.report import json_safe

        data = {key: value for key, value in self.__dict__.items() if key not in ("datamap", "prepared")}
        return json_safe(data)


# ---------------------------------------------------------------------------------------------
# Which runs


def _read_meta(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / RUN_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def chain_runs(run_dir: Path) -> list[Path]:
    """The run and every run of its escalation chain (run.json parent_run / escalated_to), oldest first."""
    seen: dict[Path, None] = {}
    back: list[Path] = []
    here: Path | None = Path(run_dir)
    while here is not None and here.resolve() not in seen and len(back) < 50:
        seen[here.resolve()] = None
        back.append(here)
        parent = _read_meta(here).get("parent_run")
        here = Path(parent) if parent and Path(parent).is_dir() else None
    forward: list[Path] = []
    here = _read_meta(Path(run_dir)).get("escalated_to")
    while here and Path(here).is_dir() and Path(here).resolve() not in seen and len(forward) < 50:
        seen[Path(here).resolve()] = None
        forward.append(Path(here))
        here = _read_meta(Path(here)).get("escalated_to")
    return back[::-1] + forward


# ---------------------------------------------------------------------------------------------
# Statistics


def _robust(values: np.ndarray) -> tuple[float, float]:
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med))) * 1.4826
    return med, mad


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (no scipy: diagnose stays light)."""
    if k <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k, n + 1):
        total += math.exp(
            math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        )
    return min(total, 1.0)


def _windows(steps: np.ndarray, per_window: int) -> np.ndarray:
    """Window index of each observation (sorted by step): about `per_window` observations each,
    never splitting one step's batch."""
    order = np.argsort(steps, kind="stable")
    window = np.zeros(len(steps), np.int64)
    current, count, last = 0, 0, None
    for i in order:
        if count >= per_window and steps[i] != last:
            current, count = current + 1, 0
        window[i] = current
        count += 1
        last = steps[i]
    return window


def _spike_suspects(ledger: Ledger, s: SuspectSettings) -> tuple[list[dict[str, Any]], float]:
    flagged_batches = np.zeros(ledger.batches, bool)
    flagged_batches[list(ledger.flags)] = True
    share = flagged_batches.mean() if ledger.batches else 0.0
    if not flagged_batches.any():
        return [], 0.0
    # Batches per utterance, each batch once (an utterance appears once per batch).
    pairs = np.unique(np.stack([ledger.utt, ledger.batch]), axis=1)
    seen = np.bincount(pairs[0], minlength=len(ledger.ids))
    in_flagged = np.bincount(pairs[0][flagged_batches[pairs[1]]], minlength=len(ledger.ids))
    tested = int((seen > 0).sum())
    rows: list[dict[str, Any]] = []
    for u in np.flatnonzero(in_flagged >= s.min_flagged):
        n, f = int(seen[u]), int(in_flagged[u])
        lift = f / (n * share)
        p_value = min(1.0, binomial_tail(f, n, share) * tested)
        if lift >= s.min_lift and p_value <= s.p_list:
            kinds = Counter(
                kind
                for b in np.unique(pairs[1][(pairs[0] == u) & flagged_batches[pairs[1]]])
                for kind, *_ in ledger.flags[int(b)]
            )
            rows.append(
                {
                    "id": ledger.ids[u],
                    "in_flagged": f,
                    "seen": n,
                    "expected": n * share,
                    "lift": lift,
                    "p_corrected": p_value,
                    "kinds": dict(kinds),
                }
            )
    rows.sort(key=lambda row: (row["p_corrected"], -row["lift"]))
    # Utterances that were always batched together (a tiny corpus bucketed by length keeps its
    # batches) cannot be told apart by the ledger: say so instead of guessing.
    batches_of = {row["id"]: frozenset(pairs[1][pairs[0] == ledger.ids.index(row["id"])].tolist()) for row in rows}
    for row in rows:
        row["same_batches_as"] = [
            other["id"] for other in rows if other is not row and batches_of[other["id"]] == batches_of[row["id"]]
        ]
    return rows, float(share)


def _loss_scores(ledger: Ledger, s: SuspectSettings) -> dict[str, Any]:
    first, last = int(ledger.step.min()), int(ledger.step.max())
    warmup = first + int(s.warmup_share * (last - first))
    keep = (ledger.step >= warmup) & np.isfinite(ledger.nll) & np.isfinite(ledger.dur)
    n_ids = len(ledger.ids)
    window = _windows(ledger.step[keep], max(n_ids, 1))
    windows = int(window.max()) + 1 if keep.any() else 0
    utt = ledger.utt[keep]
    z: dict[str, np.ndarray] = {}
    corpus: dict[str, list[float]] = {}
    for term in ("nll", "dur"):
        values = getattr(ledger, term)[keep]
        scores = np.zeros(len(values))
        medians = []
        for w in range(windows):
            inside = window == w
            med, mad = _robust(values[inside])
            medians.append(med)
            # A window whose values barely differ (MAD 0) says nothing about any one utterance.
            scores[inside] = (values[inside] - med) / mad if mad > 1e-12 else 0.0
        z[term] = scores
        corpus[term] = [medians[0], medians[-1]] if medians else []
    late = window >= (2 * windows) // 3
    seen = np.bincount(utt, minlength=n_ids)
    stats: dict[str, np.ndarray] = {"seen": seen}
    for term in ("nll", "dur"):
        stats[f"z_{term}"] = np.bincount(utt, weights=z[term], minlength=n_ids) / np.maximum(seen, 1)
        late_seen = np.bincount(utt[late], minlength=n_ids)
        stats[f"late_{term}"] = np.where(
            late_seen > 0,
            np.bincount(utt[late], weights=z[term][late], minlength=n_ids) / np.maximum(late_seen, 1),
            np.nan,
        )
        # Spread across windows (cartography's variability): std of the utterance's per-window mean z.
        sums = np.zeros((n_ids, max(windows, 1)))
        count = np.zeros((n_ids, max(windows, 1)))
        np.add.at(sums, (utt, window), z[term])
        np.add.at(count, (utt, window), 1)
        means = sums / np.maximum(count, 1)
        present = count > 0
        k = present.sum(axis=1)
        centred = np.where(present, means - (means * present).sum(axis=1, keepdims=True) / np.maximum(k, 1)[:, None], 0)
        stats[f"spread_{term}"] = np.sqrt((centred**2).sum(axis=1) / np.maximum(k, 1))
    return {"warmup": warmup, "windows": windows, "corpus": corpus, "stats": stats}


def _loss_outliers(
    ledger: Ledger,
    scores: dict[str, Any],
    s: SuspectSettings,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    st = scores["stats"]
    judged = np.flatnonzero(st["seen"] >= s.min_seen) if scores["windows"] >= s.min_windows else np.zeros(0, int)
    rows: list[dict[str, Any]] = []
    for u in judged:
        term = "nll" if abs(st["z_nll"][u]) >= abs(st["z_dur"][u]) else "dur"
        z, late = float(st[f"z_{term}"][u]), float(st[f"late_{term}"][u])
        rows.append(
            {
                "id": ledger.ids[u],
                "score": abs(z),
                "term": term,
                "direction": "above" if z > 0 else "below",
                "z_nll": float(st["z_nll"][u]),
                "z_dur": float(st["z_dur"][u]),
                "late_nll": float(st["late_nll"][u]),
                "late_dur": float(st["late_dur"][u]),
                "spread_nll": float(st["spread_nll"][u]),
                "spread_dur": float(st["spread_dur"][u]),
                "seen": int(st["seen"][u]),
                "stays": bool(math.isfinite(late) and late * z > 0),
            }
        )
    rows.sort(key=lambda row: -row["score"])
    listed = [row for row in rows if row["score"] >= s.z_list and row["stays"]]
    return listed, rows[:RANKED], len(judged)


# ---------------------------------------------------------------------------------------------
# Facts from prepare, the section, suspects.txt


def _dataset_facts(dataset: str | None) -> tuple[dict[str, list[str]], dict[str, str], dict[str, Any]]:
    """(id -> prepare's problem codes, id -> normalised text, report.json header) of a prepared
    folder; empty when there is none (a run on an unprepared corpus)."""
    if not dataset:
        return {}, {}, {}
    root = Path(dataset)
    problems: dict[str, list[str]] = {}
    report: dict[str, Any] = {}
    try:
        report = json.loads((root / REPORT).read_text(encoding="utf-8"))
        for entry in report.get("files", []):
            if isinstance(entry, dict) and entry.get("problems"):
                problems[str(entry.get("id"))] = [p.get("code", "?") for p in entry["problems"]]
    except (OSError, ValueError, AttributeError):
        report = {}
    texts: dict[str, str] = {}
    try:
        for line in (root / METADATA_FILE).read_text(encoding="utf-8-sig").splitlines():
            id_, _, text = line.partition("|")
            texts[id_] = text.strip()
    except (OSError, UnicodeDecodeError):
        pass
    return problems, texts, report


def _join_facts(rows: list[dict[str, Any]], ledger: Ledger, facts: tuple, audio: dict[str, Any]) -> None:
    problems, texts, _ = facts
    hop = audio.get("hop_length") or 256
    rate = audio.get("sample_rate") or 22050
    index = {id_: i for i, id_ in enumerate(ledger.ids)}
    for row in rows:
        u = index[row["id"]]
        mine = ledger.utt == u
        seconds = float(np.median(ledger.mel_len[mine])) * hop / rate if mine.any() else math.nan
        text = texts.get(row["id"])
        row.update(
            duration_s=seconds,
            problems=problems.get(row["id"], []),
            text=text,
            chars_per_s=len(text) / seconds if text and seconds > 0 else None,
        )


def find_suspects(
    run_dirs: list[Path],
    *,
    dataset: str | None = None,
    audio: dict[str, Any] | None = None,
    settings: SuspectSettings = SuspectSettings(),
) -> Suspects | None:
    """The suspects of these runs (and of their escalation chains); None when none has a ledger."""
    runs: dict[Path, None] = {}
    for run_dir in run_dirs:
        for run in chain_runs(Path(run_dir)):
            runs[run] = None
    files = ledger_files(runs)
    if not files:
        return None
    ledger = read_ledgers(files)
    s = settings
    notes = list(ledger.problems)
    if ledger.flagged_without_batch:
        notes.append(f"{ledger.flagged_without_batch} flag(s) for updates whose batch is not in the ledger")
    if not ledger.observations:
        return Suspects.empty(list(runs), files, "too little data", "the ledger holds no batch yet", notes)
    spikes, share = _spike_suspects(ledger, s)
    scores = _loss_scores(ledger, s)
    outliers, ranking, judged = _loss_outliers(ledger, scores, s)
    facts = _dataset_facts(dataset)
    _join_facts(outliers + spikes + ranking, ledger, facts, audio or {})
    flagged = len(ledger.flags)
    kinds = Counter(kind for flags in ledger.flags.values() for kind, *_ in flags)
    strong_loss = any(row["score"] >= s.z_strong for row in outliers)
    strong_spike = any(row["p_corrected"] <= s.p_strong for row in spikes)
    most_seen = int(scores["stats"]["seen"].max()) if len(scores["stats"]["seen"]) else 0
    if outliers or spikes:
        evidence = "strong" if strong_loss or strong_spike else "weak"
        why = [f"a loss |z| of {s.z_strong:g} or more"] * strong_loss + [
            f"a spike suspect's corrected p below {s.p_strong:.1%}"
        ] * strong_spike
        text = (
            f"strong evidence: {' and '.join(why)}"
            if why
            else f"weak evidence: listed, but no loss |z| reaches {s.z_strong:g} and no spike suspect's corrected p "
            f"is below {s.p_strong:.1%}: listen before excluding"
        )
    elif judged == 0:
        evidence = "too little data"
        text = (
            f"too little data: {scores['windows']} pass(es) over the corpus after the warm-up (step "
            f"{scores['warmup']}), each utterance seen at most {most_seen} time(s) there; the loss lists need "
            f"{s.min_windows} passes and {s.min_seen} sightings"
        )
    else:
        evidence = "none"
        text = f"none: no utterance's loss stays {s.z_list:g} robust z from the corpus ({judged} judged), " + (
            "and no utterance is in the flagged updates more often than chance"
            if flagged
            else "and no update was flagged"
        )
    result = Suspects(
        runs=[str(r) for r in runs],
        files=[str(f) for f in files],
        observations=ledger.observations,
        batches=ledger.batches,
        utterances=len(ledger.ids),
        steps=(int(ledger.step.min()), int(ledger.step.max())),
        warmup_step=scores["warmup"],
        windows=scores["windows"],
        flagged=flagged,
        flag_kinds=dict(kinds),
        corpus=scores["corpus"],
        loss_outliers=outliers,
        spike_suspects=spikes,
        ranking=ranking,
        evidence=evidence,
        evidence_text=text,
        notes=notes,
        prepared={key: str(facts[2][key]) for key in ("source", "destination") if facts[2].get(key)},
    )
    result.datamap = {"ids": ledger.ids, **{k: v for k, v in scores["stats"].items()}}
    if share and not spikes:
        result.notes.append(
            f"{flagged} of {ledger.batches} updates flagged ({share:.1%}); no utterance is in "
            "them more often than chance"
        )
    groups = {tuple(sorted([row["id"], *row["same_batches_as"]])) for row in spikes if row["same_batches_as"]}
    result.notes += [
        f"{', '.join(group)} were always in the same batches: the ledger cannot tell which of them "
        "it is (listen to them, or train with --set bucket_by_length=false to mix the batches)"
        for group in sorted(groups)
    ]
    return result


def _reason(row: dict[str, Any]) -> str:
    if "score" in row:
        what = "per-frame NLL" if row["term"] == "nll" else "duration loss"
        text = f"loss outlier: {what} {row['direction']} the corpus, z {row['score']:.1f}, seen {row['seen']}x"
    else:
        text = (
            f"spike suspect: in {row['in_flagged']} of {row['seen']} flagged updates' batches, lift "
            f"{row['lift']:.1f}, corrected p {row['p_corrected']:.2g}"
        )
    if row.get("problems"):
        text += f"; prepare: {', '.join(row['problems'])}"
    return text


def write_suspects_file(suspects: Suspects, path: Path) -> bool:
    """suspects.txt: one id per line, the reason after #; the ids the run already left out
    (--exclude-utterances) follow, so one file keeps both. False (and a warning) when the
    folder cannot be written (a read-only copy of a run)."""
    lines = [
        f"# Suspect utterances, written by python -m ruslan_glowtts.diagnose (evidence: {suspects.evidence}).",
        (
            "# One id per line; delete a line to keep that utterance. Use with: train_ruslan_glowtts.py "
            "--exclude-utterances FILE, or prepare --exclude FILE."
        ),
    ]
    rows: dict[str, str] = {}
    for row in suspects.loss_outliers + suspects.spike_suspects:
        rows[row["id"]] = rows[row["id"]] + "; " + _reason(row) if row["id"] in rows else _reason(row)
    lines += [f"{id_}  # {reason}" for id_, reason in rows.items()]
    earlier = suspects.previously_excluded or {}
    for id_ in earlier.get("ids", []):
        if id_ not in rows:
            lines.append(
                f"{id_}  # excluded already by {earlier.get('file')} (sha256 {str(earlier.get('sha256'))[:12]})"
            )
    try:
        write_text(path, "\n".join(lines) + "\n")
    except OSError as exc:
        logger.warning("warning: cannot write %s (%s): the suspects are in this output only", path, exc.strerror or exc)
        return False
    return True


def with_exclusion(command: str, path: str) -> str:
    """`command` with `--exclude-utterances path` (replacing one it already has)."""
    parts = shlex.split(command)
    if "--exclude-utterances" in parts:
        i = parts.index("--exclude-utterances")
        del parts[i : i + 2]
    return shlex.join(parts + ["--exclude-utterances", path])


def check_run_dir(path: Path) -> Path:
    """A run folder named on the command line besides the diagnosed one."""
    from ruslan_glowtts.common.errors import UserError

    path = Path(path).expanduser().absolute()
    if not path.is_dir():
        raise UserError(f"{path}: not a run folder")
    return path


def no_ledger(run_dirs: list[Path]) -> Suspects:
    return Suspects.empty(
        run_dirs,
        [],
        "no ledger",
        "no ledger: these runs hold no ledger_rank*.tsv (stock Coqui runs and runs of kit versions "
        "before the ledger have none), so no utterance can be blamed",
    )


def attach(diagnosis: Any, extra_runs: list[Path], *, settings: SuspectSettings = SuspectSettings()) -> Suspects:
    """Find the suspects of the diagnosed run (its chain, and `extra_runs`), write suspects.txt into
    its folder, and put the exclusion into the next command when the evidence is strong."""
    from ruslan_glowtts.common.next_steps import carried_flags

    run, record, config = diagnosis.run, diagnosis.record, diagnosis.config  # as diagnose read them
    suspects = find_suspects(
        [diagnosis.run_dir, *extra_runs],
        dataset=run.get("dataset_path"),
        audio=config.get("audio") if isinstance(config.get("audio"), dict) else {},
        settings=settings,
    )
    if suspects is None:
        diagnosis.suspects = no_ledger([diagnosis.run_dir, *extra_runs])
        return diagnosis.suspects
    suspects.previously_excluded = record.exclude_utterances if isinstance(record.exclude_utterances, dict) else None
    if suspects.listed:
        path = diagnosis.run_dir / SUSPECTS_FILE
        if write_suspects_file(suspects, path):
            suspects.suspects_file = str(path)
    if suspects.suspects_file and suspects.evidence == "strong":
        if diagnosis.command and "train_ruslan_glowtts.py" in diagnosis.command:
            diagnosis.command = with_exclusion(diagnosis.command, suspects.suspects_file)
        if diagnosis.next_tier_command:
            diagnosis.next_tier_command = with_exclusion(diagnosis.next_tier_command, suspects.suspects_file)
    if suspects.suspects_file:
        # Training again on the same settings without them, from the run's newest weights.
        preset = run.get("preset") or (run.get("tier_chain") or [None])[0]
        if preset:
            from ruslan_glowtts.monitor.diagnose.run_context import checkpoints

            found = checkpoints(diagnosis.run_dir)
            parts = [
                "python",
                "train_ruslan_glowtts.py",
                "--preset",
                preset,
                "--dataset-path",
                run.get("dataset_path") or "DATASET_DIR",
            ]
            parts += ["--restore-path", str(found[-1][1])] if found else []
            overrides = [o for o in record.overrides if isinstance(o, dict)]
            suspects.command = with_exclusion(
                shlex.join(parts + carried_flags(overrides, None)), suspects.suspects_file
            )
        if len(suspects.prepared) == 2:
            suspects.prepare_command = shlex.join(
                [
                    "python",
                    "-m",
                    "ruslan_glowtts.prepare",
                    "--src",
                    suspects.prepared["source"],
                    "--dst",
                    suspects.prepared["destination"],
                    "--exclude",
                    suspects.suspects_file,
                ]
            )
    diagnosis.suspects = suspects
    return suspects


# ---------------------------------------------------------------------------------------------
# Text


def _num(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _text(row: dict[str, Any], width: int = 48) -> str:
    text = row.get("text") or ""
    return (text[: width - 1] + "…") if len(text) > width else text


def format_section(s: Suspects) -> list[str]:
    if not s.files:
        return [f"Suspects: {s.evidence_text}"]
    runs = f"{len(s.runs)} run{'s' if len(s.runs) > 1 else ''}"
    lines = [
        f"Suspects: {s.evidence_text}",
        f"          ledger of {runs}: {s.observations} sightings of {s.utterances} utterances in {s.batches} "
        f"updates, steps {s.steps[0]}-{s.steps[1]}; {s.flagged} update(s) flagged"
        + (f" ({', '.join(f'{k} {n}' for k, n in sorted(s.flag_kinds.items()))})" if s.flag_kinds else ""),
    ]
    if s.corpus.get("nll"):
        lines.append(
            f"          after step {s.warmup_step} ({s.windows} passes): corpus median NLL "
            f"{s.corpus['nll'][0]:.3g} -> {s.corpus['nll'][1]:.3g}, duration loss {s.corpus['dur'][0]:.3g}"
            f" -> {s.corpus['dur'][1]:.3g}"
        )
    if s.loss_outliers:
        lines.append("  loss outliers (robust z against the corpus, mean after the warm-up; late = last third):")
        lines.append(
            f"    {'id':16s} {'z NLL':>6s} {'z dur':>6s} {'late':>6s} {'seen':>4s} {'sec':>5s} "
            f"{'chars/s':>7s}  prepare / text"
        )
        for row in s.loss_outliers:
            late = row[f"late_{row['term']}"]
            lines.append(
                f"    {row['id']:16s} {row['z_nll']:6.1f} {row['z_dur']:6.1f} {late:6.1f} {row['seen']:4d} "
                f"{_num(row.get('duration_s')):>5s} {_num(row.get('chars_per_s')):>7s}  "
                f"{', '.join(row.get('problems') or []) or '-'} | {_text(row)}"
            )
    if s.spike_suspects:
        lines.append("  spike suspects (in flagged updates more often than chance):")
        lines.append(
            f"    {'id':16s} {'flagged':>7s} {'seen':>5s} {'lift':>5s} {'p corr':>7s} {'sec':>5s}  prepare / text"
        )
        for row in s.spike_suspects:
            lines.append(
                f"    {row['id']:16s} {row['in_flagged']:7d} {row['seen']:5d} {row['lift']:5.1f} "
                f"{row['p_corrected']:7.1g} {_num(row.get('duration_s')):>5s}  "
                f"{', '.join(row.get('problems') or []) or '-'} | {_text(row)}"
            )
    lines += [f"          note: {note}" for note in s.notes]
    if s.suspects_file:
        lines.append(f"          written: {s.suspects_file} ({len(s.listed)} id(s), reasons after #)")
        if s.command:
            lines.append(f"          train without them: {s.command}")
        if s.prepare_command:
            lines.append(f"          or drop them for good: {s.prepare_command}")
    return lines


# ---------------------------------------------------------------------------------------------
# --plot: the data map


def datamap_path(plot: Path) -> Path:
    return plot.with_name(f"{plot.stem}.datamap.png")


def plot_datamap(s: Suspects, path: Path) -> None:
    """Dataset cartography's map for the two loss terms: each utterance's mean robust z after the
    warm-up against its spread across passes, the listed suspects labelled."""
    from matplotlib.figure import Figure

    from ruslan_glowtts.common.errors import UserError

    data = s.datamap
    judged = data["seen"] > 0
    listed = {row["id"] for row in s.loss_outliers} | {row["id"] for row in s.spike_suspects}
    fig = Figure(figsize=(11, 5), layout="constrained")
    fig.suptitle(
        f"Data map: {s.utterances} utterances, steps {s.warmup_step}-{s.steps[1]} ({s.windows} passes); "
        f"evidence {s.evidence}",
        fontsize=10,
    )
    for ax, term, title in zip(fig.subplots(1, 2), ("nll", "dur"), ("NLL per frame", "duration loss"), strict=True):
        x, y = data[f"spread_{term}"][judged], data[f"z_{term}"][judged]
        ids = [id_ for id_, ok in zip(data["ids"], judged, strict=True) if ok]
        mark = np.array([id_ in listed for id_ in ids], bool)
        ax.scatter(x[~mark], y[~mark], s=10, color="tab:blue", alpha=0.6, label="utterances")
        ax.scatter(x[mark], y[mark], s=22, color="tab:red", label="suspects")
        for xi, yi, id_ in zip(x[mark], y[mark], np.array(ids)[mark], strict=True):
            ax.annotate(id_, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for level in (SuspectSettings.z_list, -SuspectSettings.z_list):
            ax.axhline(level, color="tab:orange", ls="--", lw=0.8)
        ax.set(
            title=title,
            xlabel="spread across passes (std of the pass means of z)",
            ylabel="mean robust z after the warm-up",
        )
        ax.legend(loc="upper right", fontsize=7)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise UserError(f"cannot write the data map {path}: {exc.strerror or exc}") from None
