"""The kit's one boundary with Coqui's internals, and the checks that it still holds.

The kit overrides parts of coqui-tts-trainer's Trainer (optimize, save_checkpoint, init_training,
restore_model, the run folder it picks, fit's loop) and coqui-tts's BaseTTS.get_data_loader and
GAN.get_data_loader, calls private Trainer helpers, and recognises
GlowTTS's NaN error by its text. None of that is Coqui's public API, so it lives here, named, and
contract_problems() checks it against the installed packages (tests/test_coqui_contract.py): an
upgrade then fails a test, not a run hours in. Written for coqui-tts 0.28.x and
coqui-tts-trainer 0.4.x; require_supported_coqui() refuses other versions (RUSLAN_KIT_ALLOW_COQUI=1
overrides, and lists the contract problems found).

Importing this module is cheap (no torch, TTS or trainer): diagnose uses its text constants. The
Trainer base class, KitTrainerBase, is built on first access (module __getattr__).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import logging
import math
import os
import re
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ruslan_glowtts.common.errors import UserError

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)

# -- versions --------------------------------------------------------------------------------------
# (package, lowest supported, first unsupported): the kit was written and tested on 0.28.0 / 0.4.0.
SUPPORTED = {"coqui-tts": ((0, 28), (0, 29)), "coqui-tts-trainer": ((0, 4), (0, 5))}
ALLOW_ENV = "RUSLAN_KIT_ALLOW_COQUI"

# -- text Coqui writes, which the kit matches ------------------------------------------------------
NAN_LOSS_TEXT = "NaN loss"  # GlowTTSLoss: RuntimeError(" [!] NaN loss with {key}.")
NAN_LOSS_LOG_PATTERN = re.compile(r"RuntimeError:\s*\[!\]\s*NaN loss with (\w+)")  # in trainer_0_log.txt
AMP_SCALER_KEY = "amp_scaler"  # Trainer.optimize adds GradScaler's scale to the loss dict under fp16
AMP_SCALER_TAG = f"TrainIterStats/{AMP_SCALER_KEY}"
COQUI_LOGGER = "trainer"  # Trainer._setup_logger_config adds a FileHandler per run to this logger


# Keys trainer.io.save_checkpoint writes and Trainer.restore_model / the kit read back.
CHECKPOINT_KEYS = frozenset({"config", "model", "optimizer", "scheduler", "scaler", "step", "epoch", "model_loss"})

# Coqui methods the kit copies or wraps: sha256 (first 16 hex) of their dedented source in
# coqui-tts 0.28.0 / coqui-tts-trainer 0.4.0. A change means: re-read it, port it, update the hash.
PINNED_SOURCES = {
    "Trainer.optimize": "0f8b99cdb10d55e8",  # re-implemented by KitTrainer.optimize / apply_update
    "Trainer.save_checkpoint": "ce094576727c155e",  # copied by KitTrainerBase.write_checkpoint
    "Trainer.init_training": "73e677cb0c7ab0ba",  # wrapped: picks restore_path, keeps the kit's config on --continue-path
    "Trainer.fit": "10647cc130861c29",  # replaced by KitTrainer.fit around run_training_loop()
    "Trainer.restore_model": "0849fbefe48c4fcf",  # reads the checkpoint keys above; wrapped: its step + 1
    "Trainer._pick_target_avg_loss": "c1102c4f0ff25a47",  # wrapped by pick_target_avg_loss
    "BaseTTS.get_data_loader": "efd987cdf9b7b4c9",  # copied by tts_data_loader
    "Trainer.train_step": "f5290d545a6d96fd",  # copied (one optimizer) by KitTrainerBase.train_step, logging deferred
    "GlowTTS.forward": "bd7f361f400a47aa",  # copied by glowtts_forward: compiled decoder, fp32 alignment on the GPU
    "GlowTTSLoss.forward": "b7d43a489268bae1",  # copied by the kit's loss (no per-step NaN check in training)
    "wavenet.WN.forward": "68d7ff2d012524e8",  # calls fused_add_tanh_sigmoid_multiply, which patch_wavenet replaces
    "wavenet.fused_add_tanh_sigmoid_multiply": "ddee27c7808d1691",  # replaced (same maths, no graph break)
    "GAN.get_data_loader": "1420684ea24e9fe5",  # copied by training/vocoder.py's RuslanHifigan.get_data_loader
}

# Signatures (names, kinds, defaults; no annotations) of what the kit overrides or calls.
PINNED_SIGNATURES = {
    "Trainer.optimize": "(self, batch, optimizer, scaler, criterion, scheduler, *, optimizer_idx=None, "
    "step_optimizer=True, num_optimizers=1)",
    "Trainer._compute_loss": "(self, batch, criterion, optimizer_idx)",
    "Trainer._set_grad_clip_per_optimizer": "(config, optimizer_idx)",
    "Trainer._fit": "(self)",
    "Trainer._get_model": "(self)",
    "Trainer._pick_target_avg_loss": "(self, keep_avg_target)",
    "Trainer.detach_loss_dict": "(self, loss_dict, *, step_optimizer, optimizer_idx=None, grad_norm=None)",
    "Trainer.init_training": "(args, coqpit_overrides, config=None)",
    "Trainer.save_checkpoint": "(self)",
    "Trainer.format_batch": "(self, batch)",
    "Trainer.train_step": "(self, batch, batch_n_steps, step, loader_start_time)",
    "Trainer.eval_step": "(self, batch, step)",
    "BaseTTS.get_data_loader": "(self, config, *, is_eval=False, samples=None, verbose=True)",
    "io.save_fsspec": "(state, path, **kwargs)",
    "io.save_model": "(config, model, output_path, *, current_step, epoch, optimizer=None, scheduler=None, "
    "scaler=None, **kwargs)",
    "io.keep_n_checkpoints": "(path, n)",
    "generic_utils.get_experiment_folder_path": "(root_path, model_name)",
}
CALLBACK_EVENTS = ("on_train_epoch_start", "on_train_step_end")  # the lists the kit inserts into

# Public Trainer attributes the kit (the package, bench/, scripts/) reads or sets, besides the methods
# pinned above: each must be a member of the class or set on self in Trainer's code. Public names,
# but nothing in Coqui promises them; tests/test_coqui_contract.py checks that every one the kit
# uses is listed.
TRAINER_ATTRIBUTES = (
    "args",
    "c_logger",
    "callbacks",
    "config",
    "continue_run",
    "criterion",
    "dashboard_logger",
    "epochs_done",
    "eval_loader",
    "test_loader",
    "get_train_dataloader",
    "grad_accum_steps",
    "keep_avg_eval",
    "keep_avg_train",
    "log_model_step",
    "master_params",
    "model",
    "num_gpus",
    "optimizer",
    "output_path",
    "scaler",
    "scheduler",
    "total_steps_done",
    "train_loader",
    "update_training_dashboard_logger",
    "use_accelerate",
    "use_amp_scaler",
)
_SELF_ASSIGNMENT = re.compile(r"\bself\.([A-Za-z]\w*)\s*(?::[^=\n]+)?=(?!=)")  # self.x = / self.x: T =


# ---------------------------------------------------------------------------------------------------
# Torch-free helpers


def is_nan_loss_error(exc: BaseException) -> bool:
    """GlowTTS's loss raised on a NaN value (RuntimeError " [!] NaN loss with {key}.")."""
    return isinstance(exc, RuntimeError) and NAN_LOSS_TEXT in str(exc)


