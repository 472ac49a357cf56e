"""diagnose's "Suspect utterances" (ruslan_glowtts/monitor/diagnose/suspects.py) and the exclusion
files it writes (--exclude-utterances, prepare --exclude): the two lists on synthetic ledgers,
suspects.txt, the next command, bad input, and the proof on planted faults (scripts/blame_proof.py)."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.exclusions import read_exclusion
from ruslan_glowtts.monitor import diagnose as dg
from ruslan_glowtts.monitor.diagnose.suspects import (
    SUSPECTS_FILE,
    binomial_tail,
    chain_runs,
    find_suspects,
    with_exclusion,
)
from ruslan_glowtts.monitor.ledger import UtteranceLedger, ledger_path
from tests.helpers import REPO, copy_corpus, run_dirs, tiny_args
from tests.test_diagnose import healthy_grad, kit_meta, make_run, sigmoid_explosion

IDS = [f"{i:06d}_RUSLAN" for i in range(40)]


def write_ledger(
    run_dir: Path,
    *,
    steps: int = 400,
    batch: int = 4,
    bad: dict[str, str] | None = None,
    flag_with: str | None = None,
    seed: int = 0,
    ids: list[str] = IDS,
    rank: int = 0,
) -> Path:
    """A ledger like a training run's: every epoch a shuffled pass over `ids` in batches, a corpus
    NLL and duration loss that fall, utterance-level and per-sighting noise. bad: id -> "high_nll"
    (stays high while the rest fall) or "low_dur" (far below). flag_with: the guard flags 60 % of
    the updates whose batch holds this id, and 1 % of the others."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    ledger = UtteranceLedger(run_dir, rank=rank)
    offset = {id_: rng.normal(0, 0.03) for id_ in ids}
    order: list[str] = []
    for step in range(steps):
        if len(order) < batch:
            order += list(rng.permutation(ids))
        names, order = order[:batch], order[batch:]
        corpus = math.exp(-step / 150)
        nll, dur = [], []
        for id_ in names:
            kind = (bad or {}).get(id_)
            nll.append(0.5 + (1.5 if kind == "high_nll" else corpus) + offset[id_] + rng.normal(0, 0.05))
            dur.append((0.05 if kind == "low_dur" else 0.4 + corpus) + offset[id_] + rng.normal(0, 0.03))
        ledger.add(
            step,
            [f"ruslan#RUSLAN/{n}" for n in names],
            torch.tensor([[40, 300]] * len(names)),
            torch.tensor(list(zip(nll, dur, strict=True))),
        )
        if (flag_with in names and rng.random() < 0.6) or rng.random() < 0.01:
            ledger.mark(step, "spike", 500.0, 1.0)
    ledger.close()
    return run_dir


# ---------------------------------------------------------------------------------------------
# The two lists


def test_an_utterance_that_stays_high_while_the_corpus_falls_is_a_strong_loss_outlier(tmp_path):
    run = write_ledger(tmp_path / "run", bad={IDS[7]: "high_nll", IDS[9]: "low_dur"})
    s = find_suspects([run])
    assert [row["id"] for row in s.loss_outliers] == [IDS[7], IDS[9]] and s.evidence == "strong"
    high, low = s.loss_outliers
    assert high["term"] == "nll" and high["direction"] == "above" and high["score"] > 5 and high["stays"]
    assert low["term"] == "dur" and low["direction"] == "below" and low["late_dur"] < -3
    assert s.corpus["nll"][1] < s.corpus["nll"][0]  # the rest fell
    assert s.spike_suspects == [] and s.ranking[0]["id"] == IDS[7]


def test_a_clean_corpus_lists_no_suspects(tmp_path):
    s = find_suspects([write_ledger(tmp_path / "run", seed=3)])
    assert s.loss_outliers == [] and s.spike_suspects == [] and s.evidence == "none"
    assert s.ranking[0]["score"] < 3


def test_an_utterance_in_the_flagged_updates_more_often_than_chance_is_a_spike_suspect(tmp_path):
    s = find_suspects([write_ledger(tmp_path / "run", flag_with=IDS[3], seed=4)])
    (row,) = s.spike_suspects
    assert (
        row["id"] == IDS[3]
        and row["lift"] > 5
        and row["p_corrected"] < 1e-3
        and row["kinds"] == {"spike": row["in_flagged"]}
    )
    assert row["in_flagged"] <= row["seen"] and row["expected"] < row["in_flagged"]
    assert s.evidence == "strong" and s.flag_kinds["spike"] == s.flagged


