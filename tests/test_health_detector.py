"""The guard's explosion detection on replayed grad-norm traces (no training: fast): the rules of
explosion_rules.py with the guard's settings (HealthConfig), fed every update."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ruslan_glowtts.monitor.explosion_rules import Detector, RuleSettings
from ruslan_glowtts.training.config import HealthConfig
from tests.traces import BLOW_UP, explosions, healthy_trace, sigmoid_explosion


def replay(trace, cfg: HealthConfig | None = None):
    detector = Detector(RuleSettings.from_config(cfg or HealthConfig()))
    alarms = []
    for step, value in enumerate(trace):
        alarms += detector.observe(step, float(value))
    return alarms, detector


@pytest.mark.parametrize("seed", range(5))
def test_ten_thousand_healthy_steps_raise_no_alarm(seed):
    alarms, detector = replay(healthy_trace(10_000, seed=seed))
    assert explosions(alarms) == []
    assert detector.is_healthy()
    # the isolated spikes are seen and reported, not acted on
    assert any(a.kind == "spike" for a in alarms)


def test_sigmoid_explosion_is_flagged_within_50_steps():
    trace, onset = sigmoid_explosion(np.random.default_rng(0))
    alarms, detector = replay(trace)
    first = explosions(alarms)[0]
    jump_step = 2000 + 600
    crossing_100 = int(np.argmax(trace[2000:] > 100)) + 2000
    assert first.step >= onset  # nothing while healthy
    assert first.step <= crossing_100 + 50
    assert first.step < jump_step  # caught on the smooth rise, before the jump to 500
    assert first.kind == "trend"
    assert not detector.is_healthy()


def test_jump_alone_is_flagged_within_a_few_steps():
    rng = np.random.default_rng(3)
    trace = np.concatenate([healthy_trace(1500, seed=2), 500 * np.exp(rng.normal(0, 0.1, 100))])
    alarms, _ = replay(trace)
    first = explosions(alarms)[0]
    assert first.kind == "jump" and 1500 <= first.step <= 1500 + 10


def test_constant_rise_to_1000_is_flagged_before_100():
    rising = np.geomspace(20, 1000, 3000)
    trace = np.concatenate([healthy_trace(1000, seed=4), rising])
    alarms, _ = replay(trace)
    first = explosions(alarms)[0]
    assert first.kind == "trend"
    assert trace[first.step] < 100


def test_level_rule_needs_a_sustained_excess():
    cfg = HealthConfig()
    base = healthy_trace(1000, seed=5)
    scattered = base.copy()
    scattered[600:636:3] = 400  # 12 spikes within 36 steps: no median moves
    alarms, _ = replay(scattered, cfg)
    assert explosions(alarms) == []
    assert sum(a.kind == "spike" for a in alarms) >= 1
    sustained = np.concatenate([base, np.full(40, 150.0)])
    kinds = {a.kind for a in explosions(replay(sustained, cfg)[0])}
    assert "level" in kinds


def test_nonfinite_burst_and_divergence():
    base = list(healthy_trace(300, seed=6))
    burst = base + [math.nan, 20.0, math.inf, 15.0, math.nan] + base[:50]
    alarms, _ = replay(burst)
    assert [a.kind for a in explosions(alarms)] == ["nonfinite"]
    one_off = base + [math.nan] + base[:100]
    assert explosions(replay(one_off)[0]) == []
    diverged = base + [math.nan] * 25
    assert explosions(replay(diverged)[0])[-1].kind == "diverged"


def test_grace_period_ignores_glowtts_early_swings():
    # Right after (re)start the norms may sit far above the limit for a while.
    trace = np.concatenate([np.full(40, 300.0), healthy_trace(500, seed=7)])
    assert explosions(replay(trace)[0]) == []


def test_the_same_rule_does_not_fire_every_step():
    trace = np.concatenate([healthy_trace(500, seed=8), np.full(600, 400.0)])
    kinds = [a.kind for a in explosions(replay(trace)[0])]
    assert kinds.count("level") == 1 and kinds.count("jump") == 1


class _Dashboard:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.texts: list[tuple[str, str, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.texts.append((tag, text, step))


def test_the_guard_alarms_on_a_stock_blow_up_before_step_50(tmp_path):
    """The blow-up of a stock Coqui run (constant lr 0.3, no clipping, NaN loss at step 28) fed
    through HealthGuard.decide_update as KitTrainer does: the alarm comes inside the grace steps."""
    from types import SimpleNamespace

    from ruslan_glowtts.monitor.guard import HealthGuard

    guard = HealthGuard(HealthConfig(policy="stop"), tmp_path, next_command=lambda: "python train_ruslan_glowtts.py")
    trainer = SimpleNamespace(dashboard_logger=_Dashboard())
    losses = np.geomspace(3.2, 195, len(BLOW_UP))
    for step, (norm, loss) in enumerate(zip(BLOW_UP, losses, strict=True), start=1):
        assert guard.decide_update(trainer, step, float(norm), float(loss))  # finite: applied
        if guard.pending_stop:
            break
    assert guard.pending_stop is not None and guard.pending_stop.kind == "catastrophic"
    assert guard.pending_stop.step < 50
    assert any(tag == "Health/alarm" for tag, _, _ in trainer.dashboard_logger.texts)
