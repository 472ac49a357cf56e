"""Turn a downloaded RUSLAN corpus into training-ready data, and say what is wrong with it.

    python -m ruslan_glowtts.prepare --src /data/RUSLAN --dst /data/RUSLAN_prepared
    python train_ruslan_glowtts.py --dataset-path /data/RUSLAN_prepared

Reads SRC/metadata_RUSLAN_22200.csv and SRC/RUSLAN/<id>.wav (never writes there) and writes
DST/RUSLAN/<id>.wav (mono 16-bit PCM at the config's training rate), DST/metadata_RUSLAN_22200.csv
(usable utterances, normalised text), DST/dataset.toml (config layer 2: rate, length caps,
vocabulary), DST/report.json, DST/duration_histogram.png and DST/features/<key>/ (mel cache).

Every output is written atomically; DST/.prepare/state.sqlite records what is done, so a re-run
skips unchanged files and a killed run resumes. prepare(PrepareOptions) is the whole run; the
command line (flags, exit codes) is prep/cli.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import resource
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ruslan_glowtts.common.atomic_files import remove_stale_temp_files, write_text
from ruslan_glowtts.common.cli import check_writable
from ruslan_glowtts.common.corpus_layout import (
    DATASET_TOML,
    FEATURES_DIR,
    METADATA_FILE,
    STATE_DIR,
    WAV_DIR,
    wav_path,
)
from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.exclusions import Exclusion, read_exclusion
from ruslan_glowtts.common.presets import DEFAULT_PRESET
from ruslan_glowtts.common.process_tuning import limit_blas_threads
from ruslan_glowtts.common.vocabulary import Vocabulary
from ruslan_glowtts.prep.audio_audit import AudioLimits, problem
from ruslan_glowtts.prep.feature_cache import (
    feature_key,
    file_digest,
    invalidate,
    write_manifest,
)
from ruslan_glowtts.prep.length_limits import (
    LENGTH_PROBLEMS,
    LengthBounds,
    dataset_fragment,
    length_problems,
    recommend_caps,
    speaking_rate_outliers,
)
from ruslan_glowtts.prep.metadata import LINE_PROBLEMS, read_metadata
from ruslan_glowtts.prep.problems import EXCLUDE_PROBLEMS, Problem
from ruslan_glowtts.prep.report import (
    Utterance,
    build_report,
    write_histogram,
    write_report,
)
from ruslan_glowtts.prep.state import PrepareState, StateRow
from ruslan_glowtts.prep.text_normalization import (
    STRESS_MARK,
    TEXT_PROBLEMS,
    TextOptions,
    normalize_text,
)
from ruslan_glowtts.prep.worker import (
    POOL_SIGNALS,
    Job,
    WorkerSettings,
    init_worker,
    process,
    warm_up,
)

logger = logging.getLogger(__name__)

MIN_USABLE = 2  # the trainer holds one utterance out for evaluation and needs one to train on
# Bump when the per-file processing changes, so every file is processed again.
PIPELINE_VERSION = 1


@dataclass(frozen=True)
class PrepareOptions:
    src: Path
    dst: Path
    meta: Path | None = None  # default SRC/METADATA_FILE
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    text: TextOptions = TextOptions()
    bounds: LengthBounds = LengthBounds()
    limits: AudioLimits = AudioLimits()
    cap_percentile: float = 99.0
    trim_silence: bool = False
    features: bool = True
    preset: str = DEFAULT_PRESET  # the feature cache is keyed by this preset's resolved audio settings
    exclude: Path | None = None  # --exclude FILE: utterance ids to leave out (common/exclusions.py)


@dataclass
class PrepareResult:
    dst: Path
    report: dict[str, Any]

    @property
    def usable(self) -> int:
        return self.report["summary"]["usable"]


# ----------------------------------------------------------------------------------------------
# Arguments and paths


def _check_paths(options: PrepareOptions) -> tuple[Path, Path, Path]:
    src, dst = options.src.expanduser(), options.dst.expanduser()
    if not src.is_dir():
        raise UserError(f"--src {src}: no such folder")
    meta = (options.meta or src / METADATA_FILE).expanduser()
    if not meta.is_file():
        raise UserError(
            f"metadata file not found: {meta} (a RUSLAN folder holds {METADATA_FILE} and {WAV_DIR}/; "
            "pass --meta FILE for another name)"
        )
    if not (src / WAV_DIR).is_dir():
        raise UserError(f"{src / WAV_DIR}: no such folder (RUSLAN keeps its audio in {WAV_DIR}/<id>.wav)")
    src_real, dst_real = src.resolve(), dst.resolve()
    if dst_real == src_real or dst_real.is_relative_to(src_real):
        raise UserError(
            f"--dst {dst} is inside --src {src}: choose a folder outside the source corpus, "
            "which prepare never writes to"
        )
    if dst.exists() and not dst.is_dir():
        raise UserError(f"--dst {dst} exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / STATE_DIR).is_dir():
        raise UserError(f"--dst {dst} is not empty and was not written by prepare: choose a new or empty folder")
    check_writable(dst, "--dst")
    try:
        (dst / STATE_DIR).mkdir(parents=True, exist_ok=True)  # first: it marks dst as prepare's
    except OSError as exc:
        raise UserError(f"--dst {dst} is not writable: {exc.strerror or exc}") from None
    return src, dst, meta


@contextlib.contextmanager
def _exclusive(dst: Path) -> Iterator[None]:
    """One prepare per destination: two would race on the same files. A POSIX record lock, not
    flock: forked workers do not inherit it, so it dies with the parent even if a worker lingers."""
    with open(dst / STATE_DIR / "lock", "w") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another prepare is running on {dst}") from None
        yield


# ----------------------------------------------------------------------------------------------
# Config: the training rate, vocabulary and audio settings come from the kit's config


def _resolve_config(preset_name: str, fragment: dict[str, Any]) -> Any:
    """The config training will resolve for DST (base < this dataset.toml < preset, no CLI), by
    training's own builder: prepare's audio settings and the cache key cannot drift from training's."""
    from ruslan_glowtts.common.presets import load_preset
    from ruslan_glowtts.training.config import build_config

    config, _ = build_config(preset=load_preset(preset_name), dataset_layer=fragment, quiet=True)
    return config


