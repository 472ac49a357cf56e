"""One run lifecycle for both models, so that every training command has the same guarantees.

A model plugs in a ModelRecipe (GlowTTS: training/cli.py's GLOWTTS, HiFi-GAN: training/vocoder_cli.py's
HIFIGAN): its config builder, its model factory and its Trainer subclass, with its own flags and
samples. Everything else lives here, once:

- the shared flags (add_shared_flags) and their resolution into a TrainRequest (request_from_args).
  Before anything is written: paths are checked (common/paths.py); --continue-path must be a run
  of this model kind with a readable config.json and a checkpoint that loads; --restore-path a
  checkpoint of this kind that loads;
- seeding, run naming and an exclusive run folder (runs.claim_run_folder, one atomic mkdir),
  locked (runs.RunLock) while the run trains, a resumed run too: a second process is refused;
- exact steps: checkpoint_N.pth holds the state after N training steps and a resume continues at
  step N, so --max-steps N stops at N however many resumes it takes; a run already at N trains
  nothing and says so (KitTrainer keeps the count, training/trainer.py);
- the run record (common/run_record.py): start, each resume, the end;
- the Outcome, with the next command as its own field; report() is what the command prints.

Light to import (the scripts parse their flags before torch is loaded): torch, Coqui and the
Trainer are imported inside the functions that train.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ruslan_glowtts.common import runs
from ruslan_glowtts.common.atomic_files import remove_stale_temp_files
from ruslan_glowtts.common.cli import OneLineErrorParser, Terminated
from ruslan_glowtts.common.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, UserError, hold_logs, release_logs
from ruslan_glowtts.common.paths import input_folder, output_folder
from ruslan_glowtts.common.presets import Preset, load_preset, load_recorded_preset, tier_chain
from ruslan_glowtts.common.run_layout import CONFIG_FILE, SKIPPED_SAMPLES, ModelKind
from ruslan_glowtts.common.run_record import RUNNING, RunRecord

if TYPE_CHECKING:
    from ruslan_glowtts.monitor.explosion_rules import Alarm
    from ruslan_glowtts.training.config import Override

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# What one call of the lifecycle trains, and what comes out


@dataclass(frozen=True)
class TrainJob:
    """What to train: the resolved config, where its weights start, and the checks to relax.
    Its config is not changed by training: each run trains a copy (see train_run)."""

    config: Any  # the model's Coqpit config
    preset: Preset
    overrides: tuple[Override, ...] = ()
    dataset_path: Path | None = None  # for rebuilding the config on the next tier
    max_steps: int = 0
    continue_path: Path | None = None
    resume_from: Path | None = None  # with continue_path: the run's newest checkpoint that loads
    resume_step: int = 0  # its step: the run continues there
    restore_path: Path | None = None
    allow_partial_restore: bool = False
    allow_unknown_chars: bool = False  # GlowTTS: train although the text has characters outside the vocabulary
    vocoder: Any = None  # GlowTTS: speak the test sentences through this vocoder (synthesize.Model)
    exclusion: Any = None  # GlowTTS: common.exclusions.Exclusion, the ids --exclude-utterances leaves out
    audio_source: str = ""  # HiFi-GAN: where its audio settings came from


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
    """One call of the lifecycle: what to train, how the process was launched, hooks, and (for the
    runs an escalation starts) their lineage. Never changed by training; an escalation makes a new one."""

    job: TrainJob
    launch: Launch = field(default_factory=Launch)
    hooks: Hooks = field(default_factory=Hooks)
    lineage: Lineage = field(default_factory=Lineage)

    def with_callbacks(self, callbacks: Mapping[str, Any]) -> TrainRequest:
        return replace(self, hooks=Hooks(dict(callbacks)))


@dataclass
class Outcome:
    """How a run ended. `message` says what happened in one line; `next_command` is the exact
    command to run next when there is one (run.json keeps both, diagnose reads them)."""

    status: str  # finished | max_steps | interrupted | terminated | crashed | exploded | bad_data
    exit_code: int
    step: int
    message: str = ""
    next_command: str = ""
    alarm: Alarm | None = None
    run_dir: Path | None = None
    recent_samples: list[str] = field(default_factory=list)  # batches just before an explosion
    chain: list[str] = field(default_factory=list)  # an escalation chain, one line per run

    def report(self) -> str:
        """What the training command prints last."""
        lines = [f"{self.message}. Next: {self.next_command}" if self.next_command else self.message]
        if self.chain:
            lines += ["Escalation chain:", *self.chain]
        if self.run_dir is not None:
            lines.append(f"Run folder: {self.run_dir}")
        return "\n".join(lines)


@dataclass
class RunData:
    """A run's samples, after the model's start-up checks."""

    train_samples: list[Any]
    eval_samples: list[Any]
    skipped: list[str] = field(default_factory=list)  # left out after an escalation's rollback
    exclusion: dict[str, Any] | None = None  # run.json's record of --exclude-utterances (GlowTTS)


# ---------------------------------------------------------------------------------------------
# What a model supplies


class ModelRecipe(ABC):
    """One model's part of the lifecycle: its flags, config builder, samples, model factory and
    Trainer subclass. Everything else (flags both share, checks, folders, locks, steps, run.json,
    the outcome) is the lifecycle's."""

    kind: ModelKind
    presets_dir: Path
    default_preset: str
    description: str  # the parser's
    epilog: str
    dataset_required: str  # the error without --dataset-path
    # Flags of this model a resumed run refuses (it keeps its own config.json): (flag, args attribute)
    continue_refuses: tuple[tuple[str, str], ...] = ()

    # -- the command line
    @abstractmethod
    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        """The model's own flags, after the shared ones."""

    def normalize_args(self, args: argparse.Namespace) -> None:
        """Adjust parsed arguments before the shared checks (GlowTTS: trainer.distribute's aliases)."""

    def flag_layers(self, args: argparse.Namespace) -> list[tuple[str, str, Any]]:
        """(flag, config key, value) for the model's flags that set a config key; None = not given."""
        return []

    def job_options(self, args: argparse.Namespace, config: Any) -> dict[str, Any]:
        """The model's TrainJob fields from its flags (GlowTTS: allow_unknown_chars, vocoder)."""
        return {}

    @abstractmethod
    def format_presets(self) -> str:
        """--list-presets."""

    # -- the config builder
    @property
    @abstractmethod
    def config_class(self) -> type:
        """The Coqpit config class: --set keys are checked against it; a run's config.json loads into it."""

    @abstractmethod
    def build_config(
        self, args: argparse.Namespace, preset: Preset, cli_layers: list[tuple[dict[str, Any], str]]
    ) -> tuple[Any, list[Override], dict[str, Any]]:
        """(config, overrides, TrainJob fields it adds) for a new run, every override logged."""

    @abstractmethod
    def dataset_of(self, config: Any) -> str | None:
        """The dataset folder a config trains on."""

    @abstractmethod
    def set_dataset(self, config: Any, path: Path) -> None:
        """Point a resumed run's config at a dataset folder (--dataset-path with --continue-path)."""

    # -- the run
    def adjust_config(self, config: Any, job: TrainJob) -> None:
        """Changes to this run's own copy of the config (GlowTTS: no data-dependent init on restored weights)."""

    @abstractmethod
    def load_data(self, config: Any, request: TrainRequest) -> RunData:
        """The run's samples, after the start-up checks (one UserError line each, nothing written)."""

    @abstractmethod
    def make_model(self, config: Any, job: TrainJob) -> Any:
        """The model factory."""

    @abstractmethod
    def trainer_class(self) -> type:
        """The KitTrainer subclass (training/trainer.py) that trains the model."""

    def next_command(self, request: TrainRequest, run_dir: Path | None) -> str:
        """The exact command for the next tier of the preset's chain, restoring this run's known-good
        weights when there are some, with the user's own command-line settings; "" at the chain's end."""
        from ruslan_glowtts.common.next_steps import next_tier_command
        from ruslan_glowtts.training.config import Layer

        job = request.job
        if not job.preset.fallback:
            return ""
        restore, _ = runs.known_good(run_dir) if run_dir else (None, 0)
        overrides = [o.to_json() for o in job.overrides if o.layer is Layer.COMMAND_LINE]
        return next_tier_command(
            job.preset.fallback,
            self.dataset_of(job.config),
            overrides,
            restore,
            script=self.kind.script,
            presets_dir=self.presets_dir,
        )

    def train(self, request: TrainRequest) -> Outcome:
        """Train the request: one run (GlowTTS overrides this with its escalation chain)."""
        return train_run(self, request)


