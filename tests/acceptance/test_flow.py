"""Messages flow between a simulated hospital and municipality through a running bridge.

Every official MedCom HospitalNotification goes from the hospital to a municipality that speaks FHIR
and to one that speaks municipal JSON (which receives the hospital stay event); CareCommunication goes
both ways; a municipal care record reaches the hospital where the citizen is admitted. The peers are
separate processes that validate, dedupe and acknowledge what they receive.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from harness import (
    HOSPITAL_TOKEN,
    MUNICIPALITY_TOKEN,
    header_id,
    post_fhir,
    wait_until,
)
from shared_data import SHARED

from bridge.medcom.care_communication import to_correspondence
from bridge.medcom.hospital_notification import classify, to_event
from bridge.municipal.correspondence import Correspondence
from bridge.municipal.events import HospitalStayEvent
from bridge.simulators import traffic

HOSPITAL_NOTIFICATIONS = sorted((SHARED / "medcom" / "hospitalnotification").glob("Bundle-*.json"))
CARE_COMMUNICATIONS = sorted((SHARED / "medcom" / "carecommunication").glob("Bundle-*.json"))
HOSPITAL_SOR, MUNICIPALITY_SOR = "265161000016000", "953741000016009"


def _load(path: Any) -> dict[str, Any]:
    return dict(json.loads(path.read_bytes()))


def _between(message: dict[str, Any], sender_sor: str, receiver_sor: str) -> bool:
    orgs = {
        f"Organization/{e['resource']['id']}": {i.get("value") for i in e["resource"].get("identifier", [])}
        for e in message["entry"]
        if e["resource"]["resourceType"] == "Organization"
    }
    header = message["entry"][0]["resource"]
    return sender_sor in orgs.get(header["sender"]["reference"], set()) and receiver_sor in orgs.get(
        header["destination"][0]["receiver"]["reference"], set()
    )


def _receipts_for(stack: Any, ids: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for receipt in stack.hospital.receipts():
        found.setdefault(receipt["acknowledged_id"], []).append(receipt["code"])
    return {i: found.get(i, []) for i in ids}


def _per_citizen(received: list[dict[str, Any]]) -> dict[str, list[str]]:
    order: dict[str, list[str]] = {}
    for m in received:
        order.setdefault(m["citizen"], []).append(m["header_id"])
    return order


def _per_citizen_sent(paths: list[Any]) -> dict[str, list[str]]:
    order: dict[str, list[str]] = {}
    for path in paths:
        message = _load(path)
        patient = next(e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Patient")
        order.setdefault(patient["identifier"][0]["value"], []).append(header_id(message))
    return order


def test_there_are_official_examples() -> None:
    assert len(HOSPITAL_NOTIFICATIONS) == 12
    assert any(_between(_load(p), MUNICIPALITY_SOR, HOSPITAL_SOR) for p in CARE_COMMUNICATIONS)


@pytest.mark.parametrize("speaks", ["fhir", "municipal-v1"])
def test_every_official_hospital_notification_reaches_the_municipality(start_stack: Any, speaks: str) -> None:
    stack = start_stack(speaks)
    sent: list[tuple[str, str]] = []
    with stack.bridge.client(HOSPITAL_TOKEN) as client:
        for path in HOSPITAL_NOTIFICATIONS:
            message = _load(path)
            response = post_fhir(client, path.read_bytes())
            assert response.status_code == 200, (path.name, response.text)
            assert response.json()["resourceType"] == "OperationOutcome"
            sent.append((header_id(message), classify(message)))

    wait_until(
        lambda: len(stack.municipality.messages()) >= len(sent), 60, "every notification", stack.bridge
    )
    received = stack.municipality.messages()
    # Once each, the MessageHeader.id unchanged, in the order accepted (all are about one citizen).
    assert [(m["header_id"], m["code"]) for m in received] == sent
    assert all(m["valid"] and m["copies"] == 1 for m in received), received
    expected_kind = "hospital-notification" if speaks == "fhir" else "hospital-stay-event-v1"
    assert {m["kind"] for m in received} == {expected_kind}

    for path in HOSPITAL_NOTIFICATIONS:
        original = _load(path)
        delivered = stack.municipality.body(header_id(original))
        if speaks == "fhir":
            assert delivered == original, path.name
        else:
            assert HospitalStayEvent.model_validate(delivered) == to_event(original), path.name

    # The sender hears back for every message: the municipality's own receipt, or the bridge's on
    # its behalf when it speaks municipal JSON.
    ids = [hid for hid, _ in sent]
    wait_until(
        lambda: all(_receipts_for(stack, ids).values()), 60, "a receipt for every message", stack.bridge
    )
    assert all(codes == ["ok"] for codes in _receipts_for(stack, ids).values())


@pytest.mark.parametrize("speaks", ["fhir", "municipal-v1"])
def test_care_communication_goes_both_ways(start_stack: Any, speaks: str) -> None:
    stack = start_stack(speaks)
    outgoing = [p for p in CARE_COMMUNICATIONS if _between(_load(p), HOSPITAL_SOR, MUNICIPALITY_SOR)]
    incoming = [p for p in CARE_COMMUNICATIONS if _between(_load(p), MUNICIPALITY_SOR, HOSPITAL_SOR)]
    assert outgoing and incoming

    with stack.bridge.client(HOSPITAL_TOKEN) as client:
        for path in outgoing:
            response = post_fhir(client, path.read_bytes())
            assert response.status_code == 200, (path.name, response.text)
    with stack.bridge.client(MUNICIPALITY_TOKEN) as client:
        for path in incoming:
            if speaks == "fhir":
                response = post_fhir(client, path.read_bytes())
            else:
                corr = to_correspondence(_load(path)).model_dump(mode="json", exclude_none=True)
                response = client.post(
                    "/municipal/correspondence",
                    content=orjson.dumps(corr),
                    headers={"Content-Type": "application/json"},
                )
            assert response.status_code == 200, (path.name, response.text)

    wait_until(lambda: len(stack.municipality.messages()) >= len(outgoing), 60, "outgoing", stack.bridge)
    wait_until(lambda: len(stack.hospital.messages()) >= len(incoming), 60, "incoming", stack.bridge)

    to_municipality = stack.municipality.messages()
    # Once each; in the order accepted per citizen (the examples concern two citizens).
    assert _per_citizen(to_municipality) == _per_citizen_sent(outgoing)
    assert all(m["valid"] for m in to_municipality), to_municipality
    for path in outgoing:
        original = _load(path)
        delivered = stack.municipality.body(header_id(original))
        if speaks == "fhir":
            assert delivered == original
        else:
            assert delivered["format"] == "correspondence-v1"
            assert Correspondence.model_validate(delivered) == to_correspondence(original)

    to_hospital = stack.hospital.messages()
    assert [m["kind"] for m in to_hospital] == ["care-communication"] * len(incoming)
    assert all(m["valid"] for m in to_hospital), to_hospital
    assert _per_citizen(to_hospital) == _per_citizen_sent(incoming)
    for path in incoming:
        original = _load(path)
        # The hospital reads the same correspondence the municipality meant to send.
        assert to_correspondence(stack.hospital.body(header_id(original))) == to_correspondence(original)


def test_a_municipal_record_goes_to_the_hospital_where_the_citizen_is_admitted(start_stack: Any) -> None:
    stack = start_stack("fhir")
    admission = traffic.notification(traffic.admission(7))
    with stack.bridge.client(HOSPITAL_TOKEN) as client:
        assert post_fhir(client, admission).status_code == 200
    wait_until(lambda: len(stack.municipality.messages()) == 1, 30, "the admission", stack.bridge)

    record = traffic.municipal_record(7, municipality=traffic.HERLEV_MUNICIPALITY)
    stranger = traffic.municipal_record(8, municipality=traffic.HERLEV_MUNICIPALITY)  # never admitted
    with stack.bridge.client(MUNICIPALITY_TOKEN) as client:
        headers = {"Content-Type": "application/json"}
        accepted = client.post("/municipal/records", content=orjson.dumps(record), headers=headers)
        refused = client.post("/municipal/records", content=orjson.dumps(stranger), headers=headers)
    assert accepted.status_code == 200, accepted.text
    assert refused.status_code == 422, refused.text
    assert refused.json()["resourceType"] == "OperationOutcome"

    wait_until(lambda: len(stack.hospital.messages()) == 1, 30, "the record at the hospital", stack.bridge)
    (got,) = stack.hospital.messages()
    assert got["kind"] == "fhir-record"
    assert got["citizen"] == traffic.synthetic_cpr(7)
