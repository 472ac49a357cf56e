"""KitTrainer: Coqui's Trainer with a step guard and the failure handling a long run needs.

- optimize(): in fp32/bf16 Coqui calls optimizer.step() even when the gradient norm is NaN/Inf
  (one bad batch turns every weight into NaN) and then logs that norm as 0. KitTrainer reads the
  pre-clip norm and the loss first and skips a non-finite update entirely (weights, optimizer
  state and lr schedule untouched); the HealthGuard counts it, logs Health/* and watches for
  explosions. GlowTTS's loss raises on NaN; that step is skipped too, in training and in eval.
  The norm is read once per update (one host-device sync), where Coqui reads it after the step
  (its NaN check) - the same number of syncs, moved before the step.
- fit(): Coqui deletes the run folder, TensorBoard logs included, when any exception leaves it
  before the first checkpoint, and calls sys.exit itself. KitTrainer keeps the folder whatever
  happens, saves a checkpoint on Ctrl-C and on a crash (when the weights are still finite, so
  --continue-path works after either), stops cleanly at --max-steps, stops when the guard says
  so, and returns an Outcome instead of exiting.
- Signals: SIGTERM (kill, docker stop, SLURM/Kubernetes preemption) and SIGINT only set a flag;
  the run stops at the end of the current step (or eval batch), saves a checkpoint when the
  weights are finite, and returns "terminated" (exit 143) or "interrupted" (130). Stopping at a
  step boundary means no state is half-updated when the checkpoint is taken. A second signal
  exits at once. Under DDP the flag is all-reduced, so every rank stops at the same step.
- Checkpoints: Coqui's torch.save writes straight to checkpoint_N.pth, so a kill during the save
  leaves a truncated newest checkpoint that --continue-path then picks. Every checkpoint Coqui
  writes goes to a temp name, is fsynced and renamed into place
  (coqui_compat.install_atomic_checkpoint_writes).
- Samples that fail to load (KitTTSDataset skips them) are counted here, logged as
  Health/skipped_samples, and end the run with exit 2 when more than 1 % of the data fails.
- Batch order: sets each epoch of the length-bucketed batch sampler (ruslan_glowtts/training/batch_sampler.py)
  and stores the position in the epoch in every checkpoint, so --continue-path resumes mid-epoch
  where it stopped (Coqui would restart the epoch from its first batch).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.nn.utils import clip_grads_with_norm_, get_total_norm
from trainer import Trainer

from ruslan_glowtts.common.errors import (
    EXIT_CRASH,
    EXIT_EXPLODED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
)
from ruslan_glowtts.monitor.guard import Alarm, HealthGuard, HealthStop
from ruslan_glowtts.monitor.ledger import UtteranceLedger
from ruslan_glowtts.training import coqui_compat
from ruslan_glowtts.training.batch_sampler import LengthBucketBatchSampler
from ruslan_glowtts.training.coqui_compat import (
    KitTrainerBase,
    add_callback,
    is_nan_loss_error,
)
from ruslan_glowtts.training.data_loader import EMPTY_KEY, SKIPPED_KEY, max_unloadable

logger = logging.getLogger(__name__)
SAMPLER_STATE = "kit_batch_position"  # checkpoint entry: epoch and batches done in it

coqui_compat.install_atomic_checkpoint_writes()


class StopTraining(Exception):
    """Raised at the end of a step to leave Coqui's training loop cleanly."""


