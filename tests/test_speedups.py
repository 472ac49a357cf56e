"""Each speedup keeps what is learned: the first steps' losses with and without it agree (fp32,
CPU, tiny GlowTTS, fixed seed). Speed itself is measured in bench/, never asserted here."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from tests.helpers import read_scalars, run_dirs, tiny_args

pytestmark = pytest.mark.slow


def _losses(run_main, dataset: Path, output: Path, steps: int, *extra: str) -> dict[int, float]:
    code, _, err = run_main(
        "--dataset-path",
        str(dataset),
        "--output-path",
        str(output),
        "--max-steps",
        str(steps),
        "--seed",
        "1234",
        *tiny_args(),
        *extra,
    )
    assert code == 0, err
    (run,) = run_dirs(output)
    losses = read_scalars(run, "TrainIterStats/loss")
    assert len(losses) >= steps - 3  # every step after data-dependent init
    return losses


def test_feature_cache_gives_the_same_losses(run_main, prepared_sample, tmp_path, caplog):
    # The same prepared corpus without features/: every mel is computed on the fly, as Coqui does.
    live = tmp_path / "live"
    shutil.copytree(prepared_sample, live, ignore=shutil.ignore_patterns("features"))
    with caplog.at_level(logging.INFO, logger="ruslan_glowtts"):
        cached = _losses(run_main, prepared_sample, tmp_path / "cached", 14)
    assert any("Using the feature cache" in r.getMessage() for r in caplog.records)
    computed = _losses(run_main, live, tmp_path / "computed", 14)  # two epochs and more
    assert cached.keys() == computed.keys()
    for step in cached:
        assert cached[step] == pytest.approx(computed[step], rel=1e-5, abs=1e-6), step


def test_loader_workers_give_the_same_losses(run_main, prepared_sample, tmp_path):
    # Persistent, BLAS-limited worker processes load the same batches in the same order. Within
    # the first epoch the random streams match exactly (a persistent loader draws no new seed at
    # the next epoch, so later epochs shuffle differently, as any seed change would).
    inline = _losses(run_main, prepared_sample, tmp_path / "inline", 6, "--set", "num_loader_workers=0")
    workers = _losses(run_main, prepared_sample, tmp_path / "workers", 6, "--set", "num_loader_workers=2")
    assert inline.keys() == workers.keys()
    for step in inline:
        assert inline[step] == pytest.approx(workers[step], rel=1e-5, abs=1e-6), step
