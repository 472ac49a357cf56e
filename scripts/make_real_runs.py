"""Make the corpus of real runs in tests/data/real_runs/: small GlowTTS runs on the bundled
sample (espeak-ng Russian speech, resampled to 22050 Hz), seeded, at a ladder of learning rates
and clip settings, with Coqui's own Trainer (no kit code in the loop) and with the kit.

    .venv/bin/python scripts/make_real_runs.py            # every run of LADDER (~25 min, 2 busy cores)
    .venv/bin/python scripts/make_real_runs.py --only stock_lr0.3_noclip

Each run keeps what diagnose reads and nothing else: the event files, config.json, run.json
(kit runs), the tail of trainer_0_log.txt, and `process.json` (exit code and the last lines of
stderr: Coqui prints a crash's traceback there, not into its log). Checkpoints are deleted (Coqui
deletes a crashed run's folder unless it holds one, hence save_step 1 in stock runs).
What happened in each run is written by hand into labels.json after looking at the curves; the
rules under test never label the corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "real_runs"
KIT_PLACEHOLDER = "<kit>"
SAMPLE = REPO / "data" / "sample"
LOG_TAIL_LINES = 60
# A diverged GlowTTS predicts absurd durations and Coqui's train_log then asks for tens of GB
# (seen: 13 GB and rising at lr 0.6): cap each run's address space so that it fails fast, as
# it would on a smaller machine, instead of starving the others. torch maps ~4-5 GB at import.
MEMORY_LIMIT = 8 * 2**30
RUN_TIMEOUT_S = 300

# The tests' tiny GlowTTS (tests/helpers.py TINY_MODEL), as config fields.
TINY = {
    "hidden_channels_enc": 32,
    "hidden_channels_dec": 32,
    "hidden_channels_dp": 32,
    "num_flow_blocks_dec": 2,
    "num_block_layers": 2,
    "data_dep_init_steps": 2,
    "batch_size": 4,
    "eval_batch_size": 4,
}
TINY_ENCODER = {"num_layers": 1, "hidden_channels_ffn": 64}

# name: (runner, lr, grad_clip, steps, seed, plot_step, NoamLR warmup). grad_clip 1e6 = no
# clipping in effect: Coqui computes (and logs) grad_norm only when grad_clip > 0. Stock runs use
# a constant lr (warmup 0: no scheduler) or Coqui's NoamLR stepped per update; kit runs the kit's
# NoamLR: lr x step / warmup up to `warmup` steps, lr x sqrt(warmup / step) after. A run that
# outlives RUN_TIMEOUT_S is killed and kept as far as it got (its process.json says exit -9).
# Coqui draws figures and Griffin-Lim audio at every plot_step: most of a tiny step's cost.
LADDER: dict[str, tuple[str, float, float, int, int, int, int]] = {
    "stock_lr1e-4_clip5": ("stock", 1e-4, 5.0, 100, 1, 5, 0),
    "stock_lr0.3_noclip": ("stock", 0.3, 1e6, 300, 1, 1, 0),
    "stock_lr0.6_noclip": ("stock", 0.6, 1e6, 100, 1, 1, 0),
    "stock_lr1_clip1": ("stock", 1.0, 1.0, 100, 1, 1, 0),
    "stock_lr1_noclip": ("stock", 1.0, 1e6, 60, 1, 1, 0),
    "stock_lr3_noclip": ("stock", 3.0, 1e6, 60, 1, 1, 0),
    "kit_lr1e-3_clip5": ("kit", 1e-3, 5.0, 100, 1, 5, 4000),
    "kit_lr3_noclip_warmup1": ("kit", 3.0, 1e6, 60, 1, 1, 1),
    "kit_lr1_noclip_warmup100": ("kit", 1.0, 1e6, 150, 1, 5, 100),
    "stock_lr1_noclip_warmup100": ("stock", 1.0, 1e6, 100, 1, 1, 100),
    "stock_lr0.6_noclip_nofig": ("stock", 0.6, 1e6, 80, 1, 1, 0),
    "stock_lr1_noclip_nofig": ("stock", 1.0, 1e6, 80, 1, 1, 0),
    "stock_lr3_noclip_nofig": ("stock", 3.0, 1e6, 80, 1, 1, 0),
}
# Stock runs without Coqui's train figures (log_model_step off): the same blow-ups, no longer cut
# short by the figures' memory errors, so they run on to Coqui's NaN loss or to their last step.
NO_FIGURES = {name for name in LADDER if name.endswith("_nofig")}


def resample_sample(dst: Path) -> Path:
    import numpy as np
    import soundfile as sf
    import soxr

    (dst / "RUSLAN").mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE / "metadata_RUSLAN_22200.csv", dst / "metadata_RUSLAN_22200.csv")
    for wav in sorted((SAMPLE / "RUSLAN").glob("*.wav")):
        audio, rate = sf.read(wav, dtype="float32")
        sf.write(dst / "RUSLAN" / wav.name, np.clip(soxr.resample(audio, rate, 22050), -1, 1), 22050, subtype="PCM_16")
    return dst


def stock_child(
    data: Path,
    out: Path,
    lr: float,
    clip: float,
    steps: int,
    seed: int,
    plot_step: int,
    warmup: int,
    figures: bool = True,
) -> None:
    """Coqui's recipe the 0.28 way: GlowTTSConfig + GlowTTS + Trainer, nothing of the kit."""
    import random

    import numpy as np
    import torch
    from trainer import Trainer, TrainerArgs
    from TTS.tts.configs.glow_tts_config import GlowTTSConfig
    from TTS.tts.configs.shared_configs import BaseDatasetConfig, CharactersConfig
    from TTS.tts.datasets import load_tts_samples
    from TTS.tts.models.glow_tts import GlowTTS

    dataset = BaseDatasetConfig(
        formatter="ruslan", meta_file_train="metadata_RUSLAN_22200.csv", path=str(data), language="ru"
    )
    chars = CharactersConfig(
        characters_class="TTS.tts.utils.text.characters.Graphemes",
        pad="<PAD>",
        eos="<EOS>",
        bos="<BOS>",
        blank="<BLNK>",
        characters="абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
        punctuations="!,-.:;?«»—… ",
    )
    config = GlowTTSConfig(
        run_name=f"stock_lr{lr:g}",
        output_path=str(out),
        datasets=[dataset],
        characters=chars,
        text_cleaner="basic_cleaners",
        use_phonemes=False,
        lr=lr,
        grad_clip=clip,
        lr_scheduler="NoamLR" if warmup else None,
        lr_scheduler_params={"warmup_steps": warmup},
        scheduler_after_epoch=False,
        epochs=10_000,
        run_eval=False,
        test_delay_epochs=10_000,
        num_loader_workers=0,
        num_eval_loader_workers=0,
        plot_step=plot_step,
        print_step=25,
        save_step=1,
        save_n_checkpoints=1,
        save_checkpoints=True,
        save_best_after=10**9,
        training_seed=seed,
        eval_split_size=2,
        shuffle=True,
        **TINY,
    )
    if not figures:
        # Coqui draws its train figures and Griffin-Lim audio every log_model_step (default: every
        # save_step, here every step); a wrecked duration predictor makes that ask for hundreds of GB
        # before the loss turns NaN. A Coqui setting, not kit code.
        config.log_model_step = 10**9
    config.audio.sample_rate = 22050
    for key, value in TINY_ENCODER.items():
        config.encoder_params[key] = value
    train, evals = load_tts_samples(config, eval_split=True, eval_split_size=2)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = GlowTTS(config)

    def on_step_end(trainer: Trainer) -> None:
        if trainer.total_steps_done >= steps:
            raise KeyboardInterrupt  # Coqui's own clean exit (saves, exit 130)

    trainer = Trainer(
        TrainerArgs(),
        config,
        str(out),
        model=model,
        train_samples=train,
        eval_samples=evals,
        parse_command_line_args=False,
        callbacks={"on_train_step_end": on_step_end},
    )
    trainer.fit()


