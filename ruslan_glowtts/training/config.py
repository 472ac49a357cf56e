"""The training config: base file < dataset fragment < preset < command line.

Every layer is a nested dict of GlowTTSConfig fields (plus the kit's own fields below). Each key
is checked against the config's type hints before it is applied, because Coqpit itself replaces
a mistyped value with the field's default and carries on. Every applied override is logged
("Overriding: lr = 0.0002  (preset stable)") and recorded for the run's metadata.
"""

# No `from __future__ import annotations` here: Coqpit needs real type objects on its fields.
import difflib
import enum
import logging
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coqpit import Coqpit
from TTS.tts.configs.glow_tts_config import GlowTTSConfig

from ruslan_glowtts import KIT_ROOT
from ruslan_glowtts.common.corpus_layout import METADATA_FILE, dataset_toml_path
from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.presets import Preset
from ruslan_glowtts.monitor.explosion_rules import DEFAULTS as RULES

logger = logging.getLogger(__name__)

BASE_CONFIG = KIT_ROOT / "configs" / "ruslan_glowtts.toml"


@dataclass
class HealthConfig(Coqpit):
    """Settings of the health guard (ruslan_glowtts/monitor/guard.py) and of its explosion rules
    (ruslan_glowtts/monitor/explosion_rules.py, which explains each rule and holds the defaults)."""

    enabled: bool = True  # false: Coqui's own optimizer step, no guard (for comparison and debugging)
    policy: str = "warn"  # what an explosion does: warn | stop | escalate
    max_escalations: int = 3  # escalate: tier switches before giving up
    # The explosion rules' thresholds: defaults and meaning in explosion_rules.RuleSettings.
    grace_steps: int = RULES.grace_steps
    grad_norm_limit: float = RULES.grad_norm_limit
    level_window: int = RULES.level_window
    healthy_max: float = RULES.healthy_max
    jump_factor: float = RULES.jump_factor
    jump_window: int = RULES.jump_window
    baseline_window: int = RULES.baseline_window
    trend_window: int = RULES.trend_window
    trend_factor: float = RULES.trend_factor
    spike_z: float = RULES.spike_z
    nonfinite_burst: int = RULES.nonfinite_burst
    nonfinite_window: int = RULES.nonfinite_window
    max_consecutive_nonfinite: int = RULES.max_consecutive_nonfinite
    catastrophic_factor: float = RULES.catastrophic_factor
    catastrophic_points: int = RULES.catastrophic_points
    catastrophic_rise: float = RULES.catastrophic_rise
    loss_factor: float = RULES.loss_factor
    checkpoint_every: int = 500  # known-good checkpoint cadence, in steps
    skip_window: int = 20  # after a rollback, the batches of this many steps before the alarm are skipped


@dataclass
class RuslanGlowTTSConfig(GlowTTSConfig):
    """GlowTTSConfig plus the kit's fields; Coqui's own loaders read it as a plain GlowTTSConfig."""

    grad_accum_steps: int = 1  # micro-batches per optimizer step (Coqui's TrainerArgs.grad_accum_steps)
    # Training batches (ruslan_glowtts/training/batch_sampler.py): utterances of similar length batched
    # together, in a new order every epoch; false: Coqui's random batches (config.shuffle).
    bucket_by_length: bool = False
    bucket_pool_batches: int = 64  # batches per length-sorted pool: larger pads less, mixes less
    max_frames_per_batch: int = 0  # > 0: batches of about this many padded mel frames, not batch_size
    # GPU speed (docs/GPU.md). radam_impl: "flat" = the kit's FlatRAdam (Coqui's RAdam maths, the
    # whole model in one step, skips decided on the device), "coqui" = TTS.utils.radam.RAdam.
    radam_impl: str = "flat"
    # compile_model: torch.compile GlowTTS's decoder (Inductor's fused kernels): auto = on with CUDA.
    compile_model: str = "auto"
    # compile_cuda_graphs: also replay it as CUDA graphs (mode "reduce-overhead"). Off: its capture
    # failed on an H200 (docs/GPU.md), and a failed capture leaves the process's CUDA state unusable.
    compile_cuda_graphs: bool = False
    # pad_lengths: pad each batch's mel/text lengths up to a fixed grid, so shapes repeat (CUDA
    # graphs and cudnn.benchmark are per shape); auto = when the decoder is compiled.
    pad_lengths: str = "auto"
    health: HealthConfig = field(default_factory=HealthConfig)


