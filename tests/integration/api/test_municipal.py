"""Municipal posts: care records routed to the hospital where the citizen is admitted, correspondence."""

from __future__ import annotations

import json
from typing import Any

import orjson
from api_bed import (
    EXAMPLE_CONFIG,
    HERLEV,
    HERLEV_TOKEN,
    HOSPITAL,
    MEDCOM,
    REHAB_TOKEN,
    SLHJ,
    STIN,
    Bed,
    auth,
    example,
    example_bytes,
)

from bridge.fhir.validate import validate_resource
from bridge.medcom.care_communication import to_correspondence
from bridge.medcom.validation import validate_message

RECORDS = EXAMPLE_CONFIG.parent / "records"
#: The citizen of MedCom's HospitalNotification examples.
STIN_CPR = "2509479989"


def record(cpr: str = STIN_CPR, record_id: str = "hc-1001", version: str = "1") -> dict[str, Any]:
    data = json.loads((RECORDS / "home-care-citizen.json").read_text(encoding="utf-8"))
    data["citizen"]["cpr"] = cpr
    data["metadata"]["record_id"] = record_id
    data["metadata"]["version"] = version
    assert isinstance(data, dict)
    return data


def post_record(bed: Bed, data: dict[str, Any], token: str = REHAB_TOKEN, **params: Any) -> Any:
    return bed.client.post(
        "/municipal/records",
        content=orjson.dumps(data),
        params=params,
        headers={"Content-Type": "application/json", **auth(token)},
    )


def test_record_without_receiver_and_no_admission_is_422(bed: Bed) -> None:
    response = post_record(bed, record())
    assert response.status_code == 422, response.text
    assert response.json()["issue"][0]["expression"] == ["receiver"]
    assert STIN_CPR not in response.text


def test_record_goes_to_the_hospital_where_the_citizen_is_admitted(bed: Bed) -> None:
    assert bed.post_message(example_bytes(STIN)).status_code == 200
    bed.claim()  # the notification's own delivery
    response = post_record(bed, record())
    assert response.status_code == 200, response.text
    [delivery] = bed.claim()
    assert delivery.destination == HOSPITAL
    assert delivery.content_type == "application/fhir+json"
    bundle = orjson.loads(delivery.payload)
    assert bundle["resourceType"] == "Bundle"
    assert not validate_resource(bundle).has_errors
    patients = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert patients[0]["identifier"][0]["value"] == STIN_CPR


def test_after_discharge_the_record_has_no_receiver_unless_named(bed: Bed) -> None:
    assert bed.post_message(example_bytes(STIN)).status_code == 200
    assert bed.post_message(example_bytes(SLHJ)).status_code == 200
    assert post_record(bed, record()).status_code == 422
    named = post_record(bed, record(), receiver=HOSPITAL)
    assert named.status_code == 200, named.text


def test_a_cancelled_discharge_admits_the_citizen_again(bed: Bed) -> None:
    assert bed.post_message(example_bytes(STIN)).status_code == 200
    assert bed.post_message(example_bytes(SLHJ)).status_code == 200
    cancel = example(SLHJ)
    # AN_SLHJ: the discharge is cancelled, the encounter in progress again (sent after the discharge).
    cancel["id"] = "f4aa42a4-86db-4e68-9b38-000000000003"
    header = cancel["entry"][0]["resource"]
    old_header_id = header["id"]
    header["id"] = "0e0e0e0e-86db-4e68-9b38-000000000003"
    cancel["entry"][0]["fullUrl"] = cancel["entry"][0]["fullUrl"].replace(old_header_id, header["id"])
    provenances = [e["resource"] for e in cancel["entry"] if e["resource"]["resourceType"] == "Provenance"]
    own = next(p for p in provenances if p["target"][0]["reference"].endswith(old_header_id))
    own["target"][0]["reference"] = f"MessageHeader/{header['id']}"
    own["activity"]["coding"][0]["code"] = "cancel-discharge-inpatient-home"
    own["occurredDateTime"] = own["recorded"] = "2099-01-01T10:00:00+01:00"
    own["entity"] = [{"role": "removal", "what": {"reference": f"MessageHeader/{old_header_id}"}}]
    encounter = next(e["resource"] for e in cancel["entry"] if e["resource"]["resourceType"] == "Encounter")
    encounter["status"] = "in-progress"
    encounter["period"].pop("end", None)
    response = bed.post_message(orjson.dumps(cancel))
    assert response.status_code == 200, response.text
    assert post_record(bed, record()).status_code == 200


