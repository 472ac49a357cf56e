"""The HiFi-GAN vocoder: config layering and refusals (no training), then one tiny run on the
prepared sample with a NaN discriminator and a NaN generator loss injected (tests/conftest.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import train_ruslan_hifigan
from ruslan_glowtts.common.presets import available_presets
from ruslan_glowtts.training.config import RuslanGlowTTSConfig
from ruslan_glowtts.training.vocoder import (
    VOCODER_PRESETS_DIR,
    build_vocoder_config,
    load_vocoder_preset,
    load_vocoder_samples,
)
from tests.helpers import SAMPLE, read_scalars, run_dirs, tiny_vocoder_args


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    code = train_ruslan_hifigan.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_audio_settings_default_to_the_glowtts_base_config():
    config, overrides, source = build_vocoder_config(preset=load_vocoder_preset("default"), dataset_path=None)
    assert config.audio.to_dict() == RuslanGlowTTSConfig().audio.to_dict()
    assert "GlowTTS base config" in source
    # Coqui's recipe values from the default preset, and the mel loss on the same STFT settings
    assert (config.lr_gen, config.lr_disc, config.batch_size, config.seq_len) == (1e-4, 1e-4, 32, 8192)
    assert math.prod(config.generator_model_params["upsample_factors"]) == config.audio.hop_length == 256
    assert config.l1_spec_loss_params["n_mels"] == 80 and config.l1_spec_loss_params["mel_fmax"] is None
    assert {"key": "lr_gen", "value": 1e-4, "source": "preset default", "layer": "preset"} in [
        o.to_json() for o in overrides
    ]


def test_audio_settings_come_from_a_glowtts_run(tmp_path):
    run = tmp_path / "glowtts_run"
    run.mkdir()
    tts = RuslanGlowTTSConfig()
    tts.audio.mel_fmax = 8000.0  # whatever the run used, the vocoder follows
    (run / "config.json").write_text(json.dumps(tts.to_dict()), encoding="utf-8")
    config, _, source = build_vocoder_config(preset=load_vocoder_preset("conservative"), dataset_path=None, tts_run=run)
    assert config.audio.mel_fmax == 8000.0 and config.l1_spec_loss_params["mel_fmax"] == 8000.0
    assert str(run / "config.json") in source and config.lr_gen == 5e-5


def test_changing_the_features_or_a_bad_generator_is_refused(capsys):
    code, _, err = _main(capsys, "--print-config", "--set", "audio.mel_fmax=8000", "--set", "audio.log_func=np.log")
    (line,) = err.strip().splitlines()
    assert code == 2 and line.startswith("error: ") and "mel_fmax 11025 (unset: Nyquist) vs 8000" in line
    assert "log_func np.log10 vs np.log" in line
    code, _, err = _main(
        capsys,
        "--print-config",
        "--set",
        "generator_model_params.upsample_factors=[8, 8, 2]",
        "--set",
        "generator_model_params.upsample_kernel_sizes=[16, 16, 4]",
    )
    assert code == 2 and "multiply to 128, not to audio.hop_length 256" in err
    code, _, err = _main(capsys, "--print-config", "--set", "seq_len=512")
    assert code == 2 and "seq_len 512 must be longer than audio.fft_size / 2 (512)" in err
    code, _, err = _main(capsys, "--print-config", "--set", "lr_genn=1e-4")
    assert code == 2 and "unknown config key 'lr_genn'" in err and "lr_gen" in err


def test_presets_are_data_apart_from_the_glowtts_tiers(capsys):
    assert available_presets(VOCODER_PRESETS_DIR) == ["conservative", "default"]
    assert load_vocoder_preset("default").fallback == "conservative"
    assert "hifigan" not in available_presets() and "conservative" not in available_presets()
    code, out, _ = _main(capsys, "--list-presets")
    assert code == 0 and out.index("default (default)") < out.index("conservative")
    code, _, err = _main(capsys, "--preset", "defualt", "--print-config")
    assert code == 2 and "Did you mean 'default'?" in err


def test_bad_input_is_one_line_exit_2(capsys, tmp_path):
    code, _, err = _main(capsys, "--dataset-path", str(tmp_path / "missing"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no such folder" in err
    code, _, err = _main(capsys, "--dataset-path", str(tmp_path))
    assert code == 2 and "metadata_RUSLAN_22200.csv" in err and not list(tmp_path.iterdir())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}", encoding="utf-8")
    code, _, err = _main(capsys, "--continue-path", str(tmp_path / "run"))
    assert code == 2 and "is not a HiFi-GAN run (its config names no Coqui model)" in err
    (tmp_path / "run" / "config.json").write_text('{"model": "hifigan"}', encoding="utf-8")
    code, _, err = _main(capsys, "--continue-path", str(tmp_path / "run"))
    assert code == 2 and "no checkpoint to resume from" in err
    code, _, err = _main(capsys, "--dataset-path", str(tmp_path), "--tts-run", str(tmp_path / "nope"))
    assert code == 2 and "--tts-run" in err and "no such run folder" in err
    # the bundled sample is 44.1 kHz: Coqui would read it as is and learn the wrong features
    code, _, err = _main(capsys, "--dataset-path", str(SAMPLE), "--output-path", str(tmp_path / "runs"))
    assert code == 2 and "but the config trains at 22050 Hz" in err and run_dirs(tmp_path / "runs") == []


def test_the_vocoder_reads_prepares_cached_mels(prepared_sample):
    config, _, _ = build_vocoder_config(
        preset=load_vocoder_preset("default"),
        dataset_path=prepared_sample,
        cli_layers=[({"eval_split_size": 2}, "--set")],
    )
    eval_items, train_items = load_vocoder_samples(config)
    assert len(eval_items) == 2 and len(train_items) == 22
    wav, mel = train_items[0]  # (wav, cached mel) pairs: GANDataset then reads the mel file
    assert wav.endswith(".wav") and Path(mel).is_file() and "features" in Path(mel).parts


@pytest.mark.slow
def test_tiny_hifigan_trains_and_skips_non_finite_updates(tiny_vocoder_run: Path, tiny_glowtts_run: Path):
    files = {p.name for p in tiny_vocoder_run.iterdir()}
    assert {"config.json", "run.json", "checkpoint_4.pth"} <= files
    assert any(name.startswith("events.out.tfevents.") for name in files)
    meta = json.loads((tiny_vocoder_run / "run.json").read_text(encoding="utf-8"))
    assert meta["kit"] == "ruslan_hifigan" and meta["status"] == "max_steps" and meta["final_step"] == 4
    assert meta["tier_chain"] == ["default", "conservative"] and str(tiny_glowtts_run) in meta["audio_source"]
    # the injected NaN losses: one discriminator and one generator update skipped, nothing else
    assert meta["health"]["skipped_discriminator_updates"] == 1 and meta["health"]["skipped_updates"] == 1
    config = json.loads((tiny_vocoder_run / "config.json").read_text(encoding="utf-8"))
    tts_audio = json.loads((tiny_glowtts_run / "config.json").read_text(encoding="utf-8"))["audio"]
    assert config["audio"] == tts_audio and config["model"] == "hifigan"
    # weights finite after the NaN steps (a NaN update applied would have made them NaN)
    state = torch.load(tiny_vocoder_run / "checkpoint_4.pth", map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    gen = read_scalars(tiny_vocoder_run, "Health/grad_norm")  # generator, every update, NaN visible
    disc = read_scalars(tiny_vocoder_run, "Health/grad_norm_disc")
    assert sorted(gen) == [0, 1, 2, 3] and math.isnan(gen[3]) and all(math.isfinite(gen[s]) for s in (0, 1, 2))
    assert sorted(disc) == [2, 3] and math.isnan(disc[2]) and math.isfinite(disc[3])
    losses = read_scalars(tiny_vocoder_run, "TrainIterStats/loss_1")
    assert losses and all(math.isfinite(v) for v in losses.values())


@pytest.mark.slow
def test_continue_path_refuses_new_settings(tiny_vocoder_run: Path, capsys):
    code, _, err = _main(capsys, "--continue-path", str(tiny_vocoder_run), "--set", "lr_gen=1e-3")
    assert code == 2 and "cannot be combined with --continue-path" in err
    assert run_dirs(tiny_vocoder_run.parent) == [tiny_vocoder_run]


@pytest.mark.slow
def test_generator_only_steps_save_known_good_and_restore(prepared_sample, tmp_path, capsys):
    # Before steps_to_start_discriminator there is no discriminator loss, Coqui's target loss: the
    # --max-steps checkpoint must still be saved (Coqui's own save raises there).
    generator_only = tiny_vocoder_args(
        "--set", "steps_to_start_discriminator=100", "--set", "health.checkpoint_every=1"
    )
    code, _out, _ = _main(
        capsys,
        "--dataset-path",
        str(prepared_sample),
        "--output-path",
        str(tmp_path / "a"),
        "--max-steps",
        "2",
        *generator_only,
    )
    (run,) = run_dirs(tmp_path / "a")
    assert code == 0 and (run / "checkpoint_2.pth").is_file() and (run / "known_good.pth").is_file()
    assert json.loads((run / "known_good.json").read_text(encoding="utf-8"))["step"] == 1
    code, _out, _ = _main(
        capsys,
        "--dataset-path",
        str(prepared_sample),
        "--output-path",
        str(tmp_path / "b"),
        "--max-steps",
        "1",
        "--restore-path",
        str(run / "known_good.pth"),
        *generator_only,
    )
    (restored,) = run_dirs(tmp_path / "b")
    assert code == 0 and (restored / "checkpoint_1.pth").is_file()
    assert json.loads((restored / "run.json").read_text(encoding="utf-8"))["restore_path"] == str(
        run / "known_good.pth"
    )
