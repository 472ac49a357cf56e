"""A HiFi-GAN vocoder for the kit's GlowTTS: same prepared RUSLAN, exactly the same mel features.

No released Coqui vocoder matches the features the kit trains GlowTTS on (22,050 Hz, 1024/1024/256,
80 mels, 0 Hz to Nyquist, 20*log10, symmetric normalisation); Coqui's own HiFi-GAN recipe with its
default audio settings does. This module holds what is the vocoder's own: its config builder
(configs/ruslan_hifigan.toml < audio settings of the GlowTTS run < presets/hifigan/<name>.toml <
--set), its samples, its model and its Trainer. It trains through the run lifecycle shared with
GlowTTS (training/run.py, via training/vocoder_cli.py's HIFIGAN recipe): run folder, lock and
run.json, exact --max-steps, --continue-path, clean stops. The audio settings are never chosen
here: they are read from a GlowTTS run's config.json (--tts-run) or from the GlowTTS base config,
and a layer that changes them is refused (ruslan_glowtts/voice/audio_compat.py).

Features: prepare's feature cache holds each utterance's mel exactly as GlowTTS trains on it; the
vocoder reads those files (Coqui's GANDataset takes (wav, mel.npy) pairs), so it learns to invert
the very features the TTS model learns to predict. A file that fails to load during the run (NaN
samples, a truncated or replaced WAV) is skipped with one warning and counted, as the GlowTTS
loader does (KitGANDataset, training/data_loader.py).

The guard, for a GAN (HifiganTrainer.optimize): each of the two updates per step (discriminator,
then generator) is skipped when its loss or pre-clip gradient norm is NaN/Inf, weights and
optimizer state untouched; `Health/grad_norm` is the generator's norm, `Health/grad_norm_disc` the
discriminator's. A burst of non-finite generator updates raises the guard's alarm (warn or stop)
and 25 in a row stop the run (exit 3); known_good.pth is kept as for GlowTTS. It does NOT judge the
size of a GAN's gradient norms: GlowTTS's 1-50 band and its level/jump/trend rules mean nothing for
adversarial losses, so those rules are switched off in the base config (limits = inf); nor does it
see mode collapse or a discriminator that wins (listen to the EvalAudios, watch loss_0/loss_1).
There is no automatic escalation: the conservative preset is a manual restart.
"""

# No `from __future__ import annotations`: Coqpit needs real type objects on its fields.
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from trainer.utils.distributed import is_dist_avail_and_initialized
from TTS.vocoder.configs import HifiganConfig
from TTS.vocoder.models.gan import GAN

from ruslan_glowtts import KIT_ROOT
from ruslan_glowtts.common import runs
from ruslan_glowtts.common.corpus_layout import (
    METADATA_FILE,
    dataset_toml_path,
    metadata_path,
    wav_path,
)
from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.paths import input_file
from ruslan_glowtts.common.presets import (
    DEFAULT_PRESET,
    Preset,
    load_preset,
    tier_chain,
)
from ruslan_glowtts.common.run_layout import CONFIG_FILE, GLOWTTS
from ruslan_glowtts.prep.feature_cache import FeatureCache
from ruslan_glowtts.training.config import (
    BASE_CONFIG,
    HealthConfig,
    Override,
    RuslanGlowTTSConfig,
    Source,
    apply_layer,
    build_config,
    read_toml,
)
from ruslan_glowtts.training.data_loader import GAN_ITEMS_KEY, KitGANDataset, collate_gan_items, init_loader_worker
from ruslan_glowtts.training.dataset import check_metadata, check_sample_rate
from ruslan_glowtts.training.vocoder_cli import HIFIGAN
from ruslan_glowtts.voice.audio_compat import check_compatible

logger = logging.getLogger(__name__)

VOCODER_BASE_CONFIG = KIT_ROOT / "configs" / "ruslan_hifigan.toml"
VOCODER_PRESETS_DIR = HIFIGAN.presets_dir
DEFAULT_VOCODER_PRESET = HIFIGAN.default_preset
DISCRIMINATOR, GENERATOR = 0, 1  # Coqui's GAN: optimizer 0 is the discriminator's, 1 the generator's


@dataclass
class RuslanHifiganConfig(HifiganConfig):
    """Coqui's HifiganConfig plus the kit's fields; Coqui's load_config reads it as HifiganConfig."""

    grad_accum_steps: int = 1  # Coqui's Trainer cannot accumulate with two optimizers: must stay 1
    health: HealthConfig = field(default_factory=HealthConfig)


# ---------------------------------------------------------------------------------------------
# Config