def test_explicit_receiver_and_unknown_receiver(bed: Bed) -> None:
    response = post_record(bed, record(), receiver=HERLEV)
    assert response.status_code == 200
    [delivery] = bed.claim()
    assert delivery.destination == HERLEV and delivery.content_type == "application/fhir+json"
    unknown = post_record(bed, record(record_id="hc-2"), receiver="no-such-system")
    assert unknown.status_code == 422
    assert unknown.json()["issue"][0]["expression"] == ["receiver[0]"]


def test_the_same_record_version_twice_is_one_message(bed: Bed) -> None:
    first = post_record(bed, record(), receiver=HERLEV)
    again = post_record(bed, record(), receiver=HERLEV)
    assert first.status_code == again.status_code == 200
    assert first.content == again.content
    newer = post_record(bed, record(version="2"), receiver=HERLEV)
    assert newer.status_code == 200 and newer.content != first.content
    assert bed.count("messages") == 2


def test_invalid_record_is_400_with_paths(bed: Bed) -> None:
    data = record()
    data["citizen"]["cpr"] = "12"
    del data["metadata"]["record_id"]
    response = post_record(bed, data, receiver=HERLEV)
    assert response.status_code == 400
    found = {e for issue in response.json()["issue"] for e in issue["expression"]}
    assert {"citizen.cpr", "metadata.record_id"} <= found
    assert bed.count("messages") == 0


def test_record_as_another_systems_organisation_is_403(bed: Bed) -> None:
    data = record()
    data["organization"]["unit"]["sor"] = "953741000016009"  # Plejecenter Herlev belongs to Herlev
    response = post_record(bed, data, token=REHAB_TOKEN, receiver=HOSPITAL)
    assert response.status_code == 403
    assert response.json()["issue"][0]["expression"] == ["organization.unit"]


def test_municipal_post_needs_json(bed: Bed) -> None:
    response = bed.client.post(
        "/municipal/records",
        content=b"<x/>",
        headers={"Content-Type": "application/xml", **auth(REHAB_TOKEN)},
    )
    assert response.status_code == 415


def correspondence() -> dict[str, Any]:
    """Herlev's reply in MedCom's CareCommunication examples, as a municipal correspondence without ids."""
    message = json.loads(
        (MEDCOM / "carecommunication/Bundle-b56549f7-ed10-422d-8088-f7222b686e46.json").read_text()
    )
    data = json.loads(to_correspondence(message).model_dump_json(exclude_none=True))
    assert isinstance(data, dict)
    return data


def test_correspondence_becomes_a_care_communication_for_the_hospital(bed: Bed) -> None:
    data = correspondence()
    data.pop("message", None)
    response = bed.client.post(
        "/municipal/correspondence",
        content=orjson.dumps(data),
        headers={"Content-Type": "application/json", **auth(HERLEV_TOKEN)},
    )
    assert response.status_code == 200, response.text
    [delivery] = bed.claim()
    assert delivery.destination == HOSPITAL and delivery.expect_receipt
    message = orjson.loads(delivery.payload)
    assert not validate_message(message).has_errors
    assert message["timestamp"].startswith(bed.clock.now().date().isoformat())


def test_correspondence_with_its_ids_is_deduplicated(bed: Bed) -> None:
    body = orjson.dumps(correspondence())
    headers = {"Content-Type": "application/json", **auth(HERLEV_TOKEN)}
    first = bed.client.post("/municipal/correspondence", content=body, headers=headers)
    again = bed.client.post("/municipal/correspondence", content=body, headers=headers)
    assert first.status_code == again.status_code == 200 and first.content == again.content
    assert bed.count("messages") == 1


def test_correspondence_as_someone_else_is_403(bed: Bed) -> None:
    response = bed.client.post(
        "/municipal/correspondence",
        content=orjson.dumps(correspondence()),
        headers={"Content-Type": "application/json", **auth(REHAB_TOKEN)},
    )
    assert response.status_code == 403
    assert response.json()["issue"][0]["expression"] == ["sender"]
