"""The KL Gateway check on the KL example citizens, written out by hand from KL's FSH examples
(JensHansenNew.fsh "DeliveryReport-JensHansen-new-1", PeterOlsenNew.fsh "DeliveryReport-PeterOlsen-1",
RuleSets.fsh for the fullUrls), and on mutations of them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from bridge.fhir.klgateway import PROFILES, check_bundle, check_resource
from bridge.fhir.validate import validate_resource

FSIII = "urn:oid:1.2.208.176.2.21"
KL = "http://fhir.kl.dk/term/CodeSystem/CareSocialCodes"
BASE = "https://test.fhir.dk"
JENS = "0533e773-c9e6-4cf5-b42d-f3ee07a9c624"
PETER = "17911a9f-69ff-4041-8dd0-6fc96864d04b"
SEVERITY = {
    "0": "9c5cfb57-a498-40e5-98a7-792bf5fb205b",
    "1": "fcc16cb1-41f0-4832-b834-110fba0aaabe",
    "2": "d984ad21-48fe-4619-845e-2aa0303048e7",
    "3": "1ceef776-0cfa-4acd-b222-c5bb2424e0c1",
}


def _cc(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code} | ({"display": display} if display else {})
    return {"coding": [coding]}


def citizen(pid: str, cpr: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"use": "official", "system": "urn:oid:1.2.208.176.1.2", "value": cpr}],
        "deceasedBoolean": False,
        "managingOrganization": {
            "identifier": {"use": "official", "system": "urn:oid:1.2.208.176.1.1", "value": "123456789012345"}
        },
    }


def condition(
    cid: str,
    patient: str,
    code: str,
    display: str,
    severity: str | None,
    recorded: str,
    status: str = "active",
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": _cc("http://terminology.hl7.org/CodeSystem/condition-clinical", status),
        "category": [_cc("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item")],
        "code": _cc(FSIII, code, display),
        "subject": {"reference": f"Patient/{patient}"},
        "recordedDate": recorded,
    }
    if severity is not None:
        out["severity"] = _cc(FSIII, SEVERITY[severity], severity)
    return out


def goal(gid: str, patient: str, addresses: str, expected: str, start: str) -> dict[str, Any]:
    return {
        "resourceType": "Goal",
        "id": gid,
        "lifecycleStatus": "planned",
        "category": [_cc(KL, "ca552020-6ed1-4cdc-b0d4-32697f1f27ad", "FSIII tilstandsmål")],
        "description": _cc(
            FSIII,
            "e182c5dc-9f91-474a-92e8-f62be3d498f4",
            "Tilstand forsvinder, mindskes eller forbliver uændret",
        ),
        "subject": {"reference": f"Patient/{patient}"},
        "startDate": start,
        "target": [
            {
                "measure": _cc(KL, "66959f77-6e2a-4574-8423-3ff097f8b9fa", "funktionsevneniveau"),
                "detailCodeableConcept": _cc(FSIII, SEVERITY[expected], expected),
            }
        ],
        "addresses": [{"reference": f"Condition/{addresses}"}],
    }


def planned(
    pid: str, patient: str, code: str, display: str, start: str, reasons: list[str]
) -> dict[str, Any]:
    return {
        "resourceType": "CarePlan",
        "id": pid,
        "status": "active",
        "intent": "plan",
        "subject": {"reference": f"Patient/{patient}"},
        "period": {"start": start},
        "activity": [
            {
                "detail": {
                    "code": _cc(FSIII, code, display),
                    "status": "in-progress",
                    "reasonReference": [{"reference": f"Condition/{r}"} for r in reasons],
                }
            }
        ],
    }


def completed(pid: str, patient: str, code: str, display: str, performed: str, reason: str) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": pid,
        "status": "completed",
        "code": _cc(FSIII, code, display),
        "subject": {"reference": f"Patient/{patient}"},
        "performedDateTime": performed,
        "reasonReference": [{"reference": f"Condition/{reason}"}],
    }


def follow_up(eid: str, patient: str, start: str, reasons: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "planned",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"},
        "type": [_cc(KL, "9f03dfbb-7a97-45a5-94db-d4c3501714a9", "opfølgning")],
        "subject": {"reference": f"Patient/{patient}"},
        "period": {"start": start},
        "reasonReference": [{"reference": f"Condition/{r}"} for r in reasons],
    }


def bundle(bid: str, timestamp: str, *resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": bid,
        "type": "collection",
        "timestamp": timestamp,
        "entry": [{"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources],
    }


def jens_hansen() -> dict[str, Any]:
    """DeliveryReport-JensHansen-new-1: home care conditions with severities, goals, planned interventions."""
    c1, c2, c3, c4 = (
        "38ea1a7f-251a-4817-aa4a-b59d556db92a",
        "80e7cd6e-f926-412c-b326-578f05af643e",
        "4f47118b-25a0-4998-8f71-86b1ce220f11",
        "1c13a997-628d-4d01-af7c-9adb7c19b2a6",
    )
    return bundle(
        "5c20b1b0-ec06-4d25-89e2-13521ebcf642",
        "2021-02-10T11:14:09Z",
        citizen(JENS, "0101410001"),
        condition(c1, JENS, "feb38b55-c2d7-4d57-99c2-93622eaa0025", "Personlig pleje", "3", "2021-02-10"),
        condition(c2, JENS, "75bfc8db-a220-4801-a8c7-5e968e94d44b", "Lave mad", "3", "2021-02-10"),
        condition(
            c3, JENS, "a7ac8429-513f-43cd-bc69-96a8d0e0f0ff", "Lave husligt arbejde", "3", "2021-02-10"
        ),
        condition(
            c4, JENS, "d8aa5f09-cd9c-4996-a853-1c95ee98f25c", "Mobilitet og bevægelse", "2", "2021-02-10"
        ),
        goal("82a5cd17-c4fa-4ede-be31-a26457a98834", JENS, c1, "2", "2021-02-10"),
        goal("13520a3e-0c63-4cf8-b1ab-028313c8bc11", JENS, c2, "2", "2021-02-10"),
        goal("cf7f8c3c-3ff8-460f-8c70-88895630105c", JENS, c3, "2", "2021-02-10"),
        goal("0b16696f-1935-45a9-b716-135da8d9cef2", JENS, c4, "1", "2021-02-10"),
        planned(
            "0aff84ce-2b70-4677-bfa8-78c599d0eaf9",
            JENS,
            "17312894-b23f-43d9-9723-b725ac25d872",
            "Personlig hygiejne",
            "2021-02-12",
            [c1],
        ),
        planned(
            "4404487e-978d-4377-bd92-c219e0f1a456",
            JENS,
            "1ae7906b-5f16-4ba4-9077-7f59067cbedb",
            "Hverdagens aktiviteter",
            "2021-02-12",
            [c3],
        ),
        planned(
            "f5475c7b-4dac-477c-9e53-492e66177865",
            JENS,
            "9aad7654-b9f9-40a3-84d9-2ae1dec4228a",
            "Madservice",
            "2021-02-12",
            [c2],
        ),
        planned(
            "66c3870f-eb9f-4ee8-8f2e-353a6c2cd81a",
            JENS,
            "43608562-e356-4990-8b96-e35128bbdc4f",
            "Rengøring",
            "2021-02-12",
            [c3],
        ),
        planned(
            "749857f9-fdae-4d9c-b180-cf1a2c6019cb",
            JENS,
            "ef8ee035-00d2-48b9-b366-27753ccd5504",
            "Mobilitet",
            "2021-02-12",
            [c4],
        ),
        follow_up("c0f62d4d-91e5-4d28-a107-526e0a2fc20b", JENS, "2021-02-15", [c1, c2, c3, c4]),
    )


def peter_olsen() -> dict[str, Any]:
    """DeliveryReport-PeterOlsen-1: nursing conditions (no severity), completed and planned interventions."""
    c1, c2 = "f8a70023-0688-4a93-9b74-21e5089dc365", "9c818a37-6525-49bb-bcea-5fe5df01f6f4"
    return bundle(
        "4768772b-67f3-4468-9a2f-ee9a0254a323",
        "2021-02-10T13:34:56Z",
        citizen(PETER, "0101570001"),
        condition(
            c1, PETER, "dae40f60-8dab-4bd3-ab72-b07d0f278692", "Respirationsproblemer", None, "2021-02-10"
        ),
        condition(
            c2,
            PETER,
            "92caace8-60e3-4861-80ac-6e372a700e1d",
            "Problemer med mobilitet og bevægelse",
            None,
            "2021-02-10",
        ),
        completed(
            "442929fc-46ab-446c-80ad-5ab70410f32d",
            PETER,
            "34b8b9a0-41bf-4dce-88f6-409de21fb175",
            "Undersøgelser og måling af værdier",
            "2021-02-10T13:00:00Z",
            c1,
        ),
        completed(
            "6e1323cf-d73f-4394-ad4b-4a370c281495",
            PETER,
            "b2634ff3-544b-46e8-8908-b056b3c4e27c",
            "Supplerende udredning",
            "2021-02-10T13:00:00Z",
            c1,
        ),
        planned(
            "9a07e8ad-4e71-42c7-a67f-96f5944f51a6",
            PETER,
            "3198a6ba-879c-4d2e-914b-560ba1e0d63a",
            "Respirationsbehandling",
            "2021-02-10",
            [c1],
        ),
        follow_up("6e7188a7-048d-4060-96fe-7ae7b4201739", PETER, "2021-02-12", [c1, c2]),
    )


def _where(outcome_bundle: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i.code, i.expression[0]) for i in check_bundle(outcome_bundle)]


# ------------------------------------------------------------------------------------- the examples pass
@pytest.mark.parametrize("make", [jens_hansen, peter_olsen], ids=["JensHansen", "PeterOlsen"])
def test_kl_example_citizens_pass(make: Callable[[], dict[str, Any]]) -> None:
    data = make()
    assert validate_resource(data).issues == []
    assert check_bundle(data).issues == []


def test_every_profile_is_exercised_by_the_examples() -> None:
    kinds = {e["resource"]["resourceType"] for b in (jens_hansen(), peter_olsen()) for e in b["entry"]}
    assert set(PROFILES) <= kinds


def test_legacy_fsiii_codes_and_a_local_level3_code_pass() -> None:
    """KL's own profile examples use legacy codes (J1.1, B2, H1.1) and a local level 3 code."""
    data = jens_hansen()
    data["entry"][1]["resource"]["code"] = _cc(FSIII, "J1.1")
    data["entry"][1]["resource"]["severity"] = _cc(FSIII, "B2")
    plan = data["entry"][9]["resource"]
    plan["activity"][0]["detail"]["code"] = {
        "coding": [
            {"system": FSIII, "code": "H1.1"},
            {
                "system": "http://fhir.kl.dk/gateway/CodeSystem/LocallyDefinedInterventions",
                "code": "H1.1.1",
                "display": "Speciel personlig pleje",
            },
        ]
    }
    assert check_bundle(data).issues == []