def kit_command(
    data: Path, out: Path, lr: float, clip: float, steps: int, seed: int, plot_step: int, warmup: int
) -> list[str]:
    sets = [f"{k}={v}" for k, v in TINY.items()] + [f"encoder_params.{k}={v}" for k, v in TINY_ENCODER.items()]
    sets += [
        f"lr={lr!r}",
        f"grad_clip={clip!r}",
        "run_eval=false",
        "test_delay_epochs=10000",
        f"plot_step={plot_step}",
        "num_loader_workers=0",
        "num_eval_loader_workers=0",
        "save_step=100000",
        f"lr_scheduler_params.warmup_steps={warmup}",
    ]
    cmd = [
        sys.executable,
        str(REPO / "train_ruslan_glowtts.py"),
        "--preset",
        "default",
        "--dataset-path",
        str(data),
        "--output-path",
        str(out),
        "--seed",
        str(seed),
        "--max-steps",
        str(steps),
    ]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def scalars_only(src: Path, dst: Path) -> None:
    """The event file without its figures and audio (Coqui logs both at every plot_step; diagnose
    reads scalars and the guard's text notes only): record by record, nothing else changed."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    with open(dst, "wb") as out:
        writer = RecordWriter(out)
        for record in RawEventFileLoader(str(src)).Load():  # raw: no conversion of scalars to tensors
            event = Event.FromString(record)
            if event.HasField("summary"):
                keep = [
                    v
                    for v in event.summary.value
                    if v.metadata.plugin_data.plugin_name not in ("images", "audio")
                    and not v.HasField("image")
                    and not v.HasField("audio")
                ]
                if not keep:
                    continue
                del event.summary.value[:]
                event.summary.value.extend(keep)
            writer.write(event.SerializeToString())
        writer.flush()


def keep_small(run_dir: Path, dst: Path, process: dict) -> None:
    """Copy what diagnose reads; the log's tail only."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for path in run_dir.iterdir():
        if path.name.startswith("events.out.tfevents."):
            scalars_only(path, dst / path.name)
        elif path.name in ("config.json", "run.json"):
            # The checkout's path is this machine's, not part of the run: written as <kit>.
            text = path.read_text(encoding="utf-8").replace(str(REPO), KIT_PLACEHOLDER)
            (dst / path.name).write_text(text, encoding="utf-8")
    log = run_dir / "trainer_0_log.txt"
    if log.is_file():
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        (dst / log.name).write_text("\n".join(lines[-LOG_TAIL_LINES:]) + "\n", encoding="utf-8")
    process_text = json.dumps(process, indent=2, ensure_ascii=False).replace(str(REPO), KIT_PLACEHOLDER)
    (dst / "process.json").write_text(process_text + "\n", encoding="utf-8")


