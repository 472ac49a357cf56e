"""diagnose on event files written here with torch's SummaryWriter: each verdict, the next-tier
command, a rolled-back run, 50,000 points per tag, and bad input.

Synthetic runs log every 25 steps (the kit's plot_step), like Coqui's TrainIterStats.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ruslan_glowtts.monitor import diagnose as dg
from ruslan_glowtts.monitor.diagnose import verdict as v
from ruslan_glowtts.monitor.events import RunEvents, Series, read_run
from ruslan_glowtts.monitor.explosion_rules import RuleSettings

REPO = Path(__file__).resolve().parents[1]

STEP = 25
GRAD = "TrainIterStats/grad_norm"
LOSS = "TrainIterStats/loss"


def write_events(run_dir: Path, series: dict[str, tuple], *, suffix: str = "") -> None:
    """One event file holding each tag's (steps, values), written in step order."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    # A large queue: the default (10) makes add_scalar wait for the writer thread at every call.
    writer = SummaryWriter(str(run_dir), max_queue=200_000, filename_suffix=suffix)
    for tag, (steps, values) in series.items():
        for step, value in zip(steps, values, strict=True):
            writer.add_scalar(tag, float(value), int(step))
    writer.close()


def falling_loss(steps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 0.5 + 4.0 * np.exp(-steps / 5000) + rng.normal(0, 0.05, len(steps))


def make_run(
    run_dir: Path,
    grad: np.ndarray,
    *,
    loss: np.ndarray | None = None,
    seed: int = 0,
    meta: dict | None = None,
    config: dict | None = None,
    checkpoints: tuple[str, ...] = (),
    extra: dict[str, tuple] | None = None,
) -> Path:
    rng = np.random.default_rng(seed)
    steps = np.arange(len(grad)) * STEP
    series = {
        GRAD: (steps, grad),
        LOSS: (steps, falling_loss(steps, rng) if loss is None else loss),
        "TrainIterStats/current_lr": (steps, np.full(len(grad), 2e-4)),
    }
    write_events(run_dir, {**series, **(extra or {})})
    if meta is not None:
        (run_dir / "run.json").write_text(json.dumps(meta), encoding="utf-8")
    if config is not None:
        (run_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for name in checkpoints:
        (run_dir / name).write_bytes(b"")
    return run_dir


def kit_meta(preset: str = "stable", chain: tuple[str, ...] = ("stable", "safer", "safest"), **extra) -> dict:
    return {
        "preset": preset,
        "tier_chain": list(chain),
        "dataset_path": "/data/RUSLAN prepared",
        "status": "running",
        "overrides": [
            {"key": "lr", "value": 2e-4, "source": "preset stable"},
            {"key": "hidden_channels_enc", "value": 32, "source": "--set"},
            {"key": "batch_size", "value": 16, "source": "--set"},  # safer sets batch_size: not carried
            {"key": "run_name", "value": "my run", "source": "--set"},
            {"key": "training_seed", "value": 7, "source": "--seed"},
        ],
        **extra,
    }


def healthy_grad(n: int, rng: np.random.Generator) -> np.ndarray:
    # Noisy, log-uniform over 1.5-48: the whole healthy band, no trend.
    return np.exp(rng.uniform(np.log(1.5), np.log(48), n))


def sigmoid_explosion(rng: np.random.Generator) -> np.ndarray:
    """GlowTTS's typical explosion: healthy ~10, a smooth sigmoid rise to ~100, a jump to ~500, a
    smooth rise to ~600."""
    calm = 10 * np.exp(rng.normal(0, 0.25, 250))
    i = np.arange(150)
    rise = 10 ** (1 + 1 / (1 + np.exp(-(i - 75) / 15))) * np.exp(rng.normal(0, 0.05, 150))
    climb = np.linspace(500, 600, 200) * np.exp(rng.normal(0, 0.05, 200))
    return np.concatenate([calm, rise, climb])


def test_healthy_noisy_run(tmp_path):
    run = make_run(tmp_path / "run", healthy_grad(600, np.random.default_rng(1)), meta=kit_meta())
    d = dg.diagnose(run)
    assert d.verdict == "healthy", d.reasons
    assert d.exit_code == 0 and d.command is None and d.recommended_preset is None
    g = d.stats["grad_norm"]
    assert 1 <= g["median"] <= 50 and g["max"] <= 50 and g["share_above_limit"] == 0
    assert g["jumps"] == [] and g["nonfinite"] == 0 and 0.5 < g["trend_growth"] < 2
    assert d.stats["loss"]["end"] < d.stats["loss"]["start"]


def test_sigmoid_explosion_is_exploding_and_recommends_the_next_tier(tmp_path):
    run = make_run(
        tmp_path / "run",
        sigmoid_explosion(np.random.default_rng(2)),
        meta=kit_meta(),
        checkpoints=("checkpoint_5000.pth", "checkpoint_12500.pth", "known_good.pth"),
    )
    d = dg.diagnose(run)
    assert d.verdict == "exploding" and d.exit_code == 3
    assert d.recommended_preset == "safer"
    assert d.command == (
        "python train_ruslan_glowtts.py --preset safer --dataset-path '/data/RUSLAN prepared' "
        f"--restore-path {run / 'known_good.pth'} --set hidden_channels_enc=32 "
        "--set 'run_name=\"my run\"' --seed 7"
    )
    (jump,) = d.stats["grad_norm"]["jumps"]
    # the jump rule fires once the new level holds for its window (2 points at 25 steps per point)
    assert 400 * STEP <= jump["step"] <= 402 * STEP and 4 < jump["factor"] < 6.5  # 100 -> 500
    assert any("jumped" in r for r in d.reasons) and any("above 100" in r for r in d.reasons)
    # The command parses with the kit's own CLI.
    from ruslan_glowtts.training.cli import parse_args

    args = parse_args(shlex.split(d.command)[2:])
    assert args.preset == "safer" and args.sets == ["hidden_channels_enc=32", 'run_name="my run"'] and args.seed == 7


def test_without_known_good_the_checkpoint_before_the_explosion_is_chosen(tmp_path):
    run = make_run(
        tmp_path / "run",
        sigmoid_explosion(np.random.default_rng(2)),
        meta=kit_meta(),
        checkpoints=("checkpoint_5000.pth", "best_model_7500.pth", "checkpoint_12500.pth"),
    )
    d = dg.diagnose(run)
    assert d.run["onset_step"] is not None and 7500 < d.run["onset_step"] < 12500
    assert f"--restore-path {run / 'best_model_7500.pth'}" in d.command


def test_plain_coqui_run_infers_its_tier_from_config(tmp_path):
    config = {"model": "glow_tts", "lr": 1e-3, "grad_clip": 5.0, "datasets": [{"path": "/data/RUSLAN"}]}
    run = make_run(
        tmp_path / "run",
        sigmoid_explosion(np.random.default_rng(3)),
        config=config,
        checkpoints=("checkpoint_20000.pth",),
    )
    d = dg.diagnose(run)
    assert d.verdict == "exploding" and d.recommended_preset == "stable"
    assert d.run["tier_chain"] == ["default", "stable", "safer", "safest"]
    # The only checkpoint was saved after the trouble began: still offered, with a note.
    assert d.command == (
        "python train_ruslan_glowtts.py --preset stable --dataset-path /data/RUSLAN "
        f"--restore-path {run / 'checkpoint_20000.pth'}"
    )
    assert "after the trouble began" in d.run["checkpoint_note"]


def test_plain_run_without_checkpoints_omits_restore_path(tmp_path):
    config = {"lr": 5e-4, "grad_clip": 5.0, "datasets": [{"path": "/data/RUSLAN"}]}  # between default and stable
    run = make_run(tmp_path / "run", sigmoid_explosion(np.random.default_rng(3)), config=config)
    d = dg.diagnose(run)
    assert d.command == "python train_ruslan_glowtts.py --preset stable --dataset-path /data/RUSLAN"


def test_end_of_the_chain_points_at_the_data(tmp_path):
    run = make_run(tmp_path / "run", sigmoid_explosion(np.random.default_rng(4)), meta=kit_meta("safest", ("safest",)))
    d = dg.diagnose(run)
    assert d.verdict == "exploding" and d.recommended_preset is None
    assert d.command.startswith("python -m ruslan_glowtts.prepare --src '/data/RUSLAN prepared'")


def test_constant_rise_to_1000_is_exploding(tmp_path):
    rng = np.random.default_rng(5)
    grad = np.concatenate([healthy_grad(100, rng) / 4, np.geomspace(10, 1000, 400) * np.exp(rng.normal(0, 0.1, 400))])
    d = dg.diagnose(make_run(tmp_path / "run", grad, meta=kit_meta()))
    assert d.verdict == "exploding", d.reasons
    assert "trend" in d.stats["rules"] and d.stats["grad_norm"]["jumps"] == []
    assert d.stats["rules"]["trend"]["first_step"] < d.stats["grad_norm"]["first_above_limit_step"]


def test_rise_above_the_band_is_exploding_before_it_reaches_100(tmp_path):
    rng = np.random.default_rng(6)
    # x7.5 in 100 points (2,500 steps): x2.2 over the trend window's 1,600 steps (64 points)
    grad = np.concatenate(
        [10 * np.exp(rng.normal(0, 0.2, 300)), np.geomspace(12, 90, 100) * np.exp(rng.normal(0, 0.05, 100))]
    )
    d = dg.diagnose(make_run(tmp_path / "run", grad, meta=kit_meta()))
    assert d.verdict == "exploding" and d.stats["grad_norm"]["max"] < 100
    assert any("trend rule" in r for r in d.reasons)


def test_rise_inside_the_band_is_a_warning(tmp_path):
    rng = np.random.default_rng(7)
    grad = np.concatenate(
        [4 * np.exp(rng.normal(0, 0.1, 300)), np.geomspace(5, 30, 80) * np.exp(rng.normal(0, 0.05, 80))]
    )
    d = dg.diagnose(make_run(tmp_path / "run", grad, meta=kit_meta()))
    assert d.verdict == "warning" and d.exit_code == 1 and d.command is None
    assert d.next_tier_command.startswith("python train_ruslan_glowtts.py --preset safer")
    assert any("leaves the band" in r for r in d.reasons)


def test_nan_burst_in_the_guards_grad_norm_is_diverged(tmp_path):
    grad = healthy_grad(300, np.random.default_rng(8))
    grad[200:210:3] = np.nan  # 4 NaN within 10 points
    grad[205] = np.inf
    run = make_run(tmp_path / "run", grad, meta=kit_meta(), checkpoints=("checkpoint_2500.pth",))
    # With the guard, Health/grad_norm is the raw norm (NaN written as is), read before Coqui's.
    write_events(
        run,
        {
            "Health/grad_norm": (np.arange(300) * STEP, grad),
            "Health/skipped_steps": (np.array([200, 203, 205, 206, 209]) * STEP, np.arange(1, 6)),
        },
        suffix=".guard",
    )
    d = dg.diagnose(run)
    assert d.verdict == "diverged" and d.exit_code == 3
    assert d.stats["grad_norm"]["tag"] == "Health/grad_norm" and d.stats["grad_norm"]["nonfinite"] == 5
    assert d.run["onset_step"] == 200 * STEP
    assert d.recommended_preset == "safer" and f"--restore-path {run / 'checkpoint_2500.pth'}" in d.command
    assert d.markers["skipped"] == [s * STEP for s in (200, 203, 205, 206, 209)]


def test_logged_zeros_at_the_end_are_diverged(tmp_path):
    # Coqui logs a NaN grad_norm as 0: a run that went NaN ends in zeros (and then crashes).
    grad = healthy_grad(300, np.random.default_rng(9))
    grad[-6:] = 0.0
    d = dg.diagnose(make_run(tmp_path / "run", grad, meta=kit_meta()))
    assert d.verdict == "diverged"
    assert d.stats["grad_norm"]["logged_zeros"] == 6 and "logged as 0" in d.reasons[0]


def test_nan_loss_is_diverged(tmp_path):
    rng = np.random.default_rng(10)
    steps = np.arange(300) * STEP
    loss = falling_loss(steps, rng)
    loss[-1] = np.nan
    d = dg.diagnose(make_run(tmp_path / "run", healthy_grad(300, rng), loss=loss, meta=kit_meta()))
    assert d.verdict == "diverged" and any("loss is non-finite" in r for r in d.reasons)


def test_one_isolated_logged_zero_is_only_a_warning(tmp_path):
    grad = healthy_grad(300, np.random.default_rng(11))
    grad[150] = 0.0
    d = dg.diagnose(make_run(tmp_path / "run", grad, meta=kit_meta()))
    assert d.verdict == "warning" and "isolated non-finite" in d.reasons[0]


def test_twenty_steps_is_too_early(tmp_path):
    d = dg.diagnose(make_run(tmp_path / "run", healthy_grad(20, np.random.default_rng(12)), meta=kit_meta()))
    assert d.verdict == "too_early" and d.exit_code == 0 and d.command is None


def test_single_spike_above_100_is_a_warning(tmp_path):
    grad = 10 * np.exp(np.random.default_rng(13).normal(0, 0.25, 400))
    grad[300] = 700.0
    d = dg.diagnose(make_run(tmp_path / "run", grad, meta=kit_meta()))
    assert d.verdict == "warning" and d.stats["grad_norm"]["max_step"] == 300 * STEP
    assert d.stats["grad_norm"]["spikes"] >= 1 and d.stats["grad_norm"]["jumps"] == []


def test_recent_guard_alarm_is_a_warning(tmp_path):
    grad = healthy_grad(400, np.random.default_rng(14))
    run = make_run(
        tmp_path / "run",
        grad,
        meta=kit_meta(),
        extra={
            "Health/alarm": (np.array([390 * STEP]), np.array([1.0])),
            "Health/escalation": (np.array([0]), np.array([1.0])),
        },
    )
    d = dg.diagnose(run)
    assert d.verdict == "warning" and any("alarm" in r for r in d.reasons)
    assert d.markers["alarms"] == [390 * STEP] and d.markers["escalations"] == [0]
    assert d.stats["health"]["escalation_index"] == 1


def test_escalation_lineage_is_reported(tmp_path):
    parent = make_run(tmp_path / "parent", sigmoid_explosion(np.random.default_rng(2)), meta=kit_meta())
    child = make_run(
        tmp_path / "child",
        healthy_grad(300, np.random.default_rng(15)),
        meta=kit_meta(
            "safer", ("safer", "safest"), parent_run=str(parent), reason="grad_norm above 100", escalation_index=1
        ),
    )
    d = dg.diagnose(child)
    assert [item["run"] for item in d.run["lineage"]] == [str(parent), str(child)]
    assert any("started by escalation: grad_norm above 100" in r for r in d.reasons)


def test_rolled_back_run_keeps_the_latest_value_per_step(tmp_path):
    """Steps 0-299 with an explosion from 200 on; a rollback to 200 re-runs healthy steps 200-260
    in a new file (resume) and, in the same file as before, 200-300 again (in-process rollback)."""
    run = tmp_path / "run"
    rng = np.random.default_rng(16)
    first = np.concatenate([healthy_grad(200, rng), np.full(100, 800.0)])
    write_events(run, {GRAD: (np.arange(300), first)}, suffix=".1")
    write_events(run, {GRAD: (np.arange(200, 261), np.full(61, 5.0))}, suffix=".2")
    read = read_run(run).scalars[GRAD]
    # The abandoned branch (201-299 at 800) is gone: steps are unique, in order, latest wins.
    assert read.steps.tolist() == list(range(261))
    # (event files store float32)
    assert (read.values[200:] == 5.0).all() and (read.values[:200] == first[:200].astype(np.float32)).all()

    same_file = tmp_path / "same"
    steps = np.concatenate([np.arange(300), np.arange(200, 320)])
    values = np.concatenate([first, np.full(120, 7.0)])
    write_events(same_file, {GRAD: (steps, values)})
    read = read_run(same_file).scalars[GRAD]
    assert read.steps.tolist() == list(range(320)) and (read.values[200:] == 7.0).all()


def test_fifty_thousand_points_keep_their_spike(tmp_path):
    n = 50_000
    rng = np.random.default_rng(17)
    grad = 10 * np.exp(rng.normal(0, 0.2, n))
    spike = int(rng.integers(1000, n - 1000))
    grad[spike] = 900.0
    steps = np.arange(n)
    write_events(tmp_path / "run", {GRAD: (steps, grad), LOSS: (steps, falling_loss(steps * 5, rng))})
    d = dg.diagnose(tmp_path / "run")
    # Every point is read (the default 10,000-point reservoir could drop the spike).
    assert d.stats["grad_norm"]["points"] == n and d.stats["loss"]["points"] == n
    assert d.stats["grad_norm"]["max"] == 900.0 and d.stats["grad_norm"]["max_step"] == spike
    assert d.verdict == "warning" and d.run["tier_source"].startswith("config.json")


def test_cli_exit_codes_json_and_plot(tmp_path, capsys):
    healthy = make_run(tmp_path / "healthy", healthy_grad(300, np.random.default_rng(18)), meta=kit_meta())
    exploding = make_run(tmp_path / "exploding", sigmoid_explosion(np.random.default_rng(2)), meta=kit_meta())
    assert dg.main([str(healthy)]) == 0
    assert "Verdict:  HEALTHY" in capsys.readouterr().out
    png = tmp_path / "plots" / "x.png"
    assert dg.main([str(exploding), "--json", "--plot", str(png)]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "exploding" and out["recommended_preset"] == "safer"
    assert set(out) >= {"verdict", "reasons", "recommended_preset", "stats"} and out["exit_code"] == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "run folder not found"),
        (lambda p: p.write_text("x"), "not a folder"),
        (lambda p: p.mkdir(), "no TensorBoard event files"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, setup, message):
    target = tmp_path / "target"
    setup(target)
    assert dg.main([str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert "Traceback" not in err


def test_folder_of_runs_names_one_to_diagnose(tmp_path, capsys):
    make_run(tmp_path / "runs" / "a", healthy_grad(30, np.random.default_rng(19)))
    assert dg.main([str(tmp_path / "runs")]) == 2
    assert f"python -m ruslan_glowtts.diagnose {tmp_path / 'runs' / 'a'}" in capsys.readouterr().err


def test_unwritable_plot_path_is_one_line(tmp_path, capsys):
    run = make_run(tmp_path / "run", healthy_grad(30, np.random.default_rng(20)))
    (tmp_path / "file").write_text("x")
    assert dg.main([str(run), "--plot", str(tmp_path / "file" / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --plot ") and "is a file, not a folder" in err and err.count("\n") == 1


def test_one_skipped_nan_at_the_end_of_a_guarded_run_is_only_a_warning(tmp_path):
    # The guard skipped that update: the weights are fine (unlike Coqui, which applies it).
    grad = healthy_grad(300, np.random.default_rng(21))
    run = make_run(tmp_path / "run", grad, meta=kit_meta())
    grad[-1] = np.nan
    write_events(run, {"Health/grad_norm": (np.arange(300) * STEP, grad)}, suffix=".guard")
    d = dg.diagnose(run)
    assert d.verdict == "warning" and "the guard skipped them" in d.reasons[0]


def test_rising_train_or_eval_loss_is_a_warning(tmp_path):
    rng = np.random.default_rng(22)
    grad = 10 * np.exp(rng.normal(0, 0.2, 400))
    steps = np.arange(400) * STEP
    rising = 1.0 + steps / 5000 + rng.normal(0, 0.05, 400)
    d = dg.diagnose(make_run(tmp_path / "train", grad, loss=rising, meta=kit_meta()))
    assert d.verdict == "warning" and any(r.startswith("loss rose by") for r in d.reasons)

    evals = (np.arange(1, 7) * 1500, np.array([3.0, 2.0, 1.5, 1.6, 1.7, 1.8]))
    d = dg.diagnose(make_run(tmp_path / "eval", grad, meta=kit_meta(), extra={"EvalStats/avg_loss": evals}))
    assert d.verdict == "warning" and d.stats["eval_loss"]["rising_evals"] == 3
    assert d.stats["eval_loss"]["best_step"] == 4500


# --- how the run ended, catastrophic blow-ups, unreadable event files

NAN_LOSS_TRACEBACK = """ > TRAINING (2026-11-29 22:02:20)
   --> TIME: 2026-11-29 22:02:21 -- STEP: 4/6 -- GLOBAL_STEP: 28
Traceback (most recent call last):
  File "trainer/trainer.py", line 1251, in _fit
RuntimeError:  [!] NaN loss with loss.
"""
# What Coqui itself leaves in its log after a crash: the traceback goes to the console only.
COQUI_CRASH_LOG = """ > CHECKPOINT : runs/x/checkpoint_27.pth
 ! Run is kept in runs/x
"""
# The blow-up of a stock run at constant lr 0.3 without clipping, as described in issue 10.
BLOW_UP = np.array(
    [4, 5, 6, 4, 5, 8, 6, 5, 7, 6, 9, 8, 11, 10, 12, 15, 14, 20, 25, 40, 77, 133, 304, 8_304, 3.8e7, 4.2e9], dtype=float
)


def stock_run(run_dir: Path, grad: np.ndarray, log: str | None, loss: np.ndarray | None = None) -> Path:
    """A Coqui run folder logged at every step (plot_step 1), no run.json."""
    steps = np.arange(1, len(grad) + 1)
    loss = np.geomspace(3.2, 195, len(grad)) if loss is None else loss
    write_events(run_dir, {GRAD: (steps, grad), LOSS: (steps, loss)})
    (run_dir / "config.json").write_text(
        json.dumps({"lr": 0.3, "grad_clip": 1e6, "datasets": [{"path": "/data/RUSLAN"}]}), encoding="utf-8"
    )
    (run_dir / "checkpoint_25.pth").write_bytes(b"")
    if log is not None:
        (run_dir / "trainer_0_log.txt").write_text(log, encoding="utf-8")
    return run_dir


def test_nan_loss_crash_in_the_first_steps_is_diverged_with_the_next_tier(tmp_path):
    d = dg.diagnose(stock_run(tmp_path / "run", BLOW_UP, NAN_LOSS_TRACEBACK))
    assert d.verdict == "diverged" and d.exit_code == 3
    assert d.run["ending"]["kind"] == "nan_loss" and "NaN loss with loss" in d.reasons[0]
    assert d.command.startswith("python train_ruslan_glowtts.py --preset ")
    assert "Ended:    Coqui's `NaN loss with loss` error" in dg.format_report(d)
    # Its only checkpoint (step 25) was saved after the divergence began: no starting point.
    assert d.run["onset_step"] < 25 and "--restore-path" not in d.command
    assert "from scratch" in d.recommendation


def test_nan_loss_crash_is_diverged_whatever_the_point_count(tmp_path):
    d = dg.diagnose(stock_run(tmp_path / "run", np.array([4.9]), NAN_LOSS_TRACEBACK, loss=np.array([4.0])))
    assert d.verdict == "diverged" and d.exit_code == 3 and d.command


def test_catastrophic_blow_up_then_a_crash_is_diverged_without_the_error_text(tmp_path):
    # Coqui's own log only says it kept the folder: the blow-up and the crash together are enough.
    d = dg.diagnose(stock_run(tmp_path / "run", BLOW_UP, COQUI_CRASH_LOG))
    assert d.verdict == "diverged" and d.run["ending"]["kind"] == "crashed"
    assert "an exception" in d.reasons[0] and d.stats["rules"]["catastrophic"]["first_step"] < 50


def test_catastrophic_blow_up_still_running_is_not_too_early(tmp_path):
    d = dg.diagnose(stock_run(tmp_path / "run", BLOW_UP[:-1], None))
    assert d.verdict in ("exploding", "diverged") and d.exit_code == 3
    assert d.run["ending"]["kind"] == "unknown"


def test_a_crash_without_a_blow_up_never_says_keep_training(tmp_path):
    d = dg.diagnose(
        stock_run(tmp_path / "run", np.array([4.9, 5.2, 4.4]), COQUI_CRASH_LOG, loss=np.array([4.0, 3.9, 3.8]))
    )
    assert d.verdict == "too_early" and "not training any more" in d.recommendation
    assert "keep training" not in d.recommendation


def test_run_json_status_is_the_ending_of_kit_runs(tmp_path):
    meta = kit_meta(status="exploded", final_step=9000, message="step 9000: grad_norm jumped x5.1")
    d = dg.diagnose(make_run(tmp_path / "run", sigmoid_explosion(np.random.default_rng(2)), meta=meta))
    assert d.run["ending"]["kind"] == "guard_stop" and "grad_norm jumped" in d.run["ending"]["text"]


def test_corrupt_event_file_is_named_and_not_judged(tmp_path):
    run = make_run(tmp_path / "run", healthy_grad(300, np.random.default_rng(23)), meta=kit_meta())
    bad = run / "events.out.tfevents.9999999999.host.1.0"
    bad.write_bytes(b"\x00garbage, not a TFRecord" * 50)
    proc = subprocess.run(
        [sys.executable, "-m", "ruslan_glowtts.diagnose", str(run)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("warning: ") and bad.name in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Verdict:  CANNOT_JUDGE" in proc.stdout and "keep training" not in proc.stdout


def test_fp16_scaler_calibration_is_not_a_divergence(tmp_path):
    # GradScaler's first overflows are skipped by the scaler itself and logged as 0 by Coqui.
    grad = healthy_grad(300, np.random.default_rng(24))
    grad[:6] = 0.0
    steps = np.arange(300) * STEP
    run = make_run(
        tmp_path / "run",
        grad,
        config={"lr": 2e-4, "grad_clip": 1.0, "mixed_precision": True},
        extra={"TrainIterStats/amp_scaler": (steps, np.full(300, 2.0**10))},
    )
    d = dg.diagnose(run)
    assert d.verdict in ("healthy", "warning") and "nonfinite" not in d.stats["rules"], d.reasons


def test_the_runs_own_health_settings_steer_the_rules(tmp_path):
    # A sustained 70: above the default band (50) but under the default limit (100).
    grad = np.concatenate([10 * np.exp(np.random.default_rng(25).normal(0, 0.2, 300)), np.full(100, 70.0)])
    default = dg.diagnose(make_run(tmp_path / "default", grad, meta=kit_meta()))
    config = {"lr": 2e-4, "grad_clip": 1.0, "health": {"grad_norm_limit": 60.0}}
    own = dg.diagnose(make_run(tmp_path / "own", grad, meta=kit_meta(), config=config))
    assert "level" not in default.stats["rules"] and "level" in own.stats["rules"]
    # the shares are counted against the run's own thresholds, whatever their values
    assert default.stats["grad_norm"]["share_above_limit"] == 0 < own.stats["grad_norm"]["share_above_limit"]
    assert own.stats["grad_norm"]["points_above_limit"] >= 100
    assert own.verdict == "exploding" and own.run["thresholds"]["grad_norm_limit"] == 60.0


@pytest.mark.parametrize(("status", "kind"), [("terminated", "interrupted"), ("bad_data", "crashed")])
def test_signal_and_bad_data_endings_are_read_from_run_json(tmp_path, status, kind):
    # The trainer writes these two statuses for SIGTERM and for too many unloadable samples.
    meta = kit_meta(status=status, final_step=300, message=f"{status} at step 300")
    d = dg.diagnose(make_run(tmp_path / "run", healthy_grad(300, np.random.default_rng(31)), meta=meta))
    assert d.run["ending"]["kind"] == kind and status in d.run["ending"]["text"]
    if kind == "crashed":
        assert "keep training" not in d.recommendation


# --- the verdict functions, one per verdict


def _judged_evidence(grad: np.ndarray) -> v.Evidence:
    steps = np.arange(len(grad), dtype=np.int64) * STEP
    run = RunEvents(
        Path("run"), [], {GRAD: Series(steps, grad), LOSS: Series(steps, falling_loss(steps, np.random.default_rng(0)))}
    )
    return v.gather_evidence(run, RuleSettings(), {}, False, {"kind": "unknown"})


def test_each_verdict_function_answers_only_for_its_own_verdict():
    functions = {
        v.Verdict.DIVERGED: v.diverged,
        v.Verdict.EXPLODING: v.exploding,
        v.Verdict.TOO_EARLY: v.too_early,
        v.Verdict.WARNING: v.warning,
    }
    rng = np.random.default_rng(26)
    spike = 10 * np.exp(rng.normal(0, 0.25, 400))
    spike[300] = 700.0
    zeros_at_end = healthy_grad(300, rng)
    zeros_at_end[-3:] = 0.0
    cases = {
        v.Verdict.DIVERGED: zeros_at_end,
        v.Verdict.EXPLODING: sigmoid_explosion(np.random.default_rng(2)),
        v.Verdict.TOO_EARLY: healthy_grad(20, rng),
        v.Verdict.WARNING: spike,
    }
    for expected, grad in cases.items():
        evidence = _judged_evidence(grad)
        judgement = functions[expected](evidence)
        assert isinstance(judgement, v.Judgement) and judgement.verdict is expected and judgement.reasons
        # the verdicts before it in the order do not apply
        for earlier in list(functions)[: list(functions).index(expected)]:
            assert functions[earlier](evidence) is None, (expected, earlier)
    evidence = _judged_evidence(healthy_grad(600, np.random.default_rng(1)))
    assert all(function(evidence) is None for function in functions.values())
    assert v.healthy(evidence).verdict is v.Verdict.HEALTHY


def test_the_typed_verdict_reads_as_its_word():
    assert set(dg.Verdict) == set(dg.EXIT_CODES)
    assert dg.Verdict.TOO_EARLY == "too_early" and json.dumps(dg.Verdict.TOO_EARLY) == '"too_early"'
    assert f"{dg.Verdict.CANNOT_JUDGE}".upper() == "CANNOT_JUDGE"
