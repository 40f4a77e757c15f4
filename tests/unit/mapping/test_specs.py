"""The mapping engine and its spec language: loading, refusing broken specs, both directions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from sample import sample_record
from shared_data import MAPPINGS

from bridge.errors import MappingSpecError, UnmappableRecord
from bridge.mapping import paths
from bridge.mapping.conceptmap import parse_conceptmap
from bridge.mapping.engine import load_mapping_set
from bridge.mapping.spec import parse_spec_text
from bridge.translate import fhir_to_record, mapping_set, parse_record, record_to_fhir

RECORD = sample_record()


def bundle() -> dict[str, Any]:
    return record_to_fhir(parse_record(json.dumps(RECORD)))


def entry(b: dict[str, Any], rtype: str) -> tuple[int, dict[str, Any]]:
    return next(
        (i, e["resource"]) for i, e in enumerate(b["entry"]) if e["resource"]["resourceType"] == rtype
    )


# --- paths
@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("a..b", "empty step"),
        ("a[", "unbalanced"),
        ("a[x]", "bad selector"),
        ("a b", "bad field name"),
        ("", "non-empty"),
    ],
)
def test_bad_paths_are_refused(path: str, problem: str) -> None:
    with pytest.raises(paths.PathError, match=problem):
        paths.parse(path)


def test_selector_paths_read_alternatives_and_write_the_first() -> None:
    steps = paths.parse("identifier[system=https://www.gs1.org/gln|http://www.gs1.org/gln].value")
    node: dict[str, Any] = {}
    paths.compile_setter(steps)(node, "5790000121526")
    assert node == {"identifier": [{"system": "https://www.gs1.org/gln", "value": "5790000121526"}]}
    other = {
        "identifier": [{"system": "x", "value": "1"}, {"system": "http://www.gs1.org/gln", "value": "2"}]
    }
    assert paths.compile_getter(steps)(other) == "2"
    assert paths.compile_locator(steps)(other) == ("2", "identifier[1].value")


# --- broken specs fail at load, naming file, line and key
GOOD = """resource: Goal
maps:
  - name: goal
    source: "goals[]"
    rules:
      - {fhir: lifecycleStatus, source: lifecycle_status}
