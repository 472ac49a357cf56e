"""A problem prepare found with one utterance: what it is, what was done about it, and a detail.

Each check keeps its own legend (code -> action, meaning) beside the code that finds it:
metadata.LINE_PROBLEMS, audio_audit.AUDIO_PROBLEMS, text_normalization.TEXT_PROBLEMS,
length_limits.LENGTH_PROBLEMS, and EXCLUDE_PROBLEMS below (--exclude); report.py merges their
meanings. A problem travels as its JSON form {"code", "action", "detail"} from a worker process,
in prepare's state database and in report.json's "files", so that form does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

# excluded: left out of the metadata; fixed: corrected in the prepared copy; warning: kept, listed.
Action = Literal["excluded", "fixed", "warning"]
ACTIONS: tuple[str, ...] = get_args(Action)
Legend = dict[str, tuple[Action, str]]  # code -> (action, what it means)


@dataclass(frozen=True)
class Problem:
    code: str
    action: Action
    detail: str = ""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"problem {self.code!r}: action must be one of {ACTIONS}, got {self.action!r}")

    @classmethod
    def of(cls, legend: Legend, code: str, detail: str = "", action: Action | None = None) -> Problem:
        """The problem `code` with its legend's action (or `action`, where the options decide it)."""
        return cls(code, action or legend[code][0], detail)

    @property
    def excluded(self) -> bool:
        return self.action == "excluded"

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "action": self.action, "detail": self.detail}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Problem:
        return cls(data["code"], data["action"], data.get("detail", ""))


# `prepare --exclude FILE` (ruslan_glowtts/common/exclusions.py): ids the user asked to leave out.
EXCLUDE_PROBLEMS: Legend = {
    "listed_for_exclusion": (
        "excluded",
        ("listed in the --exclude file (e.g. diagnose's suspects.txt): left out on request"),
    ),
}
