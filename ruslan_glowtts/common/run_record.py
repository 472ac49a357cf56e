"""RunRecord: run.json, the run's record, one typed class for the lifecycle that writes it and for
diagnose that reads it.

run.json holds what Coqui's config.json does not: the kit and model, the preset and its tier
chain, every override and its source, seed, command line, git commit, library versions, device
and precision, the parent run and reason in an escalation chain, each resume, and how the run
ended (status, exit code, final step, message, the next command). The lifecycle writes it at the
start (start()), at each resume (resume()) and at the end (end()); every write is atomic.

Old run.json files stay readable: a field this class does not know is kept as it was (`extra`),
a missing one takes its default, and a message written as "what happened. Next: <command>" (the
kit's format before next_command had its own field) is split into the two. Torch-free: diagnose
reads it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ruslan_glowtts.common.atomic_files import write_text
from ruslan_glowtts.common.run_layout import RUN_META

logger = logging.getLogger(__name__)

RUNNING = "running"
# How a run ends: finished (all epochs) | max_steps | interrupted (Ctrl-C) | terminated (SIGTERM)
# | crashed (an exception, or a write that failed) | exploded (the health guard stopped it)
# | bad_data (too many samples failed to load); escalated: a parent whose chain went on.
ENDED = ("finished", "max_steps", "interrupted", "terminated", "crashed", "exploded", "bad_data", "escalated")
_LEGACY_NEXT = ". Next: "


@dataclass
class RunRecord:
    kit: str = ""  # run_layout.ModelKind.kit: ruslan_glowtts | ruslan_hifigan ("" for a run the kit did not make)
    model: str = ""  # the config's Coqui model: glow_tts | hifigan
    status: str = ""  # RUNNING or one of ENDED
    started_at: str = ""
    preset: str | None = None
    preset_path: str | None = None
    tier_chain: list[str] = field(default_factory=list)
    overrides: list[dict[str, Any]] = field(default_factory=list)  # config.Override.to_json(), base layer left out
    seed: int | None = None
    dataset_path: str | None = None
    restore_path: str | None = None
    max_steps: int = 0
    policy: str | None = None
    device: str | None = None
    precision: str | None = None
    # An escalation chain (GlowTTS): where this run comes from, and where its parent went.
    parent_run: str | None = None
    reason: str | None = None
    escalation_index: int = 0
    start_step: int = 0
    skipped_samples: int = 0
    escalated_to: str | None = None
    vocoder: str | None = None  # GlowTTS: the vocoder of its test audio (--vocoder)
    audio_source: str | None = None  # HiFi-GAN: where its audio settings came from
    # What reproduces it besides the config (runs.environment()).
    command: list[str] = field(default_factory=list)
    cwd: str | None = None
    git_commit: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    host: str | None = None
    resumes: list[dict[str, Any]] = field(default_factory=list)  # each --continue-path: when, from which step
    # How it ended.
    exit_code: int | None = None
    final_step: int | None = None
    message: str = ""
    next_command: str = ""  # the exact command to run next, when there is one
    ended_at: str | None = None
    health: dict[str, Any] = field(default_factory=dict)  # the guard's summary
    unloadable_samples: dict[str, str] = field(default_factory=dict)  # sample file -> why it failed to load
    # --exclude-utterances: the file, its sha256, the ids dropped and the counts (common/exclusions.py)
    exclude_utterances: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields of other versions, kept as they were

    # -- reading ------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        values = {k: v for k, v in data.items() if k in fields}
        for name, value in values.items():  # null where a list or a table belongs: its empty default
            if value is None and fields[name].default_factory is not dataclasses.MISSING:
                values[name] = cast(Callable[[], Any], fields[name].default_factory)()
        record = cls(**values, extra={k: v for k, v in data.items() if k not in fields})
        if not record.next_command and _LEGACY_NEXT in (record.message or ""):
            record.message, record.next_command = record.message.split(_LEGACY_NEXT, 1)
        record.message = record.message or ""
        return record

    @classmethod
    def read(cls, run_dir: Path) -> RunRecord:
        """The run's record; an empty one when the folder has no run.json (a run the kit did not
        make) or an unreadable one (warned: the rest of the folder can still be used)."""
        path = Path(run_dir) / RUN_META
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            logger.warning("warning: cannot read %s (%s): reading the run without it", path, exc)
            return cls()
        if not isinstance(data, dict):
            logger.warning("warning: %s is not a JSON object: reading the run without it", path)
            return cls()
        return cls.from_json(data)

    @property
    def exists(self) -> bool:
        """The kit wrote this record (a stock Coqui run has none)."""
        return bool(self.status or self.kit or self.preset)

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    # -- writing ------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**data, **self.extra}

    def write(self, run_dir: Path) -> None:
        write_text(
            Path(run_dir) / RUN_META, json.dumps(self.to_json(), indent=2, ensure_ascii=False, default=str) + "\n"
        )

    def start(self, run_dir: Path, *, started_at: str, environment: dict[str, Any]) -> None:
        """A new run: this record, running from now."""
        self.status, self.started_at = RUNNING, started_at
        for name, value in environment.items():
            setattr(self, name, value)
        self.write(run_dir)

    def resume(self, run_dir: Path, *, at: str, from_step: int, environment: dict[str, Any], **changed: Any) -> None:
        """--continue-path: running again from `from_step`; the previous ending moves into `resumes`."""
        self.resumes = [
            *self.resumes,
            {"at": at, "from_step": from_step, "previous_status": self.status, **environment},
        ]
        self.status = RUNNING
        self.exit_code = self.final_step = self.ended_at = None
        self.message = self.next_command = ""
        for name, value in changed.items():
            setattr(self, name, value)
        self.write(run_dir)

    def end(
        self,
        run_dir: Path,
        *,
        status: str,
        exit_code: int,
        final_step: int,
        message: str,
        next_command: str,
        ended_at: str,
        **more: Any,
    ) -> None:
        self.status, self.exit_code, self.final_step = status, exit_code, final_step
        self.message, self.next_command, self.ended_at = message, next_command, ended_at
        for name, value in more.items():
            setattr(self, name, value)
        self.write(run_dir)