# ---------------------------------------------------------------------------------------------
# The command line


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def build_parser(recipe: ModelRecipe) -> argparse.ArgumentParser:
    """The flags both models share, then the model's own."""
    p = OneLineErrorParser(prog=recipe.kind.script, description=recipe.description, epilog=recipe.epilog)
    p.add_argument(
        "--preset", metavar="NAME|PATH", help=f"preset (default {recipe.default_preset}); see --list-presets"
    )
    p.add_argument("--list-presets", action="store_true", help="list the presets, their values and fallbacks, and exit")
    p.add_argument(
        "--dataset-path",
        type=Path,
        metavar="DIR",
        help="RUSLAN folder (metadata_RUSLAN_22200.csv + RUSLAN/*.wav), ideally prepared by "
        "`python -m ruslan_glowtts.prepare` (its feature cache is then used)",
    )
    p.add_argument("--output-path", type=Path, metavar="DIR", help="where run folders go (default runs/)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set batch_size=16 (repeatable; TOML values)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument(
        "--max-steps",
        type=positive_int,
        default=0,
        metavar="N",
        help="stop cleanly with a checkpoint once the run has trained N steps in all (resumes included)",
    )
    p.add_argument("--continue-path", type=Path, metavar="RUN_DIR", help="resume a run from its last checkpoint")
    p.add_argument("--restore-path", type=Path, metavar="CKPT", help="start a new run from these weights (fine-tune)")
    p.add_argument(
        "--allow-partial-restore",
        action="store_true",
        help="with --restore-path: accept a checkpoint whose layers do not all match the config "
        "(the matching ones are restored, the rest start fresh)",
    )
    p.add_argument("--seed", type=int, help="training seed (default: the config's training_seed)")
    recipe.add_flags(p)
    return p