def glowtts_audio(tts_run: Path | None, dataset_path: Path | None) -> tuple[dict[str, Any], str]:
    """The GlowTTS audio settings the vocoder must match, and where they came from: a GlowTTS run's
    config.json, else the kit's GlowTTS base config (with the dataset's fragment)."""
    if tts_run is not None:
        # A run of another kind, or any JSON file, would give this vocoder another model's (or the
        # default) audio settings without a word: refused.
        if tts_run.suffix == ".json":
            config_path = input_file(tts_run, "--tts-run", CONFIG_FILE)
            if why := runs.not_this_kind(runs.read_config_file(config_path, "--tts-run"), GLOWTTS, "run"):
                raise UserError(f"--tts-run {tts_run} {why}")
        else:
            runs.check_run_kind(tts_run, GLOWTTS, "--tts-run")
            config_path = tts_run / CONFIG_FILE
        config = RuslanGlowTTSConfig()
        try:
            config.load_json(str(config_path))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"--tts-run {tts_run}: unreadable config.json: {exc}") from None
        return config.audio.to_dict(), f"GlowTTS run {config_path}"
    # GlowTTS's own config builder (what training and prepare resolve); no preset changes audio.*
    config, _ = build_config(preset=load_preset(DEFAULT_PRESET), dataset_path=dataset_path, quiet=True)
    source = f"GlowTTS base config {BASE_CONFIG.name}"
    fragment = dataset_toml_path(dataset_path) if dataset_path is not None else None
    if fragment is not None and fragment.is_file():
        source += f" + {fragment}"
    return config.audio.to_dict(), source


def build_vocoder_config(
    *,
    preset: Preset,
    dataset_path: Path | None,
    tts_run: Path | None = None,
    cli_layers: list[tuple[dict[str, Any], str]] = (),  # type: ignore[assignment]
) -> tuple[RuslanHifiganConfig, list[Override], str]:
    """Resolve the vocoder config: base < GlowTTS audio < preset < CLI; refuse changed audio."""
    root = RuslanHifiganConfig
    tree = root().to_dict()
    overrides = apply_layer(
        tree, read_toml(VOCODER_BASE_CONFIG, "base config"), Source.base(VOCODER_BASE_CONFIG), quiet=True, root=root
    )
    audio, source = glowtts_audio(tts_run, dataset_path)
    # Taken whole, not checked key by key: Coqui's own audio config (None in int fields included).
    tree["audio"] = dict(audio)
    logger.info("Audio settings from %s", source)
    overrides += apply_layer(tree, preset.overrides, Source.preset(preset.name), root=root)
    for layer, flag in cli_layers:
        overrides += apply_layer(tree, layer, Source.command_line(flag), root=root)
    # A preset or --set may not change the features: the vocoder would no longer fit the TTS model.
    check_compatible(
        audio,
        tree["audio"],
        tts_name=source,
        vocoder_name="config",
        advice="the audio settings come from the GlowTTS run; leave audio.* alone",
    )
    if dataset_path is not None:
        tree["data_path"] = str(dataset_path.resolve())
    config = root()
    config.from_dict(tree)
    _sync_mel_loss(config)
    validate_vocoder(config)
    return config, overrides, source


def _sync_mel_loss(config: RuslanHifiganConfig) -> None:
    """HiFi-GAN's mel L1 loss has its own copy of the STFT/mel settings: keep it on the run's."""
    a = config.audio
    wanted = {
        "sample_rate": a.sample_rate,
        "n_fft": a.fft_size,
        "hop_length": a.hop_length,
        "win_length": a.win_length,
        "n_mels": a.num_mels,
        "mel_fmin": a.mel_fmin,
        "mel_fmax": a.mel_fmax,
    }
    for key, value in wanted.items():
        if config.l1_spec_loss_params.get(key) != value:
            logger.info("Overriding: l1_spec_loss_params.%s = %r  (the run's audio settings)", key, value)
            config.l1_spec_loss_params[key] = value


def validate_vocoder(config: RuslanHifiganConfig) -> None:
    problems = []
    hop = config.audio.hop_length
    factors = config.generator_model_params.get("upsample_factors", [])
    if math.prod(factors) != hop:
        problems.append(
            f"generator_model_params.upsample_factors {factors} multiply to {math.prod(factors)}, "
            f"not to audio.hop_length {hop}"
        )
    if len(config.generator_model_params.get("upsample_kernel_sizes", [])) != len(factors):
        problems.append("generator_model_params.upsample_kernel_sizes needs one entry per upsample factor")
    if config.seq_len <= 0 or config.seq_len % hop:
        problems.append(f"seq_len {config.seq_len} must be a positive multiple of audio.hop_length {hop}")
    elif config.use_l1_spec_loss and config.seq_len <= config.audio.fft_size // 2:
        # The mel-L1 loss reflect-pads each segment by fft_size / 2: torch refuses shorter segments.
        problems.append(
            f"seq_len {config.seq_len} must be longer than audio.fft_size / 2 ({config.audio.fft_size // 2})"
        )
    if config.batch_size < 1:
        problems.append("batch_size must be >= 1")
    if config.grad_accum_steps != 1:
        problems.append("grad_accum_steps must be 1 (Coqui's Trainer cannot accumulate with two optimizers)")
    if not (config.lr_gen > 0 and config.lr_disc > 0):
        problems.append("lr_gen and lr_disc must be > 0")
    if not isinstance(config.grad_clip, list) or len(config.grad_clip) != 2:
        problems.append("grad_clip must be a list [discriminator, generator]")
    if config.health.policy not in ("warn", "stop"):
        problems.append("health.policy must be warn or stop (no automatic escalation for the vocoder)")
    if config.mixed_precision:
        problems.append("mixed_precision must be false (Coqui's HiFi-GAN recipe trains in fp32)")
    if problems:
        raise UserError("invalid vocoder config: " + "; ".join(problems))


