"""The health guard: non-finite updates never reach the weights, explosions are detected and
answered by the run's policy, and a known-good checkpoint is always at hand for a rollback.

Three parts, used by KitTrainer (ruslan_glowtts/training/trainer.py):
- Detector (explosion_rules): the rules on the pre-clip norm and loss of every optimizer update.
- KnownGoodCheckpoints: a rolling checkpoint that is only ever replaced by a healthy state.
- HealthGuard: the step guard (skip non-finite updates), TensorBoard `Health/*` logging, and the
  policy: warn (banner + TensorBoard text), stop (exit 3 with the next command), or escalate
  (exit this run; ruslan_glowtts/training/train.py rolls back and continues on the fallback tier).

The detection rules, their defaults and the statistics behind them live in
ruslan_glowtts/monitor/explosion_rules.py, shared with diagnose: the guard feeds them the pre-clip norm
and the loss of every optimizer update.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from trainer.io import save_model

from ruslan_glowtts.common.atomic_files import atomic_output, write_text
from ruslan_glowtts.common.run_layout import (
    HEALTH_ALARM,
    HEALTH_AMP_SKIPPED_STEPS,
    HEALTH_SKIPPED_STEPS,
    HEALTH_SPIKE,
    KNOWN_GOOD,
    KNOWN_GOOD_CANDIDATE,
    KNOWN_GOOD_META,
)
from ruslan_glowtts.monitor.explosion_rules import Alarm, Detector, RuleSettings
from ruslan_glowtts.training.config import HealthConfig
from ruslan_glowtts.training.coqui_compat import model_of

if TYPE_CHECKING:
    from trainer import Trainer

logger = logging.getLogger(__name__)

_REALARM_AFTER = 1000  # updates before the same rule may fire again (no banner storms)


class HealthStop(Exception):
    """Ends the run: the policy is stop or escalate, or every update is non-finite."""

    def __init__(self, alarm: Alarm) -> None:
        super().__init__(alarm.message)
        self.alarm = alarm


class KnownGoodCheckpoints:
    """A rolling known-good checkpoint, written atomically (temp + rename).

    Every `every` steps a healthy state is saved as a candidate; the candidate becomes
    known_good.pth only when the next boundary is reached with no alarm or skipped update in
    between. Detection lags the onset of an explosion (a rise starts before any rule fires), so a
    state is trusted only after `every` more healthy steps: a rollback loses at most 2 x `every`
    steps and never lands on a state that was already drifting. Weights only (the optimizer
    state is not needed: a rollback starts a fresh optimizer), to keep saving cheap.
    """

    def __init__(self, run_dir: Path, every: int) -> None:
        self.run_dir = run_dir
        self.every = every
        self.path = run_dir / KNOWN_GOOD
        self._candidate = run_dir / KNOWN_GOOD_CANDIDATE
        self._candidate_step: int | None = None
        self._tainted = False

    def taint(self) -> None:
        self._tainted = True

    def at_step(self, trainer: Trainer, step: int, healthy: bool) -> None:
        if self.every <= 0 or step % self.every != 0:
            return
        if healthy and not self._tainted and self._candidate_step is not None and self._candidate.is_file():
            os.replace(self._candidate, self.path)
            write_text(
                self.run_dir / KNOWN_GOOD_META,
                json.dumps({"step": self._candidate_step, "confirmed_at_step": step}, indent=2) + "\n",
            )
            logger.info(" > Known-good checkpoint: step %d (healthy through step %d)", self._candidate_step, step)
        if not healthy or self._tainted:
            self._candidate.unlink(missing_ok=True)
            self._candidate_step = None
            self._tainted = False
            return
        _save_weights(trainer, self._candidate, step)
        self._candidate_step = step


def _save_weights(trainer: Trainer, path: Path, step: int) -> None:
    with atomic_output(path) as temp:
        save_model(trainer.config, model_of(trainer), temp, current_step=step, epoch=trainer.epochs_done)


def reduce_flags(flags: list[bool]) -> list[bool]:
    """Under DDP every rank takes the same decision: a flag raised on any rank is raised on all."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flags
    tensor = torch.tensor([float(f) for f in flags])
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


@dataclass
class HealthSummary:
    skipped_updates: int = 0
    amp_skipped_updates: int = 0
    alarms: list[dict[str, Any]] = field(default_factory=list)


