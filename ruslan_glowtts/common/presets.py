"""Stability presets: small TOML files in presets/, found by name or path, chained by `fallback`.

A preset file holds `description`, `fallback` (the next tier's name, "" at the end of the
chain) and a `[config]` table of overrides. The tier chain is this data, not code: the kit
follows `fallback` links to escalate, and `--list-presets` prints them.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruslan_glowtts import KIT_ROOT
from ruslan_glowtts.common.errors import UserError

PRESETS_DIR = KIT_ROOT / "presets"
DEFAULT_PRESET = "stable"
_ALLOWED_KEYS = {"description", "fallback", "config"}


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    description: str
    fallback: str  # "" = end of the chain
    overrides: dict[str, Any] = field(default_factory=dict)


def available_presets(presets_dir: Path = PRESETS_DIR) -> list[str]:
    return sorted(p.stem for p in presets_dir.glob("*.toml"))


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path


def load_recorded_preset(
    name: str | None, path: str | None, presets_dir: Path = PRESETS_DIR, default: str = DEFAULT_PRESET
) -> Preset:
    """The preset a run recorded in its run.json (`preset`, `preset_path`): its file while that exists,
    else the bundled preset of its name (a run folder copied to another machine or checkout records
    the old path)."""
    if path and Path(path).is_file():
        return load_preset(path, presets_dir)
    return load_preset(name or path or default, presets_dir)


def load_preset(name_or_path: str, presets_dir: Path = PRESETS_DIR) -> Preset:
    """Load a bundled preset by name (from `presets_dir`), or a user's preset file by path."""
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise UserError(f"preset file not found: {path}")
    else:
        path = presets_dir / f"{name_or_path}.toml"
        if not path.is_file():
            names = available_presets(presets_dir)
            close = difflib.get_close_matches(name_or_path, names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"unknown preset '{name_or_path}'.{hint} Available: {', '.join(names)}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed preset file {path}: {exc}") from None
    unknown = set(data) - _ALLOWED_KEYS
    if unknown:
        raise UserError(
            f"malformed preset file {path}: unknown top-level key(s) {sorted(unknown)}; "
            "expected description, fallback and a [config] table"
        )
    overrides = data.get("config", {})
    description, fallback = data.get("description", ""), data.get("fallback", "")
    if not isinstance(overrides, dict) or not isinstance(description, str) or not isinstance(fallback, str):
        raise UserError(f"malformed preset file {path}: description and fallback are strings, config a table")
    return Preset(path.stem, path.resolve(), description, fallback, overrides)


def tier_chain(start: Preset, presets_dir: Path = PRESETS_DIR) -> list[Preset]:
    """The preset and every fallback after it, in escalation order."""
    chain = [start]
    while chain[-1].fallback:
        nxt = load_preset(chain[-1].fallback, presets_dir)
        if any(p.path == nxt.path for p in chain):
            raise UserError(f"preset fallback loop: {' -> '.join(p.name for p in chain)} -> {nxt.name}")
        chain.append(nxt)
    return chain


def _key_values(preset: Preset) -> str:
    cfg = preset.overrides
    parts = [
        f"lr {cfg['lr']:g}" if "lr" in cfg else None,
        f"clip {cfg['grad_clip']:g}" if "grad_clip" in cfg else None,
        f"warmup {cfg['lr_scheduler_params']['warmup_steps']}"
        if "warmup_steps" in cfg.get("lr_scheduler_params", {})
        else None,
        f"batch {cfg['batch_size']}" if "batch_size" in cfg else None,
        f"x{cfg['grad_accum_steps']} accum" if cfg.get("grad_accum_steps", 1) > 1 else None,
    ]
    if "mixed_precision" in cfg:
        parts.append(f"{cfg.get('precision', 'fp16')}-if-supported" if cfg["mixed_precision"] else "fp32")
    return ", ".join(p for p in parts if p)


def format_preset_table() -> str:
    """The --list-presets output: name, purpose, key values, fallback, in chain order."""
    presets = [load_preset(name) for name in available_presets()]
    order = {p.name: i for i, p in enumerate(tier_chain(load_preset("default")))}
    presets.sort(key=lambda p: (order.get(p.name, len(order)), p.name))
    lines = []
    for p in presets:
        marker = " (default)" if p.name == DEFAULT_PRESET else ""
        lines.append(f"{p.name}{marker}")
        lines.append(f"    {p.description}")
        lines.append(f"    values:   {_key_values(p)}")
        lines.append(f"    fallback: {p.fallback or '(none: end of the chain)'}")
    lines.append("Use: python train_ruslan_glowtts.py --preset NAME|PATH --dataset-path DIR")
    return "\n".join(lines)
