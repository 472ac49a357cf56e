"""The per-utterance ledger (ruslan_glowtts/monitor/ledger.py): GlowTTS's loss terms per sample,
the file format (whole lines, segments, flags), the guard's flag hook, and the ledger of real
runs across a kill and --continue-path."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ruslan_glowtts.monitor.ledger import (
    UtteranceLedger,
    ledger_files,
    ledger_path,
    per_sample_terms,
    read_ledgers,
    utterance_id,
)
from tests.helpers import REPO, TINY_MODEL, run_dirs, tiny_args


@pytest.fixture(scope="module")
def tiny_model():
    from ruslan_glowtts.common.presets import load_preset
    from ruslan_glowtts.training.config import build_config, parse_set_option
    from ruslan_glowtts.training.model import RuslanGlowTTS

    config, _ = build_config(
        preset=load_preset("stable"), cli_layers=[(parse_set_option(o), "test") for o in TINY_MODEL], quiet=True
    )
    torch.manual_seed(0)
    model = RuslanGlowTTS(config)
    model.run_data_dep_init = False
    return model


def _batch(lengths: list[tuple[int, int]], seed: int = 0) -> dict:
    """Random text ids and mels of the given (text, mel) lengths, padded like Coqui's collate."""
    generator = torch.Generator().manual_seed(seed)
    text_max, mel_max = max(t for t, _ in lengths), max(m for _, m in lengths)
    text = torch.zeros(len(lengths), text_max, dtype=torch.long)
    mel = torch.zeros(len(lengths), mel_max, 80)
    for i, (t, m) in enumerate(lengths):
        text[i, :t] = torch.randint(1, 40, (t,), generator=generator)
        mel[i, :m] = torch.randn(m, 80, generator=generator)
    return {
        "text_input": text,
        "text_lengths": torch.tensor([t for t, _ in lengths]),
        "mel_input": mel,
        "mel_lengths": torch.tensor([m for _, m in lengths]),
        "d_vectors": None,
        "speaker_ids": None,
        "audio_unique_names": [f"ruslan#RUSLAN/{i:06d}_RUSLAN" for i in range(len(lengths))],
    }


def test_per_sample_terms_add_up_to_coquis_batch_losses(tiny_model):
    batch = _batch([(30, 120), (17, 64), (25, 90)])
    outputs, losses = tiny_model.train_step(batch, tiny_model.get_criterion())
    terms = per_sample_terms(outputs, batch)
    assert terms.shape == (3, 2) and terms.dtype == torch.float32
    frames, tokens = batch["mel_lengths"].float(), batch["text_lengths"].float()
    # Coqui's log_mle is the frame-weighted mean of the per-frame NLLs, loss_dur the token-weighted mean
    assert float((terms[:, 0] * frames).sum() / frames.sum()) == pytest.approx(float(losses["log_mle"]), rel=1e-5)
    assert float((terms[:, 1] * tokens).sum() / tokens.sum()) == pytest.approx(float(losses["loss_dur"]), rel=1e-5)


def test_per_sample_terms_do_not_depend_on_the_batch_padding(tiny_model):
    tiny_model.eval()  # no dropout: the same sample must give the same terms
    try:
        alone = _batch([(17, 64)], seed=1)
        padded = _batch([(17, 64), (30, 128)], seed=1)
        padded["text_input"][0], padded["mel_input"][0] = 0, 0
        padded["text_input"][0, :17] = alone["text_input"][0]
        padded["mel_input"][0, :64] = alone["mel_input"][0]
        with torch.no_grad():
            one = per_sample_terms(tiny_model.train_step(alone, tiny_model.get_criterion())[0], alone)
            two = per_sample_terms(tiny_model.train_step(padded, tiny_model.get_criterion())[0], padded)
    finally:
        tiny_model.train()
    assert torch.allclose(one[0], two[0], rtol=1e-4, atol=1e-5)


def test_utterance_ids_are_the_corpus_ids():
    assert utterance_id("ruslan#RUSLAN/000123_RUSLAN") == "000123_RUSLAN"
    assert utterance_id("/data/RUSLAN/000007_RUSLAN.wav") == "000007_RUSLAN"
    assert utterance_id("weird\tname") == "weird_name"  # a tab would break the line format


def _add(ledger: UtteranceLedger, step: int, ids: list[str], nll: list[float], **kwargs) -> None:
    lengths = torch.tensor([[20, 100]] * len(ids))
    terms = torch.tensor([[value, 0.5] for value in nll])
    ledger.add(step, [f"ruslan#RUSLAN/{i}" for i in ids], lengths, terms, **kwargs)