def _fragment_layer(sample_rate: int, characters: str | None) -> dict[str, Any]:
    layer: dict[str, Any] = {"audio": {"sample_rate": sample_rate}}
    if characters is not None:
        layer["characters"] = {"characters": characters}
    return layer


# ----------------------------------------------------------------------------------------------
# The run


def _normalise(scan: Any, config: Any, text_options: TextOptions) -> list[Utterance]:
    """One Utterance per metadata line, in file order, with line and text problems."""
    vocabulary = Vocabulary.from_config(config)  # training's check_vocabulary asks the same
    utterances = [Utterance(p.line, p.id, "", problems=[p.problem]) for p in scan.problems]
    for entry in scan.entries:
        normalised = normalize_text(entry.text, text_options)
        utterance = Utterance(entry.line, entry.id, entry.text, normalised.text, normalised.changes)
        missing = sorted(set(vocabulary.unknown(normalised.text)))
        if missing:
            code = "latin_letters" if any("a" <= c <= "z" for c in missing) else "out_of_vocabulary"
            utterance.problems.append(
                Problem.of(TEXT_PROBLEMS, code, f"{''.join(missing)!r} in {normalised.text[:80]!r}")
            )
        elif not any(c.isalpha() for c in normalised.text):
            utterance.problems.append(Problem.of(TEXT_PROBLEMS, "no_letters", repr(normalised.text)))
        utterances.append(utterance)
    utterances.sort(key=lambda u: u.line)
    return utterances


