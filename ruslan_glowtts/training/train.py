"""GlowTTS's training: its samples, and train(), which escalates when asked.

The run itself (checks, folder, lock, Trainer, run.json, exact steps) is the run lifecycle's
(training/run.py), shared with the vocoder; GlowTTS plugs into it through training/cli.py's GLOWTTS
recipe. What is GlowTTS's own is here: the samples and their start-up checks (files, sample rate,
vocabulary, length caps), and the escalation chain.

With health.policy = escalate (--auto-escalate), an explosion ends the run and train() starts
the next one itself, as PaLM's and OPT's operators did by hand: roll back to the last known-good
weights, switch to the preset's fallback tier (its lr, clip, batch, precision; a fresh optimizer
and warmup; no data-dependent re-init over trained weights), leave out the batches seen just
before the alarm, and continue, at most health.max_escalations times. Each run of the chain has
its own folder (its curves sit beside its parent's in TensorBoard, on the same step axis) and
records its parent and the reason in run.json.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from ruslan_glowtts.common import runs
from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.next_steps import flat_keys
from ruslan_glowtts.common.presets import Preset, load_preset
from ruslan_glowtts.training.cli import GLOWTTS
from ruslan_glowtts.training.config import (
    Layer,
    RuslanGlowTTSConfig,
    build_config,
    set_key,
)
from ruslan_glowtts.training.dataset import (
    check_length_caps,
    check_sample_rate,
    check_vocabulary,
    load_samples,
    read_audio_lengths,
)
from ruslan_glowtts.training.run import Lineage, Outcome, RunData, TrainRequest, escalates, train_run

logger = logging.getLogger(__name__)

MAX_SKIPPED_SHARE = 0.1  # never leave out more than this share of the training set after a rollback


def train(request: TrainRequest) -> Outcome:
    """Train one run, then, under the escalate policy, the runs of its escalation chain."""
    outcome = train_run(GLOWTTS, request)
    chain = [(request, outcome)]
    # Under DDP every rank runs this loop: the guard's stop is all-reduced, so all ranks see the
    # same outcome at the same step and start the next tier together.
    while outcome.status == "exploded" and escalates(request):
        request = _escalation(request, outcome)
        outcome = train_run(GLOWTTS, request)
        chain.append((request, outcome))
    if len(chain) > 1:
        outcome.chain = [f"  {r.job.preset.name:8s} {o.status:9s} step {o.step:6d}  {o.run_dir}" for r, o in chain]
    return outcome


def load_data(config: RuslanGlowTTSConfig, request: TrainRequest) -> RunData:
    """The samples, after the start-up checks Coqui does not make (files, sample rate, vocabulary,
    length caps), less the batches an escalation leaves out."""
    train_samples, eval_samples = load_samples(config)
    exclusion_record = None  # run.json's record of --exclude-utterances
    if request.job.exclusion is not None:
        train_samples, eval_samples, exclusion_record = exclude_utterances(
            request.job.exclusion, train_samples, eval_samples
        )
    lengths, rates = read_audio_lengths(train_samples + eval_samples, config)
    check_sample_rate(train_samples + eval_samples, config, rates)
    check_vocabulary(train_samples + eval_samples, config, allow_unknown=request.job.allow_unknown_chars)
    # The batches just before the alarm (most recent first), at most a tenth of the data.
    skipped = list(request.lineage.exclude_samples[: int(MAX_SKIPPED_SHARE * len(train_samples))])
    if skipped:
        excluded = set(skipped)
        train_samples = [s for s in train_samples if s["audio_unique_name"] not in excluded]
    check_length_caps(train_samples, eval_samples, lengths, config)
    return RunData(train_samples, eval_samples, skipped, exclusion=exclusion_record)


# ---------------------------------------------------------------------------------------------
# Escalation


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


def _escalation(request: TrainRequest, outcome: Outcome) -> TrainRequest:
    """The request for the next run of the chain (run.escalates(request) said there is one)."""
    job = request.job
    preset = load_preset(job.preset.fallback)
    config, overrides = build_config(
        preset=preset, dataset_path=job.dataset_path, cli_layers=_cli_layers_for(preset, request)
    )
    config.training_seed = job.config.training_seed + 1  # a different batch order from here on
    # An exploded outcome comes from _fit, which always sets its run folder.
    restore, start_step = runs.known_good(cast(Path, outcome.run_dir))
    alarm = outcome.alarm
    reason = f"{alarm.kind} at step {alarm.step}: {alarm.message}" if alarm else outcome.message
    logger.warning(
        "\n%s\n ! Escalating %s -> %s: %s\n ! Rolling back to %s\n%s",
        "=" * 78,
        job.preset.name,
        preset.name,
        reason,
        f"known-good step {start_step}" if restore else "the start (no known-good yet)",
        "=" * 78,
    )
    # Each rank saw its own batches; leaving different samples out per rank would give the ranks
    # datasets of different sizes. Under DDP the new seed alone changes which batches come next.
    exclude = () if request.launch.use_ddp else tuple(outcome.recent_samples)
    return replace(
        request,
        job=replace(
            job,
            config=config,
            preset=preset,
            overrides=tuple(overrides),
            continue_path=None,
            resume_from=None,
            resume_step=0,
            restore_path=restore,
        ),
        lineage=Lineage(
            parent_run=outcome.run_dir,
            reason=reason,
            index=request.lineage.index + 1,
            start_step=start_step,
            exclude_samples=exclude,
        ),
    )


def exclude_utterances(
    exclusion: Any,
    train_samples: list[dict[str, Any]],
    eval_samples: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Leave out the listed ids after the eval split, so the eval set of a retrained run is the
    original one minus the excluded ids (losses stay comparable). Returns the kept samples and
    the record for run.json."""

    def uid(sample: dict[str, Any]) -> str:
        return Path(sample["audio_file"]).stem

    unknown = exclusion.warn_unknown(
        [uid(s) for s in train_samples + eval_samples], "--exclude-utterances", "the dataset"
    )
    listed = set(exclusion.ids)
    kept_train = [s for s in train_samples if uid(s) not in listed]
    kept_eval = [s for s in eval_samples if uid(s) not in listed]
    if not kept_train or not kept_eval:
        raise UserError(
            f"--exclude-utterances {exclusion.path} leaves {len(kept_train)} training and "
            f"{len(kept_eval)} eval utterances (at least 1 of each is needed)"
        )
    counts = {
        "excluded_train": len(train_samples) - len(kept_train),
        "excluded_eval": len(eval_samples) - len(kept_eval),
    }
    logger.info(
        "Excluding: %d training and %d eval utterances left out (%d listed)",
        counts["excluded_train"],
        counts["excluded_eval"],
        len(listed),
    )
    return kept_train, kept_eval, exclusion.to_json(**counts, excluded=sum(counts.values()), unknown=unknown)