def mentions_nan_loss(text: str) -> bool:
    """A message (run.json, a log line) reports GlowTTS's NaN-loss error."""
    return NAN_LOSS_TEXT in text


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def version_problems(installed: dict[str, str | None] | None = None) -> list[str]:
    """One sentence per Coqui package missing or outside the range the kit was written for."""
    problems = []
    for package, (low, high) in SUPPORTED.items():
        if installed is not None:
            version = installed.get(package)
        else:
            try:
                version = metadata.version(package)
            except metadata.PackageNotFoundError:
                version = None
        wanted = f"{package} {low[0]}.{low[1]}.x"
        if version is None:
            problems.append(f"{package} is not installed; this kit was written for {wanted}")
        elif not (low <= _version_tuple(version)[:2] < high):
            problems.append(f"{package} {version} is installed; this kit was written for {wanted}")
    return problems


_checked = False


def require_supported_coqui() -> None:
    """Refuse (UserError, one line) Coqui versions the kit was not written for; called first by the
    training entry points (train(), train_vocoder()), not at import, so --help stays fast and
    diagnose never depends on Coqui. RUSLAN_KIT_ALLOW_COQUI=1 turns the refusal into warnings,
    with the contract problems found in the installed packages."""
    global _checked
    if _checked:
        return
    problems = version_problems()
    if problems and os.environ.get(ALLOW_ENV) != "1":
        raise UserError(f"{'; '.join(problems)}: pip install -r requirements.txt, or set {ALLOW_ENV}=1 to try anyway")
    _checked = True
    if problems:
        logger.warning(" ! %s=1: %s; trying anyway", ALLOW_ENV, "; ".join(problems))
        for problem in contract_problems():
            logger.warning(" ! Coqui contract: %s", problem)


# ---------------------------------------------------------------------------------------------------
# Calls on a Coqui Trainer (any Trainer, not only the kit's)


def model_of(trainer: Any) -> Any:
    """The model as Coqui saves it (the DDP/accelerate wrapper when there is one)."""
    return trainer._get_model()