def _options_digest(settings: WorkerSettings) -> str:
    shaping = {
        "pipeline": PIPELINE_VERSION,
        "target_rate": settings.target_rate,
        "trim_silence": settings.trim_silence,
        "trim_db": settings.trim_db,
        "frame_length": settings.frame_length,
        "hop_length": settings.hop_length,
        "limits": asdict(settings.limits),
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished (joined) children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _run_jobs(
    jobs: list[Job], settings: WorkerSettings, workers: int, handle: Callable[[dict[str, Any]], None]
) -> tuple[float, float]:
    """Run the jobs, calling `handle` with each result in the parent. Returns the wall and CPU
    seconds of processing (after the one-time warm-up): the part of a run that grows with the corpus."""
    if not jobs:
        return 0.0, 0.0
    warm_up()
    started, cpu_started = time.monotonic(), _cpu_seconds()
    if workers == 1 or len(jobs) == 1:
        init_worker(settings, in_pool=False)
        with limit_blas_threads(), _progress(len(jobs)) as progress:
            for job in jobs:
                handle(process(job))
                progress.update()
        return time.monotonic() - started, _cpu_seconds() - cpu_started
    # fork: workers start in milliseconds with everything imported. The pool is created before
    # the progress bar, so no thread (tqdm's monitor) exists when the workers are forked. On
    # Ctrl-C every worker is sent SIGTERM (below); their temp files are removed next run.
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    chunksize = max(1, min(16, len(jobs) // (workers * 16)))
    # Forked with SIGINT/SIGTERM blocked: a worker unblocks them once its own handlers are set
    # (a signal during its set-up would run this process's handler inside the worker).
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, POOL_SIGNALS)
    try:
        pool = context.Pool(workers, initializer=init_worker, initargs=(settings,))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
    try:
        with _progress(len(jobs)) as progress:
            for result in pool.imap_unordered(process, jobs, chunksize=chunksize):
                handle(result)
                progress.update()
        # Done: every worker reads its end-of-work sentinel and exits. (Pool.__exit__ would terminate
        # them instead, and a worker that Pool.terminate did not signal kept the join waiting forever.)
        pool.close()
    except BaseException:
        # Ctrl-C, SIGTERM, an error: every worker of ours gets SIGTERM (they leave at once, quietly),
        # then the pool cleans up after them.
        for child in multiprocessing.active_children():
            child.terminate()
        pool.terminate()
        raise
    finally:
        pool.join()
    return time.monotonic() - started, _cpu_seconds() - cpu_started


def _progress(total: int) -> tqdm:
    return tqdm(total=total, unit="file", desc="prepare", mininterval=0.5, smoothing=0.05)


def prepare(options: PrepareOptions, *, on_result: Callable[[dict[str, Any]], None] | None = None) -> PrepareResult:
    """Prepare options.dst from options.src. `on_result` is called after each file's result is
    recorded (progress reporting, tests). Raises UserError for bad input."""
    if options.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {options.jobs}")
    fresh = _missing_folders(options.dst.expanduser())
    src, dst, meta = (path.resolve() for path in _check_paths(options))
    started = time.monotonic()
    try:
        with _exclusive(dst):
            return _prepare(options, src, dst, meta, started, on_result)
    except UserError:
        _remove_if_empty(fresh)  # an exit-2 error leaves --dst as it found it
        raise


def _missing_folders(dst: Path) -> list[Path]:
    """dst's skeleton that does not exist yet (what prepare may create before an error), deepest first."""
    skeleton = [dst / STATE_DIR / "lock", dst / STATE_DIR, dst / WAV_DIR, dst / FEATURES_DIR, dst]
    return [path for path in skeleton if not path.exists()]


def _remove_if_empty(paths: list[Path]) -> None:
    """Remove what this run created, deepest first; never a folder with anything in it."""
    for path in paths:
        with contextlib.suppress(OSError):
            if path.is_file() and path.name == "lock" and path.stat().st_size == 0:
                path.unlink()
            elif path.is_dir():
                for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                    if child.is_dir():
                        child.rmdir()  # OSError (kept) when it holds a file
                path.rmdir()


def _prepare(
    options: PrepareOptions,
    src: Path,
    dst: Path,
    meta: Path,
    started: float,
    on_result: Callable[[dict[str, Any]], None] | None,
) -> PrepareResult:
    exclusion = read_exclusion(options.exclude, "--exclude") if options.exclude is not None else None
    base = _resolve_config(options.preset, {})
    rate = base.audio.sample_rate
    characters = base.characters.characters
    stress_characters = None
    if options.text.stress == "keep":
        stress_characters = characters if STRESS_MARK in characters else characters + STRESS_MARK
    # The config training will resolve once dataset.toml is written: its audio settings key the cache.
    config = _resolve_config(options.preset, _fragment_layer(rate, stress_characters))
    feature_dir = dst / FEATURES_DIR / feature_key(config.audio)
    (dst / WAV_DIR).mkdir(exist_ok=True)
    if options.features:
        feature_dir.mkdir(parents=True, exist_ok=True)
    for folder in (dst, dst / WAV_DIR, feature_dir):
        remove_stale_temp_files(folder)

    scan = read_metadata(meta)
    utterances = _normalise(scan, config, options.text)
    exclusion_record = _mark_excluded(utterances, exclusion) if exclusion is not None else None
    settings = WorkerSettings(
        target_rate=rate,
        trim_silence=options.trim_silence,
        trim_db=config.audio.trim_db,
        frame_length=config.audio.win_length,
        hop_length=config.audio.hop_length,
        limits=options.limits,
        audio_config=config.audio if options.features else None,
    )
    rows, run = _process_files(utterances, settings, options, src, dst, feature_dir, on_result)
    _merge_audio(utterances, rows, rate, options.bounds)

    usable = [u for u in utterances if u.usable]
    write_text(dst / METADATA_FILE, "".join(f"{u.id}|{u.text}\n" for u in usable), only_if_changed=True)
    caps = recommend_caps(
        [u.frames for u in usable],
        [len(u.text) for u in usable],
        rate=rate,
        percentile=options.cap_percentile,
        bounds=options.bounds,
    )
    write_text(
        dst / DATASET_TOML, dataset_fragment(caps, sample_rate=rate, characters=stress_characters), only_if_changed=True
    )
    cached = 0
    if options.features:
        cached = sum(1 for u in usable if rows[u.id].feature_key == feature_dir.name)
        write_manifest(
            feature_dir,
            config.audio,
            features=cached,
            utterances=len(usable),
            metadata_sha256=file_digest(dst / METADATA_FILE),
        )
    histogram = write_histogram(dst, utterances, rate=rate, caps=caps, digest_file=dst / STATE_DIR / "histogram.sha256")
    header = {
        "source": str(src),
        "destination": str(dst),
        "metadata_file": str(meta),
        "options": _jsonable({**asdict(options), "src": str(src), "dst": str(dst), "meta": str(meta)}),
        "training": {
            "sample_rate": rate,
            "characters": stress_characters or characters,
            "punctuations": config.characters.punctuations,
            "text_cleaner": config.text_cleaner,
        },
        "metadata": {
            "lines": scan.lines,
            "bom": scan.bom,
            "crlf_lines": scan.crlf_lines,
            "trailing_whitespace_lines": scan.trailing_whitespace_lines,
        },
        "outputs": {
            "metadata": METADATA_FILE,
            "dataset_config": DATASET_TOML,
            "histogram": histogram.name,
            "features": f"{FEATURES_DIR}/{feature_dir.name}" if options.features else None,
            "features_cached": cached,
        },
        "exclusion": exclusion_record,
    }
    run["seconds"] = round(time.monotonic() - started, 2)
    report = build_report(utterances, header=header, caps=caps, rate=rate, run=run)
    write_report(dst, report)
    return PrepareResult(dst, report)


def _process_files(
    utterances: list[Utterance],
    settings: WorkerSettings,
    options: PrepareOptions,
    src: Path,
    dst: Path,
    feature_dir: Path,
    on_result: Callable[[dict[str, Any]], None] | None,
) -> tuple[dict[str, StateRow], dict[str, Any]]:
    """Bring every file's outputs up to date; returns the state rows (one per processed id) and run counts."""
    digest, key = _options_digest(settings), feature_dir.name
    run: dict[str, Any] = {
        "processed": 0,
        "reused": 0,
        "features_computed": 0,
        "processing_seconds": 0.0,
        "processing_cpu_seconds": 0.0,
    }
    state = PrepareState(dst / STATE_DIR / "state.sqlite")
    try:
        rows = state.load()
        jobs, signatures, run["reused"] = _plan(
            utterances, rows, src, dst, feature_dir if options.features else None, digest, key
        )
        _prune(rows, set(signatures), state, dst, feature_dir)
        if any(job.convert for job in jobs):
            invalidate(feature_dir)  # a cache is only trusted again once a run completes it

        def handle(result: dict[str, Any]) -> None:
            id_ = result["id"]
            if result["converted"]:
                row = StateRow(signatures[id_], digest, key if result["features"] else "", result)
                run["processed"] += 1
            else:  # features only: the audio and its record are unchanged
                old = rows[id_]
                row = StateRow(old.source, old.options, key, old.record)
            run["features_computed"] += bool(result.get("features"))
            rows[id_] = row
            state.put(id_, row)
            if on_result is not None:
                on_result(result)

        logger.info("%d utterance(s) to process, %d unchanged since the last run", len(jobs), run["reused"])
        wall, cpu = _run_jobs(jobs, settings, options.jobs, handle)
        run.update(processing_seconds=round(wall, 2), processing_cpu_seconds=round(cpu, 2))
    finally:
        state.close()  # commits what is done, also on Ctrl-C: the next run resumes from there
    return rows, run


def _mark_excluded(utterances: list[Utterance], exclusion: Exclusion) -> dict[str, Any]:
    """--exclude: the listed ids are left out like any excluded utterance (no audio processed,
    outputs of an earlier run removed), and reported with the code listed_for_exclusion."""
    listed = set(exclusion.ids)
    unknown = exclusion.warn_unknown([u.id for u in utterances if not _line_problem(u)], "--exclude", "the metadata")
    excluded = 0
    for u in utterances:
        if u.id in listed and not _line_problem(u):
            u.problems.append(Problem.of(EXCLUDE_PROBLEMS, "listed_for_exclusion", Path(exclusion.path).name))
            excluded += 1
    logger.info("Excluding %d utterance(s): %s", excluded, exclusion.describe())
    return exclusion.to_json(excluded=excluded, unknown=unknown)


def _line_problem(utterance: Utterance) -> bool:
    """Lines that are not a (first) valid id: never processed, so a duplicate cannot touch the original's files."""
    return any(p.code in LINE_PROBLEMS for p in utterance.problems)


def _plan(
    utterances: list[Utterance],
    rows: dict[str, StateRow],
    src: Path,
    dst: Path,
    feature_dir: Path | None,
    digest: str,
    key: str,
) -> tuple[list[Job], dict[str, str], int]:
    """The jobs this run must do; files whose source, options and outputs are unchanged are skipped."""
    jobs, signatures, reused = [], {}, 0
    for u in utterances:
        if _line_problem(u) or any(p.code in EXCLUDE_PROBLEMS for p in u.problems):
            continue
        source = wav_path(src, u.id)
        try:
            info = source.stat()
        except OSError:
            u.problems.append(problem("missing_file", str(source)))
            continue
        if not stat.S_ISREG(info.st_mode):
            u.problems.append(problem("unreadable", "not a regular file"))
            continue
        signatures[u.id] = f"{info.st_size}:{info.st_mtime_ns}"
        wav = wav_path(dst, u.id)
        features = feature_dir / f"{u.id}.npy" if feature_dir is not None else None
        row = rows.get(u.id)
        current = (
            row is not None
            and row.source == signatures[u.id]
            and row.options == digest
            and (not row.record["usable"] or wav.is_file())
        )
        if not current:
            jobs.append(Job(u.id, str(source), str(wav), str(features) if features else None, convert=True))
        elif (
            row is not None
            and features is not None
            and row.record["usable"]
            and (row.feature_key != key or not features.is_file())
        ):
            jobs.append(Job(u.id, str(source), str(wav), str(features), convert=False))
        else:
            reused += 1
    return jobs, signatures, reused


def _prune(rows: dict[str, StateRow], present: set[str], state: PrepareState, dst: Path, feature_dir: Path) -> None:
    """Forget outputs of utterances that left the metadata or whose source file disappeared."""
    gone = [id_ for id_ in rows if id_ not in present]
    for id_ in gone:
        wav_path(dst, id_).unlink(missing_ok=True)
        (feature_dir / f"{id_}.npy").unlink(missing_ok=True)
        del rows[id_]
    if gone:
        state.delete(gone)
        state.commit()
        logger.info("Removed the outputs of %d utterance(s) no longer in the source", len(gone))


def _merge_audio(utterances: list[Utterance], rows: dict[str, StateRow], rate: int, bounds: LengthBounds) -> None:
    """Add each file's audit findings and the length checks to its utterance."""
    rates = {}
    for u in utterances:
        row = rows.get(u.id)
        if row is None or _line_problem(u) or any(p.code == "missing_file" for p in u.problems):
            continue
        u.problems.extend(Problem.from_json(p) for p in row.record["problems"])
        u.audio = row.record.get("source", {})
        if row.record["usable"]:
            u.frames = row.record["frames"]
            u.problems.extend(length_problems(u.frames / rate, len(u.text), bounds))
        if u.usable and u.frames:
            rates[u.id] = len(u.text) / (u.frames / rate)
    outliers = speaking_rate_outliers(rates)
    for u in utterances:
        if u.id in outliers:
            u.problems.append(Problem.of(LENGTH_PROBLEMS, "unusual_speaking_rate", outliers[u.id]))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
