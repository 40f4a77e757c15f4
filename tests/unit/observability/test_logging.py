"""The PHI guard of the structured logs: what reaches the stream, through structlog and the standard
``logging`` module alike, as JSON lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.observability.logging import CPR_PATTERN, REFUSED, configure_logging, get_logger, scrub

CPR = "2509479989"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    out = io.StringIO()
    configure_logging("DEBUG", out)
    yield out
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_clean_lines_pass_unchanged(stream: io.StringIO) -> None:
    logging.getLogger("bridge.delivery").info("delivery %s to %s delivered (HTTP %d)", "d-1", "kbh", 200)
    get_logger("bridge.test").info("accepted", message_id="0533e773-c9e6-4cf5-b42d-f3ee07a9c624", n=3)
    first, second = lines(stream)
    assert first["event"] == "delivery d-1 to kbh delivered (HTTP 200)"
    assert first["level"] == "info" and first["logger"] == "bridge.delivery" and "timestamp" in first
    assert second["message_id"] == "0533e773-c9e6-4cf5-b42d-f3ee07a9c624" and second["n"] == 3
    assert "phi_refused" not in first and "phi_refused" not in second


def test_a_cpr_number_in_any_value_is_refused(stream: io.StringIO) -> None:
    logging.getLogger("lib").warning("cannot route citizen %s", CPR)
    logging.getLogger("lib").warning("cannot route citizen 250947-9989.")
    get_logger("bridge.test").info("odd", detail={"ids": ["x", f"cpr:{CPR}"]}, count=int(CPR))
    text = stream.getvalue()
    assert CPR not in text and "250947-9989" not in text
    for line in lines(stream):
        assert line["phi_refused"] is True
    assert lines(stream)[2]["detail"] == {"ids": ["x", REFUSED]}


def test_fields_named_like_personal_data_are_refused_whatever_they_hold(stream: io.StringIO) -> None:
    get_logger("bridge.test").info("record", name="Bruno Elmer", address={"line": "Vej 1"}, body=b"{}")
    [line] = lines(stream)
    assert (line["name"], line["address"], line["body"]) == (REFUSED, REFUSED, REFUSED)
    assert "Elmer" not in stream.getvalue() and "Vej 1" not in stream.getvalue()


def test_exceptions_keep_their_class_and_places_never_their_text(stream: io.StringIO) -> None:
    try:
        raise ValueError(f"bad patient Bruno Elmer {CPR}")
    except ValueError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    [line] = lines(stream)
    assert line["exc_type"] == "ValueError"
    assert any("test_exceptions_keep_their_class" in frame for frame in line["exception"])
    assert "Elmer" not in stream.getvalue() and CPR not in stream.getvalue()


@pytest.mark.parametrize(
    ("text", "shaped"),
    [
        (CPR, True),
        ("cpr=250947-9989.", True),
        ("2026-11-26T20:49:17.123456Z", False),  # timestamps
        ("1764190157", False),  # epoch seconds
        ("399841000016000", False),  # SOR code
        ("5790000209354", False),  # GLN
        ("ab250947-9989-4abc-8def-0123456789ab", False),  # a UUID that happens to hold the shape
    ],
)
def test_what_looks_like_a_cpr_number(text: str, shaped: bool) -> None:
    assert bool(CPR_PATTERN.search(text)) is shaped


def test_scrub_on_a_plain_mapping() -> None:
    assert scrub({"event": f"x {CPR}", "destination": "kbh"}) == {
        "event": REFUSED,
        "destination": "kbh",
        "phi_refused": True,
    }