def test_utterances_always_batched_together_are_listed_together_and_said_inseparable(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ledger = UtteranceLedger(run)
    rng = np.random.default_rng(9)
    for step in range(300):
        names = list(rng.choice(IDS[4:], 4, replace=False)) if step % 5 else IDS[:4]  # IDS[:4] always together
        ledger.add(step, names, torch.tensor([[40, 300]] * 4), torch.ones(4, 2))
        if step % 5 == 0 or rng.random() < 0.01:
            ledger.mark(step, "skipped", math.nan, math.nan)
    ledger.close()
    s = find_suspects([run])
    assert sorted(row["id"] for row in s.spike_suspects) == IDS[:4]
    assert s.spike_suspects[0]["same_batches_as"] and any("were always in the same batches" in n for n in s.notes)


def test_on_a_tiny_corpus_every_utterance_is_in_every_flagged_batch_and_none_is_blamed(tmp_path):
    # 4 utterances, batch 4: each is in every batch, so being in the flagged ones means nothing.
    s = find_suspects([write_ledger(tmp_path / "run", ids=IDS[:4], flag_with=IDS[0], seed=5)])
    assert s.flagged > 50 and s.spike_suspects == []


def test_too_little_training_is_said_not_judged(tmp_path):
    s = find_suspects([write_ledger(tmp_path / "run", steps=30, bad={IDS[1]: "high_nll"})])
    assert s.evidence == "too little data" and s.loss_outliers == [] and "too little data" in s.evidence_text


def test_an_escalation_chain_and_runs_given_together_pool_their_ledgers(tmp_path):
    parent = write_ledger(tmp_path / "parent", steps=200, flag_with=IDS[5], seed=6)
    child = write_ledger(tmp_path / "child", steps=200, flag_with=IDS[5], seed=7)
    (parent / "run.json").write_text(json.dumps({"escalated_to": str(child)}))
    (child / "run.json").write_text(json.dumps({"parent_run": str(parent)}))
    assert chain_runs(child) == [parent, child] and chain_runs(parent) == [parent, child]
    pooled = find_suspects([child])
    assert len(pooled.runs) == 2 and pooled.batches == 400
    other = write_ledger(tmp_path / "other", steps=100, seed=8, rank=1)
    assert find_suspects([child, other]).batches == 500
    assert find_suspects([tmp_path / "empty"]) is None  # no ledger at all


def test_binomial_tail():
    assert binomial_tail(0, 10, 0.3) == 1.0
    assert binomial_tail(10, 10, 0.5) == pytest.approx(0.5**10)
    assert binomial_tail(2, 3, 0.5) == pytest.approx(0.5)  # P(2) + P(3) = 3/8 + 1/8


def test_with_exclusion_adds_or_replaces_the_flag():
    assert (
        with_exclusion("python train.py --preset safer", "/r/s.txt")
        == "python train.py --preset safer --exclude-utterances /r/s.txt"
    )
    assert (
        with_exclusion("python train.py --exclude-utterances old.txt --seed 3", "/r/my s.txt")
        == "python train.py --seed 3 --exclude-utterances '/r/my s.txt'"
    )


# ---------------------------------------------------------------------------------------------
# diagnose: the section, JSON, suspects.txt, the next command


def _kit_run(path: Path, grad: np.ndarray, dataset: Path | None = None, **meta) -> Path:
    run = make_run(path, grad, meta=kit_meta(**meta), checkpoints=("checkpoint_5000.pth", "known_good.pth"))
    if dataset is not None:
        meta_json = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**meta_json, "dataset_path": str(dataset)}))
    return run


def _prepared_facts(root: Path) -> Path:
    """What diagnose joins from a prepared folder: report.json problems, normalised text."""
    root.mkdir()
    (root / "metadata_RUSLAN_22200.csv").write_text(
        "".join(f"{i}|Текст номер {n}.\n" for n, i in enumerate(IDS)), encoding="utf-8"
    )
    (root / "report.json").write_text(
        json.dumps(
            {
                "source": "/data/RUSLAN",
                "destination": str(root),
                "files": [{"id": IDS[7], "problems": [{"code": "unusual_speaking_rate", "action": "warning"}]}],
            }
        )
    )
    return root