class StopSignal(Exception):
    """Raised at a safe point (end of a step or eval batch) after SIGTERM/SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class TooManyUnloadable(Exception):
    """More samples failed to load than the run tolerates."""


@dataclass
class Outcome:
    status: str  # finished | max_steps | interrupted | terminated | crashed | exploded | bad_data
    exit_code: int
    step: int
    message: str = ""
    alarm: Alarm | None = None
    run_dir: Path | None = None
    recent_samples: list[str] = field(default_factory=list)  # batches just before an explosion


def weights_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class KitTrainer(KitTrainerBase):
    def __init__(self, *args: Any, max_steps: int = 0, next_command: Callable[[], str] = lambda: "",
                 resume_from: Path | None = None, num_samples: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, resume_from=resume_from, **kwargs)
        self.max_steps = max_steps
        self._signal: int = 0  # the first SIGTERM/SIGINT received, 0 if none
        self.unloadable: dict[str, str] = {}  # sample file -> why it could not be loaded
        self._max_unloadable = max_unloadable(num_samples)
        self._window_nonfinite = False  # a NaN loss within the current accumulation window
        self.guard = HealthGuard(self.config.health, Path(self.output_path), rank=self.args.rank,
                                 next_command=next_command)
        # Issue 19: which utterances each update saw, their loss terms, and the updates the guard flagged.
        self.ledger = UtteranceLedger(Path(self.output_path), rank=self.args.rank)
        self.guard.on_flag.append(self.ledger.mark)
        # The guard acts first: an exploded state must not be saved as the --max-steps checkpoint.
        if self.config.health.enabled:
            add_callback(self, "on_train_step_end", lambda trainer: self.guard.end_of_step(trainer), first=True)
        else:
            logger.warning(" ! health.enabled = false: non-finite updates reach the weights, explosions go unseen")
        add_callback(self, "on_train_step_end", self._stop_at_max_steps)
        # Length-bucketed batches: each epoch's order comes from (seed, epoch); count the batches
        # done in the epoch first, so every checkpoint (the --max-steps one too) records them.
        self._epoch_batches = 0
        self._resume_position = self._sampler_position_to_resume()
        add_callback(self, "on_train_epoch_start", self._start_sampler_epoch, first=True)
        add_callback(self, "on_train_step_end", self._count_batch, first=True)
        add_callback(self, "on_train_step_end", lambda trainer: self._stop_on_signal())
        # The kit's own log lines go into the run's log file next to Coqui's.
        self._kit_log_handler = logging.FileHandler(self.output_path / f"trainer_{self.args.rank}_log.txt")
        self._kit_log_handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("ruslan_glowtts").addHandler(self._kit_log_handler)

    # -- signals ---------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal:
            # A second signal: the user does not want to wait for the step to end.
            print(f"{signal.Signals(signum).name} again: exiting now, without a checkpoint", file=sys.stderr,
                  flush=True)
            os._exit(128 + signum)
        self._signal = signum
        logger.warning(" ! %s received: stopping after this step (a checkpoint will be saved; send it again to "
                       "exit at once)", signal.Signals(signum).name)

    def _stop_on_signal(self) -> None:
        signum = self._signal
        if self.num_gpus > 1 and dist.is_initialized():
            # Every rank stops at the same step, or the others would wait for it forever.
            flag = torch.tensor([float(signum)], device=next(self.model.parameters()).device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        if signum:
            raise StopSignal(signum)

    def _install_signal_handlers(self) -> dict[int, Any]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    # -- samples that fail to load ---------------------------------------------------------------
    def format_batch(self, batch: dict[str, Any] | list[Any]) -> dict[str, Any]:
        if isinstance(batch, dict) and SKIPPED_KEY in batch:
            skipped = batch.pop(SKIPPED_KEY)
            new = {name: why for name, why in skipped if name not in self.unloadable}
            if new:
                self.unloadable.update(new)
                if self.args.rank == 0:
                    self.dashboard_logger.add_scalar("Health/skipped_samples", float(len(self.unloadable)),
                                                     self.total_steps_done)
                if len(self.unloadable) > self._max_unloadable:
                    raise TooManyUnloadable
        if isinstance(batch, dict) and EMPTY_KEY in batch:
            return batch  # no sample of it loaded: train_step/eval_step skip it
        return super().format_batch(batch)

    def train_step(self, batch: Any, batch_n_steps: int, step: int, loader_start_time: float) -> tuple[Any, Any]:
        if isinstance(batch, dict) and EMPTY_KEY in batch:
            self.format_batch(batch)  # counts its skipped samples
            return None, None
        return super().train_step(batch, batch_n_steps, step, loader_start_time)

    # -- batch order across epochs and resumes ---------------------------------------------------
    def _count_batch(self, trainer: Trainer) -> None:
        self._epoch_batches += 1

    def _start_sampler_epoch(self, trainer: Trainer) -> None:
        self._epoch_batches = 0
        sampler = getattr(self.train_loader, "batch_sampler", None)
        if not isinstance(sampler, LengthBucketBatchSampler):
            return
        skip = 0
        if self._resume_position is not None:
            epoch, done = self._resume_position
            if epoch == self.epochs_done and 0 < done < len(sampler.rank_batches(epoch)):
                # Coqui restarts the interrupted epoch from its first batch; skip those already trained on.
                skip = done
                logger.info("Resuming epoch %d after its first %d batches", epoch, done)
            self._resume_position = None
        sampler.set_epoch(self.epochs_done, skip)
        self._epoch_batches = skip

    def _sampler_position_to_resume(self) -> tuple[int, int] | None:
        """(epoch, batches done in it) stored in the checkpoint that --continue-path restored."""
        restored = self.restored_checkpoint()
        if restored is None:
            return None
        try:
            state = torch.load(restored, map_location="cpu", mmap=True, weights_only=False)
        except (OSError, RuntimeError, ValueError) as exc:
            logger.warning(" ! Cannot read the batch position from %s (%s): the epoch restarts from its first batch",
                           restored, exc)
            return None
        position = state.get(SAMPLER_STATE)
        return (int(position["epoch"]), int(position["batches_done"])) if position else None

    def checkpoint_extras(self) -> dict[str, Any]:
        """The position in the epoch's batch order, in every checkpoint: a resume continues the epoch
        where it stopped instead of training its first batches twice."""
        return {SAMPLER_STATE: {"epoch": self.epochs_done, "batches_done": self._epoch_batches}}

    def _stop_at_max_steps(self, trainer: Trainer) -> None:
        if self.max_steps and self.total_steps_done >= self.max_steps:
            raise StopTraining

    # -- the guarded step ------------------------------------------------------------------------
    def optimize(self, batch, optimizer, scaler, criterion, scheduler, *, optimizer_idx=None,  # type: ignore[override]
                 step_optimizer=True, num_optimizers=1):
        if optimizer_idx is not None or self.use_accelerate or not self.config.health.enabled:
            # GlowTTS has one optimizer; the guard covers that case (and can be switched off)
            return super().optimize(batch, optimizer, scaler, criterion, scheduler, optimizer_idx=optimizer_idx,
                                    step_optimizer=step_optimizer, num_optimizers=num_optimizers)
        start = time.time()
        step = self.total_steps_done
        loss = None
        if (getattr(self.model, "run_data_dep_init", False) and self.num_gpus <= 1
                and not bool(torch.isfinite(batch["mel_input"]).all())):
            # GlowTTS re-initialises every ActNorm layer from each data-dependent-init batch: a
            # batch with NaN features would make them NaN, with no update for the guard to skip.
            logger.warning(" ! Step %d: data-dependent init skips a batch with non-finite features", step)
            return None, {}, time.time() - start
        try:
            outputs, loss_dict = self.compute_loss(batch, criterion)
        except RuntimeError as exc:
            if not is_nan_loss_error(exc):
                raise
            # GlowTTS's loss raised on NaN: this micro-batch spoils its whole update (as NaN
            # gradients would), which is skipped at the window's last micro-batch below.
            logger.warning(" ! Step %d: %s", step, str(exc).strip(" [!]."))
            self._nan_loss_backward()
            self._window_nonfinite = True
            self.ledger.record(step, batch, None, accumulating=not step_optimizer)  # the batch behind a NaN loss
            outputs, loss_dict = None, None
        else:
            if not loss_dict:  # data-dependent init batches
                return outputs, {}, time.time() - start
            self.guard.record_batch(batch)
            self.ledger.record(step, batch, outputs, accumulating=not step_optimizer)  # no host sync
            self.callbacks.before_backward_pass(self, loss_dict)
            loss = loss_dict["loss"] / float(self.grad_accum_steps)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if not step_optimizer:  # accumulating micro-batches
            if loss_dict is None:
                return None, {}, time.time() - start
            return outputs, self.detach_loss_dict(loss_dict, step_optimizer=False), time.time() - start

        if scaler is not None:
            scaler.unscale_(optimizer)
        self.callbacks.before_gradient_clipping(self)
        params = list(self.master_params(optimizer))
        total_norm = get_total_norm([p.grad for p in params if p.grad is not None])
        loss_now = loss.detach().float() if loss is not None else torch.full((), math.nan)
        # One sync for both values; Coqui reads the norm after the step anyway (its NaN check).
        grad_norm, loss_value = torch.stack([total_norm.float(), loss_now.to(total_norm.device)]).tolist()
        if self._window_nonfinite:
            loss_value, self._window_nonfinite = math.nan, False
        apply = self.guard.decide_update(self, step, grad_norm, loss_value, amp=scaler is not None)
        if apply:
            grad_clip = self.grad_clip_for(None)
            if grad_clip > 0 and math.isfinite(grad_norm):
                clip_grads_with_norm_(params, grad_clip, total_norm)
            # GradScaler keeps its own skip-on-overflow behaviour; the guard counts it
            if not self.apply_update(optimizer, scaler, scheduler):
                self.guard.amp_skipped(self, self.total_steps_done)
        optimizer.zero_grad(set_to_none=True)
        if not apply or loss_dict is None:
            return None, {}, time.time() - start  # nothing to average or plot from a skipped update
        # scaler: amp_scaler is logged under fp16 as Coqui's optimize does (diagnose reads it)
        detached = self.losses_to_log(loss_dict, grad_norm=grad_norm if math.isfinite(grad_norm) else 0.0,
                                      scaler=scaler)
        return outputs, detached, time.time() - start

    def _nan_loss_backward(self) -> None:
        """Under DDP every rank must run backward (gradient all-reduce is collective): send NaN
        gradients through every parameter, so all ranks see a non-finite norm and skip together."""
        if self.num_gpus > 1 and dist.is_initialized():
            (sum(p.sum() for p in self.model.parameters() if p.requires_grad) * math.nan).backward()

    def eval_step(self, batch: dict[str, Any], step: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        if self._signal and not (self.num_gpus > 1 and dist.is_initialized()):
            # A long eval stops at a batch boundary too; under DDP only at the next train step,
            # where every rank takes part in the all-reduce of the flag.
            raise StopSignal(self._signal)
        if EMPTY_KEY in batch:
            return None, None
        try:
            return super().eval_step(batch, step)
        except RuntimeError as exc:
            if not is_nan_loss_error(exc):
                raise
            logger.warning(" ! Eval batch %d skipped: %s", step, str(exc).strip(" [!]."))
            return None, None

    def _save_if_finite(self, why: str) -> bool:
        if self.args.rank != 0:
            return False
        if not weights_finite(self.model):
            logger.error(" ! Not saving a checkpoint (%s): the weights are not finite.", why)
            return False
        self.save_checkpoint()
        return True

    def fit(self) -> Outcome:  # type: ignore[override]
        previous_handlers = self._install_signal_handlers()
        try:
            self.run_training_loop()
            outcome = Outcome("finished", EXIT_OK, self.total_steps_done, "all epochs done")
        except HealthStop as stop:
            outcome = Outcome("exploded", EXIT_EXPLODED, self.total_steps_done,
                              f"step {stop.alarm.step}: {stop.alarm.message}", alarm=stop.alarm,
                              recent_samples=self.guard.recent_samples())
        except StopTraining:
            self._save_if_finite("--max-steps reached")
            outcome = Outcome("max_steps", EXIT_OK, self.total_steps_done, f"stopped at step {self.total_steps_done}")
        except (StopSignal, KeyboardInterrupt) as stop:
            signum = stop.signum if isinstance(stop, StopSignal) else signal.SIGINT
            why = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            saved = self.config.save_on_interrupt and self._save_if_finite(why)
            self.callbacks.on_keyboard_interrupt(self)
            status, code = ("interrupted", EXIT_INTERRUPTED) if signum == signal.SIGINT else ("terminated",
                                                                                            EXIT_TERMINATED)
            step = self.total_steps_done
            outcome = Outcome(status, code, step, f"{status} by {why} at step {step}"
                              + (f"; checkpoint_{step}.pth saved" if saved else "; no checkpoint saved"))
        except TooManyUnloadable:
            listed = "; ".join(f"{Path(name).name} ({why})" for name, why in sorted(self.unloadable.items()))
            outcome = Outcome("bad_data", EXIT_USAGE, self.total_steps_done,
                              f"{len(self.unloadable)} samples failed to load, more than the {self._max_unloadable} "
                              f"tolerated (1 %): {listed}. Check them with python -m ruslan_glowtts.prepare")
        except Exception as exc:  # noqa: BLE001 - any crash: keep the folder, save what can be saved
            logger.error("%s", traceback.format_exc())
            saved = self._save_if_finite("crash")
            outcome = Outcome("crashed", EXIT_CRASH, self.total_steps_done,
                              f"{type(exc).__name__}: {exc}" + ("; checkpoint saved" if saved else ""))
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self.ledger.close()
            self._close()
        return outcome

    def _close(self) -> None:
        if self.args.rank == 0:
            self.dashboard_logger.finish()
        if self.num_gpus > 1 and dist.is_initialized():
            dist.destroy_process_group()
        coqui_compat.remove_run_log_handlers(Path(self.output_path), "ruslan_glowtts")
