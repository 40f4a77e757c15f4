"""Structural validation: official examples pass; each kind of mistake is one issue at its FHIRPath."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.fhir.validate import fhirpath, validate_resource

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
INSTANCES = sorted(
    p
    for p in (SHARED / "medcom").rglob("*.json")
    if "profiles" not in p.parts and "terminology" not in p.parts
) + sorted((SHARED / "dk-core").glob("*.json"))
CARE_COMMUNICATION = (
    SHARED / "medcom" / "carecommunication" / "Bundle-0d5b3c18-fab6-4d93-9d88-c9c8abf1f18c.json"
)


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _found(resource: Any) -> list[tuple[str, tuple[str, ...]]]:
    return [(i.code, i.expression) for i in validate_resource(resource)]


@pytest.mark.parametrize("path", INSTANCES, ids=lambda p: p.name)
def test_official_examples_are_valid(path: Path) -> None:
    outcome = validate_resource(_load(path))
    assert outcome.issues == []
    assert outcome.to_fhir()["issue"][0]["severity"] == "information"


def test_fhirpath() -> None:
    loc = ("entry", 2, "resource", "code", "coding", 0)
    assert fhirpath("Bundle", loc) == "Bundle.entry[2].resource.code.coding[0]"
    assert fhirpath("Patient", ("_birthDate", "extension", 0)) == "Patient.birthDate.extension[0]"


def test_wrong_value_inside_a_bundle_entry_is_located() -> None:
    bundle = _load(CARE_COMMUNICATION)
    bundle["entry"][2]["resource"]["category"][0]["coding"][0]["system"] = 42
    bundle["entry"][1]["resource"]["birthDate"] = "1999-13-01"
    issues = validate_resource(bundle).issues
    assert [(i.code, i.expression) for i in issues] == [
        ("value", ("Bundle.entry[1].resource.birthDate",)),
        ("structure", ("Bundle.entry[2].resource.category[0].coding[0].system",)),
    ]
    assert all(i.diagnostics and i.severity == "error" for i in issues)


def test_unknown_element_required_element_and_json_types() -> None:
    observation = {
        "resourceType": "Observation",
        "code": {"text": "vægt"},
        "valueQuantity": {"value": "71.2"},
        "colour": "blue",
    }
    found = _found(observation)
    assert ("structure", ("Observation.valueQuantity.value",)) in found
    assert ("structure", ("Observation.colour",)) in found
    assert ("required", ("Observation.status",)) in found or len(found) == 2
    complete = {"resourceType": "Observation", "status": "final", "code": {"text": "vægt"}}
    assert _found({**complete, "valueBoolean": "true"}) == [("structure", ("Observation.valueBoolean",))]
    assert _found({**complete, "subject": "Patient/1"}) == [("structure", ("Observation.subject",))]
    assert _found({**complete, "code": {}}) == [("structure", ("Observation.code",))]
    assert _found({**complete, "note": []}) == [("structure", ("Observation.note",))]
    assert _found({**complete, "issued": ""})[0] == ("value", ("Observation.issued",))
    missing_status = {"resourceType": "Observation", "code": {"text": "x"}}
    assert _found(missing_status) == [("required", ("Observation.status",))]


def test_unknown_resource_types_are_one_issue_each() -> None:
    assert _found({"resourceType": "Nope"}) == [("not-supported", ("Nope",))]
    assert _found({"resourceType": "DomainResource"}) == [("not-supported", ("DomainResource",))]
    assert _found({"id": "x"}) == [("required", ("Resource",))]
    assert _found([]) == [("structure", ("Resource",))]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Nope"}}],
    }
    assert _found(bundle) == [("not-supported", ("Bundle.entry[0].resource",))]


def test_contained_and_parameters_resources_are_validated_in_place() -> None:
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "#p"},
        "contained": [{"resourceType": "Patient", "id": "p", "gender": 5}],
    }
    assert _found(condition) == [("structure", ("Condition.contained[0].gender",))]
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "a", "part": [{"name": "b", "resource": {"resourceType": "Patient", "x": 1}}]}
        ],
    }
    assert _found(parameters) == [("structure", ("Parameters.parameter[0].part[0].resource.x",))]


def test_bundle_full_urls_must_be_unique() -> None:
    bundle = _load(CARE_COMMUNICATION)
    bundle["entry"][3]["fullUrl"] = bundle["entry"][1]["fullUrl"]
    assert ("duplicate", ("Bundle.entry[3].fullUrl",)) in _found(bundle)
    history = copy.deepcopy(bundle)
    history["type"] = "history"
    assert ("duplicate", ("Bundle.entry[3].fullUrl",)) not in _found(history)


def test_urn_uuid_references_must_resolve_inside_the_bundle() -> None:
    bundle = _load(CARE_COMMUNICATION)
    subject = bundle["entry"][2]["resource"]["subject"]
    subject["reference"] = "urn:uuid:00000000-0000-4000-8000-000000000000"
    found = _found(bundle)
    assert found == [("not-found", ("Bundle.entry[2].resource.subject.reference",))]
    subject["reference"] = "Patient/123"  # a relative reference is not the Bundle's business here
    assert _found(bundle) == []
