"""The problem record prepare's checks share: one dataclass, one JSON form."""

from __future__ import annotations

import pytest

from ruslan_glowtts.prep.audio_audit import AUDIO_PROBLEMS, problem
from ruslan_glowtts.prep.length_limits import (
    LENGTH_PROBLEMS,
    LengthBounds,
    length_problems,
)
from ruslan_glowtts.prep.metadata import LINE_PROBLEMS
from ruslan_glowtts.prep.problems import ACTIONS, Problem
from ruslan_glowtts.prep.text_normalization import TEXT_PROBLEMS


def test_every_legend_names_a_known_action_and_a_meaning():
    for legend in (LINE_PROBLEMS, AUDIO_PROBLEMS, TEXT_PROBLEMS, LENGTH_PROBLEMS):
        for code, (action, meaning) in legend.items():
            assert action in ACTIONS and meaning, code


def test_json_form_is_the_reports_and_round_trips():
    found = problem("long_leading_silence", "2.00 s", "fixed")
    assert found == Problem("long_leading_silence", "fixed", "2.00 s")
    assert found.to_json() == {"code": "long_leading_silence", "action": "fixed", "detail": "2.00 s"}
    assert list(found.to_json()) == ["code", "action", "detail"]
    assert Problem.from_json(found.to_json()) == found
    assert problem("missing_file").excluded and not found.excluded
    (too_long,) = length_problems(30.0, 10, LengthBounds())
    assert too_long.to_json() == {"code": "too_long", "action": "excluded", "detail": "30.00 s > 20 s"}


def test_an_unknown_action_is_refused():
    with pytest.raises(ValueError, match="action must be one of"):
        Problem("clipping", "ignored")
