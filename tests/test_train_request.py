"""TrainRequest: what to train / how it was launched / hooks / escalation lineage, never changed by
train(); the next tier's request built from the old one; --continue-path reading old run.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ruslan_glowtts.common import runs
from ruslan_glowtts.common.presets import load_preset
from ruslan_glowtts.training.cli import GLOWTTS, parse_args, request_from_args
from ruslan_glowtts.training.config import Layer, build_config
from ruslan_glowtts.training.run import Launch, Lineage, Outcome, TrainRequest
from ruslan_glowtts.training.train import _escalation
from tests.helpers import SAMPLE


def _request(tmp_path: Path, *extra: str) -> TrainRequest:
    return request_from_args(
        parse_args(
            ["--dataset-path", str(SAMPLE), "--output-path", str(tmp_path / "runs"), "--preset", "stable", *extra]
        )
    )


def test_the_request_is_split_by_kind_and_frozen(tmp_path):
    request = _request(tmp_path, "--set", "lr=3e-4", "--max-steps", "5")
    assert request.job.preset.name == "stable" and request.job.max_steps == 5
    assert request.launch == Launch() and request.lineage == Lineage() and not request.hooks.callbacks
    for part, name in (
        (request, "job"),
        (request.job, "config"),
        (request.launch, "rank"),
        (request.lineage, "index"),
        (request.hooks, "callbacks"),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(part, name, None)
    hooked = request.with_callbacks({"on_init_end": print})
    assert hooked.hooks.callbacks == {"on_init_end": print} and not request.hooks.callbacks
    assert hooked.job is request.job


def test_escalation_builds_the_next_tier_request_and_leaves_the_old_one(tmp_path):
    request = _request(tmp_path, "--set", "lr=3e-4", "--seed", "5", "--auto-escalate")
    run_dir = tmp_path / "runs" / "exploded"
    run_dir.mkdir(parents=True)
    outcome = Outcome("exploded", 3, 40, message="grad_norm exploded", run_dir=run_dir, recent_samples=["a", "b"])
    before = (request.job, request.lineage, request.job.config.to_dict())

    nxt = _escalation(request, outcome)

    assert (request.job, request.lineage, request.job.config.to_dict()) == before
    assert nxt is not None and nxt.launch is request.launch and nxt.hooks is request.hooks
    assert nxt.job.preset.name == "safer" and nxt.job.restore_path is None  # no known-good yet
    assert nxt.lineage == Lineage(
        parent_run=run_dir, reason="grad_norm exploded", index=1, start_step=0, exclude_samples=("a", "b")
    )
    assert nxt.job.config.training_seed == 6  # a new batch order
    flags = {o.source.text: o.value for o in nxt.job.overrides if o.layer is Layer.COMMAND_LINE}
    assert "--set" not in flags and flags["--seed"] == 5  # safer sets lr: the user's --set lr is dropped
    assert "--preset safest" in GLOWTTS.next_command(nxt, None)


def test_continue_path_reads_command_line_overrides_of_an_old_run_json(tmp_path, monkeypatch):
    run = tmp_path / "old_run"
    run.mkdir()
    config, _ = build_config(preset=load_preset("stable"), dataset_path=SAMPLE)
    config.save_json(str(run / "config.json"))
    # run.json as written before overrides recorded their layer
    (run / "run.json").write_text(
        json.dumps(
            {
                "preset": "stable",
                "overrides": [
                    {"key": "lr", "value": 2e-4, "source": "preset stable"},
                    {"key": "hidden_channels_enc", "value": 32, "source": "--set"},
                    {"key": "training_seed", "value": 9, "source": "--seed"},
                ],
            }
        ),
        encoding="utf-8",
    )
    monkeypatch.setattr(
        runs, "loadable_checkpoint", lambda run_dir: runs.Checkpoint(run_dir / "checkpoint_4.pth", 4, {})
    )

    request = request_from_args(parse_args(["--continue-path", str(run)]))

    assert request.job.continue_path == run and request.job.resume_from == run / "checkpoint_4.pth"
    assert request.job.resume_step == 4
    assert [(o.key, o.source.text, o.layer) for o in request.job.overrides] == [
        ("hidden_channels_enc", "--set", Layer.COMMAND_LINE),
        ("training_seed", "--seed", Layer.COMMAND_LINE),
    ]


def test_a_restore_checkpoint_is_loaded_once_for_its_checks(tmp_path, monkeypatch):
    # --restore-path is checked (it loads, it is a GlowTTS) and its layers compared with the model's
    # before training: one torch.load for both, not one each (Coqui's restore is the other load).
    import os

    import torch

    from ruslan_glowtts.training.run import check_restore_matches
    from tests.helpers import tiny_model

    torch.manual_seed(0)
    model = tiny_model()
    path = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict(), "step": 3, "config": {}}, path)
    loads = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or load(*a, **k))
    assert runs.check_checkpoint(path, "--restore-path").step == 3
    check_restore_matches(model, path, allow_partial=False)
    assert loads == [path]
    mtime = path.stat().st_mtime_ns
    os.utime(path, ns=(mtime, mtime + 10**9))  # changed since (as a rewrite would): read again
    runs.check_checkpoint(path, "--restore-path")
    assert len(loads) == 2
