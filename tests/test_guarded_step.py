"""The guarded update without host syncs (training/guarded_step.py, training/step_values.py): a healthy
GlowTTS step reads nothing back from the device, a non-finite one is skipped on the device (also
without a read), and the guard still sees and counts it when the values arrive."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from ruslan_glowtts.training import optimizer as optimizer_module
from ruslan_glowtts.training.cli import parse_args, request_from_args
from ruslan_glowtts.training.guarded_step import rewind_scheduler
from ruslan_glowtts.training.step_values import StepValueQueue
from ruslan_glowtts.training.train import train
from ruslan_glowtts.training.trainer import KitTrainer
from tests.helpers import read_scalars, run_dirs, tiny_args

# Every way Python code can pull a tensor's value to the host (on a GPU each one waits for it).
READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")
# Coqui's CPU alignment search reads its matrix by design; on a GPU the Triton kernel replaces it
# (training/alignment.py, tests/test_alignment.py).
ALLOWED = ("monotonic_alignment_search",)


class ReadRecorder:
    """Counts host reads of tensors made inside KitTrainer.optimize, by calling file and line.
    FlatRAdam runs its GPU path (the skip decided on the device): on a CPU it reads its flag on the
    host, where that costs nothing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, from_step: int) -> None:
        monkeypatch.setattr(optimizer_module, "host_control_default", lambda device: False)
        self.inside = False
        self.from_step = from_step
        self.reads: list[str] = []
        self.steps: list[int] = []
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name), name))
        optimize = KitTrainer.optimize

        def recorded(trainer, *args, **kwargs):
            self.inside = trainer.total_steps_done >= self.from_step
            if self.inside:
                self.steps.append(trainer.total_steps_done)
            try:
                return optimize(trainer, *args, **kwargs)
            finally:
                self.inside = False

        monkeypatch.setattr(KitTrainer, "optimize", recorded)

    def _wrap(self, method, name):
        recorder = self

        def read(tensor, *args, **kwargs):
            if recorder.inside:
                caller = sys._getframe(1)
                where = f"{caller.f_code.co_filename}:{caller.f_lineno}"
                if not any(part in where for part in ALLOWED):
                    recorder.reads.append(f"{name} at {where}")
            return method(tensor, *args, **kwargs)

        return read


def _train(dataset: Path, output: Path, steps: int, callbacks: dict | None = None):
    request = request_from_args(
        parse_args(
            ["--dataset-path", str(dataset), "--output-path", str(output), "--max-steps", str(steps), *tiny_args()]
        )
    )
    if callbacks:
        request = request.with_callbacks(callbacks)
    outcome = train(request)
    assert outcome.status == "max_steps", outcome.message
    (run,) = run_dirs(output)
    return run


@pytest.mark.slow
def test_a_healthy_step_reads_nothing_back_from_the_device(sample_22k, tmp_path, monkeypatch):
    recorder = ReadRecorder(monkeypatch, from_step=2)  # after the tiny model's 2 data-dependent-init steps
    run = _train(sample_22k, tmp_path / "runs", 7)
    assert recorder.steps == [2, 3, 4, 5, 6]
    assert recorder.reads == [], "host reads inside a healthy step:\n" + "\n".join(recorder.reads)
    # ...and the values still arrive: every step's loss and grad_norm is logged, finite
    norms = read_scalars(run, "TrainIterStats/grad_norm")
    assert sorted(norms) == [2, 3, 4, 5, 6] and all(math.isfinite(v) for v in norms.values())


@pytest.mark.slow
def test_a_nonfinite_update_is_skipped_on_the_device_without_a_read(sample_22k, tmp_path, monkeypatch):
    recorder = ReadRecorder(monkeypatch, from_step=2)
    seen = {}

    def poison(trainer):
        if trainer.total_steps_done == 4:

            def before_clipping():
                next(p for p in trainer.model.parameters() if p.grad is not None).grad.view(-1)[0] = math.nan

            trainer.model.before_gradient_clipping = before_clipping
            seen["before"] = [p.detach().clone() for p in trainer.model.parameters()]
            seen["step_count"] = float(trainer.optimizer[0].step_count)
            seen["last_epoch"] = trainer.scheduler[0].last_epoch

    def after(trainer):
        if trainer.total_steps_done == 5:  # the poisoned step is done (its values may still be on the way)
            trainer.model.__dict__.pop("before_gradient_clipping", None)
            seen["after"] = [p.detach().clone() for p in trainer.model.parameters()]
            seen["after_step_count"] = float(trainer.optimizer[0].step_count)
        if trainer.total_steps_done == 7:
            seen["final_last_epoch"] = trainer.scheduler[0].last_epoch
            seen["final_step_count"] = float(trainer.optimizer[0].step_count)

    run = _train(sample_22k, tmp_path / "runs", 7, {"on_train_step_start": poison, "on_train_step_end": after})
    assert recorder.reads == [], "host reads inside a step:\n" + "\n".join(recorder.reads)
    assert all(torch.equal(a, b) for a, b in zip(seen["before"], seen["after"], strict=True))
    assert seen["after_step_count"] == seen["step_count"]  # the optimizer did not count it either
    # the guard saw it once the values arrived: counted at its own step, no loss plotted for it
    assert read_scalars(run, "Health/skipped_steps") == {4: 1.0}
    assert 4 not in read_scalars(run, "TrainIterStats/grad_norm")
    # the learning-rate schedule follows the applied updates: 4 of the 5 after data-dependent init
    assert seen["final_step_count"] == 4
    assert seen["final_last_epoch"] == seen["last_epoch"] + 2  # steps 5 and 6; step 4's was rewound


def test_step_value_queue_on_the_cpu_hands_back_every_step_in_order():
    queue = StepValueQueue(lag=2)
    queue.put(0, {"loss": torch.tensor(1.5), "current": 3}, "a")
    queue.put(1, {}, "b")
    queue.put(2, {"loss": torch.tensor(math.nan), "grad_norm": torch.tensor(2.0)})
    read = queue.ready()
    assert [(r.step, r.context) for r in read] == [(0, "a"), (1, "b"), (2, None)]
    assert read[0].values == {"loss": 1.5, "current": 3.0} and read[1].values == {}
    assert math.isnan(read[2].values["loss"]) and read[2].values["grad_norm"] == 2.0
    assert len(queue) == 0


def test_rewind_scheduler_takes_back_one_step():
    from trainer.torch import NoamLR
    from TTS.utils.radam import RAdam

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = RAdam([parameter], lr=1e-3)
    scheduler = NoamLR(optimizer, warmup_steps=10)
    for _ in range(3):
        scheduler.step()
    lr_at_3 = optimizer.param_groups[0]["lr"]
    scheduler.step()
    rewind_scheduler(optimizer, scheduler)
    assert scheduler.last_epoch == 3 and optimizer.param_groups[0]["lr"] == lr_at_3


@pytest.mark.slow
def test_the_read_recorder_sees_a_read(sample_22k, tmp_path, monkeypatch):
    # The instrument itself: data-dependent init checks its batch on the host (one read a step).
    recorder = ReadRecorder(monkeypatch, from_step=0)
    _train(sample_22k, tmp_path / "runs", 3)
    assert any("__bool__" in read and "training/trainer.py" in read for read in recorder.reads), recorder.reads
