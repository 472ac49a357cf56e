"""What the run folder says besides its curves: run.json (the RunRecord the run lifecycle wrote) and
config.json, how the run ended (trainer_0_log.txt), its tier (named or inferred from lr and
grad_clip), its checkpoints and parent runs, and the command that starts the next tier."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
from pathlib import Path
from typing import Any

from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.common.next_steps import next_tier_command
from ruslan_glowtts.common.presets import (
    Preset,
    load_preset,
    load_recorded_preset,
    tier_chain,
)
from ruslan_glowtts.common.run_layout import CHECKPOINT_RE, CONFIG_FILE, KNOWN_GOOD, LOG_FILE, RUN_META
from ruslan_glowtts.common.run_record import RunRecord
from ruslan_glowtts.training.coqui_compat import NAN_LOSS_LOG_PATTERN, mentions_nan_loss

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# How the run ended

_ERROR_RE = re.compile(r"^(\w+(?:\.\w+)*(?:Error|Exception)\b.*)$", re.MULTILINE)
_STEP_RE = re.compile(r"GLOBAL_STEP: (\d+)")
_LOG_TAIL_BYTES = 256 * 1024  # the ending is at the end; a long run's log is large


def run_ending(run_dir: Path, record: RunRecord) -> dict[str, Any]:
    """How the run ended, from run.json (kit runs) and the tail of trainer_0_log.txt.

    kind: nan_loss (Coqui's `NaN loss` error), crashed (another exception), guard_stop (the
    guard's stop or escalation), interrupted, finished, or unknown (still running, killed, or a
    stock run whose exception went to the console: Coqui prints tracebacks to stderr and only
    logs "Run is kept in" when it keeps the folder of a crashed run)."""
    status, message, step = record.status, record.message.strip(), record.final_step
    if status in ("crashed", "bad_data"):  # bad_data: too many samples failed to load
        kind = "nan_loss" if mentions_nan_loss(message) else "crashed"
        return {
            "kind": kind,
            "source": RUN_META,
            "step": step,
            "text": f"a crash: {message.splitlines()[0] if message else 'no message'} ({RUN_META})",
        }
    if status == "exploded":
        return {
            "kind": "guard_stop",
            "source": RUN_META,
            "step": step,
            "text": f"the health guard's stop: {message.splitlines()[0] if message else ''} ({RUN_META})",
        }
    if status in ("finished", "max_steps", "interrupted", "terminated"):
        kind = "interrupted" if status in ("interrupted", "terminated") else "finished"
        return {"kind": kind, "source": RUN_META, "step": step, "text": f"{status} at step {step} ({RUN_META})"}
    log = run_dir / LOG_FILE
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - _LOG_TAIL_BYTES))
            tail = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        said = f"run.json says {status}" if status else "no run.json status"
        return {"kind": "unknown", "source": None, "step": None, "text": f"unknown ({said}, no {log.name})"}
    except OSError as exc:
        logger.warning("warning: cannot read %s: %s", log, exc.strerror or exc)
        return {"kind": "unknown", "source": None, "step": None, "text": f"unknown ({log.name} unreadable)"}
    steps = _STEP_RE.findall(tail)
    step = int(steps[-1]) if steps else None
    if match := NAN_LOSS_LOG_PATTERN.search(tail):
        return {
            "kind": "nan_loss",
            "source": log.name,
            "step": step,
            "text": f"Coqui's `NaN loss with {match.group(1)}` error ({log.name})",
        }
    if "Traceback (most recent call last)" in tail:
        errors = _ERROR_RE.findall(tail)
        return {
            "kind": "crashed",
            "source": log.name,
            "step": step,
            "text": f"an exception: {errors[-1] if errors else 'see the traceback'} ({log.name})",
        }
    if "Keyboard interrupt detected" in tail:
        return {"kind": "interrupted", "source": log.name, "step": step, "text": f"Ctrl-C ({log.name})"}
    if "! Run is kept in" in tail:
        return {
            "kind": "crashed",
            "source": log.name,
            "step": step,
            "text": f"an exception (Coqui kept the folder; the error itself went to the console) ({log.name})",
        }
    return {
        "kind": "unknown",
        "source": log.name,
        "step": step,
        "text": f"not recorded: still running, or killed ({log.name} has no ending)",
    }


# ---------------------------------------------------------------------------------------------
# The run's tier and the command to run next


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from the run folder; {} when missing or unreadable (warned)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("cannot read %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _override(preset: Preset, key: str) -> Any:
    return preset.overrides.get(key)


def infer_tier(config: dict[str, Any]) -> tuple[str | None, list[str], str]:
    """For a run without run.json: (current preset or None, the chain after it, explanation).

    An exact (lr, grad_clip) match names the tier; otherwise the next tier is the first of the
    bundled chain at least as conservative in both values and stricter in one."""
    lr, clip = config.get("lr"), config.get("grad_clip")
    if not isinstance(lr, (int, float)) or not isinstance(clip, (int, float)):
        chain = [preset.name for preset in tier_chain(load_preset("stable"))]
        return None, chain, "config.json has no lr/grad_clip: starting the kit's chain at stable"
    effective_clip = clip if clip > 0 else math.inf  # 0 disables clipping
    tiers = tier_chain(load_preset("default"))
    for i, preset in enumerate(tiers):
        if math.isclose(_override(preset, "lr"), lr, rel_tol=1e-6) and math.isclose(
            _override(preset, "grad_clip"), clip, rel_tol=1e-6
        ):
            return (
                preset.name,
                [later.name for later in tiers[i + 1 :]],
                f"lr {lr:g} and grad_clip {clip:g} match preset {preset.name}",
            )
    for i, preset in enumerate(tiers):
        preset_lr, preset_clip = _override(preset, "lr"), _override(preset, "grad_clip")
        if preset_lr <= lr and preset_clip <= effective_clip and (preset_lr < lr or preset_clip < effective_clip):
            return (
                None,
                [later.name for later in tiers[i:]],
                (
                    f"lr {lr:g}, grad_clip {clip:g}: the first safer tier of "
                    f"{' -> '.join(tier.name for tier in tiers)} is {preset.name}"
                ),
            )
    return None, [], f"lr {lr:g}, grad_clip {clip:g} are already at or below the last tier's values"


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoint_N.pth and best_model_N.pth, by step."""
    found = []
    for path in run_dir.glob("*.pth"):
        if match := CHECKPOINT_RE.match(path.name):
            found.append((int(match.group(2)), path))
    return sorted(found)


