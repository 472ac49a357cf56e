"""The explosion rules: one set of statistics, rules and defaults for the live health guard
(monitor/guard.py, fed every optimizer update) and for diagnose (monitor/diagnose/, fed the
logged points of a finished or running run). Pure Python and numpy: no torch, so that diagnose
starts fast and the rules can be replayed over any trace.

Gradient norms grow multiplicatively and a healthy GlowTTS run keeps its norm in a band of 1-50
that it never leaves for 100, so the rules compare medians and ratios of log(norm), never means:

- level: the median of the last `level_window` norms is above `grad_norm_limit` (the "never
  above 100" line). A median needs a sustained rise; one spike does not move it.
- jump: the median of the last `jump_window` norms is `jump_factor` x the median of the
  `baseline_window` before them, and above `healthy_max`: a level shift, not a spike. It catches
  the jump of GlowTTS's typical explosion: a smooth rise to about 100, a jump to about 500, then
  a smooth rise to about 600 (a sigmoid on a log axis).
- trend: the medians of the four quarters of the last `trend_window` norms rise monotonically,
  the last is `trend_factor` x the first and above `healthy_max`: the slow climb before the jump.
- catastrophic: no grace. `catastrophic_points` norms in a row at or above `catastrophic_factor`
  x `grad_norm_limit`; or above the limit and `catastrophic_rise` x the median of the (up to
  `baseline_window`) norms before them (two orders of magnitude); or as many losses in a row
  grown by `loss_factor` over the run's lowest loss (an order of magnitude: at least
  `floor + (loss_factor - 1) x max(|floor|, 1)`, because GlowTTS's loss can be negative). A
  norm a thousand times the limit is not GlowTTS's noisy start, and blow-ups in the first few
  dozen steps are common with a user's own lr.
- non-finite burst: `nonfinite_burst` non-finite norms (or losses) within `nonfinite_window`;
  `max_consecutive_nonfinite` in a row is a divergence (training is not happening).
- spike (reported, no action): the robust z-score of log(norm) against the baseline's median and
  MAD exceeds `spike_z`. OLMo-core's skip-step rule (|z| > 6 over a 128-step window), with
  median/MAD instead of mean/std so that the spikes themselves do not inflate the scale
  (refreshed every `baseline_window / 16` observations: the baseline moves slowly).
The level, jump, trend and spike rules wait for `grace_steps` observations after a (re)start:
GlowTTS's first steps after data-dependent init swing, and the relative rules need a baseline.

How windows map. Every window above is counted in optimizer updates, which is what the guard
sees. diagnose sees one point every `plot_step` updates (Coqui's TrainIterStats) or every
update (the guard's Health/grad_norm); `RuleSettings.for_points(every)` divides each window by
`every`, rounding up and keeping a floor below which a median means little (`_POINT_FLOORS`),
so a window covers about the same stretch of training, or more where the floor holds. With
plot_step 25: grace 50 updates -> 2 points, level 25 -> 5 (floor), jump 8 -> 3 (floor), baseline
128 -> 16 (floor), trend 1000 -> 64 (floor), catastrophic 3 -> 1, 25 non-finite in a row -> 3.
The non-finite burst (`nonfinite_burst` within `nonfinite_window`) is a density and is not
scaled: a sampled point is non-finite as often as an update is.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation for Gaussian noise


@dataclass(frozen=True)
class RuleSettings:
    """Every threshold of the explosion rules and its default: the one place they are written.
    HealthConfig (config.py) takes its defaults from here, presets and --set change them per
    run, and diagnose reads a run's own values back from its config.json."""

    grace_steps: int = 50  # GlowTTS's first updates after data-dependent init swing: level/jump/trend/spike wait
    grad_norm_limit: float = 100.0  # "never above 100": a healthy GlowTTS run does not get there at all
    healthy_max: float = 50.0  # top of the band the stable preset keeps grad_norm in on RUSLAN (1-50)
    level_window: int = 25  # level rule: median over this many norms ("where is grad_norm now")
    jump_factor: float = 3.0  # jump rule: new level / old level (the typical 100 -> 500 jump is x5)
    jump_window: int = 8  # norms after a candidate jump (median: the new level must hold)
    baseline_window: int = 128  # norms before it (median: the level it jumped from); also the spike baseline
    trend_window: int = 1000  # trend rule: a steady rise is judged over this many norms...
    trend_factor: float = 1.5  # ...as growth of the last quarter's median over the first's by this factor
    spike_z: float = 6.0  # a norm this many robust sigmas above the baseline is a spike (OLMo-core's z)
    nonfinite_burst: int = 3  # this many non-finite norms or losses...
    nonfinite_window: int = 20  # ...within this many updates is a burst, not a blip
    max_consecutive_nonfinite: int = 25  # this many in a row: diverged, the run stops whatever the policy
    catastrophic_factor: float = 10.0  # catastrophic: norms at or above this x grad_norm_limit...
    catastrophic_points: int = 3  # ...this many in a row (also the window of the rise and loss tests)
    catastrophic_rise: float = 100.0  # or norms above the limit and this x the median of the norms before
    loss_factor: float = 10.0  # or losses grown by an order of magnitude over the run's lowest
    min_points: int = 50  # diagnose: judged points needed before a run can be called healthy

    @classmethod
    def from_mapping(cls, values: Any) -> RuleSettings:
        """The settings a run was trained with: its config.json `health` section (unknown keys and
        wrong types are ignored: a run folder is not ours to reject)."""
        if not isinstance(values, dict):
            return cls()
        kept: dict[str, Any] = {}
        for f in fields(cls):
            value = values.get(f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
                kept[f.name] = type(getattr(cls, f.name))(value)
        return cls(**kept)

    @classmethod
    def from_config(cls, cfg: Any) -> RuleSettings:
        """From any object with the same attribute names (HealthConfig)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)})

    def for_points(self, every: int) -> RuleSettings:
        """The same rules for a trace that holds one point every `every` updates (see module doc)."""
        if every <= 1:
            return self
        scaled = {
            name: max(floor(self), math.ceil(getattr(self, name) / every)) for name, floor in _POINT_FLOORS.items()
        }
        return replace(self, **scaled)


# The least a window may shrink to in points: below these a median follows the noise (a median
# of 2 is a mean, one spike moves it; quarters of a 40-point trend window hold 10 noisy points).
_POINT_FLOORS = {
    "grace_steps": lambda s: 0,
    "level_window": lambda s: 5,
    "jump_window": lambda s: 3,
    "baseline_window": lambda s: 16,
    "trend_window": lambda s: 64,
    "max_consecutive_nonfinite": lambda s: s.nonfinite_burst,
    "catastrophic_points": lambda s: 1,
}

DEFAULTS = RuleSettings()


@dataclass
class Alarm:
    kind: str  # catastrophic | level | jump | trend | nonfinite | diverged | spike
    step: int
    message: str
    data: dict[str, float] = field(default_factory=dict)  # the numbers behind the message

    @property
    def is_explosion(self) -> bool:
        return self.kind != "spike"


def median(values: np.ndarray) -> float:
    # np.median's overhead (~50 us) is most of a step's cost on windows this small
    k = len(values) // 2
    part = np.partition(values, k)
    return float(part[k]) if len(values) % 2 else float(0.5 * (part[k] + part[:k].max()))


def quarter_growth(logs: np.ndarray) -> tuple[float, float, bool]:
    """(first quarter's median, last quarter's median, all four rising) of log values, as norms."""
    medians = [math.exp(median(q)) for q in np.array_split(logs, 4)]
    return medians[0], medians[-1], all(a < b for a, b in itertools.pairwise(medians))


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
    """The rules over a stream of (step, grad_norm[, loss]) observations.

    observe() returns the alarms that fire; the same rule fires again only after `realarm_after`
    observations (no banner storms), so a replay can also ask for every firing with 1.
    """

    def __init__(self, settings: RuleSettings = DEFAULTS, *, realarm_after: int = 1000, unit: str = "updates") -> None:
        self.settings = settings
        self.realarm_after = realarm_after
        self.unit = unit  # what one observation is, for the messages: "updates" (guard) or "points" (diagnose)
        # log norms after grace, as many as the longest window needs
        self.logs = _Ring(
            max(settings.trend_window, settings.baseline_window + settings.jump_window, settings.level_window)
        )
        # finite norms from the first update on: the last catastrophic_points, and the ones before
        # them (the level a catastrophic rise is measured from)
        self.recent: deque[float] = deque(maxlen=settings.catastrophic_points)
        self.history: deque[float] = deque(maxlen=settings.baseline_window)
        self.recent_loss: deque[float] = deque(maxlen=settings.catastrophic_points)
        self.loss_floor = math.inf  # lowest median of catastrophic_points losses in a row
        self._above: deque[bool] = deque(maxlen=max(settings.level_window, settings.jump_window))  # norm > healthy_max
        self._above_count = 0
        self._spike_scale: tuple[float, float] | None = None  # the baseline's median and robust sigma
        self.nonfinite_updates: deque[int] = deque()  # observation indices of non-finite ones
        self.updates = 0  # observations (updates applied or skipped) since the (re)start
        self.consecutive_nonfinite = 0
        self._last_fired: dict[str, int] = {}
        self.last_alarm_update = -(10**9)
        self.last_spike: Alarm | None = None  # the spike rule on the last update, before the re-alarm limit

    # -- feeding --------------------------------------------------------------------------------
    def observe(self, step: int, grad_norm: float, loss: float | None = None) -> list[Alarm]:
        """One optimizer update: its pre-clip norm (NaN/Inf when skipped or non-finite) and, when
        known, its loss (None: not logged at this point)."""
        self.updates += 1
        self.last_spike = None
        if not math.isfinite(grad_norm) or (loss is not None and not math.isfinite(loss)):
            return self._observe_nonfinite(step)
        self.consecutive_nonfinite = 0
        alarms = [a for a in (self._catastrophic(step, grad_norm), self._loss(step, loss)) if a]
        if self.updates > self.settings.grace_steps:
            log_norm = math.log(max(grad_norm, 1e-12))
            self.last_spike = self._spike(step, grad_norm, log_norm)
            alarms += [self.last_spike] if self.last_spike else []
            self.logs.append(log_norm)
            if len(self._above) == self._above.maxlen:
                self._above_count -= self._above[0]
            self._above.append(grad_norm > self.settings.healthy_max)
            self._above_count += grad_norm > self.settings.healthy_max
            # Level and jump need a median above the band: at least half of their window above it.
            # Counting first skips their medians on almost every healthy update (the cost of a replay).
            if 2 * self._above_count >= min(self.settings.level_window, self.settings.jump_window):
                alarms += [a for a in (self._level(step), self._jump(step)) if a]
            alarms += [a for a in (self._trend(step),) if a]
        return [a for a in alarms if self._fire(a)]

    def _observe_nonfinite(self, step: int) -> list[Alarm]:
        self.consecutive_nonfinite += 1
        self.nonfinite_updates.append(self.updates)
        while self.nonfinite_updates and self.nonfinite_updates[0] <= self.updates - self.settings.nonfinite_window:
            self.nonfinite_updates.popleft()
        if self.consecutive_nonfinite >= self.settings.max_consecutive_nonfinite:
            return [
                Alarm(
                    "diverged",
                    step,
                    f"the last {self.consecutive_nonfinite} {self.unit} were all non-finite "
                    "(NaN/Inf loss or gradients): training has diverged",
                )
            ]
        if len(self.nonfinite_updates) >= self.settings.nonfinite_burst:
            count = len(self.nonfinite_updates)
            alarm = Alarm(
                "nonfinite",
                step,
                f"{count} non-finite {self.unit} within the last {self.settings.nonfinite_window} {self.unit}",
                {"count": count},
            )
            return [alarm] if self._fire(alarm) else []
        return []

    def _fire(self, alarm: Alarm) -> bool:
        last = self._last_fired.get(alarm.kind)
        if last is not None and self.updates - last < self.realarm_after:
            return False
        self._last_fired[alarm.kind] = self.updates
        if alarm.is_explosion:
            self.last_alarm_update = self.updates
        return True

    # -- rules ----------------------------------------------------------------------------------
    def _catastrophic(self, step: int, grad_norm: float) -> Alarm | None:
        rules, k = self.settings, self.settings.catastrophic_points
        if len(self.recent) == k:
            self.history.append(self.recent[0])  # the norms before the last k
        self.recent.append(grad_norm)
        if len(self.recent) < k:
            return None
        low = min(self.recent)
        if low <= rules.grad_norm_limit:
            return None  # the common case: nothing to compute
        if low >= rules.catastrophic_factor * rules.grad_norm_limit:
            return Alarm(
                "catastrophic",
                step,
                f"grad_norm {low:.3g} or more for {k} {self.unit} in a row, "
                f"{low / rules.grad_norm_limit:.0f}x the limit "
                f"{rules.grad_norm_limit:g}",
                {"low": low},
            )
        level = float(np.median(self.history)) if self.history else math.inf
        if low >= rules.catastrophic_rise * level:
            return Alarm(
                "catastrophic",
                step,
                f"grad_norm rose x{low / level:.0f} from its level {level:.3g} to "
                f"{low:.3g} for {k} {self.unit} in a row",
                {"low": low, "level": level},
            )
        return None

    def _loss(self, step: int, loss: float | None) -> Alarm | None:
        if loss is None:
            return None
        rules = self.settings
        self.recent_loss.append(loss)
        if len(self.recent_loss) < rules.catastrophic_points:
            return None
        low = min(self.recent_loss)
        floor = self.loss_floor
        self.loss_floor = min(self.loss_floor, sorted(self.recent_loss)[len(self.recent_loss) // 2])
        if math.isfinite(floor) and low >= floor + (rules.loss_factor - 1) * max(abs(floor), 1.0):
            return Alarm(
                "catastrophic",
                step,
                f"loss grew from {floor:.3g} to {low:.3g} (an order of magnitude) "
                f"for {rules.catastrophic_points} {self.unit} in a row",
                {"loss_low": low, "loss_floor": floor},
            )
        return None

    def _level(self, step: int) -> Alarm | None:
        w = self.settings.level_window
        if len(self.logs) < w:
            return None
        med = math.exp(median(self.logs.last(w)))
        if med > self.settings.grad_norm_limit:
            return Alarm(
                "level",
                step,
                f"grad_norm median {med:.0f} over the last {w} {self.unit} is above "
                f"the limit {self.settings.grad_norm_limit:g}",
                {"median": med},
            )
        return None

    def _jump(self, step: int) -> Alarm | None:
        w, b = self.settings.jump_window, self.settings.baseline_window
        if len(self.logs) < w + max(b // 4, w):
            return None
        recent = math.exp(median(self.logs.last(w)))
        baseline = math.exp(median(self.logs.last(b, skip=w)))
        if recent > self.settings.healthy_max and recent >= self.settings.jump_factor * baseline:
            return Alarm(
                "jump",
                step,
                f"grad_norm jumped x{recent / baseline:.1f} (median {baseline:.0f} -> "
                f"{recent:.0f} within {w} {self.unit})",
                {"from": baseline, "to": recent},
            )
        return None

    def _trend(self, step: int) -> Alarm | None:
        w = self.settings.trend_window
        # A steady rise is slow by nature: looking every w/20 updates is enough and keeps it cheap.
        if len(self.logs) < w or self.logs.count % max(w // 20, 1):
            return None
        first, last, rising = quarter_growth(self.logs.last(w))
        if rising and last > self.settings.healthy_max and last >= self.settings.trend_factor * first:
            return Alarm(
                "trend",
                step,
                f"grad_norm rising steadily: median {first:.0f} -> {last:.0f} over the last {w} {self.unit}",
                {"from": first, "to": last},
            )
        return None

    def _spike(self, step: int, grad_norm: float, log_norm: float) -> Alarm | None:
        b = self.settings.baseline_window
        if len(self.logs) < max(b // 4, 8):
            return None
        # The baseline moves slowly: its median and MAD are refreshed every b/16 updates, not each one.
        if self._spike_scale is None or self.logs.count % max(b // 16, 1) == 0:
            logs = self.logs.last(b)
            center = median(logs)
            self._spike_scale = center, MAD_TO_SIGMA * median(np.abs(logs - center)) + 1e-3
        center, mad = self._spike_scale
        z = (log_norm - center) / mad
        if z > self.settings.spike_z:
            return Alarm(
                "spike", step, f"grad_norm spike {grad_norm:.1f} (robust z {z:.1f} against the last {b})", {"z": z}
            )
        return None

    # -- state ----------------------------------------------------------------------------------
    def recent_median(self) -> float | None:
        """The median norm over the level window (after grace), or None before any."""
        values = self.logs.last(self.settings.level_window)
        return math.exp(median(values)) if len(values) else None

    def is_healthy(self) -> bool:
        """Healthy now: no explosion alarm and no non-finite update within the recent windows,
        and the recent median within the limit."""
        recent = self.settings.nonfinite_window
        if self.nonfinite_updates and self.nonfinite_updates[-1] > self.updates - recent:
            return False
        if self.updates - self.last_alarm_update <= max(self.settings.level_window, self.settings.jump_window):
            return False
        med = self.recent_median()
        return med is None or med <= self.settings.grad_norm_limit


def replay(
    values: Any, settings: RuleSettings = DEFAULTS, *, steps: Any = None, losses: Any = None, realarm_after: int = 1000
) -> tuple[list[Alarm], Detector]:
    """Feed a whole trace to a fresh Detector; (alarms, detector)."""
    detector = Detector(settings, realarm_after=realarm_after)
    alarms: list[Alarm] = []
    steps = range(len(values)) if steps is None else steps
    losses = itertools.repeat(None) if losses is None else losses
    for step, value, loss in zip(steps, values, losses):
        alarms += detector.observe(int(step), float(value), None if loss is None else float(loss))
    return alarms, detector
