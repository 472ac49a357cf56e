"""Presets: documented values, the tier chain, --list-presets, user preset files."""

from __future__ import annotations

import json

import pytest

from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.presets import available_presets, load_preset, tier_chain

# The values each tier promises in README.md and in its own file.
DOCUMENTED = {
    "default": {
        "lr": 1e-3,
        "grad_clip": 5.0,
        "warmup": 4000,
        "batch_size": 8,
        "grad_accum_steps": 1,
        "mixed_precision": False,
    },
    "stable": {
        "lr": 2e-4,
        "grad_clip": 1.0,
        "warmup": 8000,
        "batch_size": 8,
        "grad_accum_steps": 1,
        "mixed_precision": True,
    },
    "safer": {
        "lr": 1e-4,
        "grad_clip": 0.5,
        "warmup": 8000,
        "batch_size": 4,
        "grad_accum_steps": 2,
        "mixed_precision": True,
    },
    "safest": {
        "lr": 5e-5,
        "grad_clip": 0.3,
        "warmup": 16000,
        "batch_size": 4,
        "grad_accum_steps": 2,
        "mixed_precision": False,
    },
}


def test_bundled_presets_are_the_documented_ones():
    assert available_presets() == sorted(DOCUMENTED)


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_every_preset_resolves_with_documented_values(name, run_main):
    code, out, err = run_main("--preset", name, "--print-config")
    assert code == 0, err
    config = json.loads(out)
    want = DOCUMENTED[name]
    assert config["lr"] == want["lr"]
    assert config["grad_clip"] == want["grad_clip"]
    assert config["lr_scheduler_params"]["warmup_steps"] == want["warmup"]
    assert config["batch_size"] == want["batch_size"]
    assert config["grad_accum_steps"] == want["grad_accum_steps"]
    assert config["mixed_precision"] is want["mixed_precision"]
    # Fixes of the base config hold under every preset.
    assert config["scheduler_after_epoch"] is False
    assert "ё" in config["characters"]["characters"]
    assert config["audio"]["sample_rate"] == 22050


def test_safest_forces_fp32_and_shorter_utterances(run_main):
    _code, out, _ = run_main("--preset", "safest", "--print-config")
    config = json.loads(out)
    assert config["mixed_precision"] is False
    assert config["max_audio_len"] == 10 * 22050


def test_no_preset_uses_fp16():
    # GlowTTS + fp16 gives NaN losses (coqui-ai/TTS #918).
    for name in available_presets():
        overrides = load_preset(name).overrides
        assert not (overrides.get("mixed_precision") and overrides.get("precision", "fp16") == "fp16"), name


def test_tier_chain_is_read_from_the_files():
    assert [p.name for p in tier_chain(load_preset("default"))] == ["default", "stable", "safer", "safest"]
    assert [p.name for p in tier_chain(load_preset("safer"))] == ["safer", "safest"]
    assert tier_chain(load_preset("safest"))[-1].fallback == ""


def test_every_preset_file_opens_with_its_command():
    for name in available_presets():
        text = load_preset(name).path.read_text(encoding="utf-8")
        assert text.startswith("#"), name
        assert f"--preset {name} --dataset-path" in text, name


def test_list_presets_shows_values_and_fallbacks(run_main):
    code, out, _ = run_main("--list-presets")
    assert code == 0
    for name in DOCUMENTED:
        assert name in out
    assert "lr 0.0002, clip 1, warmup 8000, batch 8" in out
    assert "fallback: safer" in out
    assert "end of the chain" in out


def test_unknown_preset_lists_available_ones():
    with pytest.raises(
        UserError, match=r"unknown preset 'stabel'. Did you mean 'stable'\? Available: default, safer, safest, stable"
    ):
        load_preset("stabel")


def test_user_preset_file_by_path(tmp_path, run_main):
    mine = tmp_path / "mine.toml"
    mine.write_text('# my tier\ndescription = "mine"\nfallback = "safer"\n[config]\nlr = 3e-4\n', encoding="utf-8")
    code, out, err = run_main("--preset", str(mine), "--print-config")
    assert code == 0, err
    assert json.loads(out)["lr"] == 3e-4
    assert [p.name for p in tier_chain(load_preset(str(mine)))] == ["mine", "safer", "safest"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("lr = [", "malformed preset file"),
        ("description = 'x'\nlr = 1e-4\n", "unknown top-level key"),
        ("[config]\nlrr = 1e-4\n", "unknown config key 'lrr'. Did you mean: lr"),
        ("[config]\nlr = 'fast'\n", "wrong type for 'lr'"),
        ("fallback = 'nowhere'\n", "unknown preset 'nowhere'"),
    ],
)
def test_malformed_preset_files_fail_with_one_line(tmp_path, run_main, content, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(content, encoding="utf-8")
    if "nowhere" in content:
        with pytest.raises(UserError, match=message):
            tier_chain(load_preset(str(bad)))
        return
    code, out, err = run_main("--preset", str(bad), "--print-config")
    assert code == 2
    assert out == ""
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_run_copied_from_another_machine_finds_its_bundled_preset_by_name(tmp_path):
    from ruslan_glowtts.common.presets import load_recorded_preset

    moved = ("safer", "/elsewhere/kit/presets/safer.toml")  # run.json's preset, preset_path: not on this machine
    assert load_recorded_preset(*moved).name == "safer"
    own = tmp_path / "mine.toml"
    own.write_text('description = "mine"\nfallback = ""\n[config]\nlr = 0.0003\n', encoding="utf-8")
    assert load_recorded_preset("mine", str(own)).overrides == {"lr": 0.0003}
    with pytest.raises(UserError, match="preset file not found"):
        load_recorded_preset(None, "/elsewhere/mine.toml")
