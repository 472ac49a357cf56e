"""The shared explosion rules (no torch): the catastrophic rule, how windows map from updates to
logged points, one place for every default, and the guard and diagnose using the same rules."""

from __future__ import annotations

import math
import re
from dataclasses import fields

import numpy as np
import pytest

from ruslan_glowtts.monitor.explosion_rules import DEFAULTS, RuleSettings, replay
from tests.helpers import REPO
from tests.traces import BLOW_UP, explosions, healthy_trace, sigmoid_explosion


def test_catastrophic_blow_up_fires_inside_the_grace_period():
    alarms, _ = replay(BLOW_UP)
    first = explosions(alarms)[0]
    assert first.kind == "catastrophic" and first.step < DEFAULTS.grace_steps
    # three norms in a row at or above 10x the limit: 8,304, 3.8e7, 4.2e9 (steps 23-25)
    assert first.step == 25


def test_two_orders_of_magnitude_rise_fires_before_ten_times_the_limit():
    trace = [5.0] * 30 + [600.0, 700.0, 800.0]
    first = explosions(replay(trace)[0])[0]
    assert first.kind == "catastrophic" and first.step == 32 and "rose x" in first.message


def test_loss_grown_by_an_order_of_magnitude_fires_from_the_first_update():
    losses = list(np.geomspace(3.2, 195, 12))
    norms = [5.0] * len(losses)  # the norm alone says nothing
    first = explosions(replay(norms, losses=losses)[0])[0]
    assert first.kind == "catastrophic" and "loss grew" in first.message
    assert losses[first.step] >= 3.2 * 10 - 1e-9


def test_glowtts_early_swings_are_not_catastrophic():
    # Right after data-dependent init the norm may sit far above the limit: grace is for that.
    early = np.concatenate([np.full(40, 300.0), np.full(10, 40.0), healthy_trace(500, seed=7)])
    losses = np.concatenate([np.linspace(8, 2, 50), np.full(500, 1.5)])
    assert explosions(replay(early, losses=losses)[0]) == []


@pytest.mark.parametrize("seed", range(3))
def test_ten_thousand_healthy_updates_with_losses_stay_silent(seed):
    rng = np.random.default_rng(seed)
    losses = 0.5 + 4 * np.exp(-np.arange(10_000) / 2000) + rng.normal(0, 0.1, 10_000)
    assert explosions(replay(healthy_trace(10_000, seed=seed), losses=losses)[0]) == []


def test_windows_map_from_updates_to_points():
    assert DEFAULTS.for_points(1) is DEFAULTS
    p = DEFAULTS.for_points(25)
    assert (p.grace_steps, p.level_window, p.jump_window, p.baseline_window, p.trend_window) == (2, 5, 3, 16, 64)
    assert (p.catastrophic_points, p.max_consecutive_nonfinite) == (1, 3)
    # a density: a sampled point is non-finite as often as an update is
    assert (p.nonfinite_burst, p.nonfinite_window) == (3, 20)
    # thresholds that are not windows do not change
    assert (p.grad_norm_limit, p.healthy_max, p.jump_factor, p.trend_factor) == (100, 50, 3, 1.5)
    # a window long enough keeps its length in training steps
    assert DEFAULTS.for_points(4).trend_window * 4 == DEFAULTS.trend_window


@pytest.mark.parametrize("every", [1, 5, 25])
def test_the_same_explosion_fires_every_update_and_every_plot_step(every):
    trace, onset = sigmoid_explosion(np.random.default_rng(0))
    steps = np.arange(len(trace))[::every]
    alarms, _ = replay(trace[::every], DEFAULTS.for_points(every), steps=steps)
    first = explosions(alarms)[0]
    crossing_100 = int(np.argmax(trace[2000:] > 100)) + 2000
    assert onset <= first.step <= crossing_100 + 50 * every
    healthy = healthy_trace(10_000, seed=11)
    assert explosions(replay(healthy[::every], DEFAULTS.for_points(every))[0]) == []


def test_a_runs_own_settings_steer_the_rules():
    settings = RuleSettings.from_mapping(
        {"grad_norm_limit": 30.0, "level_window": 10, "policy": "warn", "healthy_max": "oops", "jump_factor": True}
    )
    assert settings.grad_norm_limit == 30.0 and settings.level_window == 10
    assert settings.healthy_max == DEFAULTS.healthy_max and settings.jump_factor == DEFAULTS.jump_factor
    assert RuleSettings.from_mapping(None) == DEFAULTS


def test_health_config_takes_every_rule_default_from_the_rules():
    from ruslan_glowtts.training.config import HealthConfig

    cfg = HealthConfig()
    shared = [f.name for f in fields(RuleSettings) if hasattr(cfg, f.name)]
    assert len(shared) == len(fields(RuleSettings)) - 1  # all but min_points (diagnose only)
    assert RuleSettings.from_config(cfg) == DEFAULTS


def test_each_threshold_default_is_written_in_exactly_one_place():
    sources = [
        p
        for d in ("ruslan_glowtts", "configs", "presets")
        for p in (REPO / d).rglob("*")
        if p.suffix in (".py", ".toml")
    ] + [REPO / "train_ruslan_glowtts.py"]
    for f in fields(RuleSettings):
        # `name: type = number` (Python) or `name = number` (TOML), dotted health.name too
        pattern = re.compile(rf"(?<![\w.]){f.name}\s*(?::\s*\w+\s*)?=\s*[-+]?[0-9]", re.MULTILINE)
        found = [str(p.relative_to(REPO)) for p in sources for _ in pattern.finditer(p.read_text(encoding="utf-8"))]
        assert found == ["ruslan_glowtts/monitor/explosion_rules.py"], (f.name, found)


def test_the_rules_module_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, ruslan_glowtts.monitor.explosion_rules, ruslan_glowtts.monitor.diagnose; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_nonfinite_values_feed_the_burst_rule_not_the_statistics():
    trace = list(healthy_trace(200, seed=3)) + [math.nan, 20.0, math.inf, 15.0, math.nan]
    kinds = [a.kind for a in explosions(replay(trace)[0])]
    assert kinds == ["nonfinite"]