class HealthGuard:
    """The step guard and the policy, for one run (one Trainer)."""

    MAX_ALARMS_KEPT = 50

    def __init__(
        self, cfg: HealthConfig, run_dir: Path, *, rank: int = 0, next_command: Callable[[], str] = lambda: ""
    ) -> None:
        self.cfg = cfg
        self.rank = rank
        self.detector = Detector(RuleSettings.from_config(cfg), realarm_after=_REALARM_AFTER)
        self.checkpoints = KnownGoodCheckpoints(run_dir, cfg.checkpoint_every)
        self.summary = HealthSummary()
        self.next_command = next_command
        self.pending_stop: Alarm | None = None
        # sample names of the batches of the last `skip_window` steps: skipped after a rollback
        self.recent_batches: deque[list[str]] = deque(maxlen=max(cfg.skip_window, 1))
        # Called (step, kind, grad_norm, loss) for each flagged update: kind "skipped" (non-finite),
        # "spike", or an explosion rule's alarm. The trainer's utterance ledger listens (issue 19).
        self.on_flag: list[Callable[[int, str, float, float], None]] = []

    # -- during optimize() ----------------------------------------------------------------------
    def decide_update(self, trainer: Trainer, step: int, grad_norm: float, loss: float, *, amp: bool = False) -> bool:
        """True when the update may be applied: the loss and every gradient are finite (decided on
        the host, before the update: the vocoder's two optimizers and the fp16 GradScaler path; the
        GlowTTS step decides on the device and reports with observe_update)."""
        finite = math.isfinite(grad_norm) and math.isfinite(loss)
        (nonfinite,) = reduce_flags([not finite])
        if nonfinite and amp and math.isfinite(loss):
            self._log(trainer, "Health/grad_norm", grad_norm, step)
            return True  # overflowing gradients: GradScaler's own skip (a NaN loss it cannot see: ours)
        self.observe_update(trainer, step, grad_norm, loss, applied=not nonfinite)
        return not nonfinite

    def observe_update(self, trainer: Trainer, step: int, grad_norm: float, loss: float, *, applied: bool) -> None:
        """One optimizer update's pre-clip norm and loss, and whether it was applied: logged,
        counted when skipped, fed to the explosion rules. The GlowTTS step reports here when its
        values reach the host, a step or two after the update (the skip itself happened on the
        device, at the update: training/guarded_step.py)."""
        # A NaN loss leaves no gradient (its norm reads 0, which would look healthy): show NaN.
        self._log(trainer, "Health/grad_norm", grad_norm if math.isfinite(loss) else math.nan, step)
        if not applied:
            self._flag(step, "skipped", grad_norm, loss)
            self._skipped(trainer, step, f"loss {loss:.4g}, pre-clip grad_norm {grad_norm:.4g}")
            grad_norm = math.nan
        finite = math.isfinite(grad_norm) and math.isfinite(loss)
        alarms = self.detector.observe(step, grad_norm, loss if finite else None)
        spike = self.detector.last_spike  # every spike is flagged, not only the ones re-alarmed
        for alarm in alarms + ([spike] if spike is not None and spike not in alarms else []):
            self._flag(alarm.step, alarm.kind, grad_norm, loss)
        self._handle(trainer, alarms)

    def _flag(self, step: int, kind: str, grad_norm: float, loss: float) -> None:
        for hook in self.on_flag:
            hook(step, kind, grad_norm, loss)

    def amp_skipped(self, trainer: Trainer, step: int) -> None:
        """GradScaler skipped the update (fp16 overflow): counted, not treated as an explosion,
        except that a run where every update overflows is stopped like any diverged run."""
        self.summary.amp_skipped_updates += 1
        self._log(trainer, HEALTH_AMP_SKIPPED_STEPS, self.summary.amp_skipped_updates, step)
        self.detector.consecutive_nonfinite += 1
        if self.detector.consecutive_nonfinite >= self.detector.settings.max_consecutive_nonfinite:
            self._handle(trainer, [Alarm("diverged", step, "every update overflowed in fp16 mixed precision")])

    def record_batch(self, batch: dict[str, Any]) -> None:
        names = batch.get("audio_unique_names") or batch.get("item_idxs") or []
        self.recent_batches.append([str(n) for n in names])

    def _skipped(self, trainer: Trainer, step: int, what: str) -> None:
        self.summary.skipped_updates += 1
        self.checkpoints.taint()
        self._log(trainer, HEALTH_SKIPPED_STEPS, self.summary.skipped_updates, step)
        logger.warning(" ! Step %d: non-finite update skipped (%s); weights and optimizer state untouched.", step, what)

    # -- alarms and policy ---------------------------------------------------------------------
    def _handle(self, trainer: Trainer, alarms: list[Alarm]) -> None:
        for alarm in alarms:
            if alarm.kind == "spike":
                self._log(trainer, HEALTH_SPIKE, 1.0, alarm.step)
                continue
            self.checkpoints.taint()
            self.summary.alarms.append(asdict(alarm))
            del self.summary.alarms[: -self.MAX_ALARMS_KEPT]
            self._log(trainer, HEALTH_ALARM, 1.0, alarm.step)
            if self.rank == 0:
                trainer.dashboard_logger.add_text(
                    HEALTH_ALARM, f"{alarm.kind}: {alarm.message}. {self._advice()}", alarm.step
                )
            fatal = alarm.kind == "diverged"
            if fatal or self.cfg.policy in ("stop", "escalate"):
                self.pending_stop = alarm
            else:
                self._banner(alarm)

    def _advice(self) -> str:
        command = self.next_command()
        if command:
            return f"Next tier: {command}"
        return "No tier left: check the data (python -m ruslan_glowtts.prepare) and lower lr/grad_clip by hand"

    def _banner(self, alarm: Alarm) -> None:
        line = "=" * 78
        logger.warning(
            "\n%s\n ! grad_norm EXPLOSION (%s) at step %d: %s.\n ! %s\n ! Policy 'warn': training "
            "continues. --on-explosion stop or --auto-escalate act on it.\n%s",
            line,
            alarm.kind,
            alarm.step,
            alarm.message,
            self._advice(),
            line,
        )

    # -- after each step -----------------------------------------------------------------------
    def end_of_step(self, trainer: Trainer) -> None:
        """Called once Coqui has finished a step (logging, its own checkpoint)."""
        (stop,) = reduce_flags([self.pending_stop is not None])
        if stop:
            alarm = self.pending_stop or Alarm("remote", trainer.total_steps_done, "another rank raised an alarm")
            raise HealthStop(alarm)
        if self.rank == 0:
            self.checkpoints.at_step(trainer, trainer.total_steps_done, self.detector.is_healthy())

    def _log(self, trainer: Trainer, tag: str, value: float, step: int) -> None:
        if self.rank == 0:
            trainer.dashboard_logger.add_scalar(tag, value, step)

    def recent_samples(self) -> list[str]:
        """Samples of the last batches, most recent first, each once."""
        names = [name for batch in reversed(self.recent_batches) for name in batch]
        return list(dict.fromkeys(names))
