"""The guarded update: a non-finite loss or gradient never reaches the weights.

Coqui applies every update in fp32/bf16, NaN or not, and logs a NaN gradient norm as 0. The guarded
update computes the pre-clip gradient norm, skips the update when the norm or the loss is not
finite (weights, optimizer moments, step count and learning-rate schedule untouched), clips and
steps otherwise. Two ways to decide, one rule:

- on the device (GlowTTS's FlatRAdam, no GradScaler): the norm, the finiteness flag, the clip and
  the masked update are all device work (FlatRAdam.step(apply=flag), as GradScaler's found-inf
  skips an update), so a healthy step never makes the host wait for the GPU. The guard judges the
  update when its values reach the host, a step or two later (training/step_values.py); an update
  found skipped then rewinds the learning-rate schedule by the step it took.
- on the host (any other optimizer, the fp16 GradScaler path, the vocoder's two optimizers): the
  norm and the loss are read first (one sync), the guard (or the caller's `decide`) decides, and
  only an accepted update is applied.

Under DDP the flag is agreed by all ranks (an all-reduce on the device), so every rank skips the
same updates.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from ruslan_glowtts.training.optimizer import FlatRAdam

UPDATE_APPLIED = "update_applied"  # 1.0 when the update was applied, 0.0 when skipped
JUDGED = "update_judged"  # 1.0 when the guard judged the update already (decided on the host)


@dataclass
class UpdateValues:
    """What one guarded update leaves to log: its grad_norm, whether it was applied, amp_scaler
    under fp16 (tensors or numbers), and whether the guard has judged it already (host path)."""

    values: dict[str, Any]
    judged: bool


def _agree(flag: torch.Tensor) -> torch.Tensor:
    """A flag every rank holds the same way: true only where it is true on all ranks (no host sync)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = flag.to(torch.float32)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return value > 0
    return flag


Decide = Callable[[int, float, float], bool]  # (step, pre-clip grad_norm, loss) -> apply the update?


def guarded_update(
    trainer: Any,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    scheduler: Any,
    *,
    loss: torch.Tensor | None,
    window_finite: torch.Tensor | None = None,
    poisoned: bool = False,
    optimizer_idx: int | None = None,
    decide: Decide | None = None,
) -> UpdateValues:
    """Apply the accumulated gradients unless they or the loss are non-finite (module docstring).
    loss: the update's (last micro-batch's) loss tensor; window_finite: a device flag, false when
    any micro-batch of the accumulation window had a non-finite loss; poisoned: the host already
    knows the window is bad (GlowTTS's loss raised on a NaN). optimizer_idx: which of a GAN's
    optimizers (its clip and its scheduler bookkeeping); decide: the host-side judge (default: the
    health guard's decide_update; the vocoder's discriminator has its own). Gradients are zeroed
    afterwards."""
    trainer.callbacks.before_gradient_clipping(trainer)
    if isinstance(optimizer, FlatRAdam) and scaler is None and decide is None and optimizer_idx is None:
        return _update_on_device(trainer, optimizer, scheduler, loss, window_finite, poisoned)
    return _update_on_host(trainer, optimizer, scaler, scheduler, loss, window_finite, poisoned, optimizer_idx, decide)


def _update_on_device(
    trainer: Any,
    optimizer: FlatRAdam,
    scheduler: Any,
    loss: torch.Tensor | None,
    window_finite: torch.Tensor | None,
    poisoned: bool,
) -> UpdateValues:
    norm = optimizer.grad_norm()
    loss_value = loss.detach().float() if loss is not None else torch.full((), math.nan, device=norm.device)
    ok = torch.isfinite(norm) & torch.isfinite(loss_value)
    if window_finite is not None:
        ok = ok & window_finite
    if poisoned:
        ok = torch.zeros((), dtype=torch.bool, device=norm.device)
    ok = _agree(ok)
    grad_clip = trainer.grad_clip_for(None)
    if grad_clip > 0:
        optimizer.clip_(norm, grad_clip)
    optimizer.step(apply=ok)
    trainer.mark_stepped(None)
    if scheduler is not None and not trainer.config.scheduler_after_epoch:
        scheduler.step()  # rewound by rewind_scheduler if the update turns out skipped
    optimizer.zero_grad()
    return UpdateValues({"grad_norm": norm, UPDATE_APPLIED: ok}, judged=False)


def _update_on_host(
    trainer: Any,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    scheduler: Any,
    loss: torch.Tensor | None,
    window_finite: torch.Tensor | None,
    poisoned: bool,
    optimizer_idx: int | None,
    decide: Decide | None,
) -> UpdateValues:
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = list(trainer.master_params(optimizer))
    total_norm = get_total_norm([p.grad for p in params if p.grad is not None])
    loss_now = loss.detach().float() if loss is not None else torch.full((), math.nan)
    if window_finite is not None:
        loss_now = torch.where(window_finite.to(loss_now.device), loss_now, torch.full_like(loss_now, math.nan))
    # One sync for both values; Coqui reads the norm after the step anyway (its NaN check).
    grad_norm, loss_value = torch.stack([total_norm.float(), loss_now.to(total_norm.device)]).tolist()
    if poisoned:
        loss_value = math.nan
    step = trainer.total_steps_done
    if decide is not None:
        apply = decide(step, grad_norm, loss_value)
    else:
        apply = trainer.guard.decide_update(trainer, step, grad_norm, loss_value, amp=scaler is not None)
    if apply:
        grad_clip = trainer.grad_clip_for(optimizer_idx)
        if grad_clip > 0 and math.isfinite(grad_norm):
            clip_grads_with_norm_(params, grad_clip, total_norm)
        # GradScaler keeps its own skip-on-overflow behaviour; the guard counts it
        if not trainer.apply_update(optimizer, scaler, scheduler, optimizer_idx):
            trainer.guard.amp_skipped(trainer, step)
    optimizer.zero_grad(set_to_none=True)
    values: dict[str, Any] = {"grad_norm": grad_norm if math.isfinite(grad_norm) else 0.0, UPDATE_APPLIED: float(apply)}
    return UpdateValues(values, judged=True)


def rewind_scheduler(optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Undo one per-step scheduler step (an update found skipped after the schedule moved on), so the
    learning rate keeps following the count of applied updates, as with a skip decided on the host."""
    if scheduler is None or not hasattr(scheduler, "last_epoch"):
        return
    scheduler.last_epoch -= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's schedulers warn when get_lr() is called outside step()
        lrs = scheduler.get_lr()
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