_CONTINUE_REFUSES = (
    ("--preset", "preset"),
    ("--set", "sets"),
    ("--seed", "seed"),
    ("--output-path", "output_path"),
    ("--on-explosion", "on_explosion"),
)


def parse_args(recipe: ModelRecipe, argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser(recipe).parse_args(argv)
    recipe.normalize_args(args)
    if args.continue_path is not None and args.restore_path is not None:
        raise UserError("use either --continue-path (resume a run) or --restore-path (new run from weights), not both")
    if args.continue_path is not None:
        given = [flag for flag, name in (*_CONTINUE_REFUSES, *recipe.continue_refuses) if getattr(args, name, None)]
        if given:
            raise UserError(
                f"{', '.join(given)} cannot be combined with --continue-path: a resumed run keeps its own "
                "config.json. To change settings, start a new run from its weights with --restore-path "
                "RUN_DIR/checkpoint_N.pth (or edit RUN_DIR/config.json)"
            )
    return args


def request_from_args(recipe: ModelRecipe, args: argparse.Namespace) -> TrainRequest:
    """Resolve the config for these arguments (logging every override) into a TrainRequest.
    Every check that can refuse the command runs here or in the recipe's load_data, before
    anything is written."""
    launch = Launch(
        rank=getattr(args, "rank", 0), group_id=getattr(args, "group_id", ""), use_ddp=getattr(args, "use_ddp", False)
    )
    if args.dataset_path is not None:
        input_folder(args.dataset_path, "--dataset-path")
    job = _resumed_job(recipe, args) if args.continue_path is not None else _new_job(recipe, args)
    return TrainRequest(job, launch)


def _resumed_job(recipe: ModelRecipe, args: argparse.Namespace) -> TrainJob:
    from ruslan_glowtts.training.config import Layer, Override

    run_dir = args.continue_path
    runs.check_run_kind(run_dir, recipe.kind, "--continue-path")
    config = recipe.config_class()
    try:
        config.load_json(str(run_dir / CONFIG_FILE))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(
            f"--continue-path {run_dir}: its config.json does not load as a {recipe.kind.name} "
            f"config ({type(exc).__name__}: {exc})"
        ) from None
    if args.dataset_path is not None:
        recipe.set_dataset(config, args.dataset_path.resolve())
    # Coqui resumes from checkpoint_N/best_model_N (known_good.pth holds weights only, no
    # optimizer state); the newest that actually loads, not merely the newest name.
    checkpoint = runs.loadable_checkpoint(run_dir)
    record = RunRecord.read(run_dir)
    preset = load_recorded_preset(record.preset, record.preset_path, recipe.presets_dir, recipe.default_preset)
    logger.info("Continuing %s with its own config.json (preset %s)", run_dir, preset.name)
    if record.status in ("exploded", "escalated"):
        logger.warning(
            " ! This run was stopped by the health guard (%s); its last checkpoint may hold the "
            "exploding state. The next tier, from the known-good weights, is usually better: %s",
            record.message,
            record.next_command or "see run.json",
        )
    # An escalation from here rebuilds the config from the run's original command-line settings.
    recorded = [Override.from_json(o) for o in record.overrides]  # old runs: no "layer" key
    logger.info("Resuming from %s", checkpoint.path.name)
    dataset = recipe.dataset_of(config)
    return TrainJob(
        config,
        preset,
        tuple(o for o in recorded if o.layer is Layer.COMMAND_LINE),
        dataset_path=Path(dataset) if dataset else None,
        max_steps=args.max_steps,
        continue_path=run_dir,
        resume_from=checkpoint.path,
        resume_step=checkpoint.step,
        **recipe.job_options(args, config),
    )


def _new_job(recipe: ModelRecipe, args: argparse.Namespace) -> TrainJob:
    from ruslan_glowtts.training.config import parse_set_option, set_key

    preset = load_preset(args.preset or recipe.default_preset, recipe.presets_dir)
    cli_layers = [(parse_set_option(option, recipe.config_class), "--set") for option in args.sets]
    flags = [
        ("--seed", "training_seed", args.seed),
        ("--output-path", "output_path", str(args.output_path) if args.output_path else None),
        *recipe.flag_layers(args),
    ]
    for flag, key, value in flags:
        if value is not None:
            layer: dict[str, Any] = {}
            set_key(layer, key, value)
            cli_layers.append((layer, flag))
    if args.restore_path is not None:
        runs.check_checkpoint(args.restore_path, "--restore-path", recipe.kind)
    config, overrides, added = recipe.build_config(args, preset, cli_layers)
    if not args.print_config:
        if args.dataset_path is None:
            raise UserError(recipe.dataset_required)
        output_folder(Path(config.output_path), "--output-path")
    return TrainJob(
        config,
        preset,
        tuple(overrides),
        dataset_path=args.dataset_path,
        max_steps=args.max_steps,
        restore_path=args.restore_path,
        allow_partial_restore=args.allow_partial_restore,
        **recipe.job_options(args, config),
        **added,
    )


def command_main(recipe: ModelRecipe, argv: list[str] | None) -> int:
    """The body of both training scripts: parse -> (list presets | print the config | train)."""
    args = parse_args(recipe, argv)
    if args.list_presets:
        print(recipe.format_presets())
        return 0
    hold_logs()  # a refusal prints its one line alone; released once the start-up checks pass
    request = request_from_args(recipe, args)
    if args.print_config:
        release_logs()
        print(json.dumps(request.job.config.to_dict(), indent=2, ensure_ascii=False, default=str))
        return 0
    outcome = recipe.train(request)
    print(outcome.report())
    return outcome.exit_code


# ---------------------------------------------------------------------------------------------
# The run


def resolve_precision(config: Any) -> str:
    """The precision this device will train in, set on `config`: bf16 presets fall back to fp32
    where bf16 autocast is not supported or not worth it (CPU: Coqui would run bf16 autocast there,
    slowly). It changes the config it is given: the lifecycle gives it the run's own copy, never
    the request's (the benchmarks give it theirs)."""
    import torch

    if not config.mixed_precision:
        return "fp32"
    if config.precision == "bf16" and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        logger.info("Overriding: mixed_precision = False  (bf16 is not supported on this device: training in fp32)")
        config.mixed_precision = False
        return "fp32"
    return config.precision


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return "cpu"


def seed_everything(seed: int) -> None:
    """Coqui seeds inside the Trainer, after the model exists: seed first, or --seed would not make
    the initial weights reproducible."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def ddp_run_name(request: TrainRequest) -> str:
    """Under DDP every rank names the folder itself (Coqui): from the launch's shared group id, not
    from what exists on disk, which differs between ranks that start a moment apart."""
    name, launch, index = request.job.config.run_name, request.launch, request.lineage.index
    return f"{name}-{launch.group_id or 'ddp'}" + (f"-esc{index}" if index else "")


def _new_run_folder(request: TrainRequest, config: Any) -> Path:
    """Create the new run's folder and set its run name in `config`."""
    output = Path(config.output_path)
    if request.launch.use_ddp:
        from trainer.generic_utils import get_experiment_folder_path

        config.run_name = ddp_run_name(request)
        folder = Path(get_experiment_folder_path(output, config.run_name))
        folder.mkdir(parents=True, exist_ok=True)  # every rank: one folder, named by the launch
        return folder
    config.run_name, folder = runs.claim_run_folder(output, config.run_name)
    return folder


def check_restore_matches(model: Any, path: Path, *, allow_partial: bool) -> None:
    """Refuse (exit 2, before any run folder exists) weights whose layers do not fit the config:
    Coqui would restore the matching ones, log the rest among a hundred lines, and exit 0."""
    restored = runs.read_checkpoint(path).shapes  # loaded once: --restore-path was checked with it
    own = model.state_dict()
    missing = [k for k in own if k not in restored]
    reshaped = [k for k in own if k in restored and restored[k] != tuple(own[k].shape)]
    unused = [k for k in restored if k not in own]
    if not (missing or reshaped or unused):
        return
    matching = len(own) - len(missing) - len(reshaped)
    summary = (
        f"{matching} of {len(own)} layers of the config's model match {path} ({len(reshaped)} with another "
        f"shape, e.g. {(reshaped or missing or unused)[0]}; {len(missing)} missing; {len(unused)} unused)"
    )
    if not allow_partial:
        raise UserError(
            f"--restore-path: {summary}. The checkpoint is of another model size or config; restore "
            "it with its own config's model settings, or pass --allow-partial-restore to restore the "
            "matching layers and start the rest fresh"
        )
    logger.warning(" ! --allow-partial-restore: restoring only %s; the other layers start from scratch", summary)


def train_run(recipe: ModelRecipe, request: TrainRequest) -> Outcome:
    """Train one run of `recipe`'s model, from the checks to the run record's ending."""
    from ruslan_glowtts.training.coqui_compat import require_supported_coqui

    require_supported_coqui()
    job, launch = request.job, request.launch
    if job.continue_path is not None and job.max_steps and job.resume_step >= job.max_steps:
        release_logs()
        return Outcome(
            "max_steps",
            EXIT_OK,
            job.resume_step,
            f"already at step {job.resume_step} (--max-steps {job.max_steps}): nothing to train",
            run_dir=job.continue_path,
        )
    # This run's own config: the adjustments below (device precision, restore, run name) are the
    # run's, and the request stays as given (an escalation rebuilds its config from the layers).
    config = copy.deepcopy(job.config)
    with contextlib.ExitStack() as held:
        if job.continue_path is not None and launch.rank == 0:
            # Taken first: a second process on this run is refused before it reads or writes anything more.
            held.enter_context(runs.RunLock(job.continue_path))
            remove_stale_temp_files(job.continue_path)  # a save killed before its rename
        data = recipe.load_data(config, request)
        precision = resolve_precision(config)
        recipe.adjust_config(config, job)
        logger.info(
            "Training on %d utterances, evaluating on %d; device %s, %s",
            len(data.train_samples),
            len(data.eval_samples),
            device_name(),
            precision,
        )
        seed_everything(config.training_seed)
        model = recipe.make_model(config, job)
        if job.restore_path is not None:
            check_restore_matches(model, job.restore_path, allow_partial=job.allow_partial_restore)
        if job.continue_path is not None:
            run_dir = job.continue_path
        else:
            run_dir = _new_run_folder(request, config)  # the checks passed: only now is anything written
            if launch.rank == 0:
                held.enter_context(runs.RunLock(run_dir, flag="--output-path"))
        release_logs()  # the start-up checks passed: print the override lines held back until now
        outcome = _fit(recipe, request, config, model, data, run_dir, precision)
    return outcome


def _fit(
    recipe: ModelRecipe, request: TrainRequest, config: Any, model: Any, data: RunData, run_dir: Path, precision: str
) -> Outcome:
    from trainer import TrainerArgs

    from ruslan_glowtts.training.coqui_compat import set_global_step

    job, launch, lineage = request.job, request.launch, request.lineage
    args = TrainerArgs(
        continue_path=str(job.continue_path or ""),
        restore_path=str(job.restore_path or ""),
        grad_accum_steps=config.grad_accum_steps,
        rank=launch.rank,
        group_id=launch.group_id,
        use_ddp=launch.use_ddp,
    )
    trainer = recipe.trainer_class()(
        args,
        config,
        config.output_path,
        model=model,
        train_samples=data.train_samples,
        eval_samples=data.eval_samples,
        parse_command_line_args=False,
        callbacks=dict(request.hooks.callbacks),
        max_steps=job.max_steps,
        resume_from=job.resume_from,
        run_folder=run_dir,
        num_samples=len(data.train_samples) + len(data.eval_samples),
        next_command=lambda: recipe.next_command(request, run_dir),
    )
    if lineage.start_step:
        set_global_step(trainer, lineage.start_step)  # the same step axis as the parent run
    record = RunRecord.read(run_dir) if job.continue_path is not None else RunRecord()  # a new folder has none
    try:
        if launch.rank == 0:
            if job.continue_path is not None:
                record.resume(
                    run_dir,
                    at=runs.now(),
                    from_step=job.resume_step,
                    environment=runs.environment(),
                    precision=precision,
                )
            else:
                _start_record(record, recipe, request, run_dir, precision, data.skipped, data.exclusion)
            if lineage.parent_run is not None:
                _announce_escalation(trainer, request, run_dir)
        logger.info("Run folder: %s", run_dir)
        outcome = trainer.fit()
    except (Terminated, KeyboardInterrupt) as stop:
        # A signal before fit() took the signals over: the run ends here, honestly recorded.
        if launch.rank == 0 and record.status == RUNNING:
            status, code = (
                ("terminated", EXIT_TERMINATED) if isinstance(stop, Terminated) else ("interrupted", EXIT_INTERRUPTED)
            )
            record.end(
                run_dir,
                status=status,
                exit_code=code,
                final_step=trainer.total_steps_done,
                message=f"{status} before training started; no checkpoint saved",
                next_command="",
                ended_at=runs.now(),
            )
        raise
    outcome.run_dir = run_dir
    if outcome.status == "exploded" and not escalates(request):
        # The run's last word (run.json too): the command to go on with, or why there is none.
        outcome.next_command = recipe.next_command(request, run_dir)
        health = config.health
        if health.policy == "escalate" and job.preset.fallback:
            outcome.message += f". Stopped after {health.max_escalations} escalations (health.max_escalations)"
        elif not outcome.next_command:
            outcome.message += ". No tier left: check the data with prepare's report"
    if launch.rank == 0:
        record.end(
            run_dir,
            status=outcome.status,
            exit_code=outcome.exit_code,
            final_step=outcome.step,
            message=outcome.message,
            next_command=outcome.next_command,
            ended_at=runs.now(),
            health=trainer.health_summary(),
            unloadable_samples=dict(trainer.unloadable),
        )
    return outcome


def escalates(request: TrainRequest) -> bool:
    """Whether an explosion of this run goes on to the next tier by itself (train.py's chain):
    the escalate policy, a fallback tier, and escalations left."""
    job = request.job
    health = job.config.health
    return health.policy == "escalate" and bool(job.preset.fallback) and request.lineage.index < health.max_escalations


def _start_record(
    record: RunRecord,
    recipe: ModelRecipe,
    request: TrainRequest,
    run_dir: Path,
    precision: str,
    skipped: list[str],
    exclusion: dict[str, Any] | None = None,
) -> None:
    from ruslan_glowtts.training.config import Layer

    job, lineage, config = request.job, request.lineage, request.job.config
    if skipped:
        (run_dir / SKIPPED_SAMPLES).write_text("\n".join(skipped) + "\n", encoding="utf-8")
    record.kit, record.model = recipe.kind.kit, recipe.kind.coqui_model
    record.preset, record.preset_path = job.preset.name, str(job.preset.path)
    record.tier_chain = [p.name for p in tier_chain(job.preset, recipe.presets_dir)]
    record.overrides = [o.to_json() for o in job.overrides if o.layer is not Layer.BASE]
    record.seed, record.dataset_path = config.training_seed, recipe.dataset_of(config)
    record.restore_path = str(job.restore_path) if job.restore_path else None
    record.max_steps, record.policy = job.max_steps, config.health.policy
    record.parent_run = str(lineage.parent_run) if lineage.parent_run else None
    record.reason, record.escalation_index = lineage.reason or None, lineage.index
    record.start_step, record.skipped_samples = lineage.start_step, len(skipped)
    record.device, record.precision = device_name(), precision
    record.vocoder = job.vocoder.name if job.vocoder is not None else None
    record.audio_source = job.audio_source or None
    record.exclude_utterances = exclusion
    record.start(run_dir, started_at=runs.now(), environment=runs.environment())


def _announce_escalation(trainer: Any, request: TrainRequest, run_dir: Path) -> None:
    from ruslan_glowtts.common.run_layout import HEALTH_ESCALATION

    step, lineage = trainer.total_steps_done, request.lineage
    trainer.dashboard_logger.add_scalar(HEALTH_ESCALATION, float(lineage.index), step)
    trainer.dashboard_logger.add_text(
        HEALTH_ESCALATION,
        f"Escalated from {lineage.parent_run} to preset {request.job.preset.name}: {lineage.reason}",
        step,
    )
    assert lineage.parent_run is not None
    parent = RunRecord.read(lineage.parent_run)
    parent.escalated_to, parent.status = str(run_dir), "escalated"
    parent.write(lineage.parent_run)