class Layer(enum.Enum):
    """The config layers, in the order they apply (each overrides the ones before it)."""

    BASE = "base"  # configs/ruslan_glowtts.toml (configs/ruslan_hifigan.toml for the vocoder)
    DATASET = "dataset"  # DATASET/dataset.toml, written by prepare
    PRESET = "preset"  # presets/<name>.toml
    COMMAND_LINE = "command_line"  # --set and the flags that set a key (--seed, --grad-accum, ...)


@dataclass(frozen=True)
class Source:
    """Where an override came from: its layer, and the words logged for it ("preset stable",
    "--set", "dataset /data/x/dataset.toml"); for the command line the words are the flag."""

    layer: Layer
    text: str

    def __str__(self) -> str:
        return self.text

    @classmethod
    def base(cls, path: Path) -> "Source":
        return cls(Layer.BASE, f"base {path.name}")

    @classmethod
    def dataset(cls, fragment: Path) -> "Source":
        return cls(Layer.DATASET, f"dataset {fragment}")

    @classmethod
    def preset(cls, name: str) -> "Source":
        return cls(Layer.PRESET, f"preset {name}")

    @classmethod
    def command_line(cls, flag: str) -> "Source":
        return cls(Layer.COMMAND_LINE, flag)

    @classmethod
    def parse(cls, text: str) -> "Source":
        """The layer of a source recorded only as text: run.json of runs from before the layer was
        recorded, and callers that still pass the words ("base", "dataset.toml", "preset x")."""
        if text.startswith("--"):
            return cls(Layer.COMMAND_LINE, text)
        for layer in (Layer.BASE, Layer.DATASET, Layer.PRESET):
            if text == layer.value or text.startswith((f"{layer.value} ", f"{layer.value}.")):
                return cls(layer, text)
        raise ValueError(f"unknown override source {text!r} (expected base/dataset/preset ... or a --flag)")


@dataclass(frozen=True)
class Override:
    key: str
    value: Any
    source: Source

    @property
    def layer(self) -> Layer:
        return self.source.layer

    def to_json(self) -> dict[str, Any]:
        """As recorded in run.json: key, value and source (the logged words) as before, plus the layer."""
        return {"key": self.key, "value": self.value, "source": self.source.text, "layer": self.layer.value}

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> "Override":
        """A run.json entry; entries without "layer" (older runs) get it from their source text."""
        text = item["source"]
        source = Source(Layer(item["layer"]), text) if "layer" in item else Source.parse(text)
        return cls(item["key"], item["value"], source)


# ---------------------------------------------------------------------------------------------
# Key lookup and type checks against the config's type hints


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _is_config_class(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Coqpit)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and math.isinf(value)
        )
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list or hint is list:
        args = typing.get_args(hint)
        return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if _is_config_class(hint):
        return isinstance(value, dict) and all(_valid_key(hint, k) for k in value)
    return True


def _valid_key(cls: type, key: str) -> bool:
    return key in _hints(cls)


def _describe(hint: Any) -> str:
    hint = _unwrap_optional(hint)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin is list or hint is list:
        return "a list"
    if origin is dict or hint is dict or _is_config_class(hint):
        return "a table"
    return str(hint)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, hint in _hints(cls).items():
        if name.startswith("_"):
            continue
        keys.append(prefix + name)
        inner = _unwrap_optional(hint)
        if _is_config_class(inner):
            keys.extend(_all_keys(inner, f"{prefix}{name}."))
    return keys


# Names other trainers use for the kit's keys: spelling distance alone would not find them.
KEY_ALIASES = {
    "learning_rate": "lr",
    "lr_rate": "lr",
    "gradient_clip": "grad_clip",
    "clip_grad_norm": "grad_clip",
    "max_grad_norm": "grad_clip",
    "gradient_clipping": "grad_clip",
    "warmup_steps": "lr_scheduler_params.warmup_steps",
    "warmup": "lr_scheduler_params.warmup_steps",
    "seed": "training_seed",
    "num_workers": "num_loader_workers",
    "workers": "num_loader_workers",
    "bf16": "precision",
    "fp16": "precision",
    "amp": "mixed_precision",
    "grad_accum": "grad_accum_steps",
    "gradient_accumulation_steps": "grad_accum_steps",
    "num_epochs": "epochs",
}
FLAG_ALIASES = {"max_steps": "--max-steps N", "seed": "--seed N", "grad_accum_steps": "--grad-accum N"}


