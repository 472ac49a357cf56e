"""The health guard: non-finite updates never reach the weights, explosions are detected and
answered by the run's policy, and a known-good checkpoint is always at hand for a rollback.

Three parts, used by KitTrainer (ruslan_glowtts/trainer.py):
- Detector: rules on the stream of pre-clip gradient norms, one value per optimizer update.
- KnownGoodCheckpoints: a rolling checkpoint that is only ever replaced by a healthy state.
- HealthGuard: the step guard (skip non-finite updates), TensorBoard `Health/*` logging, and the
  policy: warn (banner + TensorBoard text), stop (exit 3 with the next command), or escalate
  (exit this run; ruslan_glowtts/train.py rolls back and continues on the fallback tier).

Detection rules. Gradient norms grow multiplicatively and GlowTTS's healthy band spans 1-50, so
the rules compare medians and ratios (log domain), never means:
- level: the median of the last `level_window` norms is above `grad_norm_limit` (the "never above
  100" line). A median needs a sustained rise; one spike does not move it.
- jump: the median of the last `jump_window` norms is `jump_factor` x the median of the
  `baseline_window` before them, and above `healthy_max`: the sigmoid's jump (100 -> 500). Both
  sides are medians, so this detects a level shift, not a spike. Megatron's "10x the early max"
  would miss GlowTTS, whose early norms are already 10-50 (docs STABILITY.md).
- trend: the medians of the four quarters of the last `trend_window` norms rise monotonically,
  the last is `trend_factor` x the first, and above `healthy_max`: "constantly rising".
- non-finite burst: `nonfinite_burst` skipped updates within `nonfinite_window` updates; and
  `max_consecutive_nonfinite` in a row ends the run under any policy (training is not happening).
- spike (reported in TensorBoard, no action): the robust z-score of log(norm) against the
  baseline's median and MAD exceeds `spike_z`. This is OLMo-core's skip-step rule (|z| > 6 over a
  128-step window), with median/MAD instead of mean/std so that the spikes themselves do not
  inflate the scale (ZClip notes the same poisoning of its EMA by non-finite values).
The explosion rules wait for `grace_steps` updates after a (re)start: GlowTTS's first steps after
data-dependent init swing, and the relative rules need a baseline.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from trainer.io import save_model

from ruslan_glowtts.atomic_files import atomic_output, write_text
from ruslan_glowtts.config import HealthConfig
from ruslan_glowtts.runs import KNOWN_GOOD, KNOWN_GOOD_META

if TYPE_CHECKING:
    from trainer import Trainer

logger = logging.getLogger(__name__)

_CANDIDATE = "known_good_candidate.pth"
EXPLOSION_KINDS = ("level", "jump", "trend", "nonfinite")
_REALARM_AFTER = 1000  # updates before the same rule may fire again (no banner storms)


@dataclass
class Alarm:
    kind: str  # level | jump | trend | nonfinite | diverged | spike
    step: int
    message: str

    @property
    def is_explosion(self) -> bool:
        return self.kind != "spike"


class HealthStop(Exception):
    """Ends the run: the policy is stop or escalate, or every update is non-finite."""

    def __init__(self, alarm: Alarm) -> None:
        super().__init__(alarm.message)
        self.alarm = alarm


def _median(values: np.ndarray) -> float:
    # np.median's overhead (~50 us) is most of a step's cost on windows this small
    k = len(values) // 2
    part = np.partition(values, k)
    return float(part[k]) if len(values) % 2 else float(0.5 * (part[k] + part[:k].max()))


class _Ring:
    """The last `size` values in a preallocated array: no per-step copies of a whole history."""

    def __init__(self, size: int) -> None:
        self.data = np.zeros(size)
        self.count = 0

    def __len__(self) -> int:
        return min(self.count, len(self.data))

    def append(self, value: float) -> None:
        self.data[self.count % len(self.data)] = value
        self.count += 1

    def last(self, k: int, skip: int = 0) -> np.ndarray:
        """The `k` values before the newest `skip` ones, oldest first."""
        k = min(k, len(self) - skip)
        end = self.count - skip
        idx = np.arange(end - k, end) % len(self.data)
        return self.data[idx]


class Detector:
    """Explosion rules over the pre-clip gradient norm of each optimizer update."""

    def __init__(self, cfg: HealthConfig) -> None:
        self.cfg = cfg
        size = max(cfg.trend_window, cfg.baseline_window + cfg.jump_window, cfg.level_window)
        self.logs = _Ring(size)  # log of the finite norms after the grace period
        self.nonfinite_updates: deque[int] = deque()  # update indices of skipped updates
        self.updates = 0  # optimizer updates seen (applied or skipped) since the (re)start
        self.consecutive_nonfinite = 0
        self._last_fired: dict[str, int] = {}
        self.last_alarm_update = -(10**9)

    # -- feeding --------------------------------------------------------------------------------
    def observe(self, step: int, grad_norm: float) -> list[Alarm]:
        """One optimizer update: its pre-clip norm (NaN/Inf for a skipped update)."""
        self.updates += 1
        if not math.isfinite(grad_norm):
            return self._observe_nonfinite(step)
        self.consecutive_nonfinite = 0
        if self.updates <= self.cfg.grace_steps:
            return []
        log_norm = math.log(max(grad_norm, 1e-12))
        alarms = [a for a in (self._spike(step, grad_norm, log_norm),) if a]
        self.logs.append(log_norm)
        alarms += [a for a in (self._level(step), self._jump(step), self._trend(step)) if a]
        return [a for a in alarms if self._fire(a)]

    def _observe_nonfinite(self, step: int) -> list[Alarm]:
        self.consecutive_nonfinite += 1
        self.nonfinite_updates.append(self.updates)
        while self.nonfinite_updates and self.nonfinite_updates[0] <= self.updates - self.cfg.nonfinite_window:
            self.nonfinite_updates.popleft()
        if self.consecutive_nonfinite >= self.cfg.max_consecutive_nonfinite:
            return [Alarm("diverged", step, f"the last {self.consecutive_nonfinite} updates were all non-finite "
                                            "(NaN/Inf loss or gradients): training has diverged")]
        if len(self.nonfinite_updates) >= self.cfg.nonfinite_burst:
            alarm = Alarm("nonfinite", step, f"{len(self.nonfinite_updates)} non-finite updates within the last "
                                             f"{self.cfg.nonfinite_window} (skipped, weights untouched)")
            return [alarm] if self._fire(alarm) else []
        return []

    def _fire(self, alarm: Alarm) -> bool:
        last = self._last_fired.get(alarm.kind)
        if last is not None and self.updates - last < _REALARM_AFTER:
            return False
        self._last_fired[alarm.kind] = self.updates
        if alarm.is_explosion:
            self.last_alarm_update = self.updates
        return True

    # -- rules ----------------------------------------------------------------------------------
    def _level(self, step: int) -> Alarm | None:
        w = self.cfg.level_window
        if len(self.logs) < w:
            return None
        median = math.exp(_median(self.logs.last(w)))
        if median > self.cfg.grad_norm_limit:
            return Alarm("level", step, f"grad_norm median {median:.0f} over the last {w} updates is above "
                                        f"the limit {self.cfg.grad_norm_limit:g}")
        return None

    def _jump(self, step: int) -> Alarm | None:
        w, b = self.cfg.jump_window, self.cfg.baseline_window
        if len(self.logs) < w + max(b // 4, w):
            return None
        recent = math.exp(_median(self.logs.last(w)))
        baseline = math.exp(_median(self.logs.last(b, skip=w)))
        if recent > self.cfg.healthy_max and recent >= self.cfg.jump_factor * baseline:
            return Alarm("jump", step, f"grad_norm jumped x{recent / baseline:.1f} (median {baseline:.0f} -> "
                                       f"{recent:.0f} within {w} updates)")
        return None

    def _trend(self, step: int) -> Alarm | None:
        w = self.cfg.trend_window
        # A steady rise is slow by nature: looking every w/20 updates is enough and keeps it cheap.
        if len(self.logs) < w or self.logs.count % max(w // 20, 1):
            return None
        medians = [math.exp(_median(q)) for q in np.array_split(self.logs.last(w), 4)]
        rising = all(a < b for a, b in itertools.pairwise(medians))
        if rising and medians[-1] > self.cfg.healthy_max and medians[-1] >= self.cfg.trend_factor * medians[0]:
            return Alarm("trend", step, f"grad_norm rising steadily: median {medians[0]:.0f} -> {medians[-1]:.0f} "
                                        f"over the last {w} updates")
        return None

    def _spike(self, step: int, grad_norm: float, log_norm: float) -> Alarm | None:
        b = self.cfg.baseline_window
        if len(self.logs) < max(b // 4, 8):
            return None
        logs = self.logs.last(b)
        center = _median(logs)
        mad = 1.4826 * _median(np.abs(logs - center)) + 1e-3
        z = (log_norm - center) / mad
        if z > self.cfg.spike_z:
            return Alarm("spike", step, f"grad_norm spike {grad_norm:.1f} (robust z {z:.1f} against the last {b})")
        return None

    # -- state ----------------------------------------------------------------------------------
    def is_healthy(self) -> bool:
        """Healthy now: no explosion alarm and no skipped update within the recent windows, and
        the recent median within the limit."""
        recent = self.cfg.nonfinite_window
        if self.nonfinite_updates and self.nonfinite_updates[-1] > self.updates - recent:
            return False
        if self.updates - self.last_alarm_update <= max(self.cfg.level_window, self.cfg.jump_window):
            return False
        values = self.logs.last(self.cfg.level_window)
        return not len(values) or math.exp(_median(values)) <= self.cfg.grad_norm_limit


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
        self._candidate = run_dir / _CANDIDATE
        self._candidate_step: int | None = None
        self._tainted = False

    def taint(self) -> None:
        self._tainted = True

    def at_step(self, trainer: Trainer, step: int, healthy: bool) -> None:
        if self.every <= 0 or step % self.every != 0:
            return
        if healthy and not self._tainted and self._candidate_step is not None and self._candidate.is_file():
            os.replace(self._candidate, self.path)
            write_text(self.run_dir / KNOWN_GOOD_META,
                       json.dumps({"step": self._candidate_step, "confirmed_at_step": step}, indent=2) + "\n")
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
        save_model(trainer.config, trainer._get_model(), temp, current_step=step, epoch=trainer.epochs_done)


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

    def __init__(self, cfg: HealthConfig, run_dir: Path, *, rank: int = 0,
                 next_command: Callable[[], str] = lambda: "") -> None:
        self.cfg = cfg
        self.rank = rank
        self.detector = Detector(cfg)
        self.checkpoints = KnownGoodCheckpoints(run_dir, cfg.checkpoint_every)
        self.summary = HealthSummary()
        self.next_command = next_command
        self.pending_stop: Alarm | None = None
        # sample names of the batches of the last `skip_window` steps: skipped after a rollback
        self.recent_batches: deque[list[str]] = deque(maxlen=max(cfg.skip_window, 1))

    # -- during optimize() ----------------------------------------------------------------------
    def decide_update(self, trainer: Trainer, step: int, grad_norm: float, loss: float, *, amp: bool = False) -> bool:
        """True when the update may be applied: the loss and every gradient are finite.
        Under fp16 GradScaler (`amp`) the scaler skips overflowing updates itself (early overflows
        calibrate its scale, so they are not an explosion); amp_skipped() counts them."""
        finite = math.isfinite(grad_norm) and math.isfinite(loss)
        (nonfinite,) = reduce_flags([not finite])
        self._log(trainer, "Health/grad_norm", grad_norm, step)
        if nonfinite and amp and math.isfinite(loss):
            return True  # overflowing gradients: GradScaler's own skip (a NaN loss it cannot see: ours)
        if nonfinite:
            self._skipped(trainer, step, f"loss {loss:.4g}, pre-clip grad_norm {grad_norm:.4g}")
            grad_norm = math.nan
        self._handle(trainer, self.detector.observe(step, grad_norm))
        return not nonfinite

    def amp_skipped(self, trainer: Trainer, step: int) -> None:
        """GradScaler skipped the update (fp16 overflow): counted, not treated as an explosion,
        except that a run where every update overflows is stopped like any diverged run."""
        self.summary.amp_skipped_updates += 1
        self._log(trainer, "Health/amp_skipped_steps", self.summary.amp_skipped_updates, step)
        self.detector.consecutive_nonfinite += 1
        if self.detector.consecutive_nonfinite >= self.cfg.max_consecutive_nonfinite:
            self._handle(trainer, [Alarm("diverged", step, "every update overflowed in fp16 mixed precision")])

    def record_batch(self, batch: dict[str, Any]) -> None:
        names = batch.get("audio_unique_names") or batch.get("item_idxs") or []
        self.recent_batches.append([str(n) for n in names])

    def _skipped(self, trainer: Trainer, step: int, what: str) -> None:
        self.summary.skipped_updates += 1
        self.checkpoints.taint()
        self._log(trainer, "Health/skipped_steps", self.summary.skipped_updates, step)
        logger.warning(" ! Step %d: non-finite update skipped (%s); weights and optimizer state untouched.", step, what)

    # -- alarms and policy ---------------------------------------------------------------------
    def _handle(self, trainer: Trainer, alarms: list[Alarm]) -> None:
        for alarm in alarms:
            if alarm.kind == "spike":
                self._log(trainer, "Health/spike", 1.0, alarm.step)
                continue
            self.checkpoints.taint()
            self.summary.alarms.append(asdict(alarm))
            del self.summary.alarms[: -self.MAX_ALARMS_KEPT]
            self._log(trainer, "Health/alarm", 1.0, alarm.step)
            if self.rank == 0:
                trainer.dashboard_logger.add_text("Health/alarm", f"{alarm.kind}: {alarm.message}. {self._advice()}",
                                                  alarm.step)
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
        logger.warning("\n%s\n ! grad_norm EXPLOSION (%s) at step %d: %s.\n ! %s\n ! Policy 'warn': training "
                       "continues. --on-explosion stop or --auto-escalate act on it.\n%s",
                       line, alarm.kind, alarm.step, alarm.message, self._advice(), line)

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
