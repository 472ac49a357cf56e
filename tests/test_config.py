"""Config layers (base < dataset < preset < CLI), --set validation, --print-config, resume rules."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.presets import load_preset
from ruslan_glowtts.training.config import (
    Layer,
    Override,
    Source,
    build_config,
    parse_set_option,
)


def test_layers_apply_in_fixed_order(tmp_path, caplog):
    dataset = tmp_path / "data"
    dataset.mkdir()
    # the dataset fragment (layer 2) sets lr and max_text_len; the preset (3) then lr; --set (4) wins last
    (dataset / "dataset.toml").write_text("lr = 7e-4\nmax_text_len = 180\nbatch_size = 2\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="ruslan_glowtts"):
        config, overrides = build_config(
            preset=load_preset("stable"),
            dataset_path=dataset,
            cli_layers=[(parse_set_option("batch_size=3"), "--set")],
        )
    assert config.max_text_len == 180  # dataset beats base (250)
    assert config.lr == 2e-4  # preset beats dataset
    assert config.batch_size == 3  # --set beats preset (8) and dataset (2)
    assert config.datasets[0].path == str(dataset.resolve())
    sources = [str(o.source) for o in overrides if o.key == "batch_size"]
    assert sources == [f"dataset {dataset / 'dataset.toml'}", "preset stable", "--set"]
    assert [o.layer for o in overrides if o.key == "batch_size"] == [Layer.DATASET, Layer.PRESET, Layer.COMMAND_LINE]
    messages = [r.getMessage() for r in caplog.records]
    assert "Overriding: lr = 0.0002  (preset stable)" in messages
    assert "Overriding: batch_size = 3  (--set)" in messages


@pytest.mark.parametrize(
    "option, value",
    [
        ("lr=3e-4", 3e-4),
        ("audio.sample_rate=22050", 22050),
        ("run_eval=false", False),
        ("text_cleaner=basic_cleaners", "basic_cleaners"),
        ("run_name=123", "123"),
        ("lr_scheduler_params.warmup_steps=100", 100),
        ("health.policy=stop", "stop"),
        ('test_sentences=["Привет."]', ["Привет."]),
        ("grad_clip=1", 1.0),
    ],
)
def test_set_accepts_typed_values(option, value):
    config, _ = build_config(preset=load_preset("stable"), cli_layers=[(parse_set_option(option), "--set")])
    key = option.split("=")[0]
    node = config
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    assert node == value and type(node) is type(value)


@pytest.mark.parametrize(
    "option, message",
    [
        ("lrr=1e-4", "unknown config key 'lrr'. Did you mean: lr?"),
        ("audio.sample_rat=22050", "Did you mean: audio.sample_rate"),
        ("lr=fast", "wrong type for 'lr': expected a number, got 'fast'"),
        ("batch_size=8.5", "wrong type for 'batch_size': expected an integer"),
        ("run_eval=1", "wrong type for 'run_eval': expected true or false"),
        ("lr_scheduler_params.warmup_steps=soon", "wrong type for 'lr_scheduler_params.warmup_steps'"),
        ("novalue", "--set expects KEY=VALUE"),
        ("health.policy=panic", "health.policy must be warn, stop or escalate"),
        ("batch_size=0", "batch_size and eval_batch_size must be >= 1"),
    ],
)
def test_set_rejects_bad_keys_and_values(option, message):
    with pytest.raises(UserError) as info:
        build_config(preset=load_preset("stable"), cli_layers=[(parse_set_option(option), "--set")])
    assert message in str(info.value)


def test_print_config_needs_no_data_and_shows_resolved_values(run_main, tmp_path):
    code, out, err = run_main(
        "--preset",
        "stable",
        "--set",
        "lr=3e-4",
        "--grad-accum",
        "2",
        "--seed",
        "7",
        "--output-path",
        str(tmp_path / "elsewhere"),
        "--print-config",
    )
    assert code == 0, err
    config = json.loads(out)
    assert (config["lr"], config["grad_accum_steps"], config["training_seed"]) == (3e-4, 2, 7)
    assert config["output_path"] == str(tmp_path / "elsewhere")
    assert config["health"]["policy"] == "warn"
    assert not (tmp_path / "elsewhere").exists()  # --print-config writes nothing


def test_continue_path_keeps_the_runs_own_config(run_main, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": "glow_tts"}', encoding="utf-8")
    code, _, err = run_main("--continue-path", str(run), "--set", "lr=1e-4")
    assert code == 2
    assert "--set cannot be combined with --continue-path" in err
    code, _, err = run_main("--continue-path", str(run))
    assert code == 2 and "no checkpoint to resume from; start a new run" in err
    (run / "known_good.pth").write_bytes(b"")  # weights only: not something Coqui can resume
    code, _, err = run_main("--continue-path", str(run))
    assert code == 2 and f"--restore-path {run / 'known_good.pth'}" in err


@pytest.mark.slow
def test_continue_path_trains_with_the_config_the_kit_adjusted(run_main, tiny_glowtts_run, sample_22k, tmp_path):
    """Coqui's Trainer reloads config.json on --continue-path; what the kit set for this machine
    and this command (bf16 off on a CPU, --dataset-path) must still be what trains, and what is saved."""
    import shutil

    from tests.helpers import SMOKE_STEPS

    run = Path(shutil.copytree(tiny_glowtts_run, tmp_path / tiny_glowtts_run.name))
    saved = json.loads((run / "config.json").read_text(encoding="utf-8"))
    saved.update(mixed_precision=True, precision="bf16")  # as a run started on a GPU saves it
    (run / "config.json").write_text(json.dumps(saved), encoding="utf-8")
    seen: list[tuple[bool, str]] = []
    from ruslan_glowtts.training.trainer import KitTrainer

    original = KitTrainer.format_batch

    def recording(self, batch):
        seen.append((self.config.mixed_precision, self.config.datasets[0].path))
        return original(self, batch)

    try:
        KitTrainer.format_batch = recording
        code, _, err = run_main(
            "--continue-path", str(run), "--dataset-path", str(sample_22k), "--max-steps", str(SMOKE_STEPS + 1)
        )
    finally:
        KitTrainer.format_batch = original
    assert code == 0, err
    assert seen and set(seen) == {(False, str(sample_22k.resolve()))}
    resaved = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert (resaved["mixed_precision"], resaved["datasets"][0]["path"]) == (False, str(sample_22k.resolve()))


def test_continue_and_restore_are_exclusive(run_main, tmp_path):
    code, _, err = run_main("--continue-path", str(tmp_path), "--restore-path", str(tmp_path / "x.pth"))
    assert code == 2 and "not both" in err


# -- override provenance: the layer as data, recorded in run.json --------------------------------

REAL_RUNS = Path(__file__).parent / "data" / "real_runs"


def test_override_round_trips_through_run_json_entries(tmp_path):
    dataset = tmp_path / "data"
    dataset.mkdir()
    (dataset / "dataset.toml").write_text("max_text_len = 180\n", encoding="utf-8")
    _, overrides = build_config(
        preset=load_preset("stable"),
        dataset_path=dataset,
        cli_layers=[(parse_set_option("lr=3e-4"), "--set"), ({"training_seed": 7}, "--seed")],
    )
    entries = json.loads(json.dumps([o.to_json() for o in overrides]))  # as written to and read from run.json
    assert [Override.from_json(e) for e in entries] == overrides
    assert {o.layer for o in overrides} == set(Layer)
    assert {"key": "lr", "value": 3e-4, "source": "--set", "layer": "command_line"} in entries
    assert {"key": "training_seed", "value": 7, "source": "--seed", "layer": "command_line"} in entries


@pytest.mark.parametrize(
    "text, layer",
    [
        ("--set", Layer.COMMAND_LINE),
        ("--auto-escalate", Layer.COMMAND_LINE),
        ("preset stable", Layer.PRESET),
        ("dataset /data/x/dataset.toml", Layer.DATASET),
        ("base ruslan_glowtts.toml", Layer.BASE),
        ("base", Layer.BASE),
        ("dataset.toml", Layer.DATASET),  # the words prepare passes
    ],
)
def test_old_run_json_entries_get_their_layer_from_the_source_text(text, layer):
    override = Override.from_json({"key": "lr", "value": 1e-3, "source": text})
    assert override.layer is layer and override.source.text == text
    assert override.to_json() == {"key": "lr", "value": 1e-3, "source": text, "layer": layer.value}


def test_an_unknown_source_text_is_refused():
    with pytest.raises(ValueError, match="unknown override source"):
        Source.parse("somewhere else")


def test_recorded_real_runs_still_read():
    entries = [
        e
        for run in sorted(REAL_RUNS.glob("*/run.json"))
        for e in json.loads(run.read_text(encoding="utf-8")).get("overrides", [])
    ]
    assert entries
    overrides = [Override.from_json(e) for e in entries]
    assert {o.layer for o in overrides} == {Layer.PRESET, Layer.COMMAND_LINE}
    assert all(o.to_json()["source"] == e["source"] for o, e in zip(overrides, entries, strict=True))
