"""train(): from a resolved config to a finished (or safely stopped) run, escalating if asked.

One linear story, like Coqui's recipe: samples -> checks -> model -> Trainer -> fit. Around it:
the startup checks (files, sample rate, vocabulary), an effective precision chosen for the
device, a fresh run folder, run.json, and an Outcome instead of sys.exit.

With health.policy = escalate (--auto-escalate), an explosion ends the run and train() starts
the next one itself, as PaLM's and OPT's operators did by hand: roll back to the last known-good
weights, switch to the preset's fallback tier (its lr, clip, batch, precision; a fresh optimizer
and warmup; no data-dependent re-init over trained weights), leave out the batches seen just
before the alarm, and continue, at most health.max_escalations times. Each run of the chain has
its own folder (its curves sit beside its parent's in TensorBoard, on the same step axis) and
records its parent and the reason in run.json.
"""

from __future__ import annotations

import copy
import logging
import random
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from trainer import TrainerArgs

from ruslan_glowtts.common import runs
from ruslan_glowtts.common.errors import UserError, release_logs
from ruslan_glowtts.common.next_steps import flat_keys, next_tier_command
from ruslan_glowtts.common.presets import Preset, load_preset, tier_chain
from ruslan_glowtts.training.config import (
    Layer,
    Override,
    RuslanGlowTTSConfig,
    build_config,
    set_key,
)
from ruslan_glowtts.training.coqui_compat import (
    require_supported_coqui,
    set_global_step,
)
from ruslan_glowtts.training.dataset import (
    check_length_caps,
    check_sample_rate,
    check_vocabulary,
    load_samples,
    read_audio_lengths,
)
from ruslan_glowtts.training.model import RuslanGlowTTS
from ruslan_glowtts.training.trainer import KitTrainer, Outcome

logger = logging.getLogger(__name__)

MAX_SKIPPED_SHARE = 0.1  # never leave out more than this share of the training set after a rollback


@dataclass(frozen=True)
class TrainJob:
    """What to train: the resolved config, where its weights start, and the checks to relax.
    Its config is not changed by training: each run trains a copy (see _train_run)."""

    config: RuslanGlowTTSConfig
    preset: Preset
    overrides: tuple[Override, ...] = ()
    dataset_path: Path | None = None  # for rebuilding the config on the next tier
    max_steps: int = 0
    continue_path: Path | None = None
    resume_from: Path | None = None  # with continue_path: the run's newest checkpoint that loads
    restore_path: Path | None = None
    allow_partial_restore: bool = False
    allow_unknown_chars: bool = False
    vocoder: Any = None  # synthesize.Model: speak the test sentences through it (--vocoder)
    exclusion: Any = None  # common.exclusions.Exclusion: utterance ids left out (--exclude-utterances)


@dataclass(frozen=True)
class Launch:
    """How this process was started: `python -m trainer.distribute` passes each rank these (DDP)."""

    rank: int = 0
    group_id: str = ""
    use_ddp: bool = False


@dataclass(frozen=True)
class Hooks:
    """Coqui Trainer callbacks by event name ("on_train_step_start", ...): tests and tools."""

    callbacks: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Lineage:
    """Where a run of an escalation chain comes from; empty for the run the user started."""

    parent_run: Path | None = None
    reason: str = ""
    index: int = 0  # 1 for the first escalation
    start_step: int = 0  # the known-good step it restores: the same step axis as the parent
    exclude_samples: tuple[str, ...] = ()  # the batches just before the alarm, most recent first


@dataclass(frozen=True)
class TrainRequest:
    """One call of train(): what to train, how the process was launched, hooks, and (for the runs
    an escalation starts) their lineage. train() never changes it; an escalation makes a new one."""

    job: TrainJob
    launch: Launch = field(default_factory=Launch)
    hooks: Hooks = field(default_factory=Hooks)
    lineage: Lineage = field(default_factory=Lineage)

    def with_callbacks(self, callbacks: Mapping[str, Any]) -> "TrainRequest":
        return replace(self, hooks=Hooks(dict(callbacks)))


def resolve_precision(config: RuslanGlowTTSConfig) -> str:
    """The precision this device will train in, set on `config`: bf16 presets fall back to fp32
    where bf16 autocast is not supported or not worth it (CPU: Coqui would run bf16 autocast there,
    slowly). It changes the config it is given: train() gives it the run's own copy, never the
    request's (the benchmarks give it theirs)."""
    if not config.mixed_precision:
        return "fp32"
    if config.precision == "bf16" and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        logger.info("Overriding: mixed_precision = False  (bf16 is not supported on this device: training in fp32)")
        config.mixed_precision = False
        return "fp32"
    return config.precision


