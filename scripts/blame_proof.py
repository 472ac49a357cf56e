"""Proof on planted faults for diagnose's "Suspect utterances" (issue 19); writes docs/BLAME.md.

    .venv/bin/python scripts/blame_proof.py                   # ~10 min on 2 busy cores
    .venv/bin/python scripts/blame_proof.py --out /tmp/b.md   # somewhere else

A corpus is made from the bundled sample's espeak-ng speech (data/sample: 24 sentences): 40 clean
utterances, each two sample sentences spoken one after the other with their two texts, and
utterances a model cannot fit to their text, each of which passes prepare's per-file checks
(a speaking-rate warning at most, and inside the length caps, so that every one is trained on):

  partial    the audio of two sentences, the text of the first only (covers part of its audio)
  overlong   the audio of one sentence, the text of two (much more than its audio)
  reversed   a clean pair's audio played backwards, with its text
  noise      noise as long as a clean pair, at speech loudness, with that pair's text
  swapped    another pair's audio of similar length (fittable by memorising: reported apart)

A tiny GlowTTS is trained on it for STEPS steps on two seeds, `diagnose` reads the ledgers, and
the planted ids are compared with its loss-outlier list (precision at k = the number of
unfittable plants). The clean corpus alone (the same 40 utterances) is trained and diagnosed the
same way: it must list none. Finally the first seed is retrained with diagnose's suspects.txt
(`--exclude-utterances`), and the final loss on the clean utterances is compared.
The test tests/test_suspects.py runs the same functions with fewer steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the kit's ledger reader, when run as a script

from tests.helpers import TINY_ARCH  # noqa: E402

SAMPLE = REPO / "data" / "sample"
META = "metadata_RUSLAN_22200.csv"
RATE = 44_100  # RUSLAN's rate, like data/sample: prepare resamples
PAUSE_S = 0.25
CLEAN = 40
UNFITTABLE = ("partial", "overlong", "reversed", "noise")

# The tests' tiny GlowTTS (tests/helpers.py TINY_ARCH) at a learning rate that makes the loss
# fall within a few hundred steps; figures and audio only every 1000 steps (they cost more
# than the step itself).
TINY = [
    *TINY_ARCH,
    "data_dep_init_steps=2",
    "batch_size=4",
    "eval_batch_size=4",
    "num_loader_workers=0",
    "num_eval_loader_workers=0",
    "test_delay_epochs=100000",
    "plot_step=1000",
    "print_step=1000",
    "run_eval=false",
    "lr=1e-3",
    "lr_scheduler_params.warmup_steps=100",
]


@dataclass
class Corpus:
    root: Path
    planted: dict[str, str] = field(default_factory=dict)  # id -> kind

    @property
    def unfittable(self) -> list[str]:
        return [id_ for id_, kind in self.planted.items() if kind in UNFITTABLE]


def _sample() -> tuple[list[str], list[np.ndarray]]:
    rows = [line.split("|", 1) for line in (SAMPLE / META).read_text(encoding="utf-8").splitlines() if line]
    audio = [sf.read(SAMPLE / "RUSLAN" / f"{id_}.wav", dtype="float32")[0] for id_, _ in rows]
    return [text for _, text in rows], audio


def _pairs(n: int, sentences: int) -> list[tuple[int, int]]:
    """n distinct ordered pairs of different sentences, each sentence used about equally."""
    pairs: list[tuple[int, int]] = []
    shift = 1
    while len(pairs) < n:
        pairs += [(a, (a + shift) % sentences) for a in range(sentences)]
        shift += 6
    return pairs[:n]


def make_corpus(root: Path, *, plants: bool = True, seed: int = 0) -> Corpus:
    """The clean utterances, and with `plants` the planted ones after them (ids in file order)."""
    texts, audio = _sample()
    pause = np.zeros(int(PAUSE_S * RATE), np.float32)
    rng = np.random.default_rng(seed)
    (root / "RUSLAN").mkdir(parents=True)
    lines: list[str] = []
    corpus = Corpus(root)

    def add(wav: np.ndarray, text: str, kind: str | None = None) -> None:
        id_ = f"{len(lines):06d}_RUSLAN"
        sf.write(root / "RUSLAN" / f"{id_}.wav", np.clip(wav, -1, 1), RATE, subtype="PCM_16")
        lines.append(f"{id_}|{text}\n")
        if kind:
            corpus.planted[id_] = kind

    def pair(a: int, b: int) -> tuple[np.ndarray, str]:
        return np.concatenate([audio[a], pause, audio[b]]), f"{texts[a]} {texts[b]}"

    pairs = _pairs(CLEAN + 7, len(texts))
    for a, b in pairs[:CLEAN]:
        add(*pair(a, b))
    if plants:
        extra = pairs[CLEAN:]
        wav, _ = pair(*extra[0])
        add(wav, texts[extra[0][0]], "partial")
        a, b = extra[1]
        add(audio[a], f"{texts[a]} {texts[b]}", "overlong")
        for a, b in extra[2:4]:
            wav, text = pair(a, b)
            add(wav[::-1].copy(), text, "reversed")
        for a, b in extra[4:6]:
            wav, text = pair(a, b)
            speech_rms = float(np.sqrt(np.mean(wav**2)))
            add((rng.standard_normal(len(wav)) * speech_rms).astype(np.float32), text, "noise")
        # Another pair's audio, of similar duration: a model can learn it by heart.
        a, b = extra[6]
        wav, text = pair(a, b)
        lengths = [len(pair(*p)[0]) for p in pairs[:CLEAN]]
        other = pairs[
            int(
                np.argmin(
                    [abs(n - len(wav)) if p != (a, b) else 1 << 40 for n, p in zip(lengths, pairs[:CLEAN], strict=True)]
                )
            )
        ]
        add(pair(*other)[0], text, "swapped")
    (root / META).write_text("".join(lines), encoding="utf-8")
    return corpus


# ---------------------------------------------------------------------------------------------
# Runs


def _run(command: list[str], *, timeout: int = 1800) -> subprocess.CompletedProcess:
    # One thread: the tiny model's convolutions are too small to share, and on a busy 2-core
    # machine two spinning OpenMP threads per process made a step ~10x dearer in CPU time.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def prepare(src: Path, dst: Path, *extra: str) -> subprocess.CompletedProcess:
    # One job: 47 files take seconds, and no worker pool is forked (under a heavy load a forked
    # worker was once seen stuck on a lock it inherited, and the proof waited for it forever).
    done = _run(
        [sys.executable, "-m", "ruslan_glowtts.prepare", "--src", str(src), "--dst", str(dst), "--jobs", "1", *extra]
    )
    if done.returncode != 0:
        raise RuntimeError(f"prepare failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def train(dataset: Path, output: Path, *, seed: int, steps: int, extra: tuple[str, ...] = ()) -> Path:
    sets = [arg for option in TINY for arg in ("--set", option)]
    done = _run(
        [
            sys.executable,
            "train_ruslan_glowtts.py",
            "--preset",
            "default",
            "--dataset-path",
            str(dataset),
            "--output-path",
            str(output),
            "--max-steps",
            str(steps),
            "--seed",
            str(seed),
            *sets,
            *extra,
        ]
    )
    if done.returncode != 0:
        raise RuntimeError(f"training failed ({done.returncode}): {done.stderr[-3000:]}")
    (run,) = [p for p in output.iterdir() if p.is_dir()]
    return run


def diagnose(run: Path, *extra: str) -> tuple[int, str, dict[str, Any]]:
    text = _run([sys.executable, "-m", "ruslan_glowtts.diagnose", str(run), *extra])
    data = _run([sys.executable, "-m", "ruslan_glowtts.diagnose", str(run), "--json", *extra])
    if "Traceback" in text.stderr + data.stderr:
        raise RuntimeError(f"diagnose crashed: {text.stderr[-2000:]}{data.stderr[-2000:]}")
    return text.returncode, text.stdout, json.loads(data.stdout)


def precision_at_k(ranked: list[str], relevant: list[str]) -> float:
    """Share of the k = len(relevant) highest-ranked utterances that are relevant."""
    k = len(relevant)
    return sum(1 for id_ in ranked[:k] if id_ in relevant) / k if k else 1.0


def score(suspects: dict[str, Any], corpus: Corpus) -> dict[str, Any]:
    """Precision at k on diagnose's loss ranking (every judged utterance by |z|; the listed loss
    outliers are its head above the listing threshold), and what was listed."""
    ranked = [row["id"] for row in suspects["ranking"]]
    listed = [row["id"] for row in suspects["loss_outliers"]]
    return {
        "precision_at_k": precision_at_k(ranked, corpus.unfittable),
        "rank": {id_: (ranked.index(id_) + 1 if id_ in ranked else None) for id_ in corpus.planted},
        "z": {row["id"]: row["score"] for row in suspects["ranking"] if row["id"] in corpus.planted},
        "listed": listed,
        "listed_planted": [i for i in listed if i in corpus.planted],
        "listed_clean": [i for i in listed if i not in corpus.planted],
        "best_clean_z": max(
            (row["score"] for row in suspects["ranking"] if row["id"] not in corpus.planted), default=None
        ),
        "spike_suspects": [row["id"] for row in suspects["spike_suspects"]],
    }


def clean_loss(run: Path, clean_ids: set[str], last_steps: int) -> dict[str, float]:
    """Mean per-frame NLL and duration loss of the clean utterances over the run's last steps,
    from its ledger (the losses the model had on them while training, not an extra pass)."""
    from ruslan_glowtts.monitor.ledger import ledger_files, read_ledgers

    ledger = read_ledgers(ledger_files([run]))
    late = ledger.step > ledger.step.max() - last_steps
    keep = late & np.isin(np.asarray(ledger.ids)[ledger.utt], list(clean_ids))
    nll, dur = float(np.mean(ledger.nll[keep])), float(np.mean(ledger.dur[keep]))
    return {"nll": nll, "dur": dur, "loss": nll + dur, "observations": int(keep.sum())}


def clean_loss_at_sightings(runs: list[Path], clean_ids: set[str], last: int = 5) -> list[float]:
    """For each run, the mean loss (NLL + duration) of the clean utterances over their sightings
    K-last..K, with K the number of times every clean utterance was seen in every run: the same
    exposure for each, so that a corpus with fewer utterances (more passes in as many steps) is
    not credited with the extra passes."""
    from ruslan_glowtts.monitor.ledger import ledger_files, read_ledgers

    ledgers = [read_ledgers(ledger_files([run])) for run in runs]
    clean_ids = set(clean_ids).intersection(*(ledger.ids for ledger in ledgers))  # not the held-out eval one
    per_run: list[dict[str, np.ndarray]] = []
    for ledger in ledgers:
        ids = np.asarray(ledger.ids)[ledger.utt]
        order = np.argsort(ledger.step, kind="stable")
        per_run.append({id_: (ledger.nll + ledger.dur)[order][ids[order] == id_] for id_ in clean_ids})
    k = min(len(values) for run in per_run for values in run.values())
    return [float(np.mean([values[k - last : k].mean() for values in run.values()])) for run in per_run] + [k]


def flagged_updates(run: Path) -> int:
    from ruslan_glowtts.monitor.ledger import ledger_files, read_ledgers

    return len(read_ledgers(ledger_files([run])).flags)


def prove(
    work: Path, *, steps: int, seeds: tuple[int, ...] = (1, 2), retrain: bool = True, log: Any = print
) -> dict[str, Any]:
    """Everything the docs page reports, measured now."""
    started = time.monotonic()
    planted = make_corpus(work / "planted_src")
    clean = make_corpus(work / "clean_src", plants=False)
    prepared = work / "planted"
    prepare_out = prepare(planted.root, prepared)
    prepare(clean.root, work / "clean")
    report = json.loads((prepared / "report.json").read_text(encoding="utf-8"))
    problems = {f["id"]: [p["code"] for p in f["problems"]] for f in report["files"] if f.get("problems")}
    result: dict[str, Any] = {
        "steps": steps,
        "planted": planted.planted,
        "k": len(planted.unfittable),
        "utterances": report["summary"]["usable"],
        "prepare_problems": problems,
        "prepare_summary": prepare_out.stdout.strip().splitlines()[:3],
        "seeds": {},
    }
    clean_ids = {
        line.split("|")[0]
        for line in (prepared / META).read_text(encoding="utf-8").splitlines()
        if line.split("|")[0] not in planted.planted
    }
    for seed in seeds:
        log(f"seed {seed}: training {steps} steps on the planted corpus")
        run = train(prepared, work / f"runs_seed{seed}", seed=seed, steps=steps)
        code, text, data = diagnose(run)
        result["seeds"][seed] = {
            "run": str(run),
            "exit_code": code,
            "text": text,
            "suspects": data["suspects"],
            **score(data["suspects"], planted),
            "clean_loss": clean_loss(run, clean_ids, steps // 4),
            "flagged_updates": flagged_updates(run),
            "max_grad_norm": data["stats"].get("grad_norm", {}).get("max"),
        }
    log(f"clean corpus: training {steps} steps")
    clean_run = train(work / "clean", work / "runs_clean", seed=seeds[0], steps=steps)
    code, text, data = diagnose(clean_run)
    result["clean"] = {"run": str(clean_run), "exit_code": code, "text": text, "suspects": data["suspects"]}
    if retrain:
        first = result["seeds"][seeds[0]]
        suspects_file = Path(first["run"]) / "suspects.txt"
        log(f"seed {seeds[0]}: retraining with --exclude-utterances {suspects_file}")
        again = train(
            prepared,
            work / "runs_excluded",
            seed=seeds[0],
            steps=steps,
            extra=("--exclude-utterances", str(suspects_file)),
        )
        meta = json.loads((again / "run.json").read_text(encoding="utf-8"))
        *matched, sightings = clean_loss_at_sightings([Path(first["run"]), again], clean_ids)
        result["retrain"] = {
            "run": str(again),
            "exclusion": meta.get("exclude_utterances"),
            "suspects_file": suspects_file.read_text(encoding="utf-8"),
            "clean_loss": clean_loss(again, clean_ids, steps // 4),
            "matched": {"before": matched[0], "after": matched[1], "sightings": sightings},
            "flagged_updates": flagged_updates(again),
        }
    result["seconds"] = round(time.monotonic() - started)
    return result


# ---------------------------------------------------------------------------------------------
# The docs page


def _tail(text: str, root: str) -> str:
    return text.replace(root, "<work>").rstrip()


def page(r: dict[str, Any], work: Path, command: str) -> str:
    root = str(work)
    seeds = list(r["seeds"])
    kinds = ", ".join(f"`{id_}` {kind}" for id_, kind in r["planted"].items())
    lines = [
        "# Blame the data: planted faults",
        "",
        (
            f"Made by `{command}` ({r['seconds'] // 60} min {r['seconds'] % 60} s here); every number and "
            "output below is from that run. The corpus, the training and the comparison are described in "
            "`scripts/blame_proof.py`; `tests/test_suspects.py` runs the same proof (same steps and seeds) once per "
            "test session and checks the goals below."
        ),
        "",
        (
            f"Corpus: {r['utterances']} utterances prepared by `python -m ruslan_glowtts.prepare`: "
            f"{r['utterances'] - len(r['planted'])} clean (two espeak-ng sentences each) and "
            f"{len(r['planted'])} planted: {kinds}. "
            f"k = {r['k']} of them cannot be fitted to their text (partial, overlong, reversed, noise); "
            "the swapped one can be learnt by heart and is reported apart."
        ),
        "",
        "What prepare's per-file checks said about the planted ones (all are trained on):",
        "",
    ]
    lines += [
        f"- `{id_}` ({kind}): {', '.join(r['prepare_problems'].get(id_, [])) or 'no problem'}"
        for id_, kind in r["planted"].items()
    ]
    lines += [
        "",
        (
            f"Training: the tests' tiny GlowTTS, preset default with lr 1e-3 and a 100-step warmup, batch 4, "
            f"{r['steps']} steps, CPU, one thread."
        ),
        "",
        "## Result",
        "",
        (
            "Precision at k is taken on diagnose's loss ranking (every utterance seen often enough, by its "
            "largest |robust z|); the listed loss outliers (suspects.txt) are the head of that ranking with "
            "|z| >= 3 that stayed on their side of the corpus."
        ),
        "",
        "| | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    lines.append(
        f"| precision at k = {r['k']} | " + " | ".join(f"{r['seeds'][s]['precision_at_k']:.2f}" for s in seeds) + " |"
    )
    lines.append(
        "| listed loss outliers: planted / clean | "
        + " | ".join(f"{len(r['seeds'][s]['listed_planted'])} / {len(r['seeds'][s]['listed_clean'])}" for s in seeds)
        + " |"
    )
    lines.append(
        "| highest clean utterance, \\|z\\| | "
        + " | ".join(f"{r['seeds'][s]['best_clean_z']:.1f}" for s in seeds)
        + " |"
    )
    for id_, kind in r["planted"].items():
        cells = []
        for s in seeds:
            seed = r["seeds"][s]
            rank, z = seed["rank"].get(id_), seed["z"].get(id_)
            cells.append(
                (f"rank {rank}, \\|z\\| {z:.1f}" if rank else "not ranked")
                + (", listed" if id_ in seed["listed"] else "")
            )
        lines.append(f"| `{id_}` {kind} | " + " | ".join(cells) + " |")
    lines.append(
        "| spike suspects | " + " | ".join(", ".join(r["seeds"][s]["spike_suspects"]) or "none" for s in seeds) + " |"
    )
    lines.append(
        "| flagged updates (guard) | " + " | ".join(str(r["seeds"][s]["flagged_updates"]) for s in seeds) + " |"
    )
    clean = r["clean"]["suspects"]
    lines += [
        "",
        (
            f"Clean corpus (the same {r['utterances'] - len(r['planted'])} clean utterances alone, seed "
            f"{seeds[0]}): {len(clean['loss_outliers'])} loss outliers, {len(clean['spike_suspects'])} spike "
            f"suspects; evidence: {clean['evidence']}."
        ),
    ]
    lines += ["", "## What it shows", ""] + _findings(r, seeds)
    if "retrain" in r:
        before, after = r["seeds"][seeds[0]]["clean_loss"], r["retrain"]["clean_loss"]
        matched = r["retrain"]["matched"]
        excluded = r["retrain"]["exclusion"] or {}
        lines += [
            "",
            "## Retraining without the suspects",
            "",
            (
                f"Seed {seeds[0]} again, same settings, with `--exclude-utterances suspects.txt` "
                f"({excluded.get('excluded', 0)} utterances left out). Loss on the clean utterances, from the "
                "ledgers (what the model scored on them while training):"
            ),
            "",
            (
                "| | loss (NLL + duration), last "
                f"{r['steps'] // 4} steps | per-frame NLL | duration loss | loss at the same exposure (sightings "
                f"{matched['sightings'] - 4}-{matched['sightings']} of each clean utterance) | flagged updates |"
            ),
            "|---|---|---|---|---|---|",
            (
                f"| with the planted utterances | {before['loss']:.4f} | {before['nll']:.4f} | {before['dur']:.4f} | "
                f"{matched['before']:.4f} | {r['seeds'][seeds[0]]['flagged_updates']} |"
            ),
            (
                f"| with diagnose's exclusions | {after['loss']:.4f} | {after['nll']:.4f} | {after['dur']:.4f} | "
                f"{matched['after']:.4f} | {r['retrain']['flagged_updates']} |"
            ),
            "",
            (
                "In as many steps, the run without the suspects passes over its smaller corpus more often; the "
                "same-exposure column compares each clean utterance after the same number of sightings in both "
                "runs, so that this is not counted as a gain."
            ),
            "",
            "suspects.txt as diagnose wrote it:",
            "",
            "```",
            r["retrain"]["suspects_file"].rstrip(),
            "```",
        ]
    for s in seeds:
        lines += ["", f"## diagnose, seed {s}", "", "```", _tail(r["seeds"][s]["text"], root), "```"]
    lines += ["", "## diagnose, clean corpus", "", "```", _tail(r["clean"]["text"], root), "```", ""]
    return "\n".join(lines)


def _findings(r: dict[str, Any], seeds: list[int]) -> list[str]:
    """Sentences read off the numbers of this run (nothing here is fixed text about the outcome)."""
    out = []
    for s in seeds:
        seed = r["seeds"][s]
        listed = [f"{r['planted'][i]} `{i}`" for i in seed["listed_planted"]]
        missed = [
            f"{r['planted'][i]} `{i}` (rank {seed['rank'][i]}, |z| {seed['z'].get(i, float('nan')):.1f})"
            for i in r["planted"]
            if i not in seed["listed"] and r["planted"][i] in UNFITTABLE
        ]
        out.append(
            f"- Seed {s}: precision at k = {r['k']} is {seed['precision_at_k']:.2f}; listed: "
            f"{', '.join(listed) or 'none'}; {len(seed['listed_clean'])} clean utterance(s) listed. "
            + (
                f"Not listed: {', '.join(missed)}, against clean utterances up to |z| {seed['best_clean_z']:.1f}."
                if missed
                else "Every unfittable plant is listed."
            )
        )
        if seed["flagged_updates"]:
            out.append(
                f"  Its guard flagged {seed['flagged_updates']} updates (grad_norm up to "
                f"{seed['max_grad_norm']:.0f}); spike suspects: "
                f"{', '.join(seed['spike_suspects']) or 'none, no utterance is in them more often than chance'}."
            )
    swapped = [i for i, kind in r["planted"].items() if kind == "swapped"]
    for i in swapped:
        out.append(
            f"- The swapped utterance `{i}` ranks "
            + ", ".join(
                f"{r['seeds'][s]['rank'][i]} (|z| {r['seeds'][s]['z'].get(i, float('nan')):.1f})" for s in seeds
            )
            + ": "
            + (
                "found."
                if any(i in r["seeds"][s]["listed"] for s in seeds)
                else "not found; its audio is speech of the right length, which this small model learns by heart."
            )
        )
    out.append(
        "- Which term caught what: a transcript covering part of its audio gives each token too many "
        "frames (duration loss far above the corpus); a text much longer than its audio, and noise (no "
        "speech for the alignment to follow), give the tokens far fewer frames than the duration predictor "
        "expects (duration loss far below); so both directions of both terms count."
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--work", type=Path, help="keep the corpora and runs here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "BLAME.md")
    args = parser.parse_args()
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="blame_proof_"))
    work.mkdir(parents=True, exist_ok=True)
    result = prove(work, steps=args.steps)
    (work / "result.json").write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str))
    command = "python scripts/blame_proof.py" + (f" --steps {args.steps}" if args.steps != 400 else "")
    args.out.write_text(page(result, work, command), encoding="utf-8")
    print(f"written to {args.out}; corpora and runs in {work}")


if __name__ == "__main__":
    main()
