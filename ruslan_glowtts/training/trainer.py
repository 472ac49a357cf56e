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
  so, and returns an Outcome (training/run.py) instead of exiting.
- Steps: checkpoint_N.pth holds the state after N training steps, and a resume continues at step
  N. Coqui saves its periodic checkpoint in the middle of step N+1 (before counting it) and
  resumes at N+1, so each resume moved the count one step past what was trained; the kit saves at
  the end of the step instead, after the guard has judged it, and resumes at N
  (coqui_compat.KitTrainerBase.restore_model). --max-steps N then stops at N across any number of
  resumes.
- Signals: SIGTERM (kill, docker stop, SLURM/Kubernetes preemption) and SIGINT only set a flag;
  the run stops at the end of the current step (or eval batch), saves a checkpoint when the
  weights are finite, and returns "terminated" (exit 143) or "interrupted" (130). Stopping at a
  step boundary means no state is half-updated when the checkpoint is taken. A second signal
  exits at once. Under DDP the flag is all-reduced, so every rank stops at the same step. The
  loader workers ignore both (a signal to the process group reaches them too); the run shuts
  them down when it ends.
- Checkpoints: Coqui's torch.save writes straight to checkpoint_N.pth, so a kill during the save
  leaves a truncated newest checkpoint that --continue-path then picks. Every checkpoint Coqui
  writes goes to a temp name, is fsynced and renamed into place
  (coqui_compat.install_atomic_checkpoint_writes). A write that fails for the disk's sake (full,
  quota, I/O error, read-only) ends the run with one line naming the file and the cause; the temp
  file is removed and the older checkpoints are untouched.
- Samples that fail to load (KitTTSDataset skips them) are counted here, logged as
  Health/skipped_samples, and end the run with exit 2 when more than 1 % of the data fails.
- Batch order: sets each epoch of the length-bucketed batch sampler (ruslan_glowtts/training/batch_sampler.py)
  and stores the position in the epoch in every checkpoint, so --continue-path resumes mid-epoch
  where it stopped (Coqui would restart the epoch from its first batch).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from trainer import Trainer

from ruslan_glowtts.common.errors import (
    EXIT_CRASH,
    EXIT_EXPLODED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
)
from ruslan_glowtts.common.run_layout import HEALTH_SKIPPED_SAMPLES, checkpoint_name, log_name
from ruslan_glowtts.common.runs import is_disk_error
from ruslan_glowtts.monitor.guard import HealthGuard, HealthStop
from ruslan_glowtts.monitor.ledger import UtteranceLedger
from ruslan_glowtts.training import coqui_compat
from ruslan_glowtts.training.batch_sampler import LengthBucketBatchSampler
from ruslan_glowtts.training.compilation import recover, step_begin
from ruslan_glowtts.training.coqui_compat import (
    KitTrainerBase,
    add_callback,
    is_nan_loss_error,
    model_of,
    record_amp_scale,
)
from ruslan_glowtts.training.data_loader import EMPTY_KEY, SKIPPED_KEY, max_unloadable
from ruslan_glowtts.training.guarded_step import JUDGED, UPDATE_APPLIED, guarded_update, rewind_scheduler
from ruslan_glowtts.training.run import Outcome
from ruslan_glowtts.training.step_values import ReadValues

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