def pick_checkpoint(run_dir: Path, onset: int | None, diverged: bool = False) -> tuple[Path | None, str]:
    """The weights the next tier starts from, and how they were chosen (one clause)."""
    known_good = run_dir / KNOWN_GOOD
    if known_good.is_file():
        return known_good, "from the run's last known-good checkpoint"
    found = checkpoints(run_dir)
    if not found:
        return None, "from scratch: the run has no checkpoint"
    if onset is not None:
        before = [checkpoint for checkpoint in found if checkpoint[0] <= onset]
        if before:
            return before[-1][1], f"from the last checkpoint saved before the trouble began (step {onset})"
        if diverged:  # weights saved after a divergence are no starting point
            return None, f"from scratch: every checkpoint was saved after the run diverged (step {onset})"
        return found[-1][1], (
            f"from the last checkpoint, saved after the trouble began (step {onset}); if the new "
            "run explodes at once, start it without --restore-path"
        )
    return found[-1][1], "from the run's last checkpoint"


def lineage(run_dir: Path, record: RunRecord) -> list[dict[str, Any]]:
    """This run and the runs it continues from (run.json parent_run links), oldest first."""
    chain = [
        {
            "run": str(run_dir),
            "preset": record.preset,
            "escalation_index": record.escalation_index,
            "reason": record.reason,
        }
    ]
    seen = {run_dir.resolve()}
    while parent := record.parent_run:
        path = Path(parent)
        if path.resolve() in seen or len(chain) > 50:
            break
        seen.add(path.resolve())
        record = RunRecord.read(path)
        chain.append(
            {
                "run": str(path),
                "preset": record.preset,
                "escalation_index": record.escalation_index,
                "reason": record.reason,
                "exists": path.is_dir(),
            }
        )
    return chain[::-1]


def run_context(run_dir: Path) -> dict[str, Any]:
    """What the recommendation needs: preset, tier chain, dataset path, metadata. Keys starting
    with `_` (run.json, config.json as read) stay out of the report."""
    record = RunRecord.read(run_dir)
    config = read_json(run_dir / CONFIG_FILE)
    ctx: dict[str, Any] = {
        "dir": str(run_dir),
        "has_run_json": record.exists,
        "preset": record.preset,
        "status": record.status or None,
        "final_step": record.final_step,
        "lr": config.get("lr"),
        "grad_clip": config.get("grad_clip"),
        "fp16": bool(config.get("mixed_precision")) and config.get("precision", "fp16") == "fp16",
    }
    chain: list[str] | None = record.tier_chain
    if record.preset and not chain:
        try:
            chain = [preset.name for preset in tier_chain(load_recorded_preset(record.preset, record.preset_path))]
        except UserError:
            chain = None
    if record.preset and chain:
        ctx.update(tier_chain=chain, next_preset=chain[1] if len(chain) > 1 else None, tier_source=RUN_META)
    else:
        current, after, why = infer_tier(config)
        ctx.update(
            preset=current,
            tier_chain=([current] if current else []) + after,
            next_preset=after[0] if after else None,
            tier_source=f"config.json: {why}",
        )
    datasets = config.get("datasets") if isinstance(config.get("datasets"), list) else []
    from_config = datasets[0].get("path") if datasets and isinstance(datasets[0], dict) else None
    ctx["dataset_path"] = record.dataset_path or from_config or None
    ctx["lineage"] = lineage(run_dir, record) if record.parent_run or record.escalation_index else []
    ctx["_record"], ctx["_config"] = record, config
    return ctx


def next_command(ctx: dict[str, Any], next_preset: str, checkpoint: Path | None) -> str:
    """The training command for the next tier, with the run's own --set overrides."""
    overrides = [o for o in ctx["_record"].overrides if isinstance(o, dict)]
    command = next_tier_command(next_preset, ctx["dataset_path"], overrides, checkpoint)
    excluded = ctx["_record"].exclude_utterances  # --exclude-utterances carries over to the next tier
    if isinstance(excluded, dict) and excluded.get("file"):
        command += f" --exclude-utterances {shlex.quote(str(excluded['file']))}"
    return command