def test_lines_flags_and_a_nan_loss_batch_round_trip(tmp_path):
    ledger = UtteranceLedger(tmp_path, rank=0)
    _add(ledger, 3, ["a", "b"], [1.5, 2.0])
    ledger.add(4, ["ruslan#RUSLAN/c"], torch.tensor([[10, 50]]), None)  # GlowTTS raised on a NaN loss
    ledger.mark(4, "skipped", math.nan, math.nan)
    ledger.mark(4, "nonfinite", math.inf, 2.5)
    ledger.close()
    text = ledger_path(tmp_path).read_text()
    assert text.startswith("#ledger v1 rank=0 ") and "first_step=3" in text.splitlines()[0]
    assert "u\t3\ta\t20\t100\t1.5\t0.5\n" in text and "u\t4\tc\t10\t50\tnan\tnan\n" in text
    assert "f\t4\tskipped\tnan\tnan\n" in text
    read = read_ledgers(ledger_files([tmp_path]))
    assert read.problems == [] and read.observations == 3 and read.batches == 2 and read.ids == ["a", "b", "c"]
    ((batch, flags),) = read.flags.items()
    assert read.step[read.batch == batch].tolist() == [4] and [f[0] for f in flags] == ["skipped", "nonfinite"]
    assert math.isinf(flags[1][1]) and flags[1][2] == 2.5


def test_accumulated_micro_batches_take_the_step_of_their_update(tmp_path):
    ledger = UtteranceLedger(tmp_path)
    _add(ledger, 2, ["a"], [1.0], accumulating=True)
    assert not ledger_path(tmp_path).exists()  # held until the update's step is known
    _add(ledger, 3, ["b"], [1.0])
    ledger.mark(3, "spike", 900.0, 1.0)
    _add(ledger, 4, ["c"], [1.0], accumulating=True)
    ledger.close()  # a run stopped mid-window: the micro-batch keeps its own step
    read = read_ledgers([ledger_path(tmp_path)])
    assert read.step.tolist() == [3, 3, 4] and read.batches == 2
    (flagged,) = read.flags
    assert sorted(read.ids[u] for u in read.utt[read.batch == flagged]) == ["a", "b"]


def test_each_opening_is_a_segment_so_resumed_steps_are_new_batches(tmp_path):
    first = UtteranceLedger(tmp_path)
    _add(first, 5, ["a"], [1.0])
    _add(first, 6, ["b"], [1.0])
    first.close()
    again = UtteranceLedger(tmp_path)  # --continue-path from the checkpoint at step 5
    _add(again, 6, ["c"], [1.0])
    again.mark(6, "spike", 100.0, 1.0)
    again.close()
    read = read_ledgers([ledger_path(tmp_path)])
    assert read.segments == 2 and read.batches == 3
    (flagged,) = read.flags  # the resumed step 6, not the first run's
    assert [read.ids[u] for u in read.utt[read.batch == flagged]] == ["c"]


def test_each_rank_writes_its_own_file_and_flags_join_their_own_batches(tmp_path):
    # Under DDP every rank sees its own batch at the same step and takes the same guard decision.
    ranks = [UtteranceLedger(tmp_path, rank=r) for r in (0, 1)]
    for rank, ledger in enumerate(ranks):
        _add(ledger, 7, [f"r{rank}a", f"r{rank}b"], [1.0, 1.0])
        ledger.mark(7, "skipped", math.nan, 1.0)
        ledger.close()
    files = ledger_files([tmp_path])
    assert [f.name for f in files] == ["ledger_rank0.tsv", "ledger_rank1.tsv"]
    read = read_ledgers(files)
    assert read.batches == 2 and len(read.flags) == 2  # one flagged batch per rank, not one merged step
    assert sorted(read.ids[u] for u in read.utt) == ["r0a", "r0b", "r1a", "r1b"]


def test_a_torn_last_line_and_foreign_lines_are_skipped_and_said(tmp_path):
    ledger = UtteranceLedger(tmp_path)
    _add(ledger, 1, ["a", "b"], [1.0, 1.0])
    ledger.close()
    path = ledger_path(tmp_path)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("garbage line\nu\t2\tc\t20\t100\tnot-a-number\t1\nu\t3\td\t20\t1")  # torn by a kill
    read = read_ledgers([path])
    assert read.observations == 2
    assert any("last line is incomplete" in p for p in read.problems)
    assert any("2 line(s) that are not ledger lines skipped (first: line 4)" in p for p in read.problems)


class _Event:
    """A CUDA event's interface: query() never blocks, synchronize() waits."""

    def __init__(self) -> None:
        self.done = False
        self.waited = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited = self.done = True


def test_device_copies_are_written_once_done_and_never_waited_for_in_the_step(tmp_path):
    events: list[_Event] = []

    class DeviceLedger(UtteranceLedger):  # the GPU path, with the copy's completion under test control
        @staticmethod
        def _host_copy(packed):
            events.append(_Event())
            return packed.clone(), events[-1]

    ledger = DeviceLedger(tmp_path)
    _add(ledger, 1, ["a"], [1.0])
    _add(ledger, 2, ["b"], [1.0])
    assert not ledger_path(tmp_path).exists()  # neither copy has landed: nothing written, nothing waited for
    events[0].done = True
    _add(ledger, 3, ["c"], [1.0])  # recording never writes (the step's time) ...
    assert not ledger_path(tmp_path).exists()
    ledger.write_ready()  # ... the trainer writes what has landed after the step, in order
    assert [line.split("\t")[2] for line in ledger_path(tmp_path).read_text().splitlines()[1:]] == ["a"]
    assert not any(event.waited for event in events)
    ledger.close()  # the end of the run waits for the rest
    assert read_ledgers([ledger_path(tmp_path)]).ids == ["a", "b", "c"] and events[1].waited


