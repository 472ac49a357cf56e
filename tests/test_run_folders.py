"""Run folders without training: the run record (old run.json files too), the lock, the exclusive
folder claim and the kind checks (common/run_record.py, common/runs.py). The same guarantees
through the real scripts are in tests/test_run_faults.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from ruslan_glowtts.common import runs
from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.run_layout import GLOWTTS, HIFIGAN, LOCK_FILE
from ruslan_glowtts.common.run_record import RunRecord

REAL_RUNS = Path(__file__).parent / "data" / "real_runs"


def test_old_run_json_reads_with_its_next_command_split_off_and_unknown_fields_kept(tmp_path):
    record = RunRecord.read(REAL_RUNS / "kit_lr1_noclip_warmup100")
    assert record.status == "exploded" and record.preset == "default" and record.final_step
    assert record.message.endswith("training has diverged") and ". Next:" not in record.message
    assert record.next_command.startswith("python train_ruslan_glowtts.py --preset stable")

    (tmp_path / "run.json").write_text(
        json.dumps({"status": "running", "tier_chain": None, "future_field": 7}), encoding="utf-8"
    )
    record = RunRecord.read(tmp_path)
    assert record.tier_chain == [] and record.extra == {"future_field": 7}
    record.end(
        tmp_path,
        status="max_steps",
        exit_code=0,
        final_step=3,
        message="stopped at step 3",
        next_command="",
        ended_at="now",
    )
    written = json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))
    assert written["future_field"] == 7 and written["status"] == "max_steps" and written["final_step"] == 3


def test_a_resume_keeps_the_previous_ending_in_resumes(tmp_path):
    record = RunRecord(status="terminated", exit_code=143, final_step=12, message="terminated by SIGTERM")
    record.resume(tmp_path, at="then", from_step=12, environment={"host": "h"})
    again = RunRecord.read(tmp_path)
    assert again.status == "running" and again.exit_code is None and again.final_step is None
    assert again.resumes == [{"at": "then", "from_step": 12, "previous_status": "terminated", "host": "h"}]


def test_unreadable_run_json_is_read_as_none_with_a_warning(tmp_path, caplog):
    (tmp_path / "run.json").write_text('{"status": "runn', encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert not RunRecord.read(tmp_path).exists
    assert "cannot read" in caplog.text


def test_a_held_lock_refuses_a_second_holder_and_a_stale_one_is_taken_over(tmp_path, caplog):
    with runs.RunLock(tmp_path):
        holder = json.loads((tmp_path / LOCK_FILE).read_text(encoding="utf-8"))
        with pytest.raises(UserError, match=f"is in use by process {holder['pid']}"):
            runs.RunLock(tmp_path).acquire()  # flock: another open file, as another process would have
    assert not (tmp_path / LOCK_FILE).exists()

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout)}), encoding="utf-8")
    with caplog.at_level(logging.WARNING), runs.RunLock(tmp_path):
        pass
    assert f"stale lock of process {int(dead.stdout)}" in caplog.text and not (tmp_path / LOCK_FILE).exists()


def test_a_new_run_folder_is_never_shared(tmp_path):
    first = runs.claim_run_folder(tmp_path, "run")
    second = runs.claim_run_folder(tmp_path, "run")
    assert first[1] != second[1] and first[1].is_dir() and second[1].is_dir()
    assert second[0] in ("run-2", "run")  # "run" again only when the minute changed in between


def test_the_kind_of_a_run_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": "hifigan"}), encoding="utf-8")
    assert runs.check_run_kind(tmp_path, HIFIGAN, "--continue-path")["model"] == "hifigan"
    with pytest.raises(UserError, match="is a HiFi-GAN run, not a GlowTTS run"):
        runs.check_run_kind(tmp_path, GLOWTTS, "--continue-path")
    (tmp_path / "config.json").write_text(json.dumps({"model": "tacotron2"}), encoding="utf-8")
    with pytest.raises(UserError, match="is a Coqui 'tacotron2' run, not a GlowTTS run"):
        runs.check_run_kind(tmp_path, GLOWTTS, "--continue-path")
    (tmp_path / "config.json").write_text('{"model": "glow', encoding="utf-8")
    with pytest.raises(UserError, match="config.json cannot be read"):
        runs.check_run_kind(tmp_path, GLOWTTS, "--continue-path")


@pytest.mark.parametrize("resumed", [False, True])
def test_a_signal_before_training_starts_still_ends_the_run_record(
    resumed, run_main, tiny_glowtts_run, sample_22k, tmp_path, monkeypatch
):
    # SIGTERM (or Ctrl-C) after run.json says "running" but before fit() has taken the signals over.
    import shutil

    from ruslan_glowtts.common.cli import Terminated
    from ruslan_glowtts.training.trainer import KitTrainer
    from tests.helpers import SMOKE_STEPS, run_dirs, tiny_args

    def fit(self):
        raise Terminated

    monkeypatch.setattr(KitTrainer, "fit", fit)
    if resumed:
        run = Path(shutil.copytree(tiny_glowtts_run, tmp_path / tiny_glowtts_run.name))
        code, _, err = run_main("--continue-path", str(run), "--max-steps", str(SMOKE_STEPS + 2))
    else:
        output = tmp_path / "runs"
        code, _, err = run_main("--dataset-path", str(sample_22k), "--output-path", str(output), *tiny_args())
        (run,) = run_dirs(output)
    assert code == 143 and "Traceback" not in err
    record = RunRecord.read(run)
    assert (record.status, record.exit_code) == ("terminated", 143), record.message
    assert "before training started" in record.message and not (run / LOCK_FILE).exists()
    if resumed:
        assert record.resumes[-1]["previous_status"] == "max_steps"