def make(name: str, data: Path, work: Path) -> None:
    runner, lr, clip, steps, seed, plot_step, warmup = LADDER[name]
    out = work / name
    if runner == "stock":
        cmd = [
            sys.executable,
            __file__,
            "--stock-child",
            str(data),
            str(out),
            repr(lr),
            repr(clip),
            str(steps),
            str(seed),
            str(plot_step),
            str(warmup),
            str(int(name not in NO_FIGURES)),
        ]
    else:
        cmd = kit_command(data, out, lr, clip, steps, seed, plot_step, warmup)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    started = time.time()

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=RUN_TIMEOUT_S,
            preexec_fn=limit_memory,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        proc = subprocess.CompletedProcess(
            cmd,
            -9,
            "",
            (exc.stderr or b"").decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else exc.stderr or "",
        )
    runs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
    stderr = proc.stderr.strip().splitlines()
    process = {
        "runner": runner,
        "lr": lr,
        "grad_clip": clip,
        "steps": steps,
        "seed": seed,
        "exit_code": proc.returncode,
        "stderr_tail": stderr[-8:],
        "cpu_seconds_wall": round(time.time() - started, 1),
    }
    print(f"{name}: exit {proc.returncode} in {process['cpu_seconds_wall']} s, {len(runs)} run folder(s)", flush=True)
    if len(runs) != 1:
        print("\n".join(stderr[-30:]), file=sys.stderr)
        return
    keep_small(runs[0], OUT / name, process)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", choices=sorted(LADDER), help="make only these runs")
    p.add_argument("--stock-child", nargs=9, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stock_child:
        data, out, lr, clip, steps, seed, plot_step, warmup, figures = args.stock_child
        stock_child(
            Path(data),
            Path(out),
            float(lr),
            float(clip),
            int(steps),
            int(seed),
            int(plot_step),
            int(warmup),
            figures=figures == "1",
        )
        return 0
    with tempfile.TemporaryDirectory(prefix="real_runs_") as tmp:
        data = resample_sample(Path(tmp) / "sample22k")
        for name in args.only or LADDER:
            make(name, data, Path(tmp) / "runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
