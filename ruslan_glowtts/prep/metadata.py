"""Reading RUSLAN's `id|text` metadata file without trusting it: the one reader, for prepare
(which excludes and reports bad lines) and training (which refuses to start on them).

The file is read as bytes and split on newlines, so CRLF endings, a BOM and a line that is not
UTF-8 are each reported and handled instead of crashing the run (or, in Coqui's formatter,
silently becoming part of the text). Every line that cannot become an utterance is reported
with its line number and excluded.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ruslan_glowtts.common.errors import UserError
from ruslan_glowtts.prep.problems import Legend, Problem

logger = logging.getLogger(__name__)

BOM = "\ufeff"
# Ids become file names (RUSLAN/<id>.wav): only plain names, so nothing can escape the corpus root.
SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")

# code -> (action, what it means); the report's legend for line problems.
LINE_PROBLEMS: Legend = {
    "not_utf8": ("excluded", "the line is not valid UTF-8"),
    "no_separator": ("excluded", "the line has no '|' between id and text"),
    "extra_columns": ("excluded", "the line has more than one '|' (expected exactly id|text)"),
    "empty_id": ("excluded", "the id before '|' is empty"),
    "empty_text": ("excluded", "the text after '|' is empty"),
    "unsafe_id": (
        "excluded",
        ("the id is not a plain file name (e.g. contains '/' or '..'): it could escape the corpus root"),
    ),
    "duplicate_id": ("excluded", "the id already appeared on an earlier line; the first one is kept"),
}


@dataclass(frozen=True)
class MetadataEntry:
    line: int
    id: str
    text: str


@dataclass(frozen=True)
class LineProblem:
    line: int
    code: str
    detail: str
    id: str = ""

    @property
    def problem(self) -> Problem:
        return Problem.of(LINE_PROBLEMS, self.code, self.detail)


@dataclass
class MetadataScan:
    path: Path
    entries: list[MetadataEntry] = field(default_factory=list)
    problems: list[LineProblem] = field(default_factory=list)
    lines: int = 0  # non-blank lines
    bom: bool = False
    crlf_lines: int = 0
    trailing_whitespace_lines: int = 0


def read_metadata(path: Path) -> MetadataScan:
    """Parse a RUSLAN metadata file into entries and per-line problems."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read metadata file {path}: {exc.strerror}") from None
    scan = MetadataScan(path)
    seen: dict[str, int] = {}
    undecodable = 0
    for number, chunk in enumerate(raw.split(b"\n"), 1):
        if chunk.endswith(b"\r"):
            scan.crlf_lines += 1
            chunk = chunk[:-1]
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            scan.lines += 1
            undecodable += 1
            scan.problems.append(LineProblem(number, "not_utf8", f"byte {exc.start}: {chunk[:60]!r}"))
            continue
        if line.startswith(BOM):
            scan.bom = True
            line = line[1:]
        if line != line.rstrip():
            scan.trailing_whitespace_lines += 1
        line = line.strip()
        if not line:
            continue
        scan.lines += 1
        _parse_line(scan, number, line, seen)
    if scan.lines and undecodable > scan.lines // 2:
        raise UserError(
            f"{path} is not UTF-8 text ({undecodable} of {scan.lines} lines fail to decode); "
            "convert it, e.g. `iconv -f cp1251 -t utf-8`"
        )
    return scan


def _parse_line(scan: MetadataScan, number: int, line: str, seen: dict[str, int]) -> None:
    def problem(code: str, detail: str, id_: str = "") -> None:
        scan.problems.append(LineProblem(number, code, detail, id_))

    if "|" not in line:
        return problem("no_separator", repr(line[:60]))
    columns = line.split("|")
    id_, text = columns[0].strip(), columns[1].strip()
    if len(columns) > 2:
        return problem("extra_columns", f"{len(columns)} columns: {line[:80]!r}", id_)
    if not id_:
        return problem("empty_id", repr(line[:60]))
    if not SAFE_ID.fullmatch(id_):
        return problem("unsafe_id", repr(id_), id_)
    if not text:
        return problem("empty_text", "", id_)
    if id_ in seen:
        return problem("duplicate_id", f"first on line {seen[id_]}", id_)
    seen[id_] = number
    scan.entries.append(MetadataEntry(number, id_, text))
