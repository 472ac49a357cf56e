"""What to run next: the next tier's exact command, and the prepare command.

Shared by the health guard (its warn banner and stop message), the escalation chain and
diagnose, so that they all print the same command. Free of torch and Coqui imports: diagnose
must start fast and work wherever TensorBoard's reader does.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

from ruslan_glowtts.common.presets import PRESETS_DIR, load_preset

PREPARE_HINT = "python -m ruslan_glowtts.prepare --src {src} --dst {src}_prepared"

# How a recorded override (run.json "overrides": key, value, source) is given on a command line.
_FLAG_SOURCES = ("--seed", "--output-path", "--grad-accum", "--on-explosion", "--max-escalations")


def flat_keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys of the leaves of a nested dict."""
    keys: set[str] = set()
    for name, value in tree.items():
        keys |= flat_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else {prefix + name}
    return keys


def toml_value(value: Any) -> str:
    """A --set VALUE that `config.parse_set_option` reads back as the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def carried_flags(
    overrides: list[dict[str, Any]], next_preset: str | None, presets_dir: Path = PRESETS_DIR
) -> list[str]:
    """The user's own command-line settings, minus the keys the next tier sets: a restored
    checkpoint needs the same model shape, and the new tier's values must win. With no next
    preset (the same run again, e.g. without some utterances) every setting is carried."""
    tier_keys = flat_keys(load_preset(next_preset, presets_dir).overrides) if next_preset else set()
    flags: list[str] = []
    for item in overrides:
        key, value, source = item.get("key"), item.get("value"), item.get("source", "")
        if key in tier_keys:
            continue
        if source == "--set" and not isinstance(value, dict):
            flags += ["--set", f"{key}={toml_value(value)}"]
        elif source in _FLAG_SOURCES:
            flags += [source, str(value)]
        elif source == "--auto-escalate":
            flags.append(source)
    return flags


def next_tier_command(
    next_preset: str,
    dataset_path: str | None,
    overrides: list[dict[str, Any]],
    restore: Path | None,
    *,
    script: str = "train_ruslan_glowtts.py",
    presets_dir: Path = PRESETS_DIR,
) -> str:
    """`python SCRIPT --preset NEXT ...`, restoring `restore` when given (GlowTTS's script and
    presets unless told otherwise: the vocoder has its own)."""
    parts = ["python", script, "--preset", next_preset, "--dataset-path", dataset_path or "DATASET_DIR"]
    if restore is not None:
        parts += ["--restore-path", str(restore)]
    return shlex.join(parts + carried_flags(overrides, next_preset, presets_dir))
