"""hypothesis against the JSON and XML parsers and the mapping engine, in process.

Random bytes, random JSON and XML documents, and the official MedCom examples and the project's municipal
records mutated at random places. Whatever comes in, the answer is a value or an ``InvalidInput`` (with an
Outcome) - never another exception; each example has a deadline (a hang fails it), and the largest bodies
the limits let through are parsed with their memory peak measured.
"""

from __future__ import annotations

import copy
import json
import tracemalloc
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fuzz_bed import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shared_data import EXAMPLES, SHARED

from bridge.errors import InvalidInput
from bridge.fhir.outcome import Outcome
from bridge.fhir.parse import parse_fhir, parse_json, parse_xml, to_xml
from bridge.medcom.validation import validate_message
from bridge.translate import fhir_to_municipal, municipal_to_fhir
from bridge.validation import validate_parsed

MEDCOM = SHARED / "medcom"
#: The body limit of the memory cases (the acceptance configuration's; the peak grows linearly with it).
LIMIT = 1_048_576
MEDCOM_EXAMPLES = sorted(
    p
    for kind in ("hospitalnotification", "carecommunication", "acknowledgement")
    for p in (MEDCOM / kind).glob("Bundle-*.json")
)
MUNICIPAL = sorted((EXAMPLES / "records").glob("*.json")) + sorted(
    (Path(__file__).resolve().parents[1] / "fixtures").glob("*.json")
)


def _fuzz_settings(deadline_seconds: float) -> settings:
    return settings(
        max_examples=examples(),
        deadline=timedelta(seconds=deadline_seconds),  # a hang or a runaway parse fails the example
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_bytes())
    assert isinstance(data, dict)
    return data


# ------------------------------------------------------------------------------------------- strategies
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what orjson writes; larger ones come as bytes
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", "0101011234", "urn:uuid:x", "2020-13-45", "Bundle", "message", "<div/>", "\u0000"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=40,
)


