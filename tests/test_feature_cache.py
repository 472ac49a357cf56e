"""The mel cache written by prepare: the same features Coqui computes on the fly, found only for
the audio settings and metadata it was built for."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from TTS.tts.datasets import load_tts_samples
from TTS.tts.datasets.dataset import TTSDataset
from TTS.tts.utils.text.tokenizer import TTSTokenizer
from TTS.utils.audio import AudioProcessor

from ruslan_glowtts.common.presets import load_preset
from ruslan_glowtts.prep.feature_cache import FeatureCache, feature_key
from ruslan_glowtts.prep.prepare import PrepareOptions, prepare
from ruslan_glowtts.training.config import build_config, parse_set_option
from ruslan_glowtts.training.data_loader import KitTTSDataset
from tests.helpers import SAMPLE, copy_corpus


@pytest.fixture(scope="module")
def prepared(prepared_sample):
    return prepared_sample


def _training_config(dataset, *sets):
    config, _ = build_config(
        preset=load_preset("stable"), dataset_path=dataset, cli_layers=[(parse_set_option(s), "--set") for s in sets]
    )
    return config


def test_cached_and_live_features_agree(prepared):
    config = _training_config(prepared)  # what train_ruslan_glowtts.py resolves for this folder
    cache = FeatureCache.for_config(prepared, config.audio)
    assert cache is not None and cache.count == 24
    tokenizer, _ = TTSTokenizer.init_from_config(config)
    samples, _ = load_tts_samples(config, eval_split=False)
    ap = AudioProcessor(config.audio)
    # Live: the training loader without a cache (the kit's dataset: Coqui's load_data + collate_fn).
    kit = KitTTSDataset(ap=ap, samples=samples, tokenizer=tokenizer)
    # Coqui's own dataset computes the same mel with numpy's default BLAS threads.
    coqui = TTSDataset(ap=ap, samples=samples, tokenizer=tokenizer)
    coqui_worst = 0.0
    for index, sample in enumerate(samples):
        live = kit.collate_fn([kit.load_data(index)])["mel"][0].numpy().T  # [num_mels, frames]
        cached = cache.load(sample["audio_file"])
        assert cached is not None and cached.dtype == np.float32
        assert cached.shape == live.shape == (config.audio.num_mels, live.shape[1])
        # Bit-identical: even last-bit differences change training (they can flip a monotonic
        # alignment search decision, and the loss with it: tests/test_speedups.py).
        assert np.array_equal(cached, live), sample["audio_file"]
        stock = coqui.collate_fn([coqui.load_data(index)])["mel"][0].numpy().T
        coqui_worst = max(coqui_worst, float(np.abs(cached - stock).max()))
        assert cache.load(Path(sample["audio_file"])) is not None  # Path objects work too
    assert coqui_worst < 1e-5  # only BLAS summation order differs from Coqui's multi-threaded mel


def test_other_audio_settings_find_no_cache(prepared, caplog):
    config = _training_config(prepared, "audio.mel_fmax=8000.0")
    with caplog.at_level(logging.INFO, logger="ruslan_glowtts"):
        assert FeatureCache.for_config(prepared, config.audio) is None
    (message,) = [r.getMessage() for r in caplog.records if "Feature cache not used" in r.getMessage()]
    assert "computed on the fly" in message and feature_key(config.audio) in message
    assert "caches exist for other audio settings" in message


def test_symlinked_dataset_root_finds_the_same_files(prepared, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(prepared)
    cache = FeatureCache.for_config(link, _training_config(prepared).audio)
    assert cache.load(prepared / "RUSLAN" / "000000_RUSLAN.wav") is not None  # resolved path, as Coqui passes it
    assert cache.load(link / "RUSLAN" / "000000_RUSLAN.wav") is not None


def test_files_outside_the_cache_give_none(prepared, tmp_path):
    cache = FeatureCache.for_config(prepared, _training_config(prepared).audio)
    assert cache.load(prepared / "RUSLAN" / "999999_RUSLAN.wav") is None
    assert cache.load(tmp_path / "RUSLAN" / "000000_RUSLAN.wav") is None  # same id, another folder
    assert cache.load(prepared / "RUSLAN" / "000000_RUSLAN.flac") is None


def test_changed_metadata_or_no_features_give_no_cache(prepared, tmp_path, caplog):
    copy = copy_corpus(prepared, tmp_path / "copy")
    config = _training_config(prepared)
    assert FeatureCache.for_config(copy, config.audio) is None  # no features/ in the copy
    shutil.copytree(prepared / "features", copy / "features")
    assert FeatureCache.for_config(copy, config.audio) is not None
    meta = copy / "metadata_RUSLAN_22200.csv"
    meta.write_text(meta.read_text(encoding="utf-8") + "000099_RUSLAN|Новая строка.\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="ruslan_glowtts"):
        assert FeatureCache.for_config(copy, config.audio) is None
    assert any("changed since the cache was built" in r.getMessage() for r in caplog.records)


def test_no_features_option_skips_the_cache(tmp_path):
    src = copy_corpus(SAMPLE, tmp_path / "src")
    result = prepare(PrepareOptions(src=src, dst=tmp_path / "dst", jobs=1, features=False))
    assert result.report["outputs"]["features"] is None
    assert not list((tmp_path / "dst").glob("features/*/*.npy"))