def load_vocoder_preset(name_or_path: str) -> Preset:
    return load_preset(name_or_path, VOCODER_PRESETS_DIR)


def format_vocoder_presets() -> str:
    from ruslan_glowtts.common.presets import available_presets

    lines = []
    chain = [p.name for p in tier_chain(load_vocoder_preset(DEFAULT_VOCODER_PRESET), VOCODER_PRESETS_DIR)]
    for name in sorted(
        available_presets(VOCODER_PRESETS_DIR), key=lambda n: (n not in chain, chain.index(n) if n in chain else 0, n)
    ):
        p = load_vocoder_preset(name)
        cfg = p.overrides
        values = ", ".join(
            f"{k} {cfg[k]}" for k in ("lr_gen", "lr_disc", "grad_clip", "batch_size", "seq_len") if k in cfg
        )
        lines += [
            f"{p.name}{' (default)' if name == DEFAULT_VOCODER_PRESET else ''}",
            f"    {p.description}",
            f"    values:   {values}",
            f"    fallback: {p.fallback or '(none: end of the chain)'}",
        ]
    lines.append("Use: python train_ruslan_hifigan.py --preset NAME|PATH --dataset-path DIR [--tts-run RUN]")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Samples


def load_vocoder_samples(config: RuslanHifiganConfig) -> tuple[list[Any], list[Any]]:
    """(eval, train) items of the prepared folder's usable utterances: (wav, cached mel) pairs when
    prepare's feature cache matches the audio settings, else wav paths (mels computed on the fly)."""
    root = Path(config.data_path)
    meta = metadata_path(root)
    if not meta.is_file():
        raise UserError(
            f"--dataset-path {root}: no {METADATA_FILE}; prepare it with "
            f"python -m ruslan_glowtts.prepare --src RUSLAN_DIR --dst {root}"
        )
    wavs = [wav_path(root, entry.id) for entry in check_metadata(root, METADATA_FILE).entries]
    missing = [w for w in wavs if not w.is_file()]
    if missing:
        raise UserError(f"{len(missing)} audio files of {meta} are missing, e.g. {missing[0]}")
    if len(wavs) <= config.eval_split_size:
        raise UserError(
            f"{len(wavs)} utterances in {meta}: fewer than eval_split_size + 1 "
            f"({config.eval_split_size} + 1); lower it with --set eval_split_size=N"
        )
    # Coqui reads the files at whatever rate they are (resample = false): check as the GlowTTS script does.
    check_sample_rate(
        [{"audio_file": str(w)} for w in wavs],
        SimpleNamespace(audio=config.audio, datasets=[SimpleNamespace(path=str(root))]),
    )
    cache = FeatureCache.for_config(root, config.audio)
    items: list[Any] = [str(w) for w in wavs]
    if cache is not None:
        paths = [cache.path_for(w) for w in wavs]
        if all(p is not None and p.is_file() for p in paths):
            items = [(str(w), str(p)) for w, p in zip(wavs, paths, strict=True)]
        else:
            logger.info("Feature cache incomplete: mels computed on the fly")
    random.Random(config.training_seed).shuffle(items)
    return items[: config.eval_split_size], items[config.eval_split_size :]


# ---------------------------------------------------------------------------------------------
# Model


