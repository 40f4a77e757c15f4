"""Operator endpoints, dry runs, the CapabilityStatement and the OpenAPI document."""

from __future__ import annotations

from datetime import timedelta

import orjson
from api_bed import (
    CC_NEW,
    HERLEV,
    HERLEV_TOKEN,
    HOSPITAL,
    HOSPITAL_TOKEN,
    OPERATOR_TOKEN,
    REHAB_TOKEN,
    STIN,
    Bed,
    auth,
    example,
    example_bytes,
)
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from bridge.fhir.parse import parse_xml
from bridge.outbox.port import AttemptRecord

OPS = auth(OPERATOR_TOKEN)


def accepted(bed: Bed, name: str = STIN, token: str = HOSPITAL_TOKEN) -> str:
    response = bed.post_message(example_bytes(name), token=token)
    assert response.status_code == 200, response.text
    message_id = response.json()["id"]
    assert isinstance(message_id, str)
    return message_id


def dead_letter(bed: Bed) -> str:
    """Accept a notification and let a worker dead-letter its delivery after one 400."""
    accepted(bed)
    [claimed] = bed.claim()
    now = bed.clock.now()
    attempt = AttemptRecord(now, timedelta(milliseconds=12), "permanent", 400, "HTTP 400")
    bed.store.dead_letter(claimed.id, "test-worker", attempt, "permanent failure: HTTP 400", now)
    return claimed.id


def test_trace_shows_each_attempt(bed: Bed) -> None:
    message_id = accepted(bed)
    [claimed] = bed.claim()
    now = bed.clock.now()
    bed.store.schedule_retry(
        claimed.id,
        "test-worker",
        AttemptRecord(now, timedelta(milliseconds=30), "transient", 503, "HTTP 503"),
        now,
        now,
    )
    response = bed.client.get(f"/messages/{message_id}", headers=OPS)
    assert response.status_code == 200
    trace = response.json()
    assert trace["id"] == message_id and trace["sender"] == HOSPITAL and trace["state"] == "in-flight"
    [delivery] = trace["deliveries"]
    assert delivery["destination"] == HERLEV
    assert delivery["history"] == [
        {
            "number": 1,
            "worker_id": "test-worker",
            "started_at": now.isoformat().replace("+00:00", "Z"),
            "latency_ms": 30.0,
            "outcome": "transient",
            "status_code": 503,
            "detail": "HTTP 503",
        }
    ]
    # By MessageHeader.id too.
    header_id = example(STIN)["entry"][0]["resource"]["id"]
    assert bed.client.get(f"/messages/{header_id}", headers=OPS).json()["id"] == message_id


def test_a_system_sees_its_own_messages_only(bed: Bed) -> None:
    message_id = accepted(bed)
    assert bed.client.get(f"/messages/{message_id}", headers=auth(HOSPITAL_TOKEN)).status_code == 200
    assert bed.client.get(f"/messages/{message_id}", headers=auth(HERLEV_TOKEN)).status_code == 200
    assert bed.client.get(f"/messages/{message_id}", headers=auth(REHAB_TOKEN)).status_code == 404
    assert bed.client.get("/messages", headers=auth(REHAB_TOKEN)).json()["messages"] == []
    listed = bed.client.get("/messages", headers=auth(HERLEV_TOKEN)).json()["messages"]
    assert [m["id"] for m in listed] == [message_id]
    assert bed.client.get(f"/messages/{message_id}").status_code == 401


def test_message_list_filters(bed: Bed) -> None:
    first = accepted(bed)
    bed.clock.advance(60)
    second = accepted(bed, CC_NEW)

    def ids(**params: str) -> list[str]:
        response = bed.client.get("/messages", params=params, headers=OPS)
        assert response.status_code == 200, response.text
        return [m["id"] for m in response.json()["messages"]]

    assert ids() == [second, first]
    assert ids(kind="care-communication") == [second]
    assert ids(sender=HOSPITAL, destination=HERLEV) == [second, first]
    assert ids(destination="rehab-municipality") == []
    cut = (bed.clock.now() - timedelta(seconds=30)).isoformat()
    assert ids(**{"from": cut}) == [second]
    assert ids(to=cut) == [first]
    assert ids(limit="1", offset="1") == [first]
    bad = bed.client.get("/messages", params={"limit": "0"}, headers=OPS)
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
    naive = bed.client.get("/messages", params={"from": "2026-01-01T00:00:00"}, headers=OPS)
    assert naive.status_code == 400


