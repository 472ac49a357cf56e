"""A run folder's names, written down once: its files, its checkpoints, its logs, the TensorBoard
tags the kit writes and the ones of Coqui's it reads, and the model kinds a run can hold.

Writers (the Trainer, the guard, the lifecycle) and readers (diagnose, synthesize, the tests)
import them from here. Coqui writes most of the folder; the names of its files are Coqui's, the
kit's own files sit beside them:

    config.json                 Coqui: the resolved config (its "model" says the kind of run)
    run.json                    the kit: the run's record (common/run_record.py)
    run.lock                    the kit: held by the process training in the folder (common/runs.py)
    checkpoint_<N>.pth          Coqui's format: the state after N training steps
    best_model_<N>.pth, best_model.pth
    known_good.pth, known_good.json, known_good_candidate.pth   the health guard's (monitor/guard.py)
    skipped_samples.txt         an escalated run: the samples it leaves out
    trainer_<rank>_log.txt      Coqui's log, with the kit's lines in it
    events.out.tfevents.*       TensorBoard

Torch-free: diagnose reads run folders and must start fast.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# -- files -----------------------------------------------------------------------------------------
CONFIG_FILE = "config.json"
RUN_META = "run.json"
LOCK_FILE = "run.lock"
KNOWN_GOOD = "known_good.pth"  # the last known-good weights (ruslan_glowtts/monitor/guard.py)
KNOWN_GOOD_META = "known_good.json"
KNOWN_GOOD_CANDIDATE = "known_good_candidate.pth"
BEST_MODEL = "best_model.pth"  # Coqui's copy of the newest best_model_<N>.pth
SKIPPED_SAMPLES = "skipped_samples.txt"
EVENTS_GLOB = "events.out.tfevents.*"

# checkpoint_<N>.pth and best_model_<N>.pth: the files --continue-path resumes from (Coqui's names)
CHECKPOINT_RE = re.compile(r"^(checkpoint|best_model)_(\d+)\.pth$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step}.pth"


def log_name(rank: int = 0) -> str:
    """Coqui's log file of one rank (the kit's own lines go into it too)."""
    return f"trainer_{rank}_log.txt"


LOG_FILE = log_name(0)

# -- TensorBoard: the kit's tags -------------------------------------------------------------------
HEALTH_PREFIX = "Health/"
HEALTH_GRAD_NORM = "Health/grad_norm"  # the pre-clip norm of every update, NaN/Inf visible
HEALTH_GRAD_NORM_DISC = "Health/grad_norm_disc"  # the vocoder's discriminator
HEALTH_SKIPPED_STEPS = "Health/skipped_steps"
HEALTH_SKIPPED_DISC_STEPS = "Health/skipped_disc_steps"
HEALTH_AMP_SKIPPED_STEPS = "Health/amp_skipped_steps"
HEALTH_SKIPPED_SAMPLES = "Health/skipped_samples"
HEALTH_ALARM = "Health/alarm"  # a scalar at each alarm, and a text entry saying what and what next
HEALTH_SPIKE = "Health/spike"
HEALTH_ESCALATION = "Health/escalation"

# -- TensorBoard: Coqui's tags the kit reads (TrainIterStats every plot_step) ------------------------
# (TrainIterStats/amp_scaler is matched in training/coqui_compat.py, with the rest of Coqui's texts.)
COQUI_TRAIN_PREFIX = "TrainIterStats/"
TRAIN_LOSS = "TrainIterStats/loss"
TRAIN_GRAD_NORM = "TrainIterStats/grad_norm"
TRAIN_LR = "TrainIterStats/current_lr"
EVAL_LOSS = "EvalStats/avg_loss"
TRAIN_TAGS = (TRAIN_LOSS, TRAIN_GRAD_NORM, TRAIN_LR, "TrainIterStats/log_mle", "TrainIterStats/loss_dur")


# -- what a run folder holds -------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelKind:
    """A kind of model the kit trains: how its config.json, its run.json and people name it."""

    name: str  # in messages: "GlowTTS"
    coqui_model: str  # config.json's "model" (Coqui's config class sets it)
    kit: str  # run.json's "kit"
    script: str  # the script that trains it


GLOWTTS = ModelKind("GlowTTS", "glow_tts", "ruslan_glowtts", "train_ruslan_glowtts.py")
HIFIGAN = ModelKind("HiFi-GAN", "hifigan", "ruslan_hifigan", "train_ruslan_hifigan.py")
KINDS = (GLOWTTS, HIFIGAN)


def config_model(config: Mapping[str, Any]) -> str:
    """The model a Coqui config (config.json, a checkpoint's "config") says it is; "" when it names none."""
    return str(config.get("model") or "").strip().lower()


def kind_of(config: Mapping[str, Any]) -> ModelKind | None:
    """The kit's kind of this config, or None for any other (or no) model."""
    model = config_model(config)
    return next((kind for kind in KINDS if kind.coqui_model == model), None)


def describe_model(config: Mapping[str, Any]) -> str:
    """What a config holds, for a message: "GlowTTS", "HiFi-GAN", "Coqui 'tacotron2'", or "no Coqui model"."""
    kind = kind_of(config)
    if kind is not None:
        return kind.name
    model = config_model(config)
    return f"Coqui {model!r}" if model else "no Coqui model"
