"""Exclusion files: a list of utterance ids to leave out, shared by prepare (`--exclude FILE`) and
training (`--exclude-utterances FILE`).

The format is diagnose's suspects.txt: one id per line, `#` starts a comment (diagnose writes the
reason there), blank lines are ignored. The file's SHA-256 is recorded with the ids (run.json
for training, report.json for prepare), so a run says exactly what it left out even after the
file changes. Ids that the data does not hold get one warning line with their count: a list
written for another corpus or an older prepare is worth knowing about, not worth stopping for.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruslan_glowtts.common.errors import UserError

logger = logging.getLogger(__name__)

_SHOWN = 3  # unknown ids named in the warning line


@dataclass(frozen=True)
class Exclusion:
    path: str  # absolute, as given
    sha256: str
    ids: tuple[str, ...]  # in file order, each once

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]

    def describe(self) -> str:
        return f"{len(self.ids)} utterance id(s) from {self.path} (sha256 {self.short_hash})"

    def unknown(self, known: Iterable[str]) -> list[str]:
        present = set(known)
        return [id_ for id_ in self.ids if id_ not in present]

    def warn_unknown(self, known: Iterable[str], flag: str, where: str) -> list[str]:
        """One warning line when ids are not in `known`; returns them."""
        missing = self.unknown(known)
        if missing:
            shown = ", ".join(missing[:_SHOWN]) + (" ..." if len(missing) > _SHOWN else "")
            logger.warning(
                "warning: %s %s: %d of %d id(s) are not in %s (%s): nothing to leave out for them",
                flag,
                self.path,
                len(missing),
                len(self.ids),
                where,
                shown,
            )
        return missing

    def to_json(self, **counts: Any) -> dict[str, Any]:
        return {"file": self.path, "sha256": self.sha256, "ids": list(self.ids), **counts}

    @classmethod
    def from_json(cls, data: Any) -> Exclusion | None:
        """The exclusion a run recorded (run.json `exclude_utterances`), or None."""
        if not isinstance(data, dict) or not isinstance(data.get("ids"), list):
            return None
        return cls(str(data.get("file", "")), str(data.get("sha256", "")), tuple(str(i) for i in data["ids"]))


def read_exclusion(path: Path, flag: str) -> Exclusion:
    """Read an exclusion file; a missing, unreadable or malformed file is a UserError (exit 2)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file" if not path.exists() else f"{flag} {path}: not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{flag} {path}: not a UTF-8 text file (expected one utterance id per line)") from None
    ids: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if "\0" in entry or len(entry.split()) > 1 or "|" in entry or "/" in entry:
            raise UserError(
                f"{flag} {path}:{number}: expected one utterance id per line (e.g. 000123_RUSLAN, "
                f"a comment after #), got {entry[:60]!r}"
            )
        ids[entry] = None
    if not ids:
        logger.warning("warning: %s %s lists no utterance id: nothing is left out", flag, path)
    return Exclusion(str(path.absolute()), hashlib.sha256(data).hexdigest(), tuple(ids))