def test_dead_letters_listed_and_replayed_by_an_operator(bed: Bed) -> None:
    delivery_id = dead_letter(bed)
    dead = bed.client.get("/deliveries", params={"state": "dead"}, headers=OPS).json()["deliveries"]
    assert [d["id"] for d in dead] == [delivery_id]
    assert dead[0]["last_error"] == "permanent failure: HTTP 400"
    assert (
        bed.client.post(f"/deliveries/{delivery_id}/retry", headers=auth(HOSPITAL_TOKEN)).status_code == 403
    )
    assert bed.client.get("/deliveries", headers=auth(HOSPITAL_TOKEN)).status_code == 403
    replay = bed.client.post(f"/deliveries/{delivery_id}/retry", headers=OPS)
    assert replay.status_code == 200, replay.text
    assert replay.json()["state"] == "pending"
    [again] = bed.claim()
    assert again.id == delivery_id and again.attempt == 1
    assert bed.client.post(f"/deliveries/{delivery_id}/retry", headers=OPS).status_code == 409
    assert bed.client.post("/deliveries/no-such-delivery/retry", headers=OPS).status_code == 404
    actions = [e.record.action for e in bed.store.read_audit()]
    assert actions[-1] == "delivery.replayed"
    assert bed.store.read_audit()[-1].record.actor == "operator:on-call"


def test_translate_dry_run_both_ways_stores_nothing(bed: Bed) -> None:
    to_municipal = bed.client.post(
        "/translate",
        params={"to": "municipal"},
        content=example_bytes(STIN),
        headers={"Content-Type": "application/fhir+json", **auth(HOSPITAL_TOKEN)},
    )
    assert to_municipal.status_code == 200, to_municipal.text
    event = to_municipal.json()
    assert event["format"] == "hospital-stay-event-v1" and event["code"] == "STIN"
    back = bed.client.post(
        "/translate",
        params={"to": "fhir"},
        content=orjson.dumps(event),
        headers={"Content-Type": "application/json", **auth(HOSPITAL_TOKEN)},
    )
    assert back.status_code == 200
    assert back.json()["entry"][0]["resource"]["id"] == example(STIN)["entry"][0]["resource"]["id"]
    assert bed.count("messages") == 0
    assert bed.client.post("/translate", content=b"{}").status_code == 401


def test_validate_dry_run(bed: Bed) -> None:
    ok = bed.client.post(
        "/validate",
        content=example_bytes(STIN),
        headers={"Content-Type": "application/fhir+json", **auth(HOSPITAL_TOKEN)},
    )
    assert ok.status_code == 200
    assert ok.json()["issue"][0]["severity"] == "information"
    broken = example(STIN)
    del broken["timestamp"]
    bad = bed.client.post(
        "/validate",
        content=orjson.dumps(broken),
        headers={
            "Content-Type": "application/fhir+json",
            "Accept": "application/fhir+xml",
            **auth(HOSPITAL_TOKEN),
        },
    )
    assert bad.status_code == 200 and bad.headers["content-type"] == "application/fhir+xml"
    outcome = parse_xml(bad.content)
    assert any("Bundle.timestamp" in i.get("expression", []) for i in outcome["issue"])
    assert bed.count("messages") == 0


def test_capability_statement(bed: Bed) -> None:
    response = bed.client.get("/fhir/metadata")
    assert response.status_code == 200
    statement = response.json()
    CapabilityStatement.model_validate(statement)  # valid FHIR R4
    assert statement["fhirVersion"] == "4.0.1" and statement["kind"] == "instance"
    [messaging] = statement["messaging"]
    assert messaging["reliableCache"] == 90  # 30 minutes x (2 resends + 1)
    assert "hospital-notification-message" in messaging["documentation"]
    assert len(messaging["supportedMessage"]) == 3
    assert statement["rest"][0]["operation"][0]["name"] == "process-message"
    xml = bed.client.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"})
    assert parse_xml(xml.content)["fhirVersion"] == "4.0.1"


def test_openapi_documents_every_endpoint_with_the_error_schema(bed: Bed) -> None:
    schema = bed.client.get("/openapi.json").json()
    paths = schema["paths"]
    expected = {
        ("/fhir/metadata", "get"),
        ("/fhir/$process-message", "post"),
        ("/municipal/records", "post"),
        ("/municipal/correspondence", "post"),
        ("/messages/{message_id}", "get"),
        ("/messages", "get"),
        ("/deliveries", "get"),
        ("/deliveries/{delivery_id}/retry", "post"),
        ("/translate", "post"),
        ("/validate", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/admin/mappings", "get"),
        ("/admin/mappings/reload", "post"),
        ("/fhir/AuditEvent", "get"),
        ("/fhir/AuditEvent/{seq}", "get"),
        ("/metrics", "get"),
    }
    assert {(p, m) for p, ops in paths.items() for m in ops} == expected
    for path, method in expected:
        assert paths[path][method]["summary"], path
    assert "OperationOutcome" in schema["components"]["schemas"]
    refused = paths["/fhir/$process-message"]["post"]["responses"]
    assert {"400", "401", "403", "413", "415", "422", "503"} <= set(refused)
    assert "bearer" in schema["components"]["securitySchemes"]


def test_unknown_route_and_method_are_operation_outcomes(bed: Bed) -> None:
    missing = bed.client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
    wrong = bed.client.get("/fhir/$process-message")
    assert wrong.status_code == 405 and wrong.json()["resourceType"] == "OperationOutcome"
