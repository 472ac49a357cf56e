"""End to end on the sample with a tiny GlowTTS: run folder contents, Noam warmup in steps,
resume, and runs that crash keeping their folder and logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ruslan_glowtts.training.cli import parse_args, request_from_args
from ruslan_glowtts.training.train import train
from tests.helpers import SMOKE_STEPS, read_scalars, run_dirs, tiny_args

pytestmark = pytest.mark.slow


@pytest.fixture
def smoke_run(tiny_glowtts_run):
    """The suite's one smoke run (conftest.tiny_glowtts_run: SMOKE_STEPS steps, stable preset, the
    prepared sample), shared with test_listening, test_synthesize and test_vocoder; read-only."""
    return tiny_glowtts_run


def test_smoke_run_writes_config_events_metadata_and_checkpoint(smoke_run):
    files = {p.name for p in smoke_run.iterdir()}
    assert "config.json" in files and "run.json" in files and f"checkpoint_{SMOKE_STEPS}.pth" in files
    assert any(name.startswith("events.out.tfevents.") for name in files)
    config = json.loads((smoke_run / "config.json").read_text(encoding="utf-8"))
    assert config["lr"] == 2e-4 and config["scheduler_after_epoch"] is False
    meta = json.loads((smoke_run / "run.json").read_text(encoding="utf-8"))
    assert meta["status"] == "max_steps" and meta["final_step"] == SMOKE_STEPS and meta["exit_code"] == 0
    assert meta["preset"] == "stable" and meta["tier_chain"] == ["stable", "safer", "safest"]
    assert meta["precision"] == "fp32"  # bf16 preset on CPU
    assert {"key": "hidden_channels_enc", "value": 32, "source": "--set", "layer": "command_line"} in meta["overrides"]
    assert {"key": "lr", "value": 2e-4, "source": "preset stable", "layer": "preset"} in meta["overrides"]
    assert meta["seed"] == 54321 and "coqui-tts" in meta["versions"] and meta["command"]
    assert read_scalars(smoke_run, "TrainIterStats/loss")


def test_noam_warmup_counts_optimizer_steps(smoke_run):
    # Stock Coqui steps NoamLR per epoch, so lr would stay at lr/warmup for the whole first epoch.
    lrs = read_scalars(smoke_run, "TrainIterStats/current_lr")
    ddi = 2  # data-dependent init batches: no optimizer step, no scheduler step
    first = min(lrs)
    assert lrs[first] == pytest.approx(2e-4 / 8000)
    for step, lr in lrs.items():
        updates_before = max(step - ddi, 0)  # lr is logged before this step's update
        # Coqui's NoamLR: lr * w^0.5 * min(n * w^-1.5, n^-0.5) with n = updates + 1
        assert lr == pytest.approx(2e-4 * (updates_before + 1) / 8000, rel=1e-5), step
    assert lrs[max(lrs)] > 4 * lrs[first]  # rising within the first epoch (6 steps)


def test_resume_continues_the_step_count(smoke_run, tmp_path, prepared_sample):
    import shutil

    import train_ruslan_glowtts

    run = Path(shutil.copytree(smoke_run, tmp_path / smoke_run.name))
    end = SMOKE_STEPS + 4
    code = train_ruslan_glowtts.main(
        ["--continue-path", str(run), "--dataset-path", str(prepared_sample), "--max-steps", str(end)]
    )
    assert code == 0
    assert (run / f"checkpoint_{end}.pth").is_file()
    steps = read_scalars(run, "TrainIterStats/loss")
    assert max(steps) == end - 1 and min(s for s in steps if s > SMOKE_STEPS) == SMOKE_STEPS + 1  # logged before the +1
    assert torch.load(run / f"checkpoint_{end}.pth", weights_only=False)["step"] == end
    meta = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert meta["status"] == "max_steps" and len(meta["resumes"]) == 1


def _crash_at(step: int, *, poison_weights: bool):
    def callback(trainer) -> None:
        if trainer.total_steps_done == step:
            if poison_weights:
                with torch.no_grad():
                    next(trainer.model.parameters()).fill_(float("nan"))
            raise RuntimeError("injected crash")

    return callback


@pytest.mark.parametrize("poison_weights", [True, False])
def test_crash_keeps_the_run_folder_and_logs(sample_22k, tmp_path, poison_weights):
    args = parse_args(["--dataset-path", str(sample_22k), "--output-path", str(tmp_path / "runs"), *tiny_args()])
    request = request_from_args(args)
    request = request.with_callbacks({"on_train_step_start": _crash_at(4, poison_weights=poison_weights)})
    config_before = request.job.config.to_dict()
    outcome = train(request)
    assert outcome.status == "crashed" and outcome.exit_code == 1
    # the run trained a copy: its precision fallback (bf16 -> fp32 on CPU) and run name stay the run's
    assert request.job.config.to_dict() == config_before
    (run,) = run_dirs(tmp_path / "runs")
    assert read_scalars(run, "TrainIterStats/loss")  # the event file survived
    assert "injected crash" in (run / "trainer_0_log.txt").read_text(encoding="utf-8")
    meta = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert meta["status"] == "crashed" and "injected crash" in meta["message"]
    checkpoints = list(run.glob("*.pth"))
    if poison_weights:
        # Coqui would delete this folder: no checkpoint in it. NaN weights are not worth saving.
        assert checkpoints == []
    else:
        assert [p.name for p in checkpoints] == ["checkpoint_4.pth"]
        resumed = request_from_args(parse_args(["--continue-path", str(run), "--max-steps", "6"]))
        assert train(resumed).status == "max_steps"
        assert (run / "checkpoint_6.pth").is_file()