def _unknown_key(key: str, root: type | None = None) -> UserError:
    glowtts = root is None or root is RuslanGlowTTSConfig  # the aliases name GlowTTS keys and flags
    if glowtts and key in FLAG_ALIASES and key not in KEY_ALIASES:
        return UserError(f"unknown config key '{key}': it is a flag, use {FLAG_ALIASES[key]}")
    keys = _all_keys(root or RuslanGlowTTSConfig)
    close = [KEY_ALIASES[key]] if glowtts and key in KEY_ALIASES else []
    close += difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    # A key given without its section (sample_rate -> audio.sample_rate).
    last = key.rsplit(".", 1)[-1]
    close += [k for k in keys if k.rsplit(".", 1)[-1] == last and "." in k]
    close = list(dict.fromkeys(c for c in close if c != key))[:3]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UserError(f"unknown config key '{key}'.{hint}")


def _hint_at(key: str, root: type | None = None) -> Any | None:
    """The type hint of a dotted key, or None for a free-form dict entry (e.g. lr_scheduler_params.x).
    `root` is the config class (default the GlowTTS one; the HiFi-GAN script passes its own)."""
    cls: Any = root or RuslanGlowTTSConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if cls is dict or typing.get_origin(cls) is dict:
            return None
        if not _is_config_class(cls) or part not in _hints(cls):
            raise _unknown_key(key, root)
        hint = _hints(cls)[part]
        if i == len(parts) - 1:
            return hint
        cls = _unwrap_optional(hint)
    return None


# ---------------------------------------------------------------------------------------------
# Layers


def _flatten(layer: dict[str, Any], prefix: str = "", root: type | None = None) -> list[tuple[str, Any]]:
    """Dotted (key, value) pairs of a layer. Tables are walked into; lists are values."""
    items = []
    for name, value in layer.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            hint = _hint_at(key, root)
            inner = _unwrap_optional(hint) if hint is not None else dict
            if _is_config_class(inner) or inner is dict or typing.get_origin(inner) is dict:
                items.extend(_flatten(value, key + ".", root))
                continue
        items.append((key, value))
    return items


def _check_value(key: str, value: Any, tree: dict[str, Any], root: type | None = None) -> Any:
    hint = _hint_at(key, root)
    if hint is None:  # free-form dict entry: keep the type of the value it replaces, if any
        current = _get(tree, key)
        if current is not None and not _matches(value, type(current) if not isinstance(current, int) else float):
            raise UserError(f"wrong type for '{key}': expected {_describe(type(current))}, got {value!r}")
        return value
    if not _matches(value, hint):
        raise UserError(f"wrong type for '{key}': expected {_describe(hint)}, got {value!r}")
    if _unwrap_optional(hint) is float and isinstance(value, int):
        return float(value)
    return value