def test_diagnose_prints_the_section_writes_suspects_txt_and_excludes_in_the_next_command(tmp_path, capsys):
    dataset = _prepared_facts(tmp_path / "prepared")
    run = _kit_run(tmp_path / "run", sigmoid_explosion(np.random.default_rng(2)), dataset)
    write_ledger(run, bad={IDS[7]: "high_nll"})
    assert dg.main([str(run)]) == 3
    out = capsys.readouterr().out
    suspects = run / SUSPECTS_FILE
    assert "Suspects: strong evidence" in out and f"written: {suspects} (1 id(s)" in out
    assert f"{IDS[7]}  " in out and "unusual_speaking_rate | Текст номер 7." in out
    lines = out.splitlines()
    command = lines[lines.index(next(line for line in lines if line.startswith("Next:"))) + 1].strip()
    assert command.startswith("python train_ruslan_glowtts.py --preset safer") and command.endswith(
        f"--exclude-utterances {suspects}"
    )
    assert f"--exclude {suspects}" in out  # prepare's way, from report.json's source and destination
    text = suspects.read_text(encoding="utf-8")
    assert (
        f"{IDS[7]}  # loss outlier: per-frame NLL above the corpus" in text and "prepare: unusual_speaking_rate" in text
    )
    assert read_exclusion(suspects, "--exclude-utterances").ids == (IDS[7],)  # the file is an exclusion file
    # JSON: the same section, and the command with the exclusion
    assert dg.main([str(run), "--json"]) == 3
    data = json.loads(capsys.readouterr().out)
    assert data["suspects"]["evidence"] == "strong" and data["suspects"]["loss_outliers"][0]["id"] == IDS[7]
    assert data["command"].endswith(f"--exclude-utterances {suspects}")
    assert data["suspects"]["loss_outliers"][0]["text"] == "Текст номер 7."


def test_the_next_tier_command_keeps_the_runs_own_exclusion(tmp_path):
    run = _kit_run(
        tmp_path / "run",
        sigmoid_explosion(np.random.default_rng(2)),
        exclude_utterances={"file": "/lists/my suspects.txt", "sha256": "ab" * 32, "ids": [IDS[1]]},
    )
    assert dg.diagnose(run).command.endswith("--exclude-utterances '/lists/my suspects.txt'")
    write_ledger(run, bad={IDS[7]: "high_nll"})  # new suspects: suspects.txt holds both, and replaces the flag
    dg.main([str(run)])
    text = (run / SUSPECTS_FILE).read_text(encoding="utf-8")
    assert f"{IDS[7]}  # loss outlier" in text and f"{IDS[1]}  # excluded already by /lists/my suspects.txt" in text


def test_weak_evidence_lists_but_leaves_the_next_command_alone(tmp_path):
    run = _kit_run(tmp_path / "run", sigmoid_explosion(np.random.default_rng(2)))
    write_ledger(run, bad={IDS[7]: "high_nll"})
    from ruslan_glowtts.monitor.diagnose import suspects as module

    diagnosis = dg.diagnose(run)
    found = module.attach(diagnosis, [], settings=module.SuspectSettings(z_strong=1000))
    assert found.evidence == "weak" and [row["id"] for row in found.loss_outliers] == [IDS[7]]
    assert "--exclude-utterances" not in diagnosis.command  # weak: listen first
    assert found.command.endswith(f"--exclude-utterances {run / SUSPECTS_FILE}")  # offered, not recommended


def test_a_healthy_run_on_clean_data_shows_no_suspects_and_writes_no_file(tmp_path, capsys):
    run = _kit_run(tmp_path / "run", healthy_grad(600, np.random.default_rng(1)))
    write_ledger(run, seed=3)
    assert dg.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "Suspects: none: no utterance's loss stays 3 robust z from the corpus" in out
    assert not (run / SUSPECTS_FILE).exists() and "--exclude-utterances" not in out


def test_the_plot_adds_a_data_map(tmp_path, capsys):
    run = _kit_run(tmp_path / "run", healthy_grad(600, np.random.default_rng(1)))
    write_ledger(run, bad={IDS[7]: "high_nll"})
    png = tmp_path / "plots" / "curves.png"
    dg.main([str(run), "--plot", str(png)])
    assert f"Plot:     {png}, {tmp_path / 'plots' / 'curves.datamap.png'}" in capsys.readouterr().out
    assert (tmp_path / "plots" / "curves.datamap.png").read_bytes()[:4] == b"\x89PNG"


