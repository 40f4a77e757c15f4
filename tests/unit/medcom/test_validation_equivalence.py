"""The validator gives exactly the outcomes it gave before it was made faster.

``tests/fixtures/medcom/validation-outcomes.json`` holds, for a deterministic corpus of the official
MedCom examples and about 1,700 damaged copies of them (``tests/support/validation_corpus.py``), every
issue the validator reported before its performance work: severity, code, diagnostics, location and
details, in order. Any change of any of them fails here, with the message's name in the corpus.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import validation_corpus as vc

from bridge.medcom.validation import validate_message

EXAMPLES = vc.examples()


@cache
def _recorded() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(vc.FIXTURE.read_text(encoding="utf-8"))
    return data


@cache
def _pool() -> dict[str, list[dict[str, Any]]]:
    return vc.resources()


def test_the_corpus_covers_every_example_and_only_the_recorded_messages() -> None:
    assert len(EXAMPLES) >= 40
    names = [name for example in EXAMPLES for name, _ in vc.messages_of(example, _pool())]
    assert names == list(_recorded())


@pytest.mark.parametrize("example", EXAMPLES, ids=[vc.name_of(p) for p in EXAMPLES])
def test_outcomes_equal_the_recorded_ones(example: Path) -> None:
    recorded = _recorded()
    differ = []
    for name, message in vc.messages_of(example, _pool()):
        got = vc.outcome_record(validate_message(message))
        if got != recorded[name]:
            differ.append((name, got, recorded[name]))
    assert not differ, "\n".join(f"{n}:\n  now    {g}\n  before {r}" for n, g, r in differ[:3])
