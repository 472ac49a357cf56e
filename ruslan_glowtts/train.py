"""train(): from a resolved config to a finished (or safely stopped) run.

One linear story, like Coqui's recipe: samples -> checks -> model -> Trainer -> fit. What the
recipe lacks is around it: the startup checks (files, sample rate, vocabulary), an effective
precision chosen for the device, a fresh run folder, run.json, and an Outcome instead of
sys.exit.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from trainer import TrainerArgs
from TTS.tts.models.glow_tts import GlowTTS

from ruslan_glowtts import runs
from ruslan_glowtts.config import Override, RuslanGlowTTSConfig
from ruslan_glowtts.dataset import check_sample_rate, check_vocabulary, load_samples
from ruslan_glowtts.presets import Preset, tier_chain
from ruslan_glowtts.trainer import KitTrainer, Outcome

logger = logging.getLogger(__name__)


@dataclass
class TrainRequest:
    config: RuslanGlowTTSConfig
    preset: Preset
    overrides: list[Override] = field(default_factory=list)
    max_steps: int = 0
    continue_path: Path | None = None
    restore_path: Path | None = None
    allow_unknown_chars: bool = False
    rank: int = 0
    group_id: str = ""
    use_ddp: bool = False
    callbacks: dict[str, Any] = field(default_factory=dict)  # Coqui trainer callbacks (tests, tools)


def resolve_precision(config: RuslanGlowTTSConfig) -> str:
    """The precision this device will train in. bf16 presets fall back to fp32 where bf16 autocast
    is not supported or not worth it (CPU: Coqui would run bf16 autocast there, slowly)."""
    if not config.mixed_precision:
        return "fp32"
    if config.precision == "bf16" and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        logger.info("Overriding: mixed_precision = False  (bf16 is not supported on this device: training in fp32)")
        config.mixed_precision = False
        return "fp32"
    return config.precision


def _device() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return "cpu"


def train(request: TrainRequest) -> Outcome:
    config = request.config
    train_samples, eval_samples = load_samples(config)
    check_sample_rate(train_samples + eval_samples, config)
    check_vocabulary(train_samples + eval_samples, config, allow_unknown=request.allow_unknown_chars)
    precision = resolve_precision(config)
    if request.restore_path is not None and config.data_dep_init_steps:
        # Data-dependent init would overwrite the restored ActNorm statistics.
        logger.info("Overriding: data_dep_init_steps = 0  (--restore-path: keep the restored ActNorm layers)")
        config.data_dep_init_steps = 0
    logger.info("Training on %d utterances, evaluating on %d; device %s, %s",
                len(train_samples), len(eval_samples), _device(), precision)

    if request.continue_path is None and request.rank == 0:
        config.run_name = runs.unique_run_name(Path(config.output_path), config.run_name)
    model = GlowTTS(config)
    args = TrainerArgs(
        continue_path=str(request.continue_path or ""),
        restore_path=str(request.restore_path or ""),
        grad_accum_steps=config.grad_accum_steps,
        rank=request.rank,
        group_id=request.group_id,
        use_ddp=request.use_ddp,
    )
    trainer = KitTrainer(
        args, config, config.output_path, model=model, train_samples=train_samples, eval_samples=eval_samples,
        parse_command_line_args=False, callbacks=request.callbacks, max_steps=request.max_steps,
    )
    run_dir = Path(trainer.output_path)
    if request.rank == 0:
        _write_start_meta(run_dir, request, precision)
    logger.info("Run folder: %s", run_dir)
    outcome = trainer.fit()
    if request.rank == 0:
        runs.update_meta(run_dir, status=outcome.status, exit_code=outcome.exit_code, final_step=outcome.step,
                         message=outcome.message, ended_at=runs.now())
    outcome.message = f"{outcome.message}. Run folder: {run_dir}"
    return outcome


def _write_start_meta(run_dir: Path, request: TrainRequest, precision: str) -> None:
    if request.continue_path is not None:
        meta = runs.read_meta(run_dir)
        resumes = meta.get("resumes", []) + [{"at": runs.now(), **runs.environment()}]
        runs.update_meta(run_dir, status="running", resumes=resumes, precision=precision)
        return
    chain = tier_chain(request.preset)
    runs.update_meta(
        run_dir,
        kit="ruslan_glowtts",
        status="running",
        started_at=runs.now(),
        preset=request.preset.name,
        preset_path=str(request.preset.path),
        tier_chain=[p.name for p in chain],
        overrides=[asdict(o) for o in request.overrides if not o.source.startswith("base ")],
        seed=request.config.training_seed,
        dataset_path=request.config.datasets[0].path,
        restore_path=str(request.restore_path) if request.restore_path else None,
        max_steps=request.max_steps,
        device=_device(),
        precision=precision,
        **runs.environment(),
    )