def set_global_step(trainer: Any, step: int) -> None:
    """Start the step axis at `step` (an escalated run continues its parent's axis)."""
    trainer.total_steps_done = step


def add_callback(trainer: Any, event: str, callback: Callable[[Any], None], *, first: bool = False) -> None:
    """Add a callback(trainer) to Coqui's list for `event` (e.g. "on_train_step_end"), first or last.
    Coqui's public route (Trainer(callbacks=...)) only appends and takes one callable per event."""
    callbacks = getattr(trainer.callbacks, f"callbacks_{event}")
    if first:
        callbacks.insert(0, callback)
    else:
        callbacks.append(callback)


def remove_run_log_handlers(run_dir: Path, *logger_names: str) -> None:
    """Close the file handlers writing into run_dir: Coqui adds one to its logger per Trainer and
    never removes it, so in one process (tests, escalation chains) later runs would log into it."""
    root = str(Path(run_dir).resolve())
    for name in (COQUI_LOGGER, *logger_names):
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(root):
                log.removeHandler(handler)
                handler.close()


def record_amp_scale(loss_dict: dict[str, Any], scaler: Any) -> dict[str, Any]:
    """Add GradScaler's current scale under "amp_scaler", as Coqui's optimize does after
    scaler.update() under fp16: it is logged as TrainIterStats/amp_scaler, the tag by which
    diagnose recognises an fp16 run (whose first overflows calibrate the scale)."""
    if scaler is not None:
        loss_dict[AMP_SCALER_KEY] = scaler.get_scale()
    return loss_dict


@contextlib.contextmanager
def new_run_folder(folder: Path | None) -> Iterator[None]:
    """While a Trainer is built in this block, Coqui's new run folder is `folder`. Coqui names it
    itself (get_experiment_folder_path: run name, the minute, the commit) and reuses it if it exists;
    the kit claims the folder first (runs.claim_run_folder, one atomic mkdir), so Coqui must take
    that one, even when the minute has changed since. None: Coqui's own choice."""
    import trainer.trainer as coqui_trainer

    if folder is None:
        yield
        return
    original = coqui_trainer.get_experiment_folder_path
    coqui_trainer.get_experiment_folder_path = lambda root_path, model_name: Path(folder)
    try:
        yield
    finally:
        coqui_trainer.get_experiment_folder_path = original


_atomic_save: Callable[..., None] | None = None  # the writer installed in place of trainer.io.save_fsspec


def atomic_checkpoint_writes_installed() -> bool:
    """Coqui's checkpoint writes currently go through the kit's atomic writer."""
    import trainer.io

    return _atomic_save is not None and trainer.io.save_fsspec is _atomic_save


def install_atomic_checkpoint_writes() -> None:
    """Make every checkpoint Coqui writes (save_model, save_checkpoint, save_best_model, all through
    the module global trainer.io.save_fsspec) go to a temp file, fsynced, renamed into place:
    Coqui's torch.save straight to checkpoint_N.pth leaves a truncated newest checkpoint when
    killed mid-save, which --continue-path would then pick. Idempotent."""
    global _atomic_save
    import torch
    import trainer.io

    from ruslan_glowtts.common.atomic_files import atomic_output

    if _atomic_save is not None:
        return
    original = trainer.io.save_fsspec

    def save_atomically(state: Any, path: Any, **kwargs: Any) -> None:
        if "://" in str(path):  # a remote fsspec target: Coqui's own write
            original(state, path, **kwargs)
            return
        with atomic_output(Path(path), durable=True) as temp, open(temp, "wb") as handle:
            # Through Python's file object: a full disk is then an OSError that names it (ENOSPC);
            # torch's own file writer reports it as an unrelated RuntimeError. torch still closes
            # its zip writer on the way out and raises that RuntimeError over the OSError: the
            # OSError is the cause that matters.
            try:
                torch.save(state, handle, **kwargs)
            except RuntimeError as exc:
                if isinstance(exc.__context__, OSError):
                    raise exc.__context__ from None
                raise

    trainer.io.save_fsspec = _atomic_save = save_atomically