def _paths(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document."""
    found = [here]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*here, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*here, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, documents: list[dict[str, Any]]) -> dict[str, Any]:
    """A real document with one to four random changes: a value replaced by any JSON, a key dropped, a
    list emptied or repeated, a type changed."""
    document = copy.deepcopy(draw(st.sampled_from(documents)))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(document) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = document
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        action = draw(st.sampled_from(["replace", "drop", "empty", "repeat", "stringify"]))
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "drop":
            del parent[last]
        elif action == "empty":
            parent[last] = [] if isinstance(parent[last], list) else {}
        elif action == "repeat":
            parent[last] = [parent[last]] * draw(st.integers(2, 3))
        else:
            parent[last] = str(parent[last])
    return document


MEDCOM_DOCS = [_load(p) for p in MEDCOM_EXAMPLES]
MUNICIPAL_DOCS = [_load(p) for p in MUNICIPAL]


def _xml_of(documents: list[dict[str, Any]]) -> list[bytes]:
    return [to_xml(d) for d in documents]


MEDCOM_XML = _xml_of(MEDCOM_DOCS)


@st.composite
def damaged_bytes(draw: st.DrawFn, originals: list[bytes]) -> bytes:
    """A real body cut, spliced with random bytes, or prefixed with a DOCTYPE."""
    body = draw(st.sampled_from(originals))
    cut = draw(st.integers(0, len(body)))
    action = draw(st.sampled_from(["truncate", "splice", "doctype", "duplicate"]))
    if action == "truncate":
        return body[:cut]
    if action == "splice":
        return body[:cut] + draw(st.binary(max_size=30)) + body[cut:]
    if action == "duplicate":
        return body[:cut] + body[cut // 2 :]
    entity = draw(st.sampled_from(['<!ENTITY e "x">', '<!ENTITY e SYSTEM "file:///etc/hostname">', ""]))
    return b"<?xml version='1.0'?><!DOCTYPE Bundle [" + entity.encode() + b"]>" + body.split(b"?>", 1)[-1]


FHIR_ELEMENTS = [
    "Bundle",
    "entry",
    "resource",
    "MessageHeader",
    "id",
    "meta",
    "profile",
    "type",
    "value",
    "extension",
    "url",
    "valueString",
    "text",
    "div",
    "identifier",
    "system",
    "Patient",
    "name",
]


@st.composite
def random_xml(draw: st.DrawFn) -> bytes:
    """A well-formed XML tree of FHIR-ish and random element names, attributes and text."""
    names = st.one_of(
        st.sampled_from(FHIR_ELEMENTS), st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,8}", fullmatch=True)
    )

    def element(depth: int) -> str:
        name = draw(names)
        attrs = "".join(
            f' {k}="{v}"'
            for k, v in draw(
                st.dictionaries(
                    st.sampled_from(["value", "url", "id", "xmlns", "foo"]),
                    st.text(alphabet="abc 0123<>&'", max_size=8).map(
                        lambda t: t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                    ),
                    max_size=2,
                )
            ).items()
        )
        children = "".join(element(depth + 1) for _ in range(draw(st.integers(0, 3)))) if depth < 6 else ""
        return f"<{name}{attrs}>{children}</{name}>"

    root = draw(st.sampled_from(["Bundle", "Patient", "Parameters", "x"]))
    return f'<{root} xmlns="http://hl7.org/fhir">{element(1)}</{root}>'.encode()


# ------------------------------------------------------------------------------------------- properties
def _only_invalid_input(call: Any, *args: Any) -> Any:
    """Run ``call``: a result, or an InvalidInput carrying an Outcome with located issues."""
    try:
        return call(*args)
    except InvalidInput as exc:
        assert isinstance(exc.outcome, Outcome) and exc.outcome.issues, exc
        assert all(i.severity in ("error", "fatal") for i in exc.outcome.issues if i.severity != "warning")
        return None


@_fuzz_settings(2)
@given(
    body=st.one_of(
        st.binary(max_size=400),
        json_values.map(orjson.dumps),
        damaged_bytes([orjson.dumps(d) for d in MEDCOM_DOCS[:4]]),
    )
)
def test_the_json_parser_returns_a_value_or_invalid_input(body: bytes) -> None:
    _only_invalid_input(parse_json, body)
    _only_invalid_input(parse_fhir, body, "json")


@_fuzz_settings(2)
@given(body=st.one_of(st.binary(max_size=400), random_xml(), damaged_bytes(MEDCOM_XML[:4])))
def test_the_xml_parser_returns_a_resource_or_invalid_input(body: bytes) -> None:
    result = _only_invalid_input(parse_xml, body)
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        assert result is None  # a DOCTYPE is never parsed, whatever it declares
    if result is not None:
        assert isinstance(result, dict) and result["resourceType"]
        _only_invalid_input(to_xml, result)  # what was read can be written back or is refused cleanly


@_fuzz_settings(5)
@given(document=mutated(MEDCOM_DOCS))
def test_validation_of_a_damaged_medcom_message_is_an_outcome(document: dict[str, Any]) -> None:
    outcome = validate_message(document)
    assert isinstance(outcome, Outcome)
    assert isinstance(validate_parsed(document), Outcome)


@_fuzz_settings(5)
@given(document=st.one_of(mutated(MUNICIPAL_DOCS), json_values))
def test_municipal_to_fhir_on_damaged_records(document: Any) -> None:
    result = _only_invalid_input(municipal_to_fhir, orjson.dumps(document))
    if result is not None:
        assert result["resourceType"] == "Bundle"


@_fuzz_settings(5)
@given(document=mutated(MEDCOM_DOCS))
def test_fhir_to_municipal_on_damaged_medcom_messages(document: dict[str, Any]) -> None:
    result = _only_invalid_input(fhir_to_municipal, document)
    if result is not None:
        _model, outcome = result
        assert isinstance(outcome, Outcome)


RECORD_BUNDLES = [municipal_to_fhir(doc) for doc in MUNICIPAL_DOCS if isinstance(doc, dict)]


@_fuzz_settings(5)
@given(document=mutated(RECORD_BUNDLES))
def test_fhir_to_municipal_on_damaged_care_record_bundles(document: dict[str, Any]) -> None:
    result = _only_invalid_input(fhir_to_municipal, document)
    if result is not None:
        _model, outcome = result
        assert isinstance(outcome, Outcome)


# ------------------------------------------------------------------------------------------- big bodies
def _peak(call: Any, *args: Any) -> int:
    tracemalloc.start()
    try:
        _only_invalid_input(call, *args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("name", "body"),
    [
        # many small objects at the size limit: the Python objects dominate
        ("wide JSON", b"[" + b",".join([b'{"a":1}'] * ((LIMIT - 2) // 8)) + b"]"),
        ("one long JSON string", b'"' + b"x" * (LIMIT - 2) + b'"'),
        ("one byte over the limit", b" " * (LIMIT + 1)),
    ],
)
def test_the_largest_json_bodies_stay_within_bounded_memory(name: str, body: bytes) -> None:
    peak = _peak(lambda b: parse_json(b, max_bytes=LIMIT), body)
    # Parsed, 1 MB of tiny objects costs ~36x its bytes in Python objects (measured); nothing beyond.
    assert peak < 40 * len(body), (name, peak)


def test_a_wide_xml_body_at_the_limit_is_refused_or_read_within_bounded_memory() -> None:
    item = b'<extension url="u"><valueString value="v"/></extension>'
    body = b'<Patient xmlns="http://hl7.org/fhir">' + item * ((LIMIT - 100) // len(item)) + b"</Patient>"
    assert len(body) <= LIMIT
    peak = _peak(lambda b: parse_xml(b, max_bytes=LIMIT), body)
    assert peak < 40 * len(body), peak
