"""Mutations of official MedCom examples: each is rejected, and the Outcome names the right place.

Every case starts from an example that validates with no errors (checked first), breaks one thing,
and expects an error issue at an exact FHIRPath-style location whose diagnostics name the rule,
invariant or element that failed.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.medcom.validation import validate_message

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "medcom"
HN = SHARED / "hospitalnotification" / "Bundle-a5e5b880-c087-4055-b9ec-99108695f81d.json"
CC = SHARED / "carecommunication" / "Bundle-gfd00bc2-9c26-4174-934e-f6e4360845de.json"
ACK_FATAL = SHARED / "acknowledgement" / "Bundle-bc9535ef-ed94-4060-a928-7baddec7ee71.json"
DEST_USE = "http://medcomfhir.dk/ig/messaging/StructureDefinition/medcom-messaging-destinationUseExtension"
DEST_USE_SYSTEM = "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-messaging-destinationUse"

Bundle = dict[str, Any]

# In the HospitalNotification example: 0 MessageHeader, 1 Patient, 2 Encounter, 3 receiver Organization,
# 4 sender Organization, 5 Provenance. In the CareCommunication example: 0 MessageHeader, 1 Patient,
# 2 Communication. In the fatal-error Acknowledgement: 0 MessageHeader ... 5 OperationOutcome.


def res(bundle: Bundle, i: int) -> dict[str, Any]:
    resource: dict[str, Any] = bundle["entry"][i]["resource"]
    return resource


def swap_header(b: Bundle) -> None:
    b["entry"][0], b["entry"][1] = b["entry"][1], b["entry"][0]


def drop_provenance(b: Bundle) -> None:
    b["entry"] = [e for e in b["entry"] if e["resource"]["resourceType"] != "Provenance"]


def unresolved_focus(b: Bundle) -> None:
    res(b, 0)["focus"][0]["reference"] = "Encounter/not-in-this-bundle"


def drop_cpr(b: Bundle) -> None:
    del res(b, 1)["identifier"]


def impossible_cpr_date(b: Bundle) -> None:
    res(b, 1)["identifier"][0]["value"] = "3102479989"  # 31 February


def wrong_gln_check_digit(b: Bundle) -> None:
    res(b, 4)["identifier"][0]["value"] = "5790000209355"  # valid is ...354


def sender_without_sor(b: Bundle) -> None:
    res(b, 4)["identifier"] = [res(b, 4)["identifier"][0]]


def receiver_without_gln(b: Bundle) -> None:
    res(b, 3)["identifier"] = [res(b, 3)["identifier"][1]]


def two_primary_destinations(b: Bundle) -> None:
    dests = res(b, 0)["destination"]
    dests.append(copy.deepcopy(dests[0]))


def cc_destination(b: Bundle) -> None:
    dests = res(b, 0)["destination"]
    cc = copy.deepcopy(dests[0])
    cc["extension"][0]["valueCoding"]["code"] = "cc"
    dests.append(cc)


def wrong_event_system(b: Bundle) -> None:
    res(b, 0)["eventCoding"]["system"] = "http://example.org/event-codes"


def bundle_not_message(b: Bundle) -> None:
    b["type"] = "collection"


def encounter_status_not_allowed(b: Bundle) -> None:
    res(b, 2)["status"] = "planned"


def unknown_activity(b: Bundle) -> None:
    res(b, 5)["activity"]["coding"][0]["code"] = "no-such-activity"


def unknown_element(b: Bundle) -> None:
    res(b, 1)["favouriteColour"] = "blue"


def impossible_datetime(b: Bundle) -> None:
    res(b, 5)["occurredDateTime"] = "2022-13-07T12:00:02+02:00"


def second_patient(b: Bundle) -> None:
    entry = copy.deepcopy(b["entry"][1])
    entry["resource"]["id"] = "second-patient"
    entry["fullUrl"] = "https://medcomfhir.dk/ig/hospitalnotification/Patient/second-patient"
    b["entry"].insert(2, entry)


def encounter_without_episode(b: Bundle) -> None:
    del res(b, 2)["episodeOfCare"]


def destination_without_use(b: Bundle) -> None:
    del res(b, 0)["destination"][0]["extension"]


def drop_definition(b: Bundle) -> None:
    del res(b, 0)["definition"]


def unknown_category(b: Bundle) -> None:
    res(b, 2)["category"][0]["coding"][0]["code"] = "no-such-category"


def other_without_topic(b: Bundle) -> None:
    res(b, 2)["category"][0]["coding"][0]["code"] = "other"
    res(b, 2).pop("priority", None)
    del res(b, 2)["topic"]


def payload_text_without_author(b: Bundle) -> None:
    payload = res(b, 2)["payload"][0]
    payload["extension"] = [
        e for e in payload["extension"] if not e["url"].endswith("practitioner-extension")
    ]


def priority_outside_referral(b: Bundle) -> None:
    res(b, 2)["category"][0]["coding"][0]["code"] = "discharge"


def communication_identifier_not_uuid(b: Bundle) -> None:
    res(b, 2)["identifier"][0]["value"] = "not-a-uuid"


def fatal_error_without_outcome(b: Bundle) -> None:
    b["entry"] = [e for e in b["entry"] if e["resource"]["resourceType"] != "OperationOutcome"]
    del res(b, 0)["response"]["details"]


def ack_without_response(b: Bundle) -> None:
    del res(b, 0)["response"]


Case = tuple[str, Path, Callable[[Bundle], None], str, str]

CASES: list[Case] = [
    ("MessageHeader not first", HN, swap_header, "Bundle.entry[0].resource", "header-first"),
    ("no Provenance", HN, drop_provenance, "Bundle", "medcom-messaging-2"),
    (
        "unresolved reference",
        HN,
        unresolved_focus,
        "Bundle.entry[0].resource.focus[0].reference",
        "references-resolve",
    ),
    ("missing CPR", HN, drop_cpr, "Bundle.entry[1].resource.identifier", "patient-cpr"),
    (
        "CPR with an impossible date",
        HN,
        impossible_cpr_date,
        "Bundle.entry[1].resource.identifier[0].value",
        "patient-cpr",
    ),
    (
        "GLN with a wrong check digit",
        HN,
        wrong_gln_check_digit,
        "Bundle.entry[4].resource.identifier[0].value",
        "organisation-identifiers: GLN check digit",
    ),
    (
        "sender without SOR",
        HN,
        sender_without_sor,
        "Bundle.entry[4].resource.identifier",
        "organisation-identifiers: the sender organisation has no SOR",
    ),
    (
        "receiver without GLN",
        HN,
        receiver_without_gln,
        "Bundle.entry[3].resource.identifier",
        "organisation-identifiers: the receiver organisation has no GLN",
    ),
    (
        "two primary destinations",
        HN,
        two_primary_destinations,
        "Bundle.entry[0].resource.destination[1]",
        "MessageHeader.destination:primary: slice 'primary' allows at most 1",
    ),
    (
        "a cc on a HospitalNotification",
        HN,
        cc_destination,
        "Bundle.entry[0].resource.destination[1]",
        "MessageHeader.destination:cc: slice 'cc' allows at most 0",
    ),
    (
        "destination without use extension",
        HN,
        destination_without_use,
        "Bundle.entry[0].resource.destination[0]",
        "MessageHeader.destination",
    ),
    (
        "wrong event code system",
        HN,
        wrong_event_system,
        "Bundle.entry[0].resource.eventCoding",
        "MessageHeader.event[x]: must match the pattern",
    ),
    ("Bundle type not message", HN, bundle_not_message, "Bundle.type", "Bundle.type: must match the pattern"),
    (
        "Encounter status outside the HospitalNotification value set",
        HN,
        encounter_status_not_allowed,
        "Bundle.entry[2].resource.status",
        "Encounter.status: code 'planned' is not in the required value set",
    ),
    (
        "unknown Provenance activity",
        HN,
        unknown_activity,
        "Bundle.entry[5].resource.activity",
        "Provenance.activity: coding",
    ),
    ("unknown element", HN, unknown_element, "Bundle.entry[1].resource.favouriteColour", "unknown element"),
    (
        "impossible dateTime",
        HN,
        impossible_datetime,
        "Bundle.entry[5].resource.occurredDateTime",
        "'2022-13-07T12:00:02+02:00' is not a valid dateTime",
    ),
    ("two Patients", HN, second_patient, "Bundle", "medcom-hospitalNotification-2"),
    (
        "Encounter without episodeOfCare",
        HN,
        encounter_without_episode,
        "Bundle.entry[2].resource.episodeOfCare",
        "Encounter.episodeOfCare: minimum cardinality is 1",
    ),
    (
        "missing definition on CareCommunication",
        CC,
        drop_definition,
        "Bundle.entry[0].resource.definition",
        "MessageHeader.definition: minimum cardinality is 1",
    ),
    (
        "unknown category",
        CC,
        unknown_category,
        "Bundle.entry[2].resource.category[0]",
        "Communication.category: coding",
    ),
    (
        "topic missing for category other",
        CC,
        other_without_topic,
        "Bundle.entry[2].resource",
        "medcom-careCommunication-6",
    ),
    (
        "payload text without author",
        CC,
        payload_text_without_author,
        "Bundle.entry[2].resource.payload[0].extension",
        "Communication.payload:string.extension:author: slice 'author' requires at least 1",
    ),
    (
        "priority outside a referral",
        CC,
        priority_outside_referral,
        "Bundle.entry[2].resource",
        "medcom-careCommunication-5",
    ),
    (
        "Communication identifier not a UUID",
        CC,
        communication_identifier_not_uuid,
        "Bundle.entry[2].resource.identifier[0]",
        "medcom-uuidv4",
    ),
    (
        "Acknowledgement fatal-error without OperationOutcome",
        ACK_FATAL,
        fatal_error_without_outcome,
        "Bundle.entry[0].resource.response.details",
        "acknowledgement-details",
    ),
    (
        "Acknowledgement without response",
        ACK_FATAL,
        ack_without_response,
        "Bundle.entry[0].resource.response",
        "MessageHeader.response: minimum cardinality is 1",
    ),
]


def load(path: Path) -> Bundle:
    data: Bundle = json.loads(path.read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize(("name", "path", "mutate", "where", "says"), CASES, ids=[c[0] for c in CASES])
def test_mutation_is_rejected_at_its_location(
    name: str, path: Path, mutate: Callable[[Bundle], None], where: str, says: str
) -> None:
    bundle = load(path)
    assert not validate_message(bundle).has_errors, "the unmutated example must be valid"
    mutate(bundle)
    outcome = validate_message(bundle)
    found = [i for i in outcome.errors if where in i.expression and i.diagnostics.startswith(says)]
    assert found, f"{name}: no error at {where} starting {says!r}; got:\n" + "\n".join(
        f"  {i.expression} {i.diagnostics}" for i in outcome.errors
    )
    fhir = outcome.to_fhir()
    assert fhir["resourceType"] == "OperationOutcome"
    assert all(issue["expression"] for issue in fhir["issue"])


def test_at_least_twenty_mutations() -> None:
    assert len(CASES) >= 20


def test_gln_under_the_http_system_is_accepted() -> None:
    bundle = load(HN)
    for i in (3, 4):
        res(bundle, i)["identifier"][0]["system"] = "http://www.gs1.org/gln"
    assert not validate_message(bundle).has_errors


def test_gln_under_an_unknown_system_counts_as_missing() -> None:
    bundle = load(HN)
    res(bundle, 4)["identifier"][0]["system"] = "urn:example:gln"
    says = [i.diagnostics for i in validate_message(bundle).errors]
    assert any(d.startswith("organisation-identifiers: the sender organisation has no GLN") for d in says)


def test_value_set_error_carries_the_medcom_error_code() -> None:
    bundle = load(CC)
    unknown_category(bundle)
    coded = [i for i in validate_message(bundle).errors if i.code == "code-invalid"]
    assert coded
    assert coded[0].details == (
        "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-acknowledgement-error-codes",
        "MSG_VALUESET_VALUE_UNKNOWN",
    )


def test_every_problem_is_reported_not_just_the_first() -> None:
    bundle = load(HN)
    for mutate in (swap_header, wrong_gln_check_digit, unknown_element):
        mutate(bundle)
    says = " | ".join(i.diagnostics for i in validate_message(bundle).errors)
    assert "header-first" in says
    assert "GLN check digit" in says
    assert "unknown element" in says