def weights_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class KitTrainer(KitTrainerBase):
    def __init__(
        self,
        *args: Any,
        max_steps: int = 0,
        next_command: Callable[[], str] = lambda: "",
        resume_from: Path | None = None,
        num_samples: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, resume_from=resume_from, **kwargs)
        self.max_steps = max_steps
        self._signal: int = 0  # the first SIGTERM/SIGINT received, 0 if none
        self.unloadable: dict[str, str] = {}  # sample file -> why it could not be loaded
        self._max_unloadable = max_unloadable(num_samples)
        self._window_finite: torch.Tensor | None = None  # device flag: every loss of the window finite so far
        self._window_poisoned = False  # the loss raised on NaN within the current accumulation window
        self.guard = HealthGuard(
            self.config.health, Path(self.output_path), rank=self.args.rank, next_command=next_command
        )
        # Issue 19: which utterances each update saw, their loss terms, and the updates the guard flagged.
        self.ledger = UtteranceLedger(Path(self.output_path), rank=self.args.rank)
        self.guard.on_flag.append(self.ledger.mark)
        # The guard acts first: an exploded state must not be saved as the --max-steps checkpoint.
        if self.config.health.enabled:
            add_callback(self, "on_train_step_end", lambda trainer: self.guard.end_of_step(trainer), first=True)
        else:
            logger.warning(" ! health.enabled = false: non-finite updates reach the weights, explosions go unseen")
        self._saved_step: int | None = None  # the step of the last checkpoint this trainer wrote
        add_callback(self, "on_train_step_end", self._checkpoint_at_step_end)
        add_callback(self, "on_train_step_end", self._stop_at_max_steps)
        # Length-bucketed batches: each epoch's order comes from (seed, epoch); count the batches
        # done in the epoch first, so every checkpoint (the --max-steps one too) records them.
        self._epoch_batches = 0
        self._resume_position = self._sampler_position_to_resume()
        add_callback(self, "on_train_epoch_start", self._start_sampler_epoch, first=True)
        add_callback(self, "on_train_step_end", self._count_batch, first=True)
        add_callback(self, "on_train_step_end", lambda trainer: self._stop_on_signal())
        # The kit's own log lines go into the run's log file next to Coqui's.
        self._kit_log_handler = logging.FileHandler(self.output_path / log_name(self.args.rank))
        self._kit_log_handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("ruslan_glowtts").addHandler(self._kit_log_handler)

    # -- signals ---------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal:
            # A second signal: the user does not want to wait for the step to end.
            print(
                f"{signal.Signals(signum).name} again: exiting now, without a checkpoint", file=sys.stderr, flush=True
            )
            os._exit(128 + signum)
        self._signal = signum
        logger.warning(
            " ! %s received: stopping after this step (a checkpoint will be saved; send it again to exit at once)",
            signal.Signals(signum).name,
        )

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
                    self.dashboard_logger.add_scalar(
                        HEALTH_SKIPPED_SAMPLES, float(len(self.unloadable)), self.total_steps_done
                    )
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
            logger.warning(
                " ! Cannot read the batch position from %s (%s): the epoch restarts from its first batch", restored, exc
            )
            return None
        position = state.get(SAMPLER_STATE)
        return (int(position["epoch"]), int(position["batches_done"])) if position else None

    def checkpoint_extras(self) -> dict[str, Any]:
        """The position in the epoch's batch order, in every checkpoint: a resume continues the epoch
        where it stopped instead of training its first batches twice."""
        return {SAMPLER_STATE: {"epoch": self.epochs_done, "batches_done": self._epoch_batches}}

    # -- checkpoints and the step count ----------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Coqui calls this in the middle of a step, before it counts the step: its checkpoint_N would
        hold N+1 steps. The kit writes its periodic checkpoint at the end of the step instead."""

    def _checkpoint_at_step_end(self, trainer: Trainer) -> None:
        step = self.total_steps_done
        if self.config.save_checkpoints and self.config.save_step and step % self.config.save_step == 0:
            self._write_checkpoint()

    def _write_checkpoint(self) -> None:
        if self.args.rank == 0:
            self.write_checkpoint()
        self._saved_step = self.total_steps_done

    def _stop_at_max_steps(self, trainer: Trainer) -> None:
        if self.max_steps and self.total_steps_done >= self.max_steps:
            raise StopTraining

    # -- the guarded step ------------------------------------------------------------------------
    def optimize(
        self,
        batch,
        optimizer,
        scaler,
        criterion,
        scheduler,
        *,
        optimizer_idx=None,
        step_optimizer=True,
        num_optimizers=1,
    ):
        if optimizer_idx is not None or self.use_accelerate or not self.config.health.enabled:
            # GlowTTS has one optimizer; the guard covers that case (and can be switched off)
            return super().optimize(
                batch,
                optimizer,
                scaler,
                criterion,
                scheduler,
                optimizer_idx=optimizer_idx,
                step_optimizer=step_optimizer,
                num_optimizers=num_optimizers,
            )
        start = time.time()
        step = self.total_steps_done
        model = model_of(self)
        if getattr(model, "run_data_dep_init", False):
            if self.num_gpus <= 1 and not bool(torch.isfinite(batch["mel_input"]).all()):
                # GlowTTS re-initialises every ActNorm layer from each data-dependent-init batch: a
                # batch with NaN features would make them NaN, with no update for the guard to skip.
                logger.warning(" ! Step %d: data-dependent init skips a batch with non-finite features", step)
                return None, {}, time.time() - start
        else:
            step_begin(model)
        values: dict[str, Any] = {}
        try:
            outputs, loss_dict = self.compute_loss(batch, criterion)
        except RuntimeError as exc:
            if not is_nan_loss_error(exc):
                raise
            # A loss that raises on NaN (Coqui's GlowTTSLoss; the kit's raises only in eval): this
            # micro-batch spoils its whole update, which is skipped at the window's last micro-batch.
            logger.warning(" ! Step %d: %s", step, str(exc).strip(" [!]."))
            self._nan_loss_backward()
            self._window_poisoned = True
            self.ledger.record(step, batch, None, accumulating=not step_optimizer)  # the batch behind a NaN loss
            outputs, loss = None, None
        else:
            if not loss_dict:  # data-dependent init batches
                return outputs, {}, time.time() - start
            self.guard.record_batch(batch)
            self.ledger.record(step, batch, outputs, accumulating=not step_optimizer)  # no host sync
            self.callbacks.before_backward_pass(self, loss_dict)
            loss = loss_dict["loss"] / float(self.grad_accum_steps)
            try:
                (scaler.scale(loss) if scaler is not None else loss).backward()
            except Exception as exc:
                if not recover(model, exc):
                    raise
                # Inductor compiles the backward at its first use: it failed, so this update is
                # dropped and the decoder runs eagerly from the next step.
                self._window_poisoned = True
            # Kept on the device: read back with the step's other values (StepValueQueue).
            values = {key: value.detach() for key, value in loss_dict.items() if torch.is_tensor(value)}
            finite = torch.isfinite(values["loss"])
            self._window_finite = finite if self._window_finite is None else self._window_finite & finite
        if not step_optimizer:  # accumulating micro-batches
            return outputs, values, time.time() - start
        update = guarded_update(
            self,
            optimizer,
            scaler,
            scheduler,
            loss=loss,
            window_finite=self._window_finite,
            poisoned=self._window_poisoned,
        )
        self._window_finite, self._window_poisoned = None, False
        values.update(update.values, **{JUDGED: float(update.judged)})
        if scaler is not None:
            values = record_amp_scale(values, scaler)
        return outputs, values, time.time() - start

    def log_step_values(self, *, wait: bool = False) -> None:
        super().log_step_values(wait=wait)
        self.ledger.write_ready()  # the ledger's lines, read back like the step's own values

    def on_step_values(self, read: ReadValues) -> dict[str, float]:
        """A step's values reached the host: the guard judges an update decided on the device (it
        was skipped there already when not finite), and only an applied update's losses are logged
        (a skipped one would poison the averages and plot a fake grad_norm)."""
        values = dict(read.values)
        applied = values.pop(UPDATE_APPLIED, None)
        judged = values.pop(JUDGED, 1.0)
        if applied is None:  # data-dependent init, or a micro-batch of an accumulation window
            return values
        if not judged:
            self.guard.observe_update(
                self, read.step, values["grad_norm"], values.get("loss", math.nan), applied=bool(applied)
            )
            if not applied:
                rewind_scheduler(self.optimizer[0], self.scheduler[0])
        return values if applied else {}

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
        if self._saved_step == self.total_steps_done:
            return True  # this step's periodic checkpoint
        if not weights_finite(self.model):
            logger.error(" ! Not saving a checkpoint (%s): the weights are not finite.", why)
            return False
        self._write_checkpoint()
        return True

    def health_summary(self) -> dict[str, Any]:
        """The guard's summary, for run.json."""
        return asdict(self.guard.summary)

    def fit(self) -> Outcome:
        previous_handlers = self._install_signal_handlers()
        step = self.total_steps_done
        try:
            if self.max_steps and step >= self.max_steps:
                return Outcome(
                    "max_steps",
                    EXIT_OK,
                    step,
                    f"already at step {step} (--max-steps {self.max_steps}): nothing to train",
                )
            return self._train()
        except OSError as exc:
            if not is_disk_error(exc):
                raise
            # The disk's fault, not the code's: one line, no traceback. The failed write's temp file is
            # gone (atomic_files) and the older checkpoints are untouched.
            what = Path(exc.filename).name if exc.filename else "a file"
            return Outcome(
                "crashed",
                EXIT_CRASH,
                self.total_steps_done,
                f"could not write {what} at step {self.total_steps_done}: {exc.strerror}; the checkpoints "
                "written before are intact",
            )
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self.ledger.close()
            self._close()

    def _train(self) -> Outcome:
        """The training loop, and how each way out of it ends the run. A write that fails for the
        disk's sake, here or while saving on the way out, leaves to fit()."""
        try:
            try:
                self.run_training_loop()
            finally:
                self._read_back_steps()  # however the loop ended, before the run saves and ends
            outcome = Outcome("finished", EXIT_OK, self.total_steps_done, "all epochs done")
        except HealthStop as stop:
            outcome = Outcome(
                "exploded",
                EXIT_EXPLODED,
                self.total_steps_done,
                f"step {stop.alarm.step}: {stop.alarm.message}",
                alarm=stop.alarm,
                recent_samples=self.guard.recent_samples(),
            )
        except StopTraining:
            self._save_if_finite("--max-steps reached")
            outcome = Outcome("max_steps", EXIT_OK, self.total_steps_done, f"stopped at step {self.total_steps_done}")
        except (StopSignal, KeyboardInterrupt) as stop:
            signum = stop.signum if isinstance(stop, StopSignal) else signal.SIGINT
            why = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            saved = self.config.save_on_interrupt and self._save_if_finite(why)
            self.callbacks.on_keyboard_interrupt(self)
            status, code = (
                ("interrupted", EXIT_INTERRUPTED) if signum == signal.SIGINT else ("terminated", EXIT_TERMINATED)
            )
            step = self.total_steps_done
            outcome = Outcome(
                status,
                code,
                step,
                f"{status} by {why} at step {step}"
                + (f"; {checkpoint_name(step)} saved" if saved else "; no checkpoint saved"),
            )
        except TooManyUnloadable:
            listed = "; ".join(f"{Path(name).name} ({why})" for name, why in sorted(self.unloadable.items()))
            outcome = Outcome(
                "bad_data",
                EXIT_USAGE,
                self.total_steps_done,
                f"{len(self.unloadable)} samples failed to load, more than the {self._max_unloadable} "
                f"tolerated (1 %): {listed}. Check them with python -m ruslan_glowtts.prepare",
            )
        except Exception as exc:
            if is_disk_error(exc):
                raise
            logger.error("%s", traceback.format_exc())
            saved = self._save_if_finite("crash")
            outcome = Outcome(
                "crashed",
                EXIT_CRASH,
                self.total_steps_done,
                f"{type(exc).__name__}: {exc}" + ("; checkpoint saved" if saved else ""),
            )
        return outcome

    def _read_back_steps(self) -> None:
        """Log and judge the steps whose values are still on their way (StepValueQueue), before the
        run saves and ends: the guard's counts and the last TrainIterStats points must be complete."""
        try:
            self.log_step_values(wait=True)
        except Exception as exc:  # noqa: BLE001 - a broken device must not hide why the run ended
            logger.warning(" ! The last steps' values could not be read back (%s: %s)", type(exc).__name__, exc)

    def _close(self) -> None:
        # The loaders' worker processes end with the run, not at interpreter exit: they ignore
        # SIGTERM/SIGINT (data_loader.init_loader_worker), and a loader torn down here tells them to stop.
        self.train_loader = self.eval_loader = self.test_loader = None
        gc.collect()
        if self.args.rank == 0:
            self.dashboard_logger.finish()
        if self.num_gpus > 1 and dist.is_initialized():
            dist.destroy_process_group()
        coqui_compat.remove_run_log_handlers(Path(self.output_path), "ruslan_glowtts")
