"""grad_norm traces the rule tests replay (one value per update): a healthy GlowTTS run, its
typical sigmoid explosion, and the stock blow-up of issue 10. Plain functions and constants."""

from __future__ import annotations

import math

import numpy as np

# The blow-up issue 10 describes: a stock run at constant lr 0.3 without clipping, NaN loss at step 28.
BLOW_UP = [4, 5, 6, 4, 5, 8, 6, 5, 7, 6, 9, 8, 11, 10, 12, 15, 14, 20, 25, 40, 77, 133, 304, 8_304, 3.8e7, 4.2e9]


def healthy_trace(n: int, seed: int = 0) -> np.ndarray:
    """Noisy grad norms in 1-50 like GlowTTS's: big swings in the first few hundred steps after
    data-dependent init, then a slowly wandering level with log-normal noise, plus rare isolated
    spikes (real healthy runs have them; one spike is not an explosion)."""
    rng = np.random.default_rng(seed)
    early = np.concatenate(
        [
            rng.uniform(lo, hi, size=int(rng.integers(20, 60)))
            for lo, hi in [(30, 50), (5, 12), (25, 50), (3, 8), (15, 45), (8, 20)] * 2
        ]
    )
    level = np.exp(np.cumsum(rng.normal(0, 0.01, n)) * 0.5 + math.log(12))
    trace = np.clip(level * np.exp(rng.normal(0, 0.35, n)), 1, 50)
    trace[: len(early)] = early[:n]
    spikes = rng.choice(np.arange(min(400, n // 2), n), size=n // 200, replace=False)
    trace[spikes] = rng.uniform(80, 150, size=len(spikes))
    return trace


def sigmoid_explosion(rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """GlowTTS's typical explosion, a sigmoid on a log axis: after healthy training, a smooth rise
    to ~100, a jump to ~500, a smooth rise to ~600. Returns the trace and the step where the rise
    leaves the healthy band."""
    healthy = healthy_trace(2000, seed=1)
    rise = 25 + 75 / (1 + np.exp(-np.linspace(-6, 6, 600)))  # sigmoid 25 -> 100
    jump = np.linspace(100, 500, 10)
    climb = np.linspace(500, 600, 500)
    smooth = np.concatenate([rise, jump, climb])
    trace = np.concatenate([healthy, smooth * np.exp(rng.normal(0, 0.1, len(smooth)))])
    onset = len(healthy) + int(np.argmax(rise > 50))
    return trace, onset


def explosions(alarms):
    """The alarms of the explosion rules (not spikes or notes)."""
    return [a for a in alarms if a.is_explosion]
