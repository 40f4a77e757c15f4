"""``POST /fhir/$process-message`` with MedCom's official examples through the real app and store."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson
import pytest
from api_bed import (
    CC_NEW,
    CC_REPLY,
    HERLEV,
    HERLEV_TOKEN,
    HOSPITAL,
    HOSPITAL_TOKEN,
    MEDCOM,
    REHAB_TOKEN,
    STIN,
    Bed,
    BedFactory,
    example,
    example_bytes,
    herlev_speaks_municipal,
    system_entry,
    to_unknown_receiver,
)

from bridge.fhir.parse import to_xml
from bridge.municipal.correspondence import Correspondence
from bridge.municipal.events import HospitalStayEvent
from bridge.outbox.keys import citizen_key
from bridge.outbox.port import (
    AcceptRequest,
    AcceptResult,
    OutboxStore,
    StoreError,
    StoreUnavailable,
)

NOTIFICATIONS = sorted(p.name for p in (MEDCOM / "hospitalnotification").glob("Bundle-*.json"))


def outcome_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert isinstance(body, dict)
    return body


def expressions(response: Any) -> list[str]:
    return [e for issue in outcome_of(response)["issue"] for e in issue.get("expression", [])]


# ------------------------------------------------------------------------------------------ accepted
@pytest.mark.parametrize("name", NOTIFICATIONS)
def test_each_hospital_notification_goes_to_a_fhir_municipality_as_received(bed: Bed, name: str) -> None:
    body = example_bytes(f"hospitalnotification/{name}")
    response = bed.post_message(body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/fhir+json"
    answer = outcome_of(response)
    assert answer["issue"][0]["severity"] == "information"
    [delivery] = bed.claim()
    assert delivery.destination == HERLEV
    assert delivery.content_type == "application/fhir+json"
    assert delivery.payload == body  # the message as received: MessageHeader.id unchanged
    assert delivery.expect_receipt is True
    trace = bed.store.message_trace(answer["id"])
    assert trace is not None
    assert trace.message.sender == HOSPITAL
    assert trace.message.kind == "hospital-notification"
    assert trace.message.header_id == example(f"hospitalnotification/{name}")["entry"][0]["resource"]["id"]
    cpr = example(f"hospitalnotification/{name}")["entry"][1]["resource"]["identifier"][0]["value"]
    secret = bed.settings.store.citizen_key_secret.get_secret_value().encode()
    assert trace.message.citizen_key == citizen_key(cpr, secret)


@pytest.mark.parametrize("name", NOTIFICATIONS)
def test_each_hospital_notification_becomes_a_stay_event_for_a_municipal_json_municipality(
    bed_factory: BedFactory, name: str
) -> None:
    bed = bed_factory(herlev_speaks_municipal)
    response = bed.post_message(example_bytes(f"hospitalnotification/{name}"))
    assert response.status_code == 200, response.text
    [delivery] = bed.claim()
    assert delivery.destination == HERLEV
    assert delivery.content_type == "application/json"
    assert delivery.expect_receipt is False  # the bridge writes the receipt on this receiver's behalf
    event = HospitalStayEvent.model_validate_json(delivery.payload)
    header = example(f"hospitalnotification/{name}")["entry"][0]["resource"]
    assert event.message is not None and event.message.header_id == header["id"]
    assert event.receiver.sor == "953741000016009"


def test_care_communication_from_the_hospital_to_a_fhir_municipality(bed: Bed) -> None:
    body = example_bytes(CC_NEW)
    assert bed.post_message(body).status_code == 200
    [delivery] = bed.claim()
    assert (delivery.destination, delivery.payload, delivery.expect_receipt) == (HERLEV, body, True)


def test_care_communication_to_a_municipal_json_municipality_is_a_correspondence(
    bed_factory: BedFactory,
) -> None:
    bed = bed_factory(herlev_speaks_municipal)
    assert bed.post_message(example_bytes(CC_NEW)).status_code == 200
    [delivery] = bed.claim()
    corr = Correspondence.model_validate_json(delivery.payload)
    assert corr.kind == "new" and corr.receiver.sor == "953741000016009"


def test_care_communication_from_the_municipality_goes_to_the_hospital(bed: Bed) -> None:
    body = example_bytes(CC_REPLY)
    response = bed.post_message(body, token=HERLEV_TOKEN)
    assert response.status_code == 200, response.text
    [delivery] = bed.claim()
    assert delivery.destination == HOSPITAL and delivery.payload == body


def test_xml_in_xml_out_and_the_fhir_receiver_gets_json(bed: Bed) -> None:
    message = example(STIN)
    response = bed.post_message(to_xml(message), content_type="application/fhir+xml")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/fhir+xml"
    assert response.content.startswith(b"<?xml")
    [delivery] = bed.claim()
    assert orjson.loads(delivery.payload) == message


def test_accept_header_chooses_the_answer_format(bed: Bed) -> None:
    response = bed.post_message(example_bytes(STIN), Accept="application/fhir+xml")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+xml"


# ------------------------------------------------------------------------------------------ duplicates
def test_three_sends_store_one_message_and_get_three_identical_answers(bed: Bed) -> None:
    body = example_bytes(STIN)
    answers = [bed.post_message(body) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].content == answers[1].content == answers[2].content
    assert bed.count("messages") == 1
    assert len(bed.claim()) == 1


def test_a_duplicate_is_answered_as_first_even_when_it_can_no_longer_be_routed(
    bed_factory: BedFactory,
) -> None:
    # Duplicates are recognised in the accept's transaction; one whose receiver has since gone from the
    # configuration fails routing before that, and is still answered with the first answer.
    body = example_bytes(STIN)
    first = bed_factory().post_message(body)
    assert first.status_code == 200

    def herlev_moved(data: dict[str, Any]) -> None:
        system_entry(data, HERLEV)["organisations"] = [{"name": "elsewhere", "sor": "1234567890123"}]

    moved = bed_factory(herlev_moved)
    again = moved.post_message(body)
    assert again.status_code == 200 and again.content == first.content
    assert moved.count("messages") == 1
    fresh = example(STIN)
    fresh["id"], fresh["entry"][0]["resource"]["id"] = str(uuid.uuid4()), str(uuid.uuid4())
    assert moved.post_message(orjson.dumps(fresh)).status_code == 422  # a new one cannot be routed


def test_a_large_body_is_prepared_off_the_event_loop_with_the_same_result(bed: Bed) -> None:
    from bridge.ingress import INLINE_BODY_BYTES

    # The same message padded with whitespace past the size prepared on the event loop: it takes the
    # worker-thread path, and is stored and answered exactly like the small one - then a duplicate.
    small = example_bytes(STIN)
    large = small + b" " * (INLINE_BODY_BYTES + 1)
    first = bed.post_message(large)
    assert first.status_code == 200
    again = bed.post_message(small)
    assert again.status_code == 200 and again.content == first.content
    assert bed.count("messages") == 1 and len(bed.claim()) == 1


def test_duplicate_in_xml_gets_the_first_answer_byte_for_byte(bed: Bed) -> None:
    first = bed.post_message(example_bytes(STIN))
    again = bed.post_message(to_xml(example(STIN)), content_type="application/fhir+xml")
    assert again.status_code == 200 and again.content == first.content


def test_resubmission_with_a_new_bundle_id_is_answered_as_the_original(bed: Bed) -> None:
    message = example(STIN)
    first = bed.post_message(orjson.dumps(message))
    message["id"] = "a5e5b880-c087-4055-b9ec-000000000001"
    again = bed.post_message(orjson.dumps(message))
    assert again.status_code == 200 and again.content == first.content
    assert bed.count("messages") == 1


def test_a_reused_bundle_id_is_a_conflict(bed: Bed) -> None:
    message = example(STIN)
    assert bed.post_message(orjson.dumps(message)).status_code == 200
    message["entry"][0]["resource"]["id"] = "b9b4818e-02de-4cc4-b418-000000000002"
    for e in message["entry"]:
        if e["resource"]["resourceType"] == "Provenance":
            e["resource"]["target"][0]["reference"] = "MessageHeader/b9b4818e-02de-4cc4-b418-000000000002"
    e0 = message["entry"][0]
    e0["fullUrl"] = e0["fullUrl"].rsplit("/", 1)[0] + "/b9b4818e-02de-4cc4-b418-000000000002"
    response = bed.post_message(orjson.dumps(message))
    assert response.status_code == 409, response.text
    assert outcome_of(response)["issue"][0]["code"] == "duplicate"
    assert bed.count("messages") == 1


# ------------------------------------------------------------------------------------------ refusals
def test_no_token_is_401_with_a_challenge(bed: Bed) -> None:
    response = bed.client.post(
        "/fhir/$process-message",
        content=example_bytes(STIN),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert outcome_of(response)["issue"][0]["code"] == "login"
    assert bed.count("messages") == 0


def test_unknown_token_is_401(bed: Bed) -> None:
    assert bed.post_message(example_bytes(STIN), token="not-a-token").status_code == 401


def test_sender_organisation_not_owned_by_the_caller_is_403(bed: Bed) -> None:
    # The rehabilitation municipality's token, sending as Herlev hospital.
    response = bed.post_message(example_bytes(STIN), token=REHAB_TOKEN)
    assert response.status_code == 403
    assert expressions(response) == ["Bundle.entry[0].resource.sender"]
    assert bed.count("messages") == 0
    audit = bed.store.read_audit()
    assert [e.record.action for e in audit] == ["message.rejected"]
    assert b"2509479989" not in audit[0].record.body  # no CPR number in the audit of a refusal


def test_invalid_message_is_400_naming_each_problem_with_its_location(bed: Bed) -> None:
    message = example(STIN)
    del message["entry"][0]["resource"]["eventCoding"]
    message["timestamp"] = "yesterday"
    response = bed.post_message(orjson.dumps(message))
    assert response.status_code == 400
    found = expressions(response)
    assert "Bundle.timestamp" in found
    assert any(e.startswith("Bundle.entry[0].resource") for e in found), found
    assert bed.count("messages") == 0


def test_unknown_receiver_is_422(bed: Bed) -> None:
    response = bed.post_message(orjson.dumps(to_unknown_receiver()))
    assert response.status_code == 422, response.text
    assert expressions(response) == ["Bundle.entry[0].resource.destination[0].receiver"]
    assert bed.count("messages") == 0


def test_not_a_medcom_message_is_400(bed: Bed) -> None:
    response = bed.post_message(b'{"resourceType": "Patient", "id": "x"}')
    assert response.status_code == 400
    assert outcome_of(response)["issue"][0]["code"] == "not-supported"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"resourceType": "Bundle", ', "structure"),
        (b"[1, 2, 3]", "structure"),
        (b'{"a":' + b"[" * 100 + b"1" + b"]" * 100 + b"}", "too-long"),
    ],
    ids=["truncated", "array", "deep"],
)
def test_malformed_and_deeply_nested_json_is_400(bed: Bed, body: bytes, code: str) -> None:
    response = bed.post_message(body)
    assert response.status_code == 400
    assert outcome_of(response)["issue"][0]["code"] == code
    assert bed.client.get("/healthz").status_code == 200


def test_entity_expansion_is_refused_and_the_service_unharmed(bed: Bed) -> None:
    lol = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(
            f'<!ENTITY lol{i} "{"&lol{};".format(i - 1 if i > 1 else "") * 10}">'.encode()
            for i in range(1, 10)
        )
        + b']><Bundle xmlns="http://hl7.org/fhir"><id value="&lol9;"/></Bundle>'
    )
    response = bed.post_message(lol, content_type="application/fhir+xml")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/fhir+xml"
    assert b"security" in response.content
    assert bed.post_message(example_bytes(STIN)).status_code == 200


def test_body_over_the_limit_is_413_by_content_length(bed_factory: BedFactory) -> None:
    bed = bed_factory(lambda d: d["limits"].update(max_body_bytes=4096))
    response = bed.post_message(example_bytes(STIN))
    assert response.status_code == 413
    assert outcome_of(response)["issue"][0]["code"] == "too-long"


def test_body_over_the_limit_is_413_when_streamed_without_content_length(bed_factory: BedFactory) -> None:
    bed = bed_factory(lambda d: d["limits"].update(max_body_bytes=4096))
    body = example_bytes(STIN)

    def chunks() -> Any:
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    response = bed.client.post(
        "/fhir/$process-message",
        content=chunks(),
        headers={"Content-Type": "application/fhir+json", "Authorization": f"Bearer {HOSPITAL_TOKEN}"},
    )
    assert response.status_code == 413


def test_unsupported_media_type_is_415(bed: Bed) -> None:
    response = bed.post_message(example_bytes(STIN), content_type="text/plain")
    assert response.status_code == 415
    assert outcome_of(response)["issue"][0]["code"] == "not-supported"


# ------------------------------------------------------------------------------------------ one transaction
class FailingAccept:
    """A real store whose ``accept`` fails as a locked or unreachable database does."""

    def __init__(self, inner: OutboxStore) -> None:
        self._inner = inner

    def accept_many(self, requests: Any) -> list[AcceptResult]:
        raise StoreUnavailable("database is locked")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_store_failure_is_503_and_nothing_is_stored(bed_factory: BedFactory) -> None:
    bed = bed_factory(store_wrapper=lambda s: FailingAccept(s))  # type: ignore[arg-type,return-value]
    response = bed.post_message(example_bytes(STIN))
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert outcome_of(response)["issue"][0]["code"] == "transient"
    assert (bed.count("messages"), bed.count("deliveries")) == (0, 0)


class FailingAfterInsert:
    """A real store whose audit insert breaks inside the accept transaction (a full disk, say)."""

    def __init__(self, inner: OutboxStore) -> None:
        self._inner = inner

    def accept_many(self, requests: Sequence[AcceptRequest]) -> list[AcceptResult | StoreError]:
        # Two deliveries to one destination: the adapter refuses them after nothing was written, so
        # instead break the audit: an audit body that is not bytes fails inside the transaction.
        broken = [
            replace(r, audit=replace(r.audit, body=None))  # type: ignore[arg-type]
            for r in requests
        ]
        return self._inner.accept_many(broken)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_failure_inside_the_accept_transaction_leaves_nothing_behind(bed_factory: BedFactory) -> None:
    bed = bed_factory(store_wrapper=lambda s: FailingAfterInsert(s))  # type: ignore[arg-type,return-value]
    response = bed.post_message(example_bytes(STIN))
    assert response.status_code >= 500
    assert outcome_of(response)["issue"][0]["severity"] == "error"
    assert (bed.count("messages"), bed.count("deliveries"), bed.count("audit")) == (0, 0, 0)


def test_accept_writes_message_deliveries_and_audit_together(bed: Bed) -> None:
    response = bed.post_message(example_bytes(STIN))
    message_id = response.json()["id"]
    [entry] = bed.store.read_audit()
    assert entry.record.action == "message.accepted" and entry.record.message_id == message_id
    event = json.loads(entry.record.body)
    assert event["resourceType"] == "AuditEvent"
    # The audit trail is the one place that names the citizen (bridge.audit): by CPR in the Patient entity.
    [patient] = [e for e in event["entity"] if e.get("role", {}).get("code") == "1"]
    assert patient["what"]["identifier"] == {"system": "urn:oid:1.2.208.176.1.2", "value": "2509479989"}
    assert entry.record.body.count(b"2509479989") == 1
    assert {a["who"]["identifier"]["value"] for a in event["agent"]} == {HOSPITAL, HERLEV}


def test_readyz_fails_when_the_store_is_closed(bed: Bed) -> None:
    assert bed.client.get("/readyz").status_code == 200
    bed.store.close()
    response = bed.client.get("/readyz")
    assert response.status_code == 503
    assert outcome_of(response)["issue"][0]["code"] == "transient"
    assert bed.post_message(example_bytes(STIN)).status_code == 503


# ------------------------------------------------------------------------------------------ receipts
def test_an_acknowledgement_is_correlated_and_forwarded_to_the_sender(bed: Bed) -> None:
    from datetime import timedelta

    from bridge.medcom.acknowledgement import build_acknowledgement
    from bridge.outbox.port import AttemptRecord

    message_id = bed.post_message(example_bytes(STIN)).json()["id"]
    [delivery] = bed.claim()
    now = bed.clock.now()
    bed.store.complete(
        delivery.id, "test-worker", AttemptRecord(now, timedelta(milliseconds=5), "delivered", 200), now
    )
    ack = orjson.dumps(build_acknowledgement(example(STIN), "ok", now=bed.clock.now))
    answers = [bed.post_message(ack, token=HERLEV_TOKEN) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].content == answers[1].content
    trace = bed.store.message_trace(message_id)
    assert trace is not None
    [receipt] = trace.deliveries[0].receipts
    assert (receipt.code, receipt.from_system) == ("ok", HERLEV)
    [forwarded] = bed.claim()
    assert forwarded.destination == HOSPITAL and forwarded.expect_receipt is False
    assert orjson.loads(forwarded.payload) == orjson.loads(ack)


def test_an_acknowledgement_from_the_wrong_system_is_403(bed: Bed) -> None:
    from bridge.medcom.acknowledgement import build_acknowledgement

    ack = orjson.dumps(build_acknowledgement(example(STIN), "ok", now=bed.clock.now))
    assert bed.post_message(ack, token=REHAB_TOKEN).status_code == 403


class CountingBatches:
    """A real store that records the size of each ``accept_many`` transaction."""

    def __init__(self, inner: OutboxStore) -> None:
        self._inner = inner
        self.batches: list[int] = []

    def accept_many(self, requests: Sequence[AcceptRequest]) -> list[AcceptResult | StoreError]:
        self.batches.append(len(requests))
        return self._inner.accept_many(requests)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_concurrent_senders_are_each_answered_after_their_own_message_is_stored(
    bed_factory: BedFactory,
) -> None:
    import threading

    import httpx

    from bridge.simulators import traffic

    counting: list[CountingBatches] = []

    def wrap(store: OutboxStore) -> OutboxStore:
        counting.append(CountingBatches(store))
        return counting[0]  # type: ignore[return-value]

    bed = bed_factory(store_wrapper=wrap)
    messages = [traffic.notification(traffic.admission(500 + n)) for n in range(24)]
    answers: dict[str, httpx.Response] = {}

    headers = {"Content-Type": "application/fhir+json", "Authorization": f"Bearer {HOSPITAL_TOKEN}"}

    def send(chunk: list[dict[str, Any]]) -> None:
        with httpx.Client(base_url=str(bed.client.base_url), timeout=30, headers=headers) as client:
            for message in chunk:
                answers[traffic.header_id(message)] = client.post(
                    "/fhir/$process-message", content=orjson.dumps(message)
                )

    threads = [threading.Thread(target=send, args=(messages[k::6],)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(answers) == sorted(traffic.header_id(m) for m in messages)
    assert {a.status_code for a in answers.values()} == {200}
    for header_id, answer in answers.items():  # each answer names its own message, which is stored
        trace = bed.store.message_trace(answer.json()["id"])
        assert trace is not None and trace.message.header_id == header_id
    assert sum(counting[0].batches) == len(messages) == bed.count("messages")
