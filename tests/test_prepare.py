"""`python -m ruslan_glowtts.prepare` on a corpus built broken on purpose from the sample: each
defect is reported and handled, the source is never touched, re-runs do no work, interrupted and
killed runs resume, bad arguments get one line, and the result trains."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.presets import DEFAULT_PRESET, load_preset
from ruslan_glowtts.prep import prepare as prepare_module
from ruslan_glowtts.prep.cli import main
from ruslan_glowtts.prep.feature_cache import feature_key
from ruslan_glowtts.prep.prepare import PrepareOptions, prepare
from ruslan_glowtts.prep.text_normalization import normalize_text
from ruslan_glowtts.training.config import build_config
from ruslan_glowtts.training.dataset import (
    check_metadata,
    check_vocabulary,
    load_samples,
)
from tests.helpers import REPO, SAMPLE, copy_corpus, run_dirs, tiny_args

META = "metadata_RUSLAN_22200.csv"

# id (number in the sample) -> the defect built into it
CLEAN_IDS = [0] + list(range(16, 24))
EXPECTED_USABLE = {f"{i:06d}_RUSLAN" for i in CLEAN_IDS + [1, 8, 10, 13, 15]}


def _wav(root: Path, number: int) -> Path:
    return root / "RUSLAN" / f"{number:06d}_RUSLAN.wav"


def make_defective_corpus(root: Path) -> Path:
    """The sample (44.1 kHz) with one defect per utterance, a BOM, CRLF endings and bad lines."""
    copy_corpus(SAMPLE, root)
    rate = sf.info(_wav(root, 0)).samplerate

    def read(number: int) -> np.ndarray:
        return sf.read(_wav(root, number), dtype="float64")[0]

    def write(number: int, audio: np.ndarray, subtype: str = "PCM_16") -> None:
        sf.write(_wav(root, number), audio, rate, subtype=subtype)

    write(1, np.stack([read(1), read(1) * 0.5], axis=1))  # stereo
    nan = read(2).astype(np.float32)
    nan[1000:1010] = np.nan
    write(2, nan, "FLOAT")  # float WAV with NaN samples
    write(3, np.clip(read(3) * 20, -1, 1))  # heavily clipped
    _wav(root, 4).write_bytes(b"RIFF\x10\x00\x00\x00WAVEgarbage-not-audio" * 3)  # corrupt
    sf.write(_wav(root, 5), np.zeros(0), rate, subtype="PCM_16")  # empty: a header, no samples
    _wav(root, 6).unlink()  # missing
    long = np.concatenate([read(n) for n in range(16, 24)] * 3)[: 40 * rate]
    write(7, long)  # 40 s
    write(13, read(13) * 0.5 + 0.2)  # DC offset
    write(14, read(14) * 0.001)  # near-silent
    write(15, np.concatenate([np.zeros(2 * rate), read(15)]))  # 2 s of leading silence
    # A file an escaping id would reach: it must never be read or copied.
    (root.parent / "evil.wav").write_bytes(_wav(root, 0).read_bytes())

    texts = dict(line.split("|", 1) for line in (root / META).read_text(encoding="utf-8").splitlines())
    texts["000008_RUSLAN"] = "В 1812 году было 25% и 3,5 дня."  # digits
    texts["000009_RUSLAN"] = "Hello, мир!"  # Latin letters
    texts["000010_RUSLAN"] = "Мор+оз и с+олнце; д+ень чуд+есный!"  # stress marks
    texts["000011_RUSLAN"] = "   "  # empty text
    texts["000012_RUSLAN"] = texts["000012_RUSLAN"] + "|лишняя колонка"  # extra column
    lines = [f"{id_}|{text}  " if id_ == "000020_RUSLAN" else f"{id_}|{text}" for id_, text in texts.items()]
    lines += ["../../evil|Побег из корня.", "строка без разделителя", "000000_RUSLAN|Повтор первого."]
    (root / META).write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    return root


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def output_mtimes(dst: Path) -> dict[str, int]:
    return {
        str(p.relative_to(dst)): p.stat().st_mtime_ns
        for p in sorted(dst.rglob("*"))
        if p.is_file() and ".prepare" not in p.parts and p.name != "report.json"
    }


def read_report(dst: Path) -> dict:
    return json.loads((dst / "report.json").read_text(encoding="utf-8"))


def assert_training_resolves_what_prepare_used(dst: Path) -> None:
    """Training's config builder, reading the dataset.toml prepare wrote, resolves the audio settings
    and vocabulary prepare resampled, featurised and checked the text with."""
    report = read_report(dst)
    config, _ = build_config(preset=load_preset(DEFAULT_PRESET), dataset_path=dst)
    assert report["outputs"]["features"] == f"features/{feature_key(config.audio)}"
    manifest = json.loads((dst / report["outputs"]["features"] / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["audio"] == json.loads(json.dumps(config.audio.to_dict(), default=str))
    assert report["training"]["sample_rate"] == config.audio.sample_rate
    assert report["training"]["characters"] == config.characters.characters
    assert report["training"]["punctuations"] == config.characters.punctuations


def run_prepare(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def defective(tmp_path_factory):
    """The defective corpus prepared once (src, dst, source digest before, first report)."""
    base = tmp_path_factory.mktemp("defective")
    src = make_defective_corpus(base / "src")
    before = tree_digest(base)
    dst = base / "prepared"
    result = prepare(PrepareOptions(src=src, dst=dst, jobs=2))
    return src, dst, before, result.report


def test_every_defect_is_reported_and_handled(defective):
    _src, dst, _, report = defective
    by_id: dict[str, set[str]] = {}
    for entry in report["files"]:
        by_id.setdefault(entry["id"], set()).update(p["code"] for p in entry["problems"])

    expected_excluded = {
        "000002_RUSLAN": "non_finite",
        "000003_RUSLAN": "clipped",
        "000004_RUSLAN": "unreadable",
        "000005_RUSLAN": "empty_audio",
        "000006_RUSLAN": "missing_file",
        "000007_RUSLAN": "too_long",
        "000009_RUSLAN": "latin_letters",
        "000011_RUSLAN": "empty_text",
        "000012_RUSLAN": "extra_columns",
        "000014_RUSLAN": "near_silent",
        "../../evil": "unsafe_id",
    }
    for id_, code in expected_excluded.items():
        assert code in by_id[id_], (id_, by_id.get(id_))
        assert report["problems"][code]["action"] == "excluded"
    expected_fixed = {"000001_RUSLAN": "multichannel", "000013_RUSLAN": "dc_offset"}
    for id_, code in expected_fixed.items():
        assert code in by_id[id_] and report["problems"][code]["action"] == "fixed"
    assert "long_leading_silence" in by_id["000015_RUSLAN"]
    # The digits' audio says another sentence: far more characters per second than the rest.
    assert "unusual_speaking_rate" in by_id["000008_RUSLAN"]
    assert report["problems"]["long_leading_silence"]["action"] == "warning"
    # report.json's problem entries keep their shape (users and tools read them)
    written = read_report(dst)["files"]
    assert written == report["files"] and all(
        list(p) == ["code", "action", "detail"] and p["action"] in ("excluded", "fixed", "warning")
        for entry in written
        for p in entry["problems"]
    )

    line_problems = {(e["line"], p["code"]) for e in report["files"] for p in e["problems"]}
    assert (26, "no_separator") in line_problems and (27, "duplicate_id") in line_problems
    assert (25, "unsafe_id") in line_problems
    for code in (
        "non_finite",
        "clipped",
        "unreadable",
        "empty_audio",
        "missing_file",
        "too_long",
        "latin_letters",
        "empty_text",
        "extra_columns",
        "near_silent",
        "unsafe_id",
        "no_separator",
        "duplicate_id",
        "multichannel",
    ):
        assert report["problems"][code]["count"] == 1, code
        assert report["problems"][code]["meaning"]
    assert report["metadata"]["bom"] is True and report["metadata"]["crlf_lines"] == 27
    assert report["metadata"]["trailing_whitespace_lines"] == 2  # 000011 (blank text) and 000020
    assert report["summary"] == {
        **report["summary"],
        "lines": 27,
        "usable": len(EXPECTED_USABLE),
        "excluded": 27 - len(EXPECTED_USABLE),
    }

    digits = next(e for e in report["files"] if e["id"] == "000008_RUSLAN")
    assert digits["usable"] and "numbers" in digits["text"]["changes"]
    stress = next(e for e in report["files"] if e["id"] == "000010_RUSLAN")
    assert stress["text"]["normalised"] == "Мороз и солнце; день чудесный!"
    assert report["text_changes"]["numbers"]["count"] == 1 and report["text_changes"]["stress_marks"]["count"] == 1


def test_prepared_folder_is_ready_for_training(defective):
    _src, dst, _, report = defective
    check_metadata(dst, META)  # the trainer's own metadata check
    assert_training_resolves_what_prepare_used(dst)
    lines = (dst / META).read_text(encoding="utf-8").splitlines()
    assert {line.split("|")[0] for line in lines} == EXPECTED_USABLE
    assert "В тысяча восемьсот двенадцатом году было двадцать пять процентов и три целых пять десятых дня." in (
        line.split("|")[1] for line in lines
    )
    for line in lines:
        id_, text = line.split("|")
        assert not any(c.isdigit() or "a" <= c.lower() <= "z" or c == "+" for c in text), line
        info = sf.info(dst / "RUSLAN" / f"{id_}.wav")
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
    # Audio that is fine is kept even when the line is excluded for its text or length (a re-run with
    # other options can then include it without work); broken audio leaves nothing behind.
    assert {p.stem for p in (dst / "RUSLAN").glob("*.wav")} == EXPECTED_USABLE | {"000007_RUSLAN", "000009_RUSLAN"}
    audio = sf.read(dst / "RUSLAN" / "000013_RUSLAN.wav")[0]
    assert abs(audio.mean()) < 0.01  # DC removed
    stereo = sf.read(dst / "RUSLAN" / "000001_RUSLAN.wav")[0]
    assert stereo.ndim == 1
    assert (dst / "duration_histogram.png").read_bytes()[:4] == b"\x89PNG"
    caps = report["recommended"]
    assert caps["max_audio_len"] % 11025 == 0 and caps["max_text_len"] % 10 == 0
    fragment = (dst / "dataset.toml").read_text(encoding="utf-8")
    assert f"max_audio_len = {caps['max_audio_len']}" in fragment and "audio.sample_rate = 22050" in fragment


def test_prepare_and_training_give_the_same_vocabulary_verdict(defective):
    src, dst, _, report = defective
    config, _ = build_config(preset=load_preset(DEFAULT_PRESET), dataset_path=dst)
    train, evals = load_samples(config)
    assert not check_vocabulary(train + evals, config)  # every line prepare keeps, training accepts
    sources = dict(
        line.split("|", 1) for line in (src / META).read_text(encoding="utf-8-sig").splitlines() if line.count("|") == 1
    )
    refused = [
        (e["id"], p["detail"])
        for e in report["files"]
        for p in e["problems"]
        if p["code"] in ("latin_letters", "out_of_vocabulary")
    ]
    assert [id_ for id_, _ in refused] == ["000009_RUSLAN"]
    for id_, detail in refused:  # ... and a line prepare excludes, training refuses for the same characters
        sample = {"text": normalize_text(sources[id_]).text + "\n", "audio_file": f"{id_}.wav", "language": "ru"}
        with pytest.raises(UserError, match="not in the vocabulary"):
            check_vocabulary([sample], config)
        dropped = check_vocabulary([sample], config, allow_unknown=True)
        assert detail.startswith(repr("".join(sorted(dropped)))), (dropped, detail)


def test_source_is_untouched_and_escaping_ids_are_not_followed(defective):
    src, dst, before, _ = defective
    assert tree_digest(src.parent / "src") == {
        k.removeprefix("src/"): v for k, v in before.items() if k.startswith("src/")
    }
    assert (src.parent / "evil.wav").read_bytes() == _wav(src, 0).read_bytes()
    assert not list(dst.rglob("evil*"))


def test_dataset_fragment_is_applied_by_the_trainer(defective, run_main):
    _, dst, _, report = defective
    code, out, _ = run_main("--dataset-path", str(dst), "--print-config")
    assert code == 0
    config = json.loads(out)
    assert config["max_audio_len"] == report["recommended"]["max_audio_len"]
    assert config["max_text_len"] == report["recommended"]["max_text_len"]


def test_second_run_does_no_work(defective, capsys):
    src, dst, before, _ = defective
    mtimes = output_mtimes(dst)
    code, out, err = run_prepare(capsys, "--src", str(src), "--dst", str(dst))
    assert code == 0, err
    run = read_report(dst)["run"]
    assert run["processed"] == 0 and run["features_computed"] == 0 and run["reused"] == 21
    assert output_mtimes(dst) == mtimes
    assert "0 file(s) processed" in out
    assert tree_digest(src) == {k.removeprefix("src/"): v for k, v in before.items() if k.startswith("src/")}


def test_changed_source_and_options_redo_only_what_they_affect(tmp_path, capsys):
    src = copy_corpus(SAMPLE, tmp_path / "src")
    dst = tmp_path / "dst"
    assert run_prepare(capsys, "--src", str(src), "--dst", str(dst), "--jobs", "1")[0] == 0
    sf.write(_wav(src, 3), sf.read(_wav(src, 3))[0] * 0.5, 44100, subtype="PCM_16")
    meta = src / META
    meta.write_text(meta.read_text(encoding="utf-8").replace("Мороз и солнце", "Мор+оз и солнце"), encoding="utf-8")
    assert run_prepare(capsys, "--src", str(src), "--dst", str(dst), "--stress", "keep")[0] == 0
    report = read_report(dst)
    assert report["run"]["processed"] == 1 and report["run"]["reused"] == 23
    assert "000000_RUSLAN|Мор+оз и солнце; день чудесный!" in (dst / META).read_text(encoding="utf-8")
    assert 'characters.characters = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя+"' in (dst / "dataset.toml").read_text(
        encoding="utf-8"
    )
    assert_training_resolves_what_prepare_used(dst)  # the kept '+' included


def test_trim_silence_fixes_long_edges(tmp_path, capsys):
    src = copy_corpus(SAMPLE, tmp_path / "src")
    audio, rate = sf.read(_wav(src, 15))
    sf.write(_wav(src, 15), np.concatenate([np.zeros(2 * rate), audio, np.zeros(2 * rate)]), rate, subtype="PCM_16")
    dst = tmp_path / "dst"
    assert run_prepare(capsys, "--src", str(src), "--dst", str(dst), "--jobs", "1", "--trim-silence")[0] == 0
    report = read_report(dst)
    (entry,) = [e for e in report["files"] if e["id"] == "000015_RUSLAN"]
    assert {(p["code"], p["action"]) for p in entry["problems"]} == {
        ("long_leading_silence", "fixed"),
        ("long_trailing_silence", "fixed"),
    }
    trimmed = sf.info(dst / "RUSLAN" / "000015_RUSLAN.wav").duration
    assert trimmed < len(audio) / rate + 0.5  # ~4 s of silence gone, 0.1 s kept at each edge


def test_interrupted_run_completes_on_rerun(tmp_path, capsys):
    src = copy_corpus(SAMPLE, tmp_path / "src")
    dst = tmp_path / "dst"
    seen = []

    def ctrl_c_after_five(result):
        seen.append(result["id"])
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareOptions(src=src, dst=dst, jobs=2), on_result=ctrl_c_after_five)
    assert not (dst / META).exists()  # written only by a completed run
    code, _out, err = run_prepare(capsys, "--src", str(src), "--dst", str(dst))
    assert code == 0, err
    report = read_report(dst)
    assert report["run"]["reused"] == 5 and report["run"]["processed"] == 19
    assert report["summary"]["usable"] == 24 and report["outputs"]["features_cached"] == 24
    assert not [p for p in dst.rglob(".*") if ".tmp-" in p.name]


def test_ctrl_c_exits_130_with_one_line(tmp_path, capsys, monkeypatch):
    src = copy_corpus(SAMPLE, tmp_path / "src")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "_run_jobs", interrupted)
    code, _out, err = run_prepare(capsys, "--src", str(src), "--dst", str(tmp_path / "dst"))
    assert code == 130 and "run the same command again to resume" in err and "Traceback" not in err


def test_killed_run_leaves_no_half_written_file_and_resumes(tmp_path, capsys):
    src = copy_corpus(SAMPLE, tmp_path / "src")
    lines = (src / META).read_text(encoding="utf-8").splitlines()
    more = []
    for copy in range(1, 5):  # 120 utterances: a run long enough to be killed in the middle
        for line in lines:
            id_, text = line.split("|")
            new_id = f"{copy}{id_[1:]}"
            (src / "RUSLAN" / f"{new_id}.wav").write_bytes((src / "RUSLAN" / f"{id_}.wav").read_bytes())
            more.append(f"{new_id}|{text}")
    (src / META).write_text("\n".join(lines + more) + "\n", encoding="utf-8")
    dst = tmp_path / "dst"
    process = subprocess.Popen(
        [sys.executable, "-m", "ruslan_glowtts.prepare", "--src", str(src), "--dst", str(dst), "--jobs", "2"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if len(list((dst / "RUSLAN").glob("*.wav"))) >= 40:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the parent and its workers, mid-write
    assert process.wait() == -signal.SIGKILL, "prepare finished before it could be killed"
    for wav in (dst / "RUSLAN").glob("*.wav"):  # visible names are complete files
        data, rate = sf.read(wav)
        assert rate == 22050 and len(data) == sf.info(wav).frames > 0

    code, _out, err = run_prepare(capsys, "--src", str(src), "--dst", str(dst))
    assert code == 0, err
    report = read_report(dst)
    assert report["summary"]["usable"] == 120
    assert 0 < report["run"]["reused"] and report["run"]["processed"] < 120
    assert not [p for p in dst.rglob(".*") if ".tmp-" in p.name]
    assert len(list((dst / "features").glob("*/*.npy"))) == 120


def _assert_one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2, (out, err)
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err


def test_bad_arguments_give_one_line_and_exit_2(tmp_path, capsys):
    src = copy_corpus(SAMPLE, tmp_path / "src")
    before = tree_digest(src)
    no_meta = tmp_path / "no_meta"
    (no_meta / "RUSLAN").mkdir(parents=True)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "thesis.txt").write_text("mine")
    cases = [
        (["--dst", str(tmp_path / "d")], "the following arguments are required: --src"),
        (["--src", str(tmp_path / "nowhere"), "--dst", str(tmp_path / "d")], "no such folder"),
        (["--src", str(no_meta), "--dst", str(tmp_path / "d")], "metadata file not found"),
        (["--src", str(src), "--dst", str(src)], "is inside --src"),
        (["--src", str(src), "--dst", str(src / "prepared")], "is inside --src"),
        (["--src", str(src), "--dst", str(tmp_path / "a_file" / "dst")], "is not writable"),
        (["--src", str(src), "--dst", str(tmp_path / "occupied")], "not empty and was not written by prepare"),
        (["--src", str(src), "--dst", str(tmp_path / "d"), "--stress", "maybe"], "invalid choice"),
        (["--src", str(src), "--dst", str(tmp_path / "d"), "--max-duration", "0.1"], "length bounds"),
    ]
    for argv, message in cases:
        _assert_one_line_error(*run_prepare(capsys, *argv), message)
    assert tree_digest(src) == before
    assert not (src / "prepared").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_destination(tmp_path, capsys):
    src = copy_corpus(SAMPLE, tmp_path / "src")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _assert_one_line_error(*run_prepare(capsys, "--src", str(src), "--dst", str(locked / "dst")), "is not writable")


def test_nothing_usable_exits_3_with_a_report(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "RUSLAN").mkdir(parents=True)
    (src / META).write_text("000000_RUSLAN|Нет файла.\nbroken line\n", encoding="utf-8")
    code, _out, err = run_prepare(capsys, "--src", str(src), "--dst", str(tmp_path / "dst"))
    assert code == 3 and "0 usable utterance(s)" in err
    report = read_report(tmp_path / "dst")
    assert report["problems"]["missing_file"]["count"] == 1 and report["problems"]["no_separator"]["count"] == 1


@pytest.mark.slow
def test_training_on_the_prepared_corpus(defective, run_main, tmp_path):
    _, dst, _, _ = defective
    output = tmp_path / "runs"
    code, _out, err = run_main(
        "--dataset-path", str(dst), "--output-path", str(output), "--max-steps", "4", *tiny_args()
    )
    assert code == 0, err
    (run,) = run_dirs(output)
    assert (run / "checkpoint_4.pth").is_file()