# --------------------------------------------------------------------------------------------- mutations fail
def _mutated(base: Callable[[], dict[str, Any]], index: int, change: Callable[[dict[str, Any]], Any]) -> Any:
    data = copy.deepcopy(base())
    change(data["entry"][index]["resource"])
    return data


def test_severity_on_a_nursing_condition() -> None:
    data = _mutated(peter_olsen, 1, lambda c: c.update(severity=_cc(FSIII, SEVERITY["2"])))
    found = check_bundle(data).issues
    assert [(i.code, i.expression[0]) for i in found] == [("invariant", "Bundle.entry[1].resource.severity")]
    assert "klgateway-severity-mandatory-in-home-care-not-allowed-in-nursing" in found[0].diagnostics


def test_missing_severity_on_a_home_care_condition() -> None:
    data = _mutated(jens_hansen, 2, lambda c: c.pop("severity"))
    assert _where(data) == [("invariant", "Bundle.entry[2].resource.severity")]


def test_missing_recorded_date() -> None:
    data = _mutated(jens_hansen, 1, lambda c: c.pop("recordedDate"))
    assert _where(data) == [("required", "Bundle.entry[1].resource.recordedDate")]


def test_identifier_present() -> None:
    data = _mutated(peter_olsen, 3, lambda p: p.update(identifier=[{"value": "x"}]))
    assert _where(data) == [("structure", "Bundle.entry[3].resource.identifier[0]")]
    data = _mutated(jens_hansen, 5, lambda g: g.update(identifier=[{"value": "x"}]))
    assert _where(data) == [("structure", "Bundle.entry[5].resource.identifier[0]")]