class RuslanHifigan(GAN):
    """Coqui's GAN (HiFi-GAN generator and discriminator), unchanged as a network, with the kit's
    loader: files that fail to load are skipped and counted (KitGANDataset), and the workers leave
    signals to the main process (init_loader_worker). Checkpoints are plain Coqui GAN ones."""

    def get_data_loader(
        self, config: Any, *, is_eval: bool = True, samples: list[Any] | None = None, verbose: bool = True
    ) -> DataLoader:
        # Coqui's GAN.get_data_loader, with the kit's dataset class, collate and worker setup.
        dataset = KitGANDataset(
            ap=self.ap,
            items=samples,
            seq_len=config.seq_len,
            hop_len=self.ap.hop_length,
            pad_short=config.pad_short,
            conv_pad=config.conv_pad,
            return_pairs=config.diff_samples_for_G_and_D if "diff_samples_for_G_and_D" in config else False,
            is_training=not is_eval,
            return_segments=not is_eval,
            use_noise_augment=config.use_noise_augment,
            use_cache=config.use_cache,
        )
        dataset.shuffle_mapping()
        distributed = is_dist_avail_and_initialized()
        workers = config.num_eval_loader_workers if is_eval else config.num_loader_workers
        return DataLoader(
            dataset,
            batch_size=1 if is_eval else config.batch_size,
            shuffle=not distributed,
            drop_last=False,
            sampler=DistributedSampler(dataset, shuffle=True) if distributed else None,
            num_workers=workers,
            pin_memory=False,
            collate_fn=collate_gan_items,
            worker_init_fn=init_loader_worker if workers else None,
        )

    def format_batch(self, batch: Any) -> dict[str, Any]:
        # KitTrainer.format_batch has taken the skipped files out; what is left is Coqui's batch.
        if isinstance(batch, dict) and GAN_ITEMS_KEY in batch:
            batch = batch[GAN_ITEMS_KEY]
        return super().format_batch(batch)


# ---------------------------------------------------------------------------------------------
# Trainer


def hifigan_trainer_class() -> type:
    """HifiganTrainer, built on first use; it saves no import: HifiganConfig already loads torch and trainer."""
    from ruslan_glowtts.monitor.guard import reduce_flags
    from ruslan_glowtts.training.guarded_step import UPDATE_APPLIED, guarded_update
    from ruslan_glowtts.training.trainer import KitTrainer

    class HifiganTrainer(KitTrainer):
        """KitTrainer with a guarded step for each of the GAN's two optimizers (module docstring)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.disc_skipped = 0

        def health_summary(self) -> dict[str, Any]:
            return {**super().health_summary(), "skipped_discriminator_updates": self.disc_skipped}

        def optimize(
            self,
            batch,
            optimizer,
            scaler,
            criterion,
            scheduler,
            *,
            optimizer_idx=None,
            step_optimizer=True,
            num_optimizers=1,
        ):
            if optimizer_idx is None or scaler is not None or self.use_accelerate or not self.config.health.enabled:
                return super().optimize(
                    batch,
                    optimizer,
                    scaler,
                    criterion,
                    scheduler,
                    optimizer_idx=optimizer_idx,
                    step_optimizer=step_optimizer,
                    num_optimizers=num_optimizers,
                )
            start = time.time()
            outputs, loss_dict = self.compute_loss(batch, criterion, optimizer_idx)
            if not loss_dict:  # the discriminator before steps_to_start_discriminator
                return outputs, {}, time.time() - start
            loss = loss_dict["loss"]
            loss.backward()
            # The generator is judged by the health guard; the discriminator by its own finite check.
            update = guarded_update(
                self,
                optimizer,
                None,
                scheduler,
                loss=loss,
                optimizer_idx=optimizer_idx,
                decide=None if optimizer_idx == GENERATOR else self._decide_discriminator,
            )
            if not update.values[UPDATE_APPLIED]:
                return outputs, {}, time.time() - start
            detached = self.losses_to_log(loss_dict, grad_norm=update.values["grad_norm"], optimizer_idx=optimizer_idx)
            return outputs, detached, time.time() - start

        def pick_target_avg_loss(self, keep_avg_target: Any) -> float | None:
            # Coqui's target loss is the discriminator's (loss_0) and it raises when that is missing,
            # which it is before steps_to_start_discriminator or when every D update so far was
            # skipped: the checkpoint is still saved, without a train loss.
            values = keep_avg_target.avg_values if keep_avg_target is not None else {}
            if values and f"avg_{self.config.target_loss}" not in values:
                return None
            return super().pick_target_avg_loss(keep_avg_target)

        def _decide_discriminator(self, step: int, grad_norm: float, loss: float) -> bool:
            (nonfinite,) = reduce_flags([not (math.isfinite(grad_norm) and math.isfinite(loss))])
            if self.args.rank == 0:
                self.dashboard_logger.add_scalar("Health/grad_norm_disc", grad_norm, step)
            if nonfinite:
                self.disc_skipped += 1
                if self.args.rank == 0:
                    self.dashboard_logger.add_scalar("Health/skipped_disc_steps", float(self.disc_skipped), step)
                logger.warning(
                    " ! Step %d: non-finite discriminator update skipped (loss %.4g, pre-clip grad_norm "
                    "%.4g); its weights and optimizer state untouched.",
                    step,
                    loss,
                    grad_norm,
                )
            return not nonfinite

    return HifiganTrainer
