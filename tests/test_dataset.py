"""Startup checks: metadata shape, missing files, sample rate, vocabulary; the eval split."""

from __future__ import annotations

from pathlib import Path

import pytest

from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.presets import load_preset
from ruslan_glowtts.prep.metadata import read_metadata
from ruslan_glowtts.training.config import build_config, parse_set_option
from ruslan_glowtts.training.dataset import check_vocabulary, load_samples, split_eval
from tests.helpers import SAMPLE, copy_corpus


def _config(dataset, *sets):
    config, _ = build_config(
        preset=load_preset("stable"), dataset_path=dataset, cli_layers=[(parse_set_option(s), "--set") for s in sets]
    )
    return config


def test_native_44k_audio_is_refused_with_what_to_do(run_main, tmp_path):
    code, _out, err = run_main("--dataset-path", str(SAMPLE), "--output-path", str(tmp_path / "runs"))
    assert code == 2
    assert "audio is at 44100 Hz (24 files) but the config trains at 22050 Hz" in err
    assert "python -m ruslan_glowtts.prepare" in err and "audio.resample=true" in err
    assert not (tmp_path / "runs").exists()  # not even an empty --output-path


def test_unknown_characters_are_listed_and_refused(tmp_path, sample_22k):
    corpus = copy_corpus(sample_22k, tmp_path / "corpus")
    meta = corpus / "metadata_RUSLAN_22200.csv"
    lines = meta.read_text(encoding="utf-8").splitlines()
    lines[0] = "000000_RUSLAN|В 1812 году Napoleon вошёл в Москву."
    meta.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = _config(corpus)
    train, evals = load_samples(config)
    with pytest.raises(UserError) as info:
        check_vocabulary(train + evals, config)
    message = str(info.value)
    for char in "182napoleo":
        assert repr(char) in message  # lowercased by the cleaner, then checked
    assert "'1' x2 (e.g. 000000_RUSLAN)" in message
    assert "--allow-unknown-chars" in message and "ruslan_glowtts.prepare" in message
    dropped = check_vocabulary(train + evals, config, allow_unknown=True)
    assert dropped["1"] == 2 and dropped["n"] == 2 and "N" not in dropped


def test_clean_sample_text_is_fully_in_vocabulary(sample_22k):
    config = _config(sample_22k)
    train, evals = load_samples(config)
    assert not check_vocabulary(train + evals, config)


def test_malformed_metadata_line_is_reported_with_its_number(tmp_path, sample_22k):
    corpus = copy_corpus(sample_22k, tmp_path / "corpus")
    meta = corpus / "metadata_RUSLAN_22200.csv"
    meta.write_text(meta.read_text(encoding="utf-8") + "000099_RUSLAN no pipe here\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"metadata_RUSLAN_22200.csv:25: not an 'id\|text' line"):
        load_samples(_config(corpus))


def test_bom_and_crlf_are_read_as_prepare_reads_them(tmp_path, sample_22k):
    corpus = copy_corpus(sample_22k, tmp_path / "corpus")
    meta = corpus / "metadata_RUSLAN_22200.csv"
    meta.write_bytes(("\ufeff" + meta.read_text(encoding="utf-8").replace("\n", "\r\n")).encode("utf-8"))
    scan = read_metadata(meta)  # prepare's reader: the BOM is stripped and reported, no line is lost
    assert scan.bom and scan.crlf_lines == 24 and not scan.problems and len(scan.entries) == 24
    train, evals = load_samples(_config(corpus))  # training accepts the same file, with the same ids and texts
    samples = {Path(s["audio_file"]).name: s["text"] for s in train + evals}
    assert samples == {f"{e.id}.wav": e.text + "\n" for e in scan.entries}  # + Coqui's newline
    assert "000000_RUSLAN.wav" in samples  # the first id, without the BOM


@pytest.mark.parametrize(
    "bad_line, code",
    [
        ("000003_RUSLAN|Повтор.", "duplicate_id"),
        ("../RUSLAN/000003_RUSLAN|Побег.", "unsafe_id"),
        ("000030_RUSLAN|Текст|ещё", "extra_columns"),
        ("000031_RUSLAN|   ", "empty_text"),
    ],
)
def test_training_refuses_the_lines_prepare_excludes(tmp_path, sample_22k, bad_line, code):
    corpus = copy_corpus(sample_22k, tmp_path / "corpus")
    meta = corpus / "metadata_RUSLAN_22200.csv"
    meta.write_text(meta.read_text(encoding="utf-8") + bad_line + "\n", encoding="utf-8")
    assert [(p.line, p.code) for p in read_metadata(meta).problems] == [(25, code)]  # prepare excludes it
    with pytest.raises(UserError, match=r"metadata_RUSLAN_22200.csv:25: not an 'id\|text' line"):
        load_samples(_config(corpus))


def test_missing_audio_files_are_reported(tmp_path, sample_22k):
    corpus = copy_corpus(sample_22k, tmp_path / "corpus")
    (corpus / "RUSLAN" / "000003_RUSLAN.wav").unlink()
    with pytest.raises(UserError, match="1 of 24 audio files are missing"):
        load_samples(_config(corpus))


def test_eval_split_is_fixed_and_never_empty():
    samples = [{"audio_file": f"{i:03d}.wav"} for i in range(24)]
    train, evals = split_eval(list(samples), 0.01, 256)
    assert len(evals) == 1 and len(train) == 23  # 1% of 24 rounds to 0: keep one
    _again, evals_again = split_eval(list(reversed(samples)), 0.01, 256)
    assert evals == evals_again  # independent of input order and of the training seed
    assert len(split_eval(samples, 0.5, 5)[1]) == 5
    with pytest.raises(UserError):
        split_eval(samples[:1], 0.01, None)
