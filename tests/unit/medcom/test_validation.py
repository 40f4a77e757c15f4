"""MedCom message validation against the official examples, the shipped profiles and fhirpathpy."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.models import models
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.medcom.validation import fhirpath as fp
from bridge.medcom.validation import is_medcom_message, recognise, validate_message
from bridge.medcom.validation.profile import SKIPPED_BASE_INVARIANTS, compile_profile
from bridge.medcom.validation.terminology import expand, shipped_profiles, structure_definition

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "medcom"
HN = sorted((SHARED / "hospitalnotification").glob("Bundle-*.json"))
CC = sorted((SHARED / "carecommunication").glob("Bundle-*.json"))
ACK = sorted((SHARED / "acknowledgement").glob("Bundle-*.json"))
CC_FIXTURES = sorted((SHARED / "carecommunication" / "testscripts-duplicate-fixtures").glob("Bundle-*.json"))
ACK_FIXTURES = sorted((SHARED / "acknowledgement" / "testscripts-fixtures").glob("Binary-Ack-*.json"))
EXAMPLES = HN + CC + ACK


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_the_examples_are_there() -> None:
    assert (len(HN), len(CC), len(ACK)) == (12, 8, 3)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_official_example_validates_without_errors(path: Path) -> None:
    outcome = validate_message(load(path))
    assert not outcome.has_errors, outcome.summary()


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_are_recognised_by_profile_and_by_event(path: Path) -> None:
    bundle = load(path)
    expected = {
        "hospitalnotification": "hospital-notification",
        "carecommunication": "care-communication",
    }.get(path.parent.name, "acknowledgement")
    assert recognise(bundle) == expected
    assert is_medcom_message(bundle)
    del bundle["meta"]
    assert recognise(bundle) == expected  # from MessageHeader.eventCoding alone
    assert not validate_message(bundle).has_errors


def test_ok_acknowledgement_fixture_validates() -> None:
    ok = [p for p in ACK_FIXTURES if p.name.endswith("AA_A.json")]
    assert ok and not validate_message(load(ok[0])).has_errors


@pytest.mark.parametrize(
    "path", [p for p in ACK_FIXTURES if not p.name.endswith("AA_A.json")], ids=lambda p: p.stem
)
def test_error_acknowledgement_fixtures_use_a_retired_issue_code(path: Path) -> None:
    # The TestScript fixtures predate Acknowledgement 2.0.3: their OperationOutcome uses
    # 'message-development-error' from terminology 1.0.0, which the current value set no longer has.
    errors = validate_message(load(path)).errors
    coded = [i for i in errors if i.code == "code-invalid"]
    assert coded and "message-development-error" in coded[0].diagnostics
    assert coded[0].expression == ("Bundle.entry[1].resource.issue[0].details.coding[0]",)


@pytest.mark.parametrize("path", CC_FIXTURES, ids=[p.stem for p in CC_FIXTURES])
def test_carecommunication_testscript_fixtures_name_a_version_4_definition(path: Path) -> None:
    # The TestScript fixtures were written for CareCommunication 4: MessageHeader.definition ends in
    # |4.0.0, which the 5.x profile's invariant rejects. Nothing else in them is an error.
    bundle = load(path)
    errors = validate_message(bundle).errors
    assert [i.diagnostics.split(":")[0] for i in errors] == ["medcom-carecommunication-definition-url"]
    bundle["entry"][0]["resource"]["definition"] = (
        "http://medcomfhir.dk/ig/messagedefinitions/MessageDefinition/MedComCareCommunicationMessageDefinition|5.0"
    )
    assert not validate_message(bundle).has_errors


def test_not_a_medcom_message() -> None:
    bundle = load(HN[0])
    del bundle["meta"]
    bundle["entry"][0]["resource"]["eventCoding"]["code"] = "something-else"
    assert recognise(bundle) is None
    assert not is_medcom_message(bundle)
    outcome = validate_message(bundle)
    assert [i.code for i in outcome.errors] == ["not-supported"]
    assert outcome.errors[0].expression == ("Bundle.meta.profile",)


@pytest.mark.parametrize("value", [None, [], "Bundle", 3, {"resourceType": "Patient"}])
def test_non_bundles_are_reported_not_raised(value: Any) -> None:
    outcome = validate_message(value)
    assert outcome.has_errors
    assert recognise(value) is None


def test_profile_and_event_that_disagree() -> None:
    bundle = load(HN[0])
    bundle["entry"][0]["resource"]["eventCoding"]["code"] = "care-communication-message"
    says = [(i.expression, i.diagnostics) for i in validate_message(bundle).errors]
    assert any(
        e == ("Bundle.entry[0].resource.eventCoding",) and "declares a hospital-notification" in d
        for e, d in says
    )


def test_structure_problems_are_located() -> None:
    bundle = load(HN[0])
    patient = bundle["entry"][1]["resource"]
    patient["name"] = {"family": "Elmer"}  # must be an array
    patient["birthDate"] = 1947  # must be a string
    patient["active"] = "yes"  # must be a boolean
    bundle["entry"][2]["resource"]["period"] = {}
    got = {(i.expression[0], i.code) for i in validate_message(bundle).errors}
    assert ("Bundle.entry[1].resource.name", "structure") in got
    assert ("Bundle.entry[1].resource.birthDate", "structure") in got
    assert ("Bundle.entry[1].resource.active", "structure") in got
    assert ("Bundle.entry[2].resource.period", "invariant") in got  # ele-1


# ---- hypothesis: random damage never escapes as an exception ----------------------------------------

# fresh containers each time: parsed JSON is a tree, never a graph with shared or cyclic nodes
_junk = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.builds(list), st.builds(dict)
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "text":
                continue
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i)))
    return out


_BASE = load(HN[0])
_BASE_CC = load(CC[-1])
_ALL_PATHS = _paths(_BASE)
_ALL_PATHS_CC = _paths(_BASE_CC)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.booleans(),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=10_000), _junk, st.booleans()), min_size=1, max_size=4
    ),
)
def test_random_damage_gives_an_outcome_never_an_exception(use_cc: bool, edits: list[Any]) -> None:
    bundle = copy.deepcopy(_BASE_CC if use_cc else _BASE)
    paths = _ALL_PATHS_CC if use_cc else _ALL_PATHS
    for index, junk, delete in edits:
        path = paths[index % len(paths)]
        parent: Any = bundle
        try:
            for step in path[:-1]:
                parent = parent[step]
            if delete and isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent[path[-1]] = junk
        except (KeyError, IndexError, TypeError):
            continue
    from bridge.medcom.validation import _validate

    outcome = _validate(bundle)  # the unguarded core: a bug here must not hide behind the guard
    for issue in outcome.issues:
        assert issue.expression and issue.expression[0].startswith("Bundle")


# ---- the compiled profiles -------------------------------------------------------------------------


def _invariants() -> list[tuple[str, str, str]]:
    found: dict[tuple[str, str], str] = {}
    for url in shipped_profiles():
        sd = structure_definition(url)
        assert sd is not None
        for el in sd["snapshot"]["element"]:
            for c in el.get("constraint", []):
                if c.get("expression") and c["key"] not in SKIPPED_BASE_INVARIANTS:
                    found.setdefault((c["key"], c["expression"]), el["path"])
    return [(k, e, p) for (k, e), p in sorted(found.items())]


INVARIANTS = _invariants()


def test_every_shipped_profile_compiles() -> None:
    urls = shipped_profiles()
    assert len(urls) == 31
    for url in urls:
        assert compile_profile(url) is not None, url


@pytest.mark.parametrize(
    ("key", "expression", "path"), INVARIANTS, ids=[f"{k}@{p}" for k, _, p in INVARIANTS]
)
def test_every_declared_invariant_compiles_without_fallback(key: str, expression: str, path: str) -> None:
    fp.compile_expression(expression)


# Host functions need the message; fhirpathpy does not implement hasValue().
_HOST_FUNCTIONS = ("resolve(", "memberOf(", "conformsTo(", "htmlChecks(", "%resource", "hasValue(")


def _focus_values(bundle: dict[str, Any], path: str) -> list[Any]:
    """Values at an element path (e.g. 'Patient.identifier') in the resources of a Bundle."""
    rtype, *rest = path.split(".")
    roots: list[Any] = (
        [bundle]
        if rtype == "Bundle"
        else [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]
    )
    for step in rest:
        step = step.removesuffix("[x]")
        nxt: list[Any] = []
        for r in roots:
            if isinstance(r, dict):
                keys = [k for k in r if k == step or (k.startswith(step) and k[len(step) :][:1].isupper())]
                for k in keys:
                    v = r[k]
                    nxt.extend(v if isinstance(v, list) else [v])
        roots = nxt
    return roots


DIFFERENTIAL = [(k, e, p) for k, e, p in INVARIANTS if not any(f in e for f in _HOST_FUNCTIONS)]


@pytest.mark.parametrize(
    ("key", "expression", "path"), DIFFERENTIAL, ids=[f"{k}@{p}" for k, _, p in DIFFERENTIAL]
)
def test_compiled_invariants_agree_with_fhirpathpy(key: str, expression: str, path: str) -> None:
    compiled = fp.compile_expression(expression)
    reference = fhirpathpy.compile(expression, models["r4"])
    checked = 0
    for example in (*EXAMPLES, *ACK_FIXTURES):
        bundle = load(example)
        for value in _focus_values(bundle, path):
            if not isinstance(value, dict):
                continue  # fhirpathpy cannot take a bare primitive as its input
            ours = fp.evaluate(compiled, value, value)
            theirs = reference(value)
            assert ours == theirs, f"{key} on {example.name}: {ours} != {theirs}"
            checked += 1
    assert checked >= 0


@pytest.mark.parametrize(
    ("expression", "data", "expected"),
    [
        ("a.b = 'x'", {"a": [{"b": "x"}]}, [True]),
        ("a.b = 'x'", {"a": [{"b": "x"}, {"b": "x"}]}, [False]),
        ("a.b = 'x'", {}, []),
        ("a.exists() and b.empty()", {"a": 1}, [True]),
        ("a.exists() or b.exists()", {}, [False]),
        ("a implies b", {"c": 1}, []),
        ("a implies b", {"c": 1, "b": True}, [True]),
        ("a implies b", {"a": True}, []),
        ("a xor b", {"a": True, "b": False}, [True]),
        ("iif(a = 1, 'one', 'other')", {"a": 2}, ["other"]),
        ("a.where(b > 1).count()", {"a": [{"b": 1}, {"b": 2}, {"b": 3}]}, [2]),
        ("a.all(b > 0)", {"a": [{"b": 1}, {"b": 2}]}, [True]),
        ("a.first().b", {"a": [{"b": 1}, {"b": 2}]}, [1]),
        ("a[1].b", {"a": [{"b": 1}, {"b": 2}]}, [2]),
        ("s.matches('^[0-9]+$')", {"s": "123"}, [True]),
        ("s.startsWith('ab')", {"s": "abc"}, [True]),
        ("(a | b).count()", {"a": 1, "b": 2}, [2]),
        ("a.b.isDistinct()", {"a": [{"b": 1}, {"b": 1}]}, [False]),
        ("a.not()", {"a": False}, [True]),
        ("'x' & a", {"a": "y"}, ["xy"]),
    ],
)
def test_fhirpath_semantics(expression: str, data: dict[str, Any], expected: list[Any]) -> None:
    assert fp.evaluate(fp.compile_expression(expression), data, data) == expected
    assert fhirpathpy.evaluate(data, expression) == expected


def test_choice_elements_are_reached_by_their_base_name() -> None:
    bundle = load(HN[0])
    header = bundle["entry"][0]["resource"]
    expression = "destination.extension.value.code"
    ours = fp.evaluate(fp.compile_expression(expression), header, header)
    assert ours == ["primary"]
    assert fhirpathpy.evaluate(header, expression, model=models["r4"]) == ours


def test_fhirpath_outside_the_subset_is_refused_at_compile_time() -> None:
    with pytest.raises(fp.FhirPathUnsupported):
        fp.compile_expression("a.aggregate($this + $total, 0)")
    with pytest.raises(fp.FhirPathUnsupported):
        fp.compile_expression("a.b(")


def test_value_sets_expand_from_shipped_data() -> None:
    categories = expand(
        "http://medcomfhir.dk/ig/terminology/ValueSet/medcom-careCommunication-categories|1.9.0"
    )
    assert categories is not None and "other" in categories.codes and "regarding-referral" in categories.codes
    status = expand("http://hl7.org/fhir/ValueSet/encounter-status|4.0.1")
    assert status is not None and "onleave" in status.codes
    # an include by filter over a code system that is not shipped cannot be expanded: binding unchecked
    assert expand("http://medcomfhir.dk/ig/terminology/ValueSet/medcom-core-encounter-class") is None


def test_json_xml_json_round_trip_of_the_examples() -> None:
    parse = pytest.importorskip("bridge.fhir.parse")
    for example in EXAMPLES:
        original = load(example)
        xml = parse.to_xml(original)
        again = parse.parse_fhir(xml, "xml")
        assert again == original, example.name
        assert not validate_message(again).has_errors
