"""The health guard in training (tiny GlowTTS on the sample): skipped non-finite updates, the
stop and escalate policies, known-good checkpoints, Ctrl-C, and DDP flag agreement."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ruslan_glowtts.common.errors import EXIT_EXPLODED
from ruslan_glowtts.monitor.guard import KNOWN_GOOD, reduce_flags
from ruslan_glowtts.training.cli import parse_args, request_from_args
from ruslan_glowtts.training.dataset import split_eval
from ruslan_glowtts.training.train import train
from tests.helpers import REPO, copy_corpus, read_scalars, run_dirs, tiny_args

pytestmark = pytest.mark.slow

# Small detector windows so that a tiny run of a few dozen steps can show an explosion.
FAST_HEALTH = [
    "--set",
    "health.grace_steps=3",
    "--set",
    "health.level_window=5",
    "--set",
    "health.jump_window=3",
    "--set",
    "health.baseline_window=16",
    "--set",
    "health.checkpoint_every=3",
]


def _request(dataset: Path, output: Path, *extra: str):
    return request_from_args(
        parse_args(["--dataset-path", str(dataset), "--output-path", str(output), *tiny_args(), *extra])
    )


def _snapshot(trainer) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in trainer.model.parameters()]
    for state in trainer.optimizer[0].state.values():
        tensors += [v.clone() for v in state.values() if torch.is_tensor(v)]
    return tensors


class Injector:
    """Poisons one step through the model's own hooks (Coqui calls model.before_backward_pass and
    model.before_gradient_clipping) and records weights + optimizer state around that step."""

    def __init__(self, step: int, kind: str, window: int = 1) -> None:
        self.step, self.kind, self.window = step, kind, window  # window: steps until "after"
        self.before: list[torch.Tensor] | None = None
        self.after: list[torch.Tensor] | None = None

    def callbacks(self) -> dict:
        return {"on_train_step_start": self._start, "on_train_step_end": self._end}

    def _start(self, trainer) -> None:
        if trainer.total_steps_done != self.step:
            return
        self.before = _snapshot(trainer)
        value = math.nan if "nan" in self.kind else math.inf
        if self.kind == "raised_nan_loss":  # GlowTTSLoss's own reaction to a NaN
            trainer.criterion[0].forward = _raise_nan_loss
        elif self.kind.endswith("loss"):
            trainer.model.before_backward_pass = lambda losses, _opt: losses.update(loss=losses["loss"] * value)
        else:
            trainer.model.before_gradient_clipping = lambda: _poison_grad(trainer, value)

    def _end(self, trainer) -> None:
        if trainer.total_steps_done == self.step + 1:  # the poison lasts one step
            trainer.model.__dict__.pop("before_backward_pass", None)
            trainer.model.__dict__.pop("before_gradient_clipping", None)
            trainer.criterion[0].__dict__.pop("forward", None)
        if trainer.total_steps_done == self.step + self.window:
            self.after = _snapshot(trainer)


def _raise_nan_loss(*args, **kwargs):
    raise RuntimeError(" [!] NaN loss with loss.")


def _poison_grad(trainer, value: float) -> None:
    grad = next(p for p in trainer.model.parameters() if p.grad is not None).grad
    grad.view(-1)[0] = value


@pytest.mark.parametrize("kind", ["nan_loss", "inf_loss", "nan_grad", "inf_grad"])
def test_nonfinite_update_is_skipped_and_visible(sample_22k, tmp_path, kind):
    request = _request(sample_22k, tmp_path / "runs", "--max-steps", "9")
    injector = Injector(step=5, kind=kind)
    request = request.with_callbacks(injector.callbacks())
    outcome = train(request)
    assert outcome.status == "max_steps", outcome.message
    # weights and optimizer state untouched by the poisoned step, finite at the end
    assert all(torch.equal(a, b) for a, b in zip(injector.before, injector.after, strict=True))
    (run,) = run_dirs(tmp_path / "runs")
    weights = torch.load(run / "checkpoint_9.pth", weights_only=False)["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())
    # visible in TensorBoard: the raw norm as NaN/Inf, the skip count, no fake zero grad_norm
    assert read_scalars(run, "Health/skipped_steps") == {5: 1.0}
    assert not math.isfinite(read_scalars(run, "Health/grad_norm")[5])
    assert 5 not in read_scalars(run, "TrainIterStats/grad_norm")
    assert json.loads((run / "run.json").read_text())["health"]["skipped_updates"] == 1


@pytest.mark.parametrize("kind", ["nan_loss", "raised_nan_loss"])
def test_nan_inside_an_accumulation_window_skips_the_whole_update(sample_22k, tmp_path, kind):
    # --grad-accum 2: steps 0-1 are data-dependent init, then windows (2, 3), (4, 5). A NaN in
    # the window's first micro-batch spoils the update made at its second.
    request = _request(sample_22k, tmp_path / "runs", "--max-steps", "8", "--grad-accum", "2")
    injector = Injector(step=2, kind=kind, window=2)
    request = request.with_callbacks(injector.callbacks())
    outcome = train(request)
    assert outcome.status == "max_steps", outcome.message
    assert all(torch.equal(a, b) for a, b in zip(injector.before, injector.after, strict=True))
    (run,) = run_dirs(tmp_path / "runs")
    assert read_scalars(run, "Health/skipped_steps") == {3: 1.0}  # counted once, where the update was due
    weights = torch.load(run / "checkpoint_8.pth", weights_only=False)["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_nan_audio_in_the_data_is_skipped_in_training_and_eval(sample_22k, tmp_path):
    corpus = copy_corpus(sample_22k, tmp_path / "corpus")
    wavs = sorted((corpus / "RUSLAN").glob("*.wav"))
    _, (eval_sample,) = split_eval([{"audio_file": str(w)} for w in wavs], 0.01, 256)
    train_wav = next(w for w in wavs if str(w) != eval_sample["audio_file"])
    for wav in (train_wav, Path(eval_sample["audio_file"])):
        audio, rate = sf.read(wav, dtype="float32")
        audio[len(audio) // 3 : len(audio) // 3 + 50] = np.nan
        sf.write(wav, audio, rate, subtype="FLOAT")
    outcome = train(_request(corpus, tmp_path / "runs", "--max-steps", "16"))  # > 2 epochs of 6 batches
    assert outcome.status == "max_steps", outcome.message
    (run,) = run_dirs(tmp_path / "runs")
    # the loader skips the NaN files (ruslan_glowtts/training/data_loader.py) and the run counts them
    assert max(read_scalars(run, "Health/skipped_samples").values()) == 2
    # The eval set is that one NaN file: the loader skips it, so eval has no batch and logs no loss
    # at all (never a NaN one). Counted above: 2 = the training file and the eval file.
    assert read_scalars(run, "EvalStats/avg_loss") == {}
    weights = torch.load(run / "checkpoint_16.pth", weights_only=False)["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_every_step_nonfinite_stops_instead_of_looping(sample_22k, tmp_path):
    request = _request(
        sample_22k, tmp_path / "runs", "--max-steps", "200", "--set", "health.max_consecutive_nonfinite=5"
    )
    request = request.with_callbacks(
        {"on_init_end": lambda t: setattr(t.model, "before_gradient_clipping", lambda: _poison_grad(t, math.nan))}
    )
    outcome = train(request)
    assert outcome.status == "exploded" and outcome.exit_code == EXIT_EXPLODED
    assert "all non-finite" in outcome.message and outcome.step < 20


def _blow_up_from(step: int, factor: float = 1e4):
    """Scale every gradient from `step` on: pre-clip norms jump far past the limit."""

    def start(trainer) -> None:
        if trainer.total_steps_done >= step:
            trainer.model.before_gradient_clipping = lambda: [
                p.grad.mul_(factor) for p in trainer.model.parameters() if p.grad is not None
            ]

    return start


def test_stop_policy_exits_3_with_next_command_and_known_good(sample_22k, tmp_path):
    request = _request(sample_22k, tmp_path / "runs", "--max-steps", "60", "--on-explosion", "stop", *FAST_HEALTH)
    request = request.with_callbacks({"on_train_step_start": _blow_up_from(20)})
    outcome = train(request)
    assert outcome.status == "exploded" and outcome.exit_code == EXIT_EXPLODED
    (run,) = run_dirs(tmp_path / "runs")
    known_good = run / KNOWN_GOOD
    assert f"--preset safer --dataset-path {sample_22k}" in outcome.next_command
    assert f"--restore-path {known_good}" in outcome.next_command
    assert "--set hidden_channels_enc=32" in outcome.next_command  # the user's own settings come along
    assert f"{outcome.message}. Next: {outcome.next_command}" in outcome.report()  # the line the script prints
    assert 20 < outcome.alarm.step < 30
    # the known-good state predates the blow-up and was never overwritten by it
    good_step = json.loads((run / "known_good.json").read_text())["step"]
    assert good_step <= 20  # weights from before the first blown-up update (step 20)
    state = torch.load(known_good, weights_only=False)
    assert state["step"] == good_step and all(torch.isfinite(w).all() for w in state["model"].values())
    from TTS.tts.models.glow_tts import GlowTTS

    GlowTTS(request.job.config).load_state_dict(state["model"])  # loadable into the same architecture
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "exploded" and meta["exit_code"] == 3 and meta["health"]["alarms"]
    assert meta["next_command"] == outcome.next_command and ". Next:" not in meta["message"]
    assert read_scalars(run, "Health/alarm")


def test_warn_policy_keeps_training_and_says_what_to_do(sample_22k, tmp_path, caplog):
    request = _request(sample_22k, tmp_path / "runs", "--max-steps", "30", *FAST_HEALTH)
    request = request.with_callbacks({"on_train_step_start": _blow_up_from(15)})
    outcome = train(request)
    assert outcome.status == "max_steps"
    assert "grad_norm EXPLOSION" in caplog.text and "--preset safer" in caplog.text


@pytest.mark.parametrize(
    ("preset", "extra", "runs", "said", "next_tier"),
    [
        ("safest", [], 1, ". No tier left: check the data", ""),
        ("stable", ["--max-escalations", "1"], 2, ". Stopped after 1 escalations", "--preset safest"),
    ],
)
def test_an_escalation_chain_that_ends_says_why_once_with_its_next_command(
    sample_22k, tmp_path, preset, extra, runs, said, next_tier
):
    request = _request(
        sample_22k, tmp_path / "runs", "--preset", preset, "--max-steps", "60", "--auto-escalate", *extra, *FAST_HEALTH
    )
    outcome = train(request.with_callbacks({"on_train_step_start": _blow_up_from(20)}))  # every tier blows up
    assert outcome.status == "exploded" and outcome.exit_code == EXIT_EXPLODED
    assert len(run_dirs(tmp_path / "runs")) == runs
    assert (
        outcome.message.count(said) == 1
        and outcome.message.count(". No tier") + outcome.message.count(". Stopped after") == 1
    ), outcome.message
    assert next_tier in outcome.next_command and bool(outcome.next_command) == bool(next_tier)
    last = max(run_dirs(tmp_path / "runs"), key=lambda r: json.loads((r / "run.json").read_text())["escalation_index"])
    meta = json.loads((last / "run.json").read_text())
    assert (meta["message"], meta["next_command"]) == (outcome.message, outcome.next_command)


def test_auto_escalate_recovers_from_an_absurd_learning_rate(sample_22k, tmp_path):
    # lr 5 with no clipping and a 3-step warmup blows GlowTTS up within a few dozen steps; the
    # next tier's preset replaces all three, so the chain must recover by itself.
    request = _request(
        sample_22k,
        tmp_path / "runs",
        "--max-steps",
        "60",
        "--auto-escalate",
        *FAST_HEALTH,
        "--set",
        "lr=5.0",
        "--set",
        "grad_clip=0.0",
        "--set",
        "lr_scheduler_params.warmup_steps=3",
    )
    outcome = train(request)
    assert outcome.status == "max_steps" and outcome.exit_code == 0, outcome.message
    runs = run_dirs(tmp_path / "runs")
    metas = [json.loads((r / "run.json").read_text()) for r in runs]
    first = next(m for m in metas if m["parent_run"] is None)
    last = next(m for m in metas if m["status"] == "max_steps")
    assert first["preset"] == "stable" and first["status"] == "escalated"
    assert last["preset"] in ("safer", "safest") and last["escalation_index"] >= 1
    assert last["parent_run"] and last["reason"]
    child = Path(first["escalated_to"])
    assert json.loads((child / "run.json").read_text())["parent_run"] == str(runs[metas.index(first)])
    config = json.loads((runs[metas.index(last)] / "config.json").read_text())
    assert config["lr"] <= 1e-4 and config["grad_clip"] > 0  # the tier's values, not the absurd ones
    final_run = runs[metas.index(last)]
    weights = torch.load(final_run / "checkpoint_60.pth", weights_only=False)["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert read_scalars(child, "Health/escalation")


def test_ctrl_c_saves_exits_130_and_resumes(sample_22k, tmp_path):
    output = tmp_path / "runs"
    cmd = [
        sys.executable,
        str(REPO / "train_ruslan_glowtts.py"),
        "--dataset-path",
        str(sample_22k),
        "--output-path",
        str(output),
        "--max-steps",
        "100000",
        *tiny_args(),
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    # Coqui logs "> TRAINING (" once fit() runs, where the kit's signal handling is in place; a
    # Ctrl-C before that is the start-up case (tests/test_faults.py).
    while time.time() < deadline and not any(
        "> TRAINING (" in log.read_text(errors="replace") for log in output.glob("*/trainer_0_log.txt")
    ):
        time.sleep(0.5)
    time.sleep(4)  # a few steps in
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:]
    (run,) = run_dirs(output)
    (checkpoint,) = run.glob("checkpoint_*.pth")
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    step = int(checkpoint.stem.split("_")[1])
    outcome = train(request_from_args(parse_args(["--continue-path", str(run), "--max-steps", str(step + 3)])))
    assert outcome.status == "max_steps" and (run / f"checkpoint_{step + 3}.pth").is_file()


def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    flags = reduce_flags([rank == 1, False])  # only rank 1 saw a non-finite step
    Path(out, f"rank{rank}.json").write_text(json.dumps(flags))
    dist.destroy_process_group()


def test_ddp_ranks_take_the_same_decision(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results == [[True, False], [True, False]]
    assert reduce_flags([True, False]) == [True, False]  # without a process group: unchanged
    assert os.environ.get("RANK") is None