def _run_name(request: TrainRequest) -> str:
    name = request.job.config.run_name
    launch, index = request.launch, request.lineage.index
    if launch.use_ddp:
        # Every rank names the folder itself (Coqui): derive it from the launch's shared group id,
        # not from what exists on disk, which differs between ranks that start a moment apart.
        return f"{name}-{launch.group_id or 'ddp'}" + (f"-esc{index}" if index else "")
    return runs.unique_run_name(Path(request.job.config.output_path), name)


def _device() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return "cpu"


def train(request: TrainRequest) -> Outcome:
    """Train one run, then, under the escalate policy, the runs of its escalation chain."""
    require_supported_coqui()
    outcome = _train_run(request)
    chain = [(request, outcome)]
    # Under DDP every rank runs this loop: the guard's stop is all-reduced, so all ranks see the
    # same outcome at the same step and start the next tier together.
    while outcome.status == "exploded" and request.job.config.health.policy == "escalate":
        nxt = _escalation(request, outcome)
        if nxt is None:
            break
        request = nxt
        outcome = _train_run(request)
        chain.append((request, outcome))
    if len(chain) > 1:
        outcome.message += "\nEscalation chain:\n" + "\n".join(
            f"  {r.job.preset.name:8s} {o.status:9s} step {o.step:6d}  {o.run_dir}" for r, o in chain)
    return outcome


@dataclass
class _NextTierCommand:
    """The guard's `next_command`. The Trainer creates the run folder, and the guard with it, so
    this exists before the folder does and is told the folder once the Trainer has made it."""

    request: TrainRequest
    run_dir: Path | None = None

    def __call__(self) -> str:
        return next_command(self.request, self.run_dir)


def _train_run(request: TrainRequest) -> Outcome:
    job, launch, lineage = request.job, request.launch, request.lineage
    # This run's own config: the adjustments below (device precision, restore, run name) are the
    # run's, and the request stays as given (an escalation rebuilds its config from the layers).
    config = copy.deepcopy(job.config)
    train_samples, eval_samples = load_samples(config)
    exclusion_record = None  # run.json's record of --exclude-utterances
    if job.exclusion is not None:
        train_samples, eval_samples, exclusion_record = exclude_utterances(job.exclusion, train_samples, eval_samples)
    lengths, rates = read_audio_lengths(train_samples + eval_samples, config)
    check_sample_rate(train_samples + eval_samples, config, rates)
    check_vocabulary(train_samples + eval_samples, config, allow_unknown=job.allow_unknown_chars)
    # The batches just before the alarm (most recent first), at most a tenth of the data.
    skipped = list(lineage.exclude_samples[: int(MAX_SKIPPED_SHARE * len(train_samples))])
    if skipped:
        excluded = set(skipped)
        train_samples = [s for s in train_samples if s["audio_unique_name"] not in excluded]
    check_length_caps(train_samples, eval_samples, lengths, config)
    precision = resolve_precision(config)
    if job.restore_path is not None and config.data_dep_init_steps:
        # Data-dependent init would overwrite the restored ActNorm statistics.
        logger.info("Overriding: data_dep_init_steps = 0  (--restore-path: keep the restored ActNorm layers)")
        config.data_dep_init_steps = 0
    logger.info("Training on %d utterances, evaluating on %d; device %s, %s",
                len(train_samples), len(eval_samples), _device(), precision)

    if job.continue_path is None:
        config.run_name = _run_name(request)
    # Coqui seeds inside the Trainer, after the model exists: seed first, or --seed would not
    # make the initial weights reproducible.
    random.seed(config.training_seed)
    np.random.seed(config.training_seed)
    torch.manual_seed(config.training_seed)
    model = RuslanGlowTTS(config)
    if job.restore_path is not None:
        check_restore_matches(model, job.restore_path, allow_partial=job.allow_partial_restore)
    if job.vocoder is not None:
        from ruslan_glowtts.voice.preview import attach_vocoder

        attach_vocoder(model, job.vocoder)
    release_logs()  # the start-up checks passed: print the config's override lines held back until now
    args = TrainerArgs(
        continue_path=str(job.continue_path or ""),
        restore_path=str(job.restore_path or ""),
        grad_accum_steps=config.grad_accum_steps,
        rank=launch.rank,
        group_id=launch.group_id,
        use_ddp=launch.use_ddp,
    )
    next_tier = _NextTierCommand(request)
    trainer = KitTrainer(
        args, config, config.output_path, model=model, train_samples=train_samples, eval_samples=eval_samples,
        parse_command_line_args=False, callbacks=dict(request.hooks.callbacks), max_steps=job.max_steps,
        resume_from=job.resume_from, num_samples=len(train_samples) + len(eval_samples), next_command=next_tier,
    )
    run_dir = next_tier.run_dir = Path(trainer.output_path)
    if lineage.start_step:
        set_global_step(trainer, lineage.start_step)  # the same step axis as the parent run
    if launch.rank == 0:
        _write_start_meta(run_dir, request, precision, skipped, exclusion_record)
        if lineage.parent_run is not None:
            _announce_escalation(trainer, request, run_dir)
    logger.info("Run folder: %s", run_dir)
    outcome = trainer.fit()
    outcome.run_dir = run_dir
    if outcome.status == "exploded" and not (config.health.policy == "escalate" and job.preset.fallback):
        command = next_command(request, run_dir)
        outcome.message += f". Next: {command}" if command else ". No tier left: check the data with prepare's report"
    if launch.rank == 0:
        runs.update_meta(run_dir, status=outcome.status, exit_code=outcome.exit_code, final_step=outcome.step,
                         message=outcome.message, ended_at=runs.now(), health=asdict(trainer.guard.summary),
                         **({"unloadable_samples": trainer.unloadable} if trainer.unloadable else {}))
    outcome.message = f"{outcome.message}\nRun folder: {run_dir}"
    return outcome