def test_an_unwritable_ledger_switches_itself_off_and_training_goes_on(tmp_path, caplog):
    ledger = UtteranceLedger(tmp_path / "missing" / "folder")
    _add(ledger, 1, ["a"], [1.0])  # must not raise
    _add(ledger, 2, ["b"], [1.0])
    ledger.mark(2, "spike", 1.0, 1.0)
    ledger.close()
    assert not ledger.enabled
    assert sum("cannot be written" in r.getMessage() for r in caplog.records) == 1


class _Logger:
    def add_scalar(self, *args) -> None:
        pass

    def add_text(self, *args) -> None:
        pass


class _Trainer:
    dashboard_logger = _Logger()


def test_the_guard_calls_its_flag_hooks_for_skips_spikes_and_alarms(tmp_path):
    from ruslan_glowtts.monitor.guard import HealthGuard
    from ruslan_glowtts.training.config import HealthConfig

    guard = HealthGuard(HealthConfig(), tmp_path)
    seen: list[tuple] = []
    guard.on_flag.append(lambda *flag: seen.append(flag))
    trainer = _Trainer()
    for step in range(1, 150):  # past the grace period and the spike rule's baseline
        assert guard.decide_update(trainer, step, 10.0 + (step % 5), 1.0)
    assert seen == []  # healthy updates are not flagged
    assert not guard.decide_update(trainer, 150, math.nan, 1.0)
    assert guard.decide_update(trainer, 151, 5000.0, 1.0)  # a spike far outside the recent norms
    assert guard.decide_update(trainer, 152, 6000.0, 1.0)  # another, within the re-alarm limit of 1000
    kinds = [(step, kind) for step, kind, *_ in seen]
    assert kinds[0] == (150, "skipped") and (151, "spike") in kinds and (152, "spike") in kinds
    assert seen[0][2] != seen[0][2] and seen[0][3] == 1.0  # the values the guard read: NaN norm, loss 1


# ---------------------------------------------------------------------------------------------
# Real runs


def _ledger_steps(run: Path) -> list[int]:
    return sorted(set(read_ledgers(ledger_files([run])).step.tolist()))


@pytest.mark.slow
def test_ledger_of_a_run_killed_with_sigkill_then_continued(prepared_sample, tmp_path):
    from ruslan_glowtts.training.cli import parse_args, request_from_args
    from ruslan_glowtts.training.train import train

    # A kill -9 gives no chance to flush anything: every line must already be whole on disk.
    output = tmp_path / "runs"
    command = [
        sys.executable,
        "train_ruslan_glowtts.py",
        "--dataset-path",
        str(prepared_sample),
        "--output-path",
        str(output),
        "--max-steps",
        "400",
        "--set",
        "save_step=4",
        *tiny_args(),
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            runs = run_dirs(output)
            # past checkpoint_8 by at least one update (ledger steps count from 0: checkpoint_8 holds 0-7)
            past = runs and list(runs[0].glob("checkpoint_8.pth")) and ledger_path(runs[0]).is_file()
            if past and max(read_ledgers(ledger_files(runs[:1])).step.tolist(), default=-1) >= 8:
                break
            assert process.poll() is None, process.stderr.read()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("the run did not get past step 8 in time")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    (run,) = run_dirs(output)
    before = read_ledgers(ledger_files([run]))
    assert not [p for p in before.problems if "incomplete" not in p]  # a torn last line at most
    killed_at = max(before.step.tolist())
    assert killed_at >= 8 and before.segments == 1
    checkpoint = max(int(path.stem.split("_")[1]) for path in run.glob("checkpoint_*.pth"))
    outcome = train(request_from_args(parse_args(["--continue-path", str(run), "--max-steps", str(killed_at + 6)])))
    assert outcome.status == "max_steps", outcome.message
    after = read_ledgers(ledger_files([run]))
    assert after.segments == 2 and after.observations > before.observations
    resumed = sorted(set(after.step[after.batch >= before.batches].tolist()))
    # back to the newest checkpoint (checkpoint_N holds N steps: the updates after it are trained again), then on
    assert resumed[0] == checkpoint <= killed_at and resumed[-1] == killed_at + 5
    # the batches of every update of the resumed segment are there (4 utterances each, the last may be short)
    counts = [int(((after.step == s) & (after.batch >= before.batches)).sum()) for s in resumed]
    assert min(counts) >= 1 and max(counts) == 4
    done = subprocess.run(
        [sys.executable, "-m", "ruslan_glowtts.diagnose", str(run)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Traceback" not in done.stderr and "Suspects:" in done.stdout, done.stderr