"""


def test_a_good_spec_parses() -> None:
    spec = parse_spec_text(GOOD, "goal.yaml")
    assert spec.data["maps"][0]["name"] == "goal"


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("resource: Goal\nmaps: [\n", "line", "not valid YAML"),
        (GOOD.replace("name: goal", "name: goal\n    colour: blue"), "line 4", "colour"),
        (GOOD.replace("resource: Goal", "resource: goal"), "line 1, key resource", "does not match"),
        (GOOD + "      - {fhir: status}\n", "line 7, key maps[0].rules[1]", "is not valid"),
        ("", "line 1", "empty"),
        (GOOD.replace("source: lifecycle_status", "source: lifecycle_status, source: x"), "line", "twice"),
    ],
)
def test_malformed_specs_name_file_line_and_problem(text: str, where: str, problem: str) -> None:
    with pytest.raises(MappingSpecError) as err:
        parse_spec_text(text, "goal.yaml")
    assert err.value.file == "goal.yaml"
    assert where in err.value.where
    assert problem in err.value.problem


def broken_copy(tmp_path: Path, file: str, old: str, new: str) -> Path:
    target = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, target)
    path = target / file
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return target


@pytest.mark.parametrize(
    ("file", "old", "new", "problem"),
    [
        ("condition.yaml", "transform: integer-code", "transform: no-such", "unknown transform 'no-such'"),
        ("condition.yaml", "conceptmap: fsiii-severity", "conceptmap: nope", "unknown ConceptMap id 'nope'"),
        ("goal.yaml", "ref: condition", "ref: conditions", "ref names no map"),
        (
            "condition.yaml",
            "transform: fsiii-display, direction: to-fhir",
            "transform: fsiii-display",
            "has no inverse",
        ),
        ("goal.yaml", "name: goal", "name: condition", "is also used in"),
        ("organization.yaml", 'match: {"type[0].coding[0].code": govt}', "", "needs a match"),
        ("goal.yaml", 'source: "goals[]"', 'source: "goals[]].x"', "unbalanced"),
        ("bundle.yaml", "namespace: organization.municipality.code", "", "namespace"),
    ],
)
def test_broken_mapping_sets_are_refused_at_load(
    tmp_path: Path, file: str, old: str, new: str, problem: str
) -> None:
    with pytest.raises(MappingSpecError, match=problem):
        load_mapping_set(broken_copy(tmp_path, file, old, new))


def test_an_ambiguous_conceptmap_is_refused() -> None:
    cmap = {
        "resourceType": "ConceptMap",
        "id": "x",
        "group": [
            {"element": [{"code": "a", "target": [{"code": "T"}]}, {"code": "b", "target": [{"code": "T"}]}]}
        ],
    }
    with pytest.raises(MappingSpecError, match="maps back to both"):
        parse_conceptmap(cmap, "x.json")


def test_a_changed_spec_changes_the_output_without_python(tmp_path: Path) -> None:
    changed = broken_copy(
        tmp_path, "goal.yaml", "{fhir: startDate, source: start}", "{fhir: statusDate, source: start}"
    )
    b = record_to_fhir(parse_record(json.dumps(RECORD)), load_mapping_set(changed))
    _, goal = entry(b, "Goal")
    assert goal["statusDate"] == "2024-04-01"
    assert "startDate" not in goal


# --- FHIR -> municipal: errors and what is left behind
def test_an_unresolved_reference_is_an_error_at_its_path() -> None:
    b = bundle()
    i, goal = entry(b, "Goal")
    goal["addresses"][0]["reference"] = "urn:uuid:00000000-0000-0000-0000-000000000000"
    with pytest.raises(UnmappableRecord) as err:
        fhir_to_record(b)
    assert [x.expression for x in err.value.outcome.issues] == [(f"Bundle.entry[{i}].resource.addresses[0]",)]


def test_an_unknown_severity_code_is_an_error_at_its_path() -> None:
    b = bundle()
    i, cond = entry(b, "Condition")
    cond["severity"]["coding"][0]["code"] = "B99"
    with pytest.raises(UnmappableRecord) as err:
        fhir_to_record(b)
    assert err.value.outcome.issues[0].expression == (f"Bundle.entry[{i}].resource.severity.coding[0].code",)
    assert "fsiii-severity" in err.value.outcome.issues[0].diagnostics


def test_the_uuid_severity_code_maps_back_like_the_legacy_code() -> None:
    b = bundle()
    _, cond = entry(b, "Condition")
    cond["severity"]["coding"][0]["code"] = "d984ad21-48fe-4619-845e-2aa0303048e7"  # "2" as UUID
    record, _ = fhir_to_record(b)
    assert record.conditions[0].severity == 2


def test_elements_the_record_cannot_hold_are_reported_not_dropped() -> None:
    b = bundle()
    i, cond = entry(b, "Condition")
    cond["note"] = [{"text": "Borgeren ønsker bad om morgenen"}]
    cond["code"]["coding"].append({"system": "http://snomed.info/sct", "code": "284546000"})
    j, patient = entry(b, "Patient")
    patient["gender"] = "male"
    b["entry"].append(
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Flag", "id": "f1", "status": "active"}}
    )
    record, outcome = fhir_to_record(b)
    where = sorted(x.expression[0] for x in outcome.issues)
    assert where == sorted(
        [
            f"Bundle.entry[{i}].resource.note",
            f"Bundle.entry[{i}].resource.code.coding[1]",
            f"Bundle.entry[{j}].resource.gender",
            f"Bundle.entry[{len(b['entry']) - 1}].resource",
        ]
    )
    assert all(x.severity == "warning" for x in outcome.issues)
    assert record.conditions[0].code == "J1.1"


def test_a_bundle_that_is_no_valid_record_names_each_problem() -> None:
    b = bundle()
    _, patient = entry(b, "Patient")
    patient["identifier"][0]["value"] = "3102501234"  # 31 February
    _, cond = entry(b, "Condition")
    del cond["severity"]  # a home care condition needs one
    with pytest.raises(UnmappableRecord) as err:
        fhir_to_record(b)
    messages = " | ".join(x.diagnostics for x in err.value.outcome.issues)
    assert "real date" in messages
    assert "requires a severity" in messages


def test_the_shipped_mappings_cover_every_field_of_the_record() -> None:
    ms = mapping_set()
    reads = {r.lstrip("$.") for m in ms.maps + ms.bundle_maps for r in m.reads}
    for needed in [
        "cpr",
        "name.family",
        "address.municipality_code",
        "deceased",
        "phone",
        "severity",
        "follow_up",
        "expected_severity",
        "local_code",
        "condition_ids[]",
        "systolic",
        "atc",
        "dose",
        "route",
        "author.role",
        "text",
        "contacts.relatives[]",
        "ydernummer",
        "gln",
        "sor",
        "record_id",
        "version",
    ]:
        assert any(r == needed or r.endswith("." + needed) for r in reads), needed


@pytest.mark.parametrize("junk", [["a"], {"x": 1}, 7, None])
def test_references_and_codes_of_the_wrong_type_are_errors_not_crashes(junk: object) -> None:
    b = bundle()
    i, goal = entry(b, "Goal")
    goal["addresses"][0]["reference"] = junk
    _, cond = entry(b, "Condition")
    cond["severity"]["coding"][0]["code"] = junk
    cond["clinicalStatus"] = junk
    with pytest.raises(UnmappableRecord) as err:
        fhir_to_record(b)
    assert f"Bundle.entry[{i}].resource.addresses[0]" in {x.expression[0] for x in err.value.outcome.issues}