def exclude_utterances(exclusion: Any, train_samples: list[dict[str, Any]], eval_samples: list[dict[str, Any]],
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Leave out the listed ids after the eval split, so the eval set of a retrained run is the
    original one minus the excluded ids (losses stay comparable). Returns the kept samples and
    the record for run.json."""
    def uid(sample: dict[str, Any]) -> str:
        return Path(sample["audio_file"]).stem

    unknown = exclusion.warn_unknown([uid(s) for s in train_samples + eval_samples], "--exclude-utterances",
                                     "the dataset")
    listed = set(exclusion.ids)
    kept_train = [s for s in train_samples if uid(s) not in listed]
    kept_eval = [s for s in eval_samples if uid(s) not in listed]
    if not kept_train or not kept_eval:
        raise UserError(f"--exclude-utterances {exclusion.path} leaves {len(kept_train)} training and "
                        f"{len(kept_eval)} eval utterances (at least 1 of each is needed)")
    counts = {"excluded_train": len(train_samples) - len(kept_train),
              "excluded_eval": len(eval_samples) - len(kept_eval)}
    logger.info("Excluding: %d training and %d eval utterances left out (%d listed)",
                counts["excluded_train"], counts["excluded_eval"], len(listed))
    return kept_train, kept_eval, exclusion.to_json(**counts, excluded=sum(counts.values()), unknown=unknown)


def check_restore_matches(model: torch.nn.Module, path: Path, *, allow_partial: bool) -> None:
    """Refuse (exit 2, before any run folder exists) weights whose layers do not fit the config:
    Coqui would restore the matching ones, log the rest among a hundred lines, and exit 0."""
    restored = torch.load(path, map_location="cpu", weights_only=False)["model"]
    own = model.state_dict()
    missing = [k for k in own if k not in restored]
    reshaped = [k for k in own if k in restored and tuple(restored[k].shape) != tuple(own[k].shape)]
    unused = [k for k in restored if k not in own]
    if not (missing or reshaped or unused):
        return
    matching = len(own) - len(missing) - len(reshaped)
    summary = (f"{matching} of {len(own)} layers of the config's model match {path} ({len(reshaped)} with another "
               f"shape, e.g. {(reshaped or missing or unused)[0]}; {len(missing)} missing; {len(unused)} unused)")
    if not allow_partial:
        raise UserError(f"--restore-path: {summary}. The checkpoint is of another model size or config; restore "
                        "it with its own config's model settings, or pass --allow-partial-restore to restore the "
                        "matching layers and start the rest fresh")
    logger.warning(" ! --allow-partial-restore: restoring only %s; the other layers start from scratch", summary)


# ---------------------------------------------------------------------------------------------
# Escalation


def _cli_overrides(request: TrainRequest) -> list[dict[str, Any]]:
    return [o.to_json() for o in request.job.overrides if o.layer is Layer.COMMAND_LINE]


def _cli_layers_for(preset: Preset, request: TrainRequest) -> list[tuple[dict[str, Any], str]]:
    """The user's command-line settings minus the keys the new tier sets: switching tiers means
    taking its lr, clip, batch and precision, whatever --set said for the old one."""
    tier_keys = flat_keys(preset.overrides)
    layers = []
    for override in request.job.overrides:
        if override.layer is not Layer.COMMAND_LINE:
            continue
        if override.key in tier_keys:
            logger.info("Escalation: dropping %s %s (preset %s sets it)", override.source, override.key, preset.name)
            continue
        layer: dict[str, Any] = {}
        set_key(layer, override.key, override.value)
        layers.append((layer, override.source.text))  # the flag
    return layers


def _escalation(request: TrainRequest, outcome: Outcome) -> TrainRequest | None:
    """The request for the next run of the chain, or None (with the reason in the outcome)."""
    job = request.job
    health = job.config.health
    if not job.preset.fallback:
        outcome.message += f". No tier after '{job.preset.name}': suspect the data (prepare's report)"
        return None
    if request.lineage.index >= health.max_escalations:
        outcome.message += f". Stopped after {health.max_escalations} escalations (health.max_escalations)"
        return None
    preset = load_preset(job.preset.fallback)
    config, overrides = build_config(preset=preset, dataset_path=job.dataset_path,
                                     cli_layers=_cli_layers_for(preset, request))
    config.training_seed = job.config.training_seed + 1  # a different batch order from here on
    restore, start_step = runs.known_good(outcome.run_dir)
    alarm = outcome.alarm
    reason = f"{alarm.kind} at step {alarm.step}: {alarm.message}" if alarm else outcome.message
    logger.warning("\n%s\n ! Escalating %s -> %s: %s\n ! Rolling back to %s\n%s", "=" * 78, job.preset.name,
                   preset.name, reason, f"known-good step {start_step}" if restore else "the start (no known-good yet)",
                   "=" * 78)
    # Each rank saw its own batches; leaving different samples out per rank would give the ranks
    # datasets of different sizes. Under DDP the new seed alone changes which batches come next.
    exclude = () if request.launch.use_ddp else tuple(outcome.recent_samples)
    return replace(
        request,
        job=replace(job, config=config, preset=preset, overrides=tuple(overrides), continue_path=None,
                    resume_from=None, restore_path=restore),
        lineage=Lineage(parent_run=outcome.run_dir, reason=reason, index=request.lineage.index + 1,
                        start_step=start_step, exclude_samples=exclude),
    )


def _announce_escalation(trainer: KitTrainer, request: TrainRequest, run_dir: Path) -> None:
    step, lineage = trainer.total_steps_done, request.lineage
    trainer.dashboard_logger.add_scalar("Health/escalation", float(lineage.index), step)
    trainer.dashboard_logger.add_text("Health/escalation", f"Escalated from {lineage.parent_run} to preset "
                                      f"{request.job.preset.name}: {lineage.reason}", step)
    runs.update_meta(lineage.parent_run, escalated_to=str(run_dir), status="escalated")


def next_command(request: TrainRequest, run_dir: Path | None) -> str:
    """The exact command for the next tier, restoring the known-good weights when there are some."""
    job = request.job
    if not job.preset.fallback:
        return ""
    restore, _ = runs.known_good(run_dir) if run_dir else (None, 0)
    command = next_tier_command(job.preset.fallback, job.config.datasets[0].path, _cli_overrides(request), restore)
    if job.exclusion is not None:  # the next tier leaves out what this one did
        command += f" --exclude-utterances {shlex.quote(job.exclusion.path)}"
    return command


def _write_start_meta(run_dir: Path, request: TrainRequest, precision: str, skipped: list[str],
                      excluded: dict[str, Any] | None = None) -> None:
    job, lineage = request.job, request.lineage
    if job.continue_path is not None:
        meta = runs.read_meta(run_dir)
        resumes = meta.get("resumes", []) + [{"at": runs.now(), **runs.environment()}]
        runs.update_meta(run_dir, status="running", resumes=resumes, precision=precision)
        return
    chain = tier_chain(job.preset)
    if skipped:
        (run_dir / "skipped_samples.txt").write_text("\n".join(skipped) + "\n", encoding="utf-8")
    runs.update_meta(
        run_dir,
        kit="ruslan_glowtts",
        status="running",
        started_at=runs.now(),
        preset=job.preset.name,
        preset_path=str(job.preset.path),
        tier_chain=[p.name for p in chain],
        overrides=[o.to_json() for o in job.overrides if o.layer is not Layer.BASE],
        seed=job.config.training_seed,
        dataset_path=job.config.datasets[0].path,
        restore_path=str(job.restore_path) if job.restore_path else None,
        max_steps=job.max_steps,
        policy=job.config.health.policy,
        parent_run=str(lineage.parent_run) if lineage.parent_run else None,
        reason=lineage.reason or None,
        escalation_index=lineage.index,
        start_step=lineage.start_step,
        skipped_samples=len(skipped),
        exclude_utterances=excluded,
        device=_device(),
        precision=precision,
        vocoder=job.vocoder.name if job.vocoder is not None else None,
        **runs.environment(),
    )