def test_goal_addressing_a_nursing_condition() -> None:
    data = jens_hansen()
    nursing = condition(
        "n1", JENS, "dae40f60-8dab-4bd3-ab72-b07d0f278692", "Respirationsproblemer", None, "2021-02-10"
    )
    data["entry"].append({"fullUrl": f"{BASE}/Condition/n1", "resource": nursing})
    data["entry"][5]["resource"]["addresses"] = [{"reference": "Condition/n1"}]
    found = check_bundle(data).issues
    assert [(i.code, i.expression[0]) for i in found] == [
        ("invariant", "Bundle.entry[5].resource.addresses[0]")
    ]
    assert "klgateway-adresses-must-be-home-care-condition" in found[0].diagnostics


def test_unresolved_subject() -> None:
    data = _mutated(jens_hansen, 3, lambda c: c.update(subject={"reference": "Patient/somebody-else"}))
    assert _where(data) == [("not-found", "Bundle.entry[3].resource.subject")]
    data = _mutated(peter_olsen, 4, lambda p: p.update(subject={"reference": f"Condition/{p['id']}"}))
    assert ("not-found", "Bundle.entry[4].resource.subject") in _where(data)


def test_reference_to_the_wrong_type() -> None:
    data = _mutated(peter_olsen, 3, lambda p: p.update(reasonReference=[{"reference": f"Patient/{PETER}"}]))
    assert _where(data) == [("value", "Bundle.entry[3].resource.reasonReference[0]")]