def _diagnose(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruslan_glowtts.diagnose", *args], cwd=REPO, capture_output=True, text=True, check=False
    )


def test_bad_ledgers_and_runs_never_give_a_traceback(tmp_path):
    no_ledger = _kit_run(tmp_path / "no_ledger", healthy_grad(600, np.random.default_rng(1)))
    torn = _kit_run(tmp_path / "torn", healthy_grad(600, np.random.default_rng(1)))
    write_ledger(torn, bad={IDS[7]: "high_nll"})
    with open(ledger_path(torn), "a", encoding="utf-8") as handle:
        handle.write("u\t400\t000001_RUS")  # the run was killed while writing
    readonly = _kit_run(tmp_path / "readonly", healthy_grad(600, np.random.default_rng(1)))
    write_ledger(readonly, bad={IDS[7]: "high_nll"})
    readonly.chmod(0o555)
    try:
        done = [
            _diagnose(str(no_ledger)),
            _diagnose(str(torn)),
            _diagnose(str(torn), str(tmp_path / "nothing")),
            _diagnose(str(readonly)),
        ]
    finally:
        readonly.chmod(0o755)
    for result in done:
        assert "Traceback" not in result.stderr, result.stderr
    assert done[0].returncode == 0 and "Suspects: no ledger: these runs hold no ledger_rank*.tsv" in done[0].stdout
    assert done[1].returncode == 0 and "note: ledger_rank0.tsv: its last line is incomplete" in done[1].stdout
    assert done[2].returncode == 2 and done[2].stderr.count("\n") == 1 and "not a run folder" in done[2].stderr
    if done[3].stdout.count("written:") == 0:  # root ignores the mode bits
        assert "warning: cannot write" in done[3].stderr and done[3].returncode == 0


# ---------------------------------------------------------------------------------------------
# Exclusion files: reading, prepare --exclude, training --exclude-utterances


@pytest.mark.parametrize(
    "content, message",
    [
        (b"000001_RUSLAN extra words\n", "expected one utterance id per line"),
        (b"000001_RUSLAN|text\n", "expected one utterance id per line"),
        (b"\xff\xfe\x00\x01binary", "not a UTF-8 text file"),
    ],
)
def test_a_malformed_exclusion_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "list.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_exclusion(path, "--exclude")
    with pytest.raises(UserError, match="no such file"):
        read_exclusion(tmp_path / "missing.txt", "--exclude")
    with pytest.raises(UserError, match="not a file"):
        read_exclusion(tmp_path, "--exclude")


def test_an_exclusion_file_reads_ids_comments_and_its_hash(tmp_path):
    path = tmp_path / "suspects.txt"
    path.write_text("# header\n000001_RUSLAN  # loss outlier\n\n000002_RUSLAN\n000001_RUSLAN\n", encoding="utf-8")
    exclusion = read_exclusion(path, "--exclude")
    assert exclusion.ids == ("000001_RUSLAN", "000002_RUSLAN") and len(exclusion.sha256) == 64
    assert exclusion.path == str(path.absolute())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, check=False)


