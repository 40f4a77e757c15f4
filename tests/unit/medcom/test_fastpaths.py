"""The validator's fast paths answer exactly what the general code behind them answers.

Differential: for every invariant expression with a fast path, on generated JSON (well-formed and
not) and on every resource, entry and Bundle of the official examples, the expression behind its
fast path gives the same collection, or raises the same error, as the general evaluator alone. The
structure walk's quick test of a primitive value is True exactly when ``check_primitive`` reports
nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.medcom.validation import fhirpath as fp
from bridge.medcom.validation import structure
from bridge.medcom.validation.fastpaths import FAST_PATHS, with_fast_path
from bridge.medcom.validation.terminology import shipped_profiles, structure_definition

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "medcom"
EXPRESSIONS = sorted(FAST_PATHS)
_IDS = [f"{FAST_PATHS[e].__name__}-{i}" for i, e in enumerate(EXPRESSIONS)]

_KEYS = (
    "contained",
    "text",
    "div",
    "entry",
    "resource",
    "request",
    "response",
    "fullUrl",
    "type",
    "meta",
    "versionId",
    "lastUpdated",
    "security",
    "identifier",
    "name",
    "system",
    "resourceType",
    "id",
    "reference",
    "total",
    "search",
    "timestamp",
)
_LEAVES = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        2,
        1.5,
        "",
        "x",
        "1",
        "history",
        "batch",
        "transaction",
        "batch-response",
        "transaction-response",
        "message",
        "document",
        "searchset",
        "Patient",
        "Provenance",
        "Organization",
        "urn:oid:1.2.208.176.1.1",
        "https://kombit.dk/sts/organisation",
        "urn:oid:2.16.840.1.113883.2.24.1.1",
        "urn:uuid:1",
        "Patient/1/_history/2",
        "Patient/1_history",
        '<div xmlns="http://www.w3.org/1999/xhtml">x</div>',
    ]
)
_JSON = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=5)
    ),
    max_leaves=20,
)
_META = st.one_of(_JSON, st.fixed_dictionaries({}, optional={"versionId": _LEAVES, "security": _JSON}))
_RESOURCE = st.fixed_dictionaries(
    {},
    optional={
        "resourceType": st.sampled_from(["Patient", "Organization", "Encounter", 3]),
        "id": _LEAVES,
        "meta": _META,
        "text": st.one_of(_JSON, st.fixed_dictionaries({}, optional={"div": _LEAVES})),
        "contained": _JSON,
        "identifier": st.one_of(
            _JSON, st.lists(st.one_of(_JSON, st.fixed_dictionaries({}, optional={"system": _LEAVES})))
        ),
        "name": _JSON,
    },
)
# Mostly the shapes messages have (where the fast paths answer), sometimes anything.
_SYSTEMS = st.sampled_from(
    ["urn:oid:1.2.208.176.1.1", "https://kombit.dk/sts/organisation", "urn:oid:1.2.208.176.1.2", "x"]
)
_CONTAINED = st.lists(
    st.fixed_dictionaries(
        {"resourceType": st.just("Patient")},
        optional={
            "id": st.just("p1"),
            "contained": st.lists(st.builds(dict), max_size=1),
            "meta": st.fixed_dictionaries(
                {},
                optional={
                    "versionId": st.just("1"),
                    "lastUpdated": st.just("2024-01-01T00:00:00Z"),
                    "security": st.lists(st.builds(dict), max_size=1),
                },
            ),
        },
    ),
    max_size=2,
)
_GOOD_RESOURCE = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(["Patient", "Organization", "Provenance"])},
    optional={
        "meta": st.fixed_dictionaries({}, optional={"versionId": st.sampled_from(["1", "2"])}),
        "text": st.fixed_dictionaries({}, optional={"div": st.just("<div>x</div>")}),
        "contained": _CONTAINED,
        "identifier": st.lists(
            st.one_of(st.fixed_dictionaries({"system": _SYSTEMS}), st.builds(dict)), max_size=4
        ),
        "name": st.lists(st.builds(dict), max_size=1),
    },
)
_ORGANIZATION = st.fixed_dictionaries(
    {
        "resourceType": st.just("Organization"),
        "identifier": st.lists(st.fixed_dictionaries({"system": _SYSTEMS}), min_size=1, max_size=4),
    },
    optional={"name": st.just("x")},
)
_GOOD_ENTRY = st.fixed_dictionaries(
    {"resource": _GOOD_RESOURCE},
    optional={
        "fullUrl": st.sampled_from(["urn:uuid:1", "urn:uuid:2", "Patient/1/_history/2", "Patient/1_history"]),
        "request": st.builds(dict),
        "response": st.builds(dict),
        "search": st.builds(dict),
    },
)
_ENTRY = st.one_of(
    _JSON,
    st.fixed_dictionaries(
        {},
        optional={
            "fullUrl": _LEAVES,
            "resource": st.one_of(_RESOURCE, _LEAVES),
            "request": st.one_of(_JSON, st.builds(dict)),
            "response": st.one_of(_JSON, st.builds(dict)),
        },
    ),
)
_BUNDLE = st.fixed_dictionaries(
    {"resourceType": st.just("Bundle")},
    optional={
        "type": st.one_of(_LEAVES, st.sampled_from(["document", "message", "searchset", "history"])),
        "total": st.one_of(st.just(1), _LEAVES),
        "timestamp": _LEAVES,
        "identifier": _JSON,
        "entry": st.one_of(
            st.lists(_GOOD_ENTRY, min_size=1, max_size=5), st.lists(_ENTRY, max_size=5), _JSON
        ),
    },
)
_FOCUS = {
    "bundle": _BUNDLE,
    "entry": st.one_of(_GOOD_ENTRY, _ENTRY),
    "resource": st.one_of(_GOOD_RESOURCE, _RESOURCE),
    "organization": _ORGANIZATION,
    "any": _JSON,
}


def _outcome(fn: fp.Fn, focus: Any, resource: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(fp.Env(resource=resource, context=focus), [focus])
    except fp.FhirPathError as exc:
        return "error", str(exc)


def _both(expression: str) -> tuple[fp.Fn, fp.Fn]:
    general = fp.compile_expression(expression)
    return with_fast_path(expression, general), general


def test_every_fast_path_expression_is_declared_by_a_shipped_profile() -> None:
    declared = set()
    for url in shipped_profiles():
        sd = structure_definition(url)
        assert sd is not None
        for el in sd["snapshot"]["element"]:
            declared.update(c.get("expression") for c in el.get("constraint", []))
    assert set(FAST_PATHS) <= declared


@pytest.mark.parametrize("kind", sorted(_FOCUS))
@pytest.mark.parametrize("expression", EXPRESSIONS, ids=_IDS)
def test_fast_path_equals_the_general_evaluator(expression: str, kind: str) -> None:
    fast, general = _both(expression)

    @settings(
        max_examples=150 if kind == "bundle" else 60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(focus=_FOCUS[kind], other=_BUNDLE, same=st.booleans())
    def check(focus: Any, other: Any, same: bool) -> None:
        resource = focus if same else other  # %resource: the focus itself, or a Bundle around it
        assert _outcome(fast, focus, resource) == _outcome(general, focus, resource)

    check()


def _nodes(bundle: dict[str, Any]) -> list[Any]:
    """The Bundle, its entries and their resources."""
    out: list[Any] = [bundle]
    for entry in bundle.get("entry", []):
        out.extend([entry, entry.get("resource")])
    return out


@pytest.mark.parametrize("expression", EXPRESSIONS, ids=_IDS)
def test_fast_paths_answer_on_the_official_examples(expression: str) -> None:
    fast, general = _both(expression)
    answered = 0
    for path in sorted(SHARED.rglob("Bundle-*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        for node in _nodes(bundle):
            assert _outcome(fast, node, bundle) == _outcome(general, node, bundle), path.name
            answered += FAST_PATHS[expression](fp.Env(resource=bundle, context=node), [node]) is not None
    assert answered > 0


# ---- the structure walk's quick primitive test -------------------------------------------------------

_PRIMITIVE_TYPES = sorted(
    {
        "boolean",
        "integer",
        "unsignedInt",
        "positiveInt",
        "decimal",
        "integer64",
        *structure._PRIMITIVE_RE,
    }
)
_PRIMITIVE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**33), max_value=2**33),
    st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1]),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.text(alphabet="0123456789-:T.+Z ", max_size=30),
    st.text(alphabet="AZaz09+/= \t\n\x0b\x0c\r\x1c\x1f\x85\xa0\u2003\u00e9", max_size=20),
    st.text(alphabet=" \t\n\x1c\xa0\u2003<div>x", max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "a b",
            "\u00a0",
            "x\n",
            "2024-02-30",
            "2024-05-01T10:00:00+02:00",
            "2024-05-01T10:00:00",
            "10:00:00",
            "urn:uuid:0c3b3c3e-1f0a-4b8e-9a4e-0d2b5c7e8f90",
            "urn:oid:1.2.208.176.1.2",
            "<div>x</div>",
            " <div>x</div>",
            "\n\t<div",
            "\u00a0<div>",
            "\x1c<div",
            "<di",
            " x<div",
            "QUJD\nQUJD\x1c",
            "QUJD\u2003",
            "QUJ D=",
            "QU\u00e9",
            "QUJD",
        ]
    ),
    st.builds(list),
    st.builds(dict),
)


@pytest.mark.parametrize("ftype", _PRIMITIVE_TYPES)
@settings(max_examples=150, deadline=None)
@given(value=_PRIMITIVE_VALUES)
def test_quick_primitive_test_agrees_with_check_primitive(ftype: str, value: Any) -> None:
    issues: list[Any] = []
    structure.check_primitive(ftype, value, "X", issues)
    assert structure.primitive_test(ftype)(value) == (not issues)


# ---- slices found by an index -----------------------------------------------------------------------


def _compiled_nodes() -> list[Any]:
    from bridge.medcom.validation.profile import compile_profile

    found: dict[int, Any] = {}
    todo = [compile_profile(url) for url in shipped_profiles()]
    while todo:
        node = todo.pop()
        if node is None or id(node) in found:
            continue
        found[id(node)] = node
        todo.extend(node.children.values())
        todo.extend(node.slices)
    return list(found.values())


def test_slice_index_finds_the_slice_the_matchers_find() -> None:
    from bridge.medcom.validation.profile import AnyOf, _expected, _slice_of

    indexed = [n for n in _compiled_nodes() if n.slice_index is not None]
    assert len(indexed) > 10
    expected = [_expected(s, n.slice_path) for n in indexed for s in n.slices]
    strings = sorted(
        {v for e in expected for v in (e.values if isinstance(e, AnyOf) else (e,)) if isinstance(v, str)}
        | {"", "x", "http://example.org"}
    )
    for node in indexed:
        values: list[Any] = [None, "x", 3, [], [{}]]
        for v in [*strings, None, 3, ["x"], {"a": "b"}]:
            values.extend([{node.slice_path: v}, {node.slice_path: v, "other": 1}])
        values.append({"other": 1})
        for value in values:
            assert _slice_of(node, node.key, value) == _by_matchers(node, value), (node.id, value)


def _by_matchers(node: Any, value: Any) -> int:
    for i, s in enumerate(node.slices):
        if s.matcher is not None and s.matcher(node.key, value):
            return i
    return -1