def tts_data_loader(
    model: Any,
    config: Any,
    *,
    is_eval: bool,
    samples: list[dict] | None,
    dataset_class: type,
    dataset_kwargs: dict[str, Any],
    loader_kwargs: dict[str, Any],
    batch_sampler: Callable[[Any, bool], Any] | None = None,
) -> DataLoader:
    """BaseTTS.get_data_loader (coqui-tts 0.28) for a single-speaker grapheme model (no speaker or
    language mappings, f0, energy or linear specs), with the kit's dataset class and worker
    settings; batch_sampler(dataset, distributed), when given, makes the training batches."""
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    dataset = dataset_class(
        outputs_per_step=1,
        compute_linear_spec=False,
        ap=model.ap,
        samples=samples,
        tokenizer=model.tokenizer,
        return_wav=False,
        batch_group_size=0 if is_eval else config.batch_group_size * config.batch_size,
        min_text_len=config.min_text_len,
        max_text_len=config.max_text_len,
        min_audio_len=config.min_audio_len,
        max_audio_len=config.max_audio_len,
        phoneme_cache_path=config.phoneme_cache_path,
        precompute_num_workers=config.precompute_num_workers,
        use_noise_augment=False if is_eval else config.use_noise_augment,
        start_by_longest=config.start_by_longest,
        **dataset_kwargs,
    )
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        dist.barrier()
    dataset.preprocess_samples()
    common = {"collate_fn": dataset.collate_fn, **loader_kwargs}
    if not is_eval and batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler(dataset, distributed), **common)
    sampler = model.get_sampler(config, dataset)
    return DataLoader(
        dataset,
        batch_size=config.eval_batch_size if is_eval else config.batch_size,
        shuffle=config.shuffle if sampler is None else False,
        drop_last=config.drop_last,
        sampler=sampler,
        **common,
    )


# ---------------------------------------------------------------------------------------------------
# GlowTTS as the kit trains it: its forward pass, its loss, WaveNet's gate


def nan_loss_error(key: str) -> RuntimeError:
    """The error GlowTTSLoss raises for a NaN loss, word for word (is_nan_loss_error and diagnose match it)."""
    return RuntimeError(f" [!] {NAN_LOSS_TEXT} with {key}.")


_original_gate: Callable[..., Any] | None = None  # Coqui's fused_add_tanh_sigmoid_multiply, once replaced


def fused_add_tanh_sigmoid_multiply(input_a: Any, input_b: Any, n_channels: Any) -> Any:
    """WaveNet's gate with Coqui's maths. Coqui slices at n_channels[0], a CPU IntTensor that WN
    passes (its hidden_channels); a tensor as a slice bound is a graph break for torch.compile (14
    of them in GlowTTS's decoder) and a tensor-to-int conversion per layer in eager mode. WN's
    input has 2 x hidden_channels channels, so half the channels is the same bound, as a plain int."""
    import torch

    in_act = input_a + input_b
    half = in_act.shape[1] // 2
    return torch.tanh(in_act[:, :half, :]) * torch.sigmoid(in_act[:, half:, :])


def patch_wavenet() -> None:
    """Replace the module global WN.forward calls (TTS.tts.layers.generic.wavenet): the same
    numbers, no graph break (tests/test_compile.py checks both). Idempotent."""
    global _original_gate
    from TTS.tts.layers.generic import wavenet

    if _original_gate is None:
        _original_gate = wavenet.fused_add_tanh_sigmoid_multiply
        wavenet.fused_add_tanh_sigmoid_multiply = fused_add_tanh_sigmoid_multiply