@pytest.mark.parametrize(
    ("index", "change", "expected"),
    [
        (
            1,
            lambda c: c.update(code=_cc(FSIII, "17312894-b23f-43d9-9723-b725ac25d872")),
            [
                ("code-invalid", "Bundle.entry[1].resource.code.coding[0].code"),
                ("invariant", "Bundle.entry[5].resource.addresses[0]"),
            ],
        ),
        (
            1,
            lambda c: c["code"]["coding"][0].update(system="http://snomed.info/sct"),
            [
                ("code-invalid", "Bundle.entry[1].resource.code.coding[0].system"),
                ("invariant", "Bundle.entry[5].resource.addresses[0]"),
            ],
        ),
        (
            1,
            lambda c: c.update(
                category=[
                    _cc("http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis")
                ]
            ),
            [("value", "Bundle.entry[1].resource.category[0].coding[0].code")],
        ),
        (1, lambda c: c.update(note=[{"text": "x"}]), [("structure", "Bundle.entry[1].resource.note[0]")]),
        (
            1,
            lambda c: c["clinicalStatus"]["coding"][0].update(display="Active"),
            [("structure", "Bundle.entry[1].resource.clinicalStatus.coding[0].display")],
        ),
        (5, lambda g: g.pop("startDate"), [("required", "Bundle.entry[5].resource.startDate")]),
        (
            5,
            lambda g: g["target"][0].update(detailCodeableConcept=_cc(FSIII, "J1.1")),
            [("code-invalid", "Bundle.entry[5].resource.target[0].detailCodeableConcept.coding[0].code")],
        ),
        (
            5,
            lambda g: g["category"][0]["coding"][0].update(code="other"),
            [("value", "Bundle.entry[5].resource.category[0].coding[0]")],
        ),
        (9, lambda p: p.update(intent="order"), [("value", "Bundle.entry[9].resource.intent")]),
        (9, lambda p: p["period"].pop("start"), [("required", "Bundle.entry[9].resource.period.start")]),
        (
            9,
            lambda p: p["activity"][0]["detail"]["code"]["coding"].append({"system": FSIII, "code": "H1.1"}),
            [("required", "Bundle.entry[9].resource.activity[0].detail.code.coding")],
        ),
        (
            14,
            lambda e: e.pop("reasonReference"),
            [("invariant", "Bundle.entry[14].resource.reasonReference")],
        ),
        (
            14,
            lambda e: e.update(participant=[{"individual": {"display": "x"}}]),
            [("structure", "Bundle.entry[14].resource.participant[0]")],
        ),
        (14, lambda e: e.pop("type"), [("required", "Bundle.entry[14].resource.type")]),
    ],
)
def test_profile_rules(
    index: int, change: Callable[[dict[str, Any]], Any], expected: list[tuple[str, str]]
) -> None:
    data = _mutated(jens_hansen, index, change)
    assert sorted(_where(data)) == sorted(expected)


def test_completed_intervention_rules() -> None:
    data = _mutated(
        peter_olsen,
        3,
        lambda p: (p.pop("performedDateTime"), p.update(performedPeriod={"start": "2021-02-10"})),
    )
    assert sorted(_where(data)) == [
        ("required", "Bundle.entry[3].resource.performedDateTime"),
        ("structure", "Bundle.entry[3].resource.performedPeriod"),
    ]
    data = _mutated(
        peter_olsen,
        3,
        lambda p: p["code"]["coding"].append(
            {"system": "http://fhir.kl.dk/gateway/CodeSystem/LocallyDefinedInterventions", "code": "x"}
        ),
    )
    assert _where(data) == [("required", "Bundle.entry[3].resource.code.coding[1].display")]


def test_check_resource_and_non_bundles() -> None:
    data = jens_hansen()
    assert check_resource(data["entry"][1]["resource"], data).issues == []
    lonely = check_resource(data["entry"][1]["resource"])
    assert [i.expression[0] for i in lonely] == ["Condition.subject"]
    assert check_bundle({"resourceType": "Patient"}).has_errors
    assert check_resource({"resourceType": "Patient"}).issues == []