def test_bad_exclusion_input_on_the_command_lines_is_one_line_and_exit_2(tmp_path, sample_22k):
    missing = str(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("a b c\n", encoding="utf-8")
    dst = tmp_path / "dst"
    runs = tmp_path / "runs"
    results = [
        _cli(
            "train_ruslan_glowtts.py",
            "--dataset-path",
            str(sample_22k),
            "--output-path",
            str(runs),
            "--exclude-utterances",
            missing,
        ),
        _cli(
            "train_ruslan_glowtts.py",
            "--dataset-path",
            str(sample_22k),
            "--output-path",
            str(runs),
            "--exclude-utterances",
            str(bad),
        ),
        _cli("train_ruslan_glowtts.py", "--continue-path", str(tmp_path), "--exclude-utterances", str(bad)),
        _cli("-m", "ruslan_glowtts.prepare", "--src", str(sample_22k), "--dst", str(dst), "--exclude", missing),
    ]
    for result in results:
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert "no such file" in results[0].stderr and "bad.txt:1: expected one utterance id" in results[1].stderr
    assert "cannot be combined with --continue-path" in results[2].stderr
    assert not dst.exists() and not runs.exists()  # nothing written


@pytest.mark.slow
def test_exclusion_round_trip_through_prepare_and_training(tmp_path, sample_22k, caplog):
    from ruslan_glowtts.monitor.ledger import ledger_files, read_ledgers
    from ruslan_glowtts.prep.prepare import PrepareOptions, prepare
    from ruslan_glowtts.training.cli import parse_args, request_from_args
    from ruslan_glowtts.training.train import train

    caplog.set_level(logging.INFO)
    listed = tmp_path / "suspects.txt"
    listed.write_text("000003_RUSLAN  # loss outlier\n000005_RUSLAN\nnot_in_the_corpus  # typo\n", encoding="utf-8")
    # prepare --exclude: left out of the metadata, reported with the file's hash, unknown ids counted
    src = copy_corpus(sample_22k, tmp_path / "src")
    result = prepare(PrepareOptions(src=src, dst=tmp_path / "prepared", jobs=1, exclude=listed))
    metadata = (tmp_path / "prepared" / "metadata_RUSLAN_22200.csv").read_text(encoding="utf-8")
    assert "000003_RUSLAN" not in metadata and "000005_RUSLAN" not in metadata and "000004_RUSLAN" in metadata
    record = result.report["exclusion"]
    assert record["ids"] == ["000003_RUSLAN", "000005_RUSLAN", "not_in_the_corpus"] and record["excluded"] == 2
    assert record["unknown"] == ["not_in_the_corpus"] and len(record["sha256"]) == 64
    assert result.report["problems"]["listed_for_exclusion"]["count"] == 2
    assert not (tmp_path / "prepared" / "RUSLAN" / "000003_RUSLAN.wav").exists()
    warnings = [r.getMessage() for r in caplog.records if "not in the metadata" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 3 id(s)" in warnings[0]
    # training --exclude-utterances on the full sample: recorded in run.json, shown in the config log
    # (in-process, as the other training tests: the tool wrapper's stderr handler would outlive this test)
    outcome = train(
        request_from_args(
            parse_args(
                [
                    "--dataset-path",
                    str(sample_22k),
                    "--output-path",
                    str(tmp_path / "runs"),
                    "--max-steps",
                    "5",
                    "--exclude-utterances",
                    str(listed),
                    *tiny_args(),
                ]
            )
        )
    )
    assert outcome.status == "max_steps", outcome.message
    (run,) = run_dirs(tmp_path / "runs")
    meta = json.loads((run / "run.json").read_text(encoding="utf-8"))
    exclusion = meta["exclude_utterances"]
    assert exclusion["file"] == str(listed) and exclusion["sha256"] == record["sha256"]
    assert exclusion["excluded"] == 2 and exclusion["unknown"] == ["not_in_the_corpus"]
    messages = [r.getMessage() for r in caplog.records]  # the console's config log
    assert any(
        m.startswith(f"Excluding: 3 utterance id(s) from {listed} (sha256 {record['sha256'][:12]})") for m in messages
    )
    assert sum("not in the dataset" in m for m in messages) == 1
    seen = set(read_ledgers(ledger_files([run])).ids)
    assert seen and not seen & {"000003_RUSLAN", "000005_RUSLAN"}
    # --continue-path keeps leaving them out (from run.json, not the file, which may have changed)
    listed.write_text("000004_RUSLAN\n", encoding="utf-8")
    outcome = train(request_from_args(parse_args(["--continue-path", str(run), "--max-steps", "14"])))
    assert outcome.status == "max_steps", outcome.message
    again = read_ledgers(ledger_files([run]))
    assert again.segments == 2 and not set(again.ids) & {"000003_RUSLAN", "000005_RUSLAN"}
    assert "000004_RUSLAN" in again.ids


def _poison_updates_holding(target: str) -> dict:
    """Trainer callbacks: every update whose batch holds `target` gets a NaN gradient (the guard
    skips it), as an utterance that makes the gradients blow up would."""

    def setup(trainer) -> None:
        if hasattr(trainer.guard.record_batch, "watching"):
            return
        record, hit = trainer.guard.record_batch, {"now": False}

        def watch(batch) -> None:
            hit["now"] = any(name.endswith(target) for name in batch["audio_unique_names"])
            record(batch)

        def poison() -> None:
            if hit["now"]:
                next(p for p in trainer.model.parameters() if p.grad is not None).grad.view(-1)[0] = math.nan

        watch.watching = True
        trainer.guard.record_batch = watch
        trainer.model.before_gradient_clipping = poison

    return {"on_train_step_start": setup}  # the guard exists once the Trainer is built


@pytest.mark.slow
def test_an_utterance_behind_skipped_updates_is_named_in_a_real_run(sample_22k, tmp_path, capsys):
    from ruslan_glowtts.training.cli import parse_args, request_from_args
    from ruslan_glowtts.training.train import train

    target = "000007_RUSLAN"
    # Random batches: on 23 utterances length buckets would batch the same four together every
    # epoch, and no ledger could tell them apart (a synthetic test covers that note).
    request = request_from_args(
        parse_args(
            [
                "--dataset-path",
                str(sample_22k),
                "--output-path",
                str(tmp_path / "runs"),
                "--max-steps",
                "80",
                *tiny_args(),
                "--set",
                "plot_step=100",
                "--set",
                "bucket_by_length=false",
            ]
        )
    )
    outcome = train(request.with_callbacks(_poison_updates_holding(target)))
    assert outcome.status == "max_steps", outcome.message
    (run,) = run_dirs(tmp_path / "runs")
    code = dg.main([str(run)])
    out = capsys.readouterr().out
    # NaN bursts make the verdict diverged; the next tier's command leaves the culprit out
    assert code == 3 and "spike suspects (in flagged updates more often than chance)" in out
    assert f"--exclude-utterances {run / SUSPECTS_FILE}" in out.split("Next:")[1]
    found = find_suspects([run])
    (row,) = found.spike_suspects
    assert row["id"] == target and row["in_flagged"] == row["seen"] and row["kinds"]["skipped"] == row["seen"]
    assert row["lift"] > 3 and found.evidence == "strong"
    assert f"{target}  # spike suspect: in {row['seen']} of {row['seen']} flagged updates' batches" in (
        run / SUSPECTS_FILE
    ).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# The proof on planted faults (scripts/blame_proof.py; docs/BLAME.md has the full run)

_spec = importlib.util.spec_from_file_location("blame_proof", REPO / "scripts" / "blame_proof.py")
blame_proof = importlib.util.module_from_spec(_spec)
sys.modules["blame_proof"] = blame_proof
_spec.loader.exec_module(blame_proof)


@pytest.fixture(scope="session")
def planted_proof(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The proof as docs/BLAME.md reports it: 400 steps of the tiny GlowTTS on two seeds, a clean
    corpus, a retraining with diagnose's exclusions (~3 min on 2 busy cores: one thread each)."""
    return blame_proof.prove(tmp_path_factory.mktemp("blame"), steps=400, log=lambda *_: None)


@pytest.mark.slow
def test_planted_corpus_passes_prepares_per_file_checks(planted_proof):
    problems = planted_proof["prepare_problems"]
    for id_ in planted_proof["planted"]:
        assert set(problems.get(id_, [])) <= {"unusual_speaking_rate"}, (id_, problems.get(id_))
    assert planted_proof["utterances"] == 47  # all trained on: none excluded, none over a cap


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_planted_unfittable_utterances_top_the_loss_ranking(planted_proof, seed):
    result = planted_proof["seeds"][seed]
    assert result["precision_at_k"] >= 0.8, result["rank"]
    assert result["listed_clean"] == []  # every listed suspect is a planted one
    assert len(result["listed_planted"]) >= 3 and result["suspects"]["evidence"] == "strong"
    # seed 2's grad_norm also climbs past 100 (diagnose: exploding, exit 3); the suspects are the same kind
    assert "Suspects: strong evidence" in result["text"] and "Traceback" not in result["text"]


@pytest.mark.slow
def test_a_clean_corpus_lists_none(planted_proof):
    clean = planted_proof["clean"]["suspects"]
    assert clean["loss_outliers"] == [] and clean["spike_suspects"] == [] and clean["evidence"] == "none"
    assert "Suspects: none" in planted_proof["clean"]["text"]


@pytest.mark.slow
def test_retraining_without_the_suspects_fits_the_clean_utterances_better(planted_proof):
    before = planted_proof["seeds"][1]
    after = planted_proof["retrain"]
    assert after["exclusion"]["excluded"] == len(before["listed"]) and after["exclusion"]["unknown"] == []
    # at the same exposure of each clean utterance (fewer utterances give more passes in as many steps)
    assert (
        after["matched"]["after"] < after["matched"]["before"] or after["flagged_updates"] < before["flagged_updates"]
    ), after["matched"]