def _get(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_key(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def apply_layer(
    tree: dict[str, Any], layer: dict[str, Any], source: Source | str, *, quiet: bool = False, root: type | None = None
) -> list[Override]:
    """Validate `layer` and merge it into `tree` (a config as a dict); log every override.
    `source` as plain words is read with Source.parse (prepare still passes them)."""
    if isinstance(source, str):
        source = Source.parse(source)
    applied = []
    for key, value in _flatten(layer, root=root):
        value = _check_value(key, value, tree, root)
        set_key(tree, key, value)
        logger.log(logging.DEBUG if quiet else logging.INFO, "Overriding: %s = %r  (%s)", key, value, source)
        applied.append(Override(key, value, source))
    return applied


def parse_set_option(option: str, root: type | None = None) -> dict[str, Any]:
    """`--set KEY=VALUE` as a one-key layer. VALUE is read as a TOML value (3e-4, true, [1, 2],
    "text"); anything that is not valid TOML is taken as a plain string."""
    key, sep, raw = option.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set expects KEY=VALUE, got '{option}'")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    hint = _hint_at(key, root)
    if hint is not None and _unwrap_optional(hint) is str and not isinstance(value, str):
        value = raw  # --set run_name=123 means the string "123"
    layer: dict[str, Any] = {}
    set_key(layer, key, value)
    return layer


def read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed {what} {path}: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None


def to_config(tree: dict[str, Any]) -> RuslanGlowTTSConfig:
    config = RuslanGlowTTSConfig()
    config.from_dict(tree)
    validate(config)
    return config


def validate(config: RuslanGlowTTSConfig) -> None:
    """Checks that type hints cannot express."""
    problems = []
    if config.batch_size < 1 or config.eval_batch_size < 1:
        problems.append("batch_size and eval_batch_size must be >= 1")
    if config.grad_accum_steps < 1:
        problems.append("grad_accum_steps must be >= 1")
    if config.bucket_pool_batches < 1 or config.max_frames_per_batch < 0:
        problems.append("bucket_pool_batches must be >= 1 and max_frames_per_batch >= 0")
    if config.max_frames_per_batch and not config.bucket_by_length:
        problems.append("max_frames_per_batch needs bucket_by_length = true")
    if not config.lr > 0:
        problems.append("lr must be > 0")
    if config.grad_clip < 0:
        problems.append("grad_clip must be >= 0 (0 disables clipping)")
    if config.precision not in ("fp16", "bf16"):
        problems.append("precision must be 'bf16' or 'fp16' (mixed_precision = false means fp32)")
    if config.health.policy not in ("warn", "stop", "escalate"):
        problems.append("health.policy must be warn, stop or escalate")
    if config.radam_impl not in ("flat", "coqui"):
        problems.append("radam_impl must be 'flat' (the kit's FlatRAdam) or 'coqui' (Coqui's RAdam)")
    for key in ("compile_model", "pad_lengths"):
        if getattr(config, key) not in ("auto", "on", "off"):
            problems.append(f"{key} must be auto, on or off")
    if config.audio.sample_rate <= 0:
        problems.append("audio.sample_rate must be > 0")
    if config.min_audio_len > config.max_audio_len:
        problems.append(
            f"min_audio_len {config.min_audio_len} > max_audio_len {config.max_audio_len} "
            "(both in samples of the audio files)"
        )
    if config.min_text_len > config.max_text_len:
        problems.append(f"min_text_len {config.min_text_len} > max_text_len {config.max_text_len} (characters)")
    if problems:
        raise UserError("invalid config: " + "; ".join(problems))
    if config.mixed_precision and config.precision == "fp16":
        logger.warning("fp16 mixed precision is known to give GlowTTS NaN losses (coqui-ai/TTS #918); prefer bf16")


def build_config(
    *,
    preset: Preset,
    dataset_path: Path | None = None,
    cli_layers: list[tuple[dict[str, Any], str]] = (),  # type: ignore[assignment]
    base_path: Path = BASE_CONFIG,
    dataset_layer: dict[str, Any] | None = None,
    quiet: bool = False,
) -> tuple[RuslanGlowTTSConfig, list[Override]]:
    """Resolve the config from its layers, in the fixed order base < dataset < preset < CLI.

    `cli_layers` are (one-key layer, the flag that gave it: "--set", "--seed", ...). `dataset_layer`
    stands in for DATASET/dataset.toml: prepare resolves, with this same function, the config
    training will build once the fragment it is about to write exists. `quiet` logs the overrides
    at debug level."""
    tree = RuslanGlowTTSConfig().to_dict()
    overrides = apply_layer(tree, read_toml(base_path, "base config"), Source.base(base_path), quiet=True)
    if dataset_layer is not None:
        target = dataset_toml_path(dataset_path) if dataset_path is not None else Path("dataset.toml")
        overrides += apply_layer(tree, dataset_layer, Source.dataset(target), quiet=quiet)
    elif dataset_path is not None:
        fragment = dataset_toml_path(dataset_path)
        if fragment.is_file():
            overrides += apply_layer(tree, read_toml(fragment, "dataset config"), Source.dataset(fragment), quiet=quiet)
    if dataset_path is not None and tree.get("datasets"):
        tree["datasets"][0]["path"] = str(dataset_path.resolve())
    overrides += apply_layer(tree, preset.overrides, Source.preset(preset.name), quiet=quiet)
    for layer, flag in cli_layers:
        overrides += apply_layer(tree, layer, Source.command_line(flag), quiet=quiet)
    for dataset in tree.get("datasets") or []:
        dataset["meta_file_train"] = dataset.get("meta_file_train") or METADATA_FILE  # the corpus layout's name
    return to_config(tree), overrides