def glowtts_forward(
    model: Any,
    x: Any,
    x_lengths: Any,
    y: Any,
    y_lengths: Any = None,
    aux_input: dict[str, Any] | None = None,
    *,
    decoder: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """GlowTTS.forward (coqui-tts 0.28) with two changes. `decoder` may be a compiled copy of
    model.decoder (training/compile.py). The log-likelihood matrix, the alignment search it feeds
    and compute_outputs run in float32 outside autocast: under bf16 autocast Coqui computes them in
    bf16, which changes the alignment itself, and the search runs on the GPU (training/alignment.py)
    instead of in Cython on the host. In fp32 the numbers are Coqui's."""
    import torch
    from TTS.tts.utils.helpers import sequence_mask

    from ruslan_glowtts.training.alignment import maximum_path

    if aux_input is None:
        aux_input = {"d_vectors": None, "speaker_ids": None}
    y = y.transpose(1, 2)  # [B, T, C] -> [B, C, T]
    y_max_length = y.size(2)
    g = model._get_speaker_conditioning(aux_input, "emb_g")
    o_mean, o_log_scale, o_dur_log, x_mask = model.encoder(x, x_lengths, g=g)
    y, y_lengths, y_max_length, attn = model.preprocess(y, y_lengths, y_max_length, None)
    y_mask = torch.unsqueeze(sequence_mask(y_lengths, y_max_length), 1).to(x_mask.dtype)
    attn_mask = torch.unsqueeze(x_mask, -1) * torch.unsqueeze(y_mask, 2)  # [B, 1, T_en, T_de]
    z, logdet = (decoder or model.decoder)(y, y_mask, g=g, reverse=False)
    with torch.autocast(z.device.type, enabled=False):
        o_mean, o_log_scale, z32 = o_mean.float(), o_log_scale.float(), z.float()
        with torch.no_grad():
            o_scale = torch.exp(-2 * o_log_scale)
            logp1 = torch.sum(-0.5 * math.log(2 * math.pi) - o_log_scale, [1]).unsqueeze(-1)  # [b, t, 1]
            logp2 = torch.matmul(o_scale.transpose(1, 2), -0.5 * (z32**2))  # [b, t, t']
            logp3 = torch.matmul((o_mean * o_scale).transpose(1, 2), z32)  # [b, t, t']
            logp4 = torch.sum(-0.5 * (o_mean**2) * o_scale, [1]).unsqueeze(-1)  # [b, t, 1]
            logp = logp1 + logp2 + logp3 + logp4  # [b, t, t']
            attn = maximum_path(logp, attn_mask.squeeze(1)).unsqueeze(1).detach()
        y_mean, y_log_scale, o_attn_dur = model.compute_outputs(attn, o_mean, o_log_scale, x_mask)
    attn = attn.squeeze(1).permute(0, 2, 1)
    return {
        "z": z.transpose(1, 2),
        "logdet": logdet,
        "y_mean": y_mean.transpose(1, 2),
        "y_log_scale": y_log_scale.transpose(1, 2),
        "alignments": attn,
        "durations_log": o_dur_log.transpose(1, 2),
        "total_durations_log": o_attn_dur.transpose(1, 2),
    }


def glowtts_loss() -> Any:
    """GlowTTSLoss with Coqui's maths, without its three `torch.isnan(loss)` reads (each a
    host-device sync) in training: there a NaN loss is caught on the device by the guarded update,
    which skips it, and reported when the step's values are read back. Under no_grad (evaluation)
    it raises Coqui's own error, as GlowTTSLoss does, and KitTrainer skips that eval batch."""
    import torch
    from TTS.tts.layers.losses import GlowTTSLoss

    class KitGlowTTSLoss(GlowTTSLoss):
        def forward(self, z, means, scales, log_det, y_lengths, o_dur_log, o_attn_dur, x_lengths):
            pz = torch.sum(scales) + 0.5 * torch.sum(torch.exp(-2 * scales) * (z - means) ** 2)
            log_mle = self.constant_factor + (pz - torch.sum(log_det)) / (torch.sum(y_lengths) * z.shape[2])
            loss_dur = torch.sum((o_dur_log - o_attn_dur) ** 2) / torch.sum(x_lengths)
            losses = {"loss": log_mle + loss_dur, "log_mle": log_mle, "loss_dur": loss_dur}
            if not torch.is_grad_enabled():
                for key, loss in losses.items():
                    if torch.isnan(loss):
                        raise nan_loss_error(key)
            return losses

    return KitGlowTTSLoss()


# ---------------------------------------------------------------------------------------------------
# The Trainer base class (built on first access: it needs torch and trainer)


def _build_trainer_base() -> type:
    import time

    from trainer import Trainer
    from trainer.io import keep_n_checkpoints, save_model
    from trainer.model import TrainerModel
    from trainer.utils.distributed import rank_zero_only

    from ruslan_glowtts.common.run_layout import checkpoint_name
    from ruslan_glowtts.training.step_values import ReadValues, StepValueQueue

    class KitTrainerBase(Trainer):
        """Coqui's Trainer with its private parts behind named methods, for KitTrainer."""

        def __init__(
            self, *args: Any, resume_from: Path | None = None, run_folder: Path | None = None, **kwargs: Any
        ) -> None:
            self.resume_checkpoint = resume_from  # read by init_training, which Coqui's __init__ calls
            self.step_values = StepValueQueue()
            with new_run_folder(run_folder):
                super().__init__(*args, **kwargs)

        def restore_model(self) -> None:
            super().restore_model()
            if self.continue_run:
                # Coqui resumes at the checkpoint's step + 1 ("not to immediately checkpoint"): its own
                # checkpoint_N was written in the middle of step N+1. The kit's checkpoint_N holds the
                # state after N steps (KitTrainer), so a resume continues at N: no step skipped.
                self.total_steps_done -= 1

        # -- the training step ------------------------------------------------------------------------
        def train_step(self, batch: Any, batch_n_steps: int, step: int, loader_start_time: float) -> tuple[Any, Any]:
            """Coqui's Trainer.train_step for a model with one optimizer and no optimize() of its own
            (GlowTTS), with its logging deferred: optimize() returns the step's losses and gradient
            norm as device tensors, queued in self.step_values and logged, averaged, printed and
            judged (on_step_values) when they reach the host (training/step_values.py). Coqui reads
            each with .item() at once, a host-device sync per loss per step. Models with several
            optimizers (the vocoder) get Coqui's own train_step."""
            if len(self.optimizer) != 1 or type(self._get_model()).optimize is not TrainerModel.optimize:
                return Trainer.train_step(self, batch, batch_n_steps, step, loader_start_time)
            self.callbacks.on_train_step_start(self)
            batch = self.format_batch(batch)
            loader_time = time.time() - loader_start_time
            current_lr = self.optimizer[0].param_groups[0]["lr"]  # before optimize() updates it
            step_optimizer = (step + 1) % self.grad_accum_steps == 0 or step + 1 == batch_n_steps
            outputs, values, step_time = self.optimize(
                batch,
                self.optimizer[0],
                self.scaler,
                self.criterion[0],
                self.scheduler[0],
                step_optimizer=step_optimizer,
                num_optimizers=1,
            )
            self.step_values.put(
                self.total_steps_done, values, (current_lr, step_time, loader_time, step, batch_n_steps)
            )
            self.log_step_values()
            # Coqui saves checkpoint_N here, in the middle of step N+1; KitTrainer saves at the step's end.
            if self.args.rank == 0 and self.total_steps_done % self.log_model_step == 0:
                self.update_training_dashboard_logger(batch=batch, outputs=outputs)
            self.total_steps_done += 1
            self.callbacks.on_train_step_end(self)
            return outputs, {}

        def log_step_values(self, *, wait: bool = False) -> None:
            """Log the queued steps whose values have reached the host (all of them with wait=True)
            as Coqui's train_step logs a step: running averages, the console line every print_step,
            TrainIterStats every plot_step."""
            for read in self.step_values.ready(wait=wait):
                self.log_read_step(read)

        def on_step_values(self, read: ReadValues) -> dict[str, float]:
            """A step's values have reached the host: return the losses to log (override to judge them)."""
            return read.values

        def log_read_step(self, read: ReadValues) -> None:
            current_lr, step_time, loader_time, epoch_step, batch_n_steps = read.context
            loss_dict = {"current_lr": current_lr, **self.on_step_values(read)}
            if self.keep_avg_train is not None:
                self.keep_avg_train.update_values({"avg_loader_time": loader_time, "avg_step_time": step_time})
                self.keep_avg_train.update_values({f"avg_{k}": v for k, v in loss_dict.items()})
            if read.step % self.config.print_step == 0:
                loss_dict.update({"step_time": round(step_time, 4), "loader_time": round(loader_time, 4)})
                self.c_logger.print_train_step(
                    batch_n_steps,
                    epoch_step,
                    read.step,
                    loss_dict,
                    self.keep_avg_train.avg_values if self.keep_avg_train is not None else {},
                )
            if self.args.rank == 0:
                if read.step % self.config.plot_step == 0:
                    self.dashboard_logger.train_step_stats(read.step, loss_dict)
                self.dashboard_logger.flush()

        # Coqui's is a staticmethod that its __init__ calls as self.init_training(...): the override
        # needs self (resume_checkpoint), which Python allows and mypy does not.
        def init_training(  # type: ignore[override]
            self,
            args: Any,
            coqpit_overrides: list[str],
            config: Any = None,
        ) -> tuple[Any, dict]:
            if args.continue_path and config is not None:
                # Coqui reloads the run's config.json into the config it is given. The kit has already
                # loaded that file and set this machine's values on it (precision, cudnn, dataset path):
                # Coqui reloads into a copy, which only it sees (the kit passes no command-line overrides).
                _, new_fields = super().init_training(args, coqpit_overrides, copy.deepcopy(config))
            else:
                config, new_fields = super().init_training(args, coqpit_overrides, config)
            if args.continue_path and self.resume_checkpoint is not None:
                # Coqui picks the newest checkpoint by name; the kit checked which one actually loads.
                args.restore_path = str(self.resume_checkpoint)
                if args.rank == 0:
                    new_fields["restore_path"] = args.restore_path
            return config, new_fields

        def restored_checkpoint(self) -> str | None:
            """The checkpoint --continue-path restored (Coqui's restore_model read it), else None."""
            return self.args.restore_path if self.continue_run and self.args.restore_path else None

        # -- the training loop's pieces ---------------------------------------------------------------
        def run_training_loop(self) -> None:
            """Coqui's fit() without its exception handling (which deletes the run folder and exits)."""
            self._fit()

        def compute_loss(
            self, batch: dict[str, Any], criterion: Any, optimizer_idx: int | None = None
        ) -> tuple[Any, dict[str, Any] | None]:
            """Forward pass and loss under Coqui's autocast settings."""
            return self._compute_loss(batch=batch, criterion=criterion, optimizer_idx=optimizer_idx)

        def grad_clip_for(self, optimizer_idx: int | None = None) -> float:
            return self._set_grad_clip_per_optimizer(config=self.config, optimizer_idx=optimizer_idx)

        def mark_stepped(self, optimizer_idx: int | None = None) -> None:
            """Tell Coqui the optimizer stepped (its per-epoch scheduler steps only those)."""
            self._stepped_optimizers.add(optimizer_idx)

        def apply_update(self, optimizer: Any, scaler: Any, scheduler: Any, optimizer_idx: int | None = None) -> bool:
            """The step part of Coqui's optimize (no accelerate, one optimizer per call): optimizer or
            GradScaler step, then the per-step LR schedule unless the scale dropped. False when
            GradScaler skipped the update (fp16 overflow)."""
            update_lr = True
            if scaler is not None:
                scale_before = scaler.get_scale()
                scaler.step(optimizer)
                scaler.update()
                update_lr = scaler.get_scale() >= scale_before
            else:
                optimizer.step()
            self.mark_stepped(optimizer_idx)
            if scheduler is not None and update_lr and not self.config.scheduler_after_epoch:
                scheduler.step()
            return update_lr

        def losses_to_log(
            self, loss_dict: dict[str, Any], *, grad_norm: float, scaler: Any = None, optimizer_idx: int | None = None
        ) -> dict[str, Any]:
            """The detached loss dict of an applied update, with amp_scaler under fp16 (as Coqui's)."""
            return self.detach_loss_dict(
                record_amp_scale(loss_dict, scaler),
                step_optimizer=True,
                optimizer_idx=optimizer_idx,
                grad_norm=grad_norm,
            )

        # -- checkpoints ------------------------------------------------------------------------------
        def model_to_save(self) -> Any:
            return model_of(self)

        def checkpoint_extras(self) -> dict[str, Any]:
            """Extra entries for every checkpoint save_checkpoint writes (override)."""
            return {}

        def pick_target_avg_loss(self, keep_avg_target: Any) -> float | None:
            """The loss Coqui stores in checkpoints and compares for best_model (override to change)."""
            return Trainer._pick_target_avg_loss(self, keep_avg_target)

        def _pick_target_avg_loss(self, keep_avg_target: Any) -> float | None:
            return self.pick_target_avg_loss(keep_avg_target)

        @rank_zero_only
        def write_checkpoint(self) -> Path:
            """Coqui's save_checkpoint (trainer.io.save_checkpoint) plus checkpoint_extras(), its
            `> CHECKPOINT` line printed once the file is whole: Coqui prints it before writing, so a
            full disk showed the line for a file that was never written."""
            path = Path(self.output_path) / checkpoint_name(self.total_steps_done)
            save_model(
                self.config,
                self.model_to_save(),
                path,
                current_step=self.total_steps_done,
                epoch=self.epochs_done,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.scaler if self.use_amp_scaler else None,
                model_loss={
                    "train_loss": self.pick_target_avg_loss(self.keep_avg_train),
                    "eval_loss": self.pick_target_avg_loss(self.keep_avg_eval),
                },
                **self.checkpoint_extras(),
            )
            logger.info("\n > CHECKPOINT : %s", path)
            if self.config.save_n_checkpoints is not None:
                keep_n_checkpoints(self.output_path, self.config.save_n_checkpoints)
            return path

    KitTrainerBase.__qualname__ = "KitTrainerBase"
    return KitTrainerBase


_lazy: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name == "KitTrainerBase":
        if name not in _lazy:
            _lazy[name] = _build_trainer_base()
        return _lazy[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------
# The contract


def _source_hash(obj: Any) -> str:
    return hashlib.sha256(textwrap.dedent(inspect.getsource(obj)).encode()).hexdigest()[:16]


def _bare_signature(obj: Any) -> str:
    sig = inspect.signature(obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def _coqui_objects() -> dict[str, Any]:
    from trainer import Trainer, generic_utils, io
    from TTS.tts.layers.generic import wavenet
    from TTS.tts.layers.losses import GlowTTSLoss
    from TTS.tts.models.base_tts import BaseTTS
    from TTS.tts.models.glow_tts import GlowTTS
    from TTS.vocoder.models.gan import GAN

    named = {
        "Trainer": Trainer,
        "BaseTTS": BaseTTS,
        "GAN": GAN,
        "io": io,
        "generic_utils": generic_utils,
        "GlowTTS": GlowTTS,
        "GlowTTSLoss": GlowTTSLoss,
        "wavenet": wavenet,
    }
    objects = {}
    for name in {*PINNED_SOURCES, *PINNED_SIGNATURES}:
        owner, *path = name.split(".")
        obj: Any = named[owner]
        for attr in path:
            obj = getattr(obj, attr, None)
        objects[name] = obj
    if _original_gate is not None:  # patch_wavenet replaced it: pin Coqui's own
        objects["wavenet.fused_add_tanh_sigmoid_multiply"] = _original_gate
    return objects


def _nan_loss_problem() -> str | None:
    import torch
    from TTS.tts.layers.losses import GlowTTSLoss

    z = torch.full((1, 2, 3), float("nan"))
    zeros = torch.zeros(1, 2, 3)
    try:
        GlowTTSLoss()(
            z,
            zeros,
            zeros,
            torch.zeros(1),
            torch.tensor([3]),
            torch.zeros(1, 1, 2),
            torch.zeros(1, 1, 2),
            torch.tensor([2]),
        )
    except RuntimeError as exc:
        if not is_nan_loss_error(exc) or not NAN_LOSS_LOG_PATTERN.search(f"RuntimeError: {exc}"):
            return f"GlowTTSLoss's NaN error reads {str(exc)!r}: is_nan_loss_error/NAN_LOSS_LOG_PATTERN miss it"
        return None
    return "GlowTTSLoss no longer raises on a NaN loss (KitTrainer skips that step by catching it)"


def _checkpoint_problems() -> list[str]:
    import torch
    from trainer import io

    problems = []
    model: Any = torch.nn.Linear(1, 1)  # any module will do for a probe (Coqui types it as its TrainerModel)
    with tempfile.TemporaryDirectory() as folder:
        io.save_checkpoint(
            {"model": "probe"},
            model,
            folder,
            current_step=1,
            epoch=0,
            optimizer=[torch.optim.SGD(model.parameters(), lr=0.1)],
            model_loss={},
            kit_probe=1,
        )
        path = Path(folder) / "checkpoint_1.pth"
        if not path.is_file():
            return [f"trainer.io.save_checkpoint no longer writes checkpoint_<step>.pth (found {os.listdir(folder)})"]
        keys = set(torch.load(path, map_location="cpu", weights_only=False))
    if missing := sorted(CHECKPOINT_KEYS - keys):
        problems.append(f"checkpoints lack {missing} (Trainer.restore_model and the kit read them)")
    if "kit_probe" not in keys:
        problems.append("save_checkpoint no longer stores extra keyword entries (the kit's batch position)")
    return problems


def trainer_attributes(trainer_class: type) -> set[str]:
    """Public names a Trainer instance has: the class's members and what its code sets on self."""
    source = "".join(inspect.getsource(cls) for cls in trainer_class.__mro__ if cls is not object)
    members = {name for name in dir(trainer_class) if not name.startswith("_")}
    return members | set(_SELF_ASSIGNMENT.findall(source))


def trainer_attribute_problems(trainer_class: type | None = None, names: tuple[str, ...] | None = None) -> list[str]:
    """One sentence per name of TRAINER_ATTRIBUTES (or `names`) that Coqui's Trainer no longer has."""
    if trainer_class is None:
        from trainer import Trainer

        trainer_class = Trainer
    found = trainer_attributes(trainer_class)
    return [
        f"Trainer no longer has {name} (neither a member nor set on self); the kit uses trainer.{name}"
        for name in (TRAINER_ATTRIBUTES if names is None else names)
        if name not in found
    ]


def contract_problems() -> list[str]:
    """What the kit relies on in the installed Coqui packages and no longer holds; [] when all holds.
    Imports torch, TTS and trainer (a few seconds); writes one tiny checkpoint to a temp folder."""
    problems = []
    objects = _coqui_objects()
    for name, expected in PINNED_SIGNATURES.items():
        obj = objects[name]
        if obj is None:
            problems.append(f"{name} is gone")
        elif (found := _bare_signature(obj)) != expected:
            problems.append(f"{name} signature changed: {found} (the kit was written for {expected})")
    for name, expected in PINNED_SOURCES.items():
        obj = objects[name]
        if obj is not None and (found := _source_hash(obj)) != expected:
            problems.append(
                f"{name} source changed (hash {found}, pinned {expected}): the kit copies or wraps it; "
                "re-read it and port the change to ruslan_glowtts/training/coqui_compat.py"
            )
    from trainer import Trainer, io
    from trainer.callbacks import TrainerCallback

    source = inspect.getsource(Trainer)
    for attr in ("self._stepped_optimizers", 'loss_dict["amp_scaler"]'):
        if attr not in source:
            problems.append(f"Trainer no longer uses {attr}")
    problems += trainer_attribute_problems(Trainer)
    if f'logging.getLogger("{COQUI_LOGGER}")' not in source:
        problems.append(f"Trainer no longer logs to the {COQUI_LOGGER!r} logger (remove_run_log_handlers)")
    callbacks = TrainerCallback()
    for event in CALLBACK_EVENTS:
        if not isinstance(getattr(callbacks, f"callbacks_{event}", None), list):
            problems.append(f"TrainerCallback.callbacks_{event} is no longer a list (add_callback)")
    if "save_fsspec(" not in inspect.getsource(io.save_model):
        problems.append("trainer.io.save_model no longer writes through save_fsspec (atomic checkpoint writes)")
    if "get_experiment_folder_path(" not in inspect.getsource(Trainer.__init__):
        problems.append(
            "Trainer.__init__ no longer names its run folder with get_experiment_folder_path "
            "(new_run_folder: the folder the kit claimed)"
        )
    if (nan := _nan_loss_problem()) is not None:
        problems.append(nan)
    problems += _checkpoint_problems()
    return problems
