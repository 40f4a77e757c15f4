"""The audit trail searched over HTTP (``GET /fhir/AuditEvent``), the Prometheus exposition (``GET /metrics``)
and readiness, against the real app on loopback with a real SQLite store and MedCom's official examples."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import orjson
import pytest
from api_bed import (
    CC_NEW,
    EXAMPLE_CONFIG,
    HERLEV,
    HOSPITAL,
    HOSPITAL_TOKEN,
    OPERATOR_TOKEN,
    REHAB,
    REHAB_TOKEN,
    STIN,
    Bed,
    BedFactory,
    auth,
    example,
    example_bytes,
)
from fhir.resources.R4B.bundle import Bundle

from bridge import audit
from bridge.outbox.keys import citizen_key
from bridge.settings import hash_token

#: The token of the auditor (the one role that may read the audit trail).
AUDIT_TOKEN = "auditor-token-used-in-the-audit-tests"


@pytest.fixture
def bed(bed_factory: BedFactory) -> Bed:
    """The example deployment with an auditor."""

    def with_auditor(data: dict[str, Any]) -> None:
        data["auditors"] = [{"name": "inspector", "sha256": hash_token(AUDIT_TOKEN)}]

    return bed_factory(with_auditor)


STIN_CPR = "2509479989"  # the citizen of MedCom's examples
OTHER_CPR = "1212121212"  # a second, made-up citizen for the municipal record
STIN_HEADER = example(STIN)["entry"][0]["resource"]["id"]
CC_HEADER = example(CC_NEW)["entry"][0]["resource"]["id"]


def municipal_record(cpr: str) -> bytes:
    data = json.loads((EXAMPLE_CONFIG.parent / "records" / "home-care-citizen.json").read_text("utf-8"))
    data["citizen"]["cpr"] = cpr
    return orjson.dumps(data)


def traffic(bed: Bed) -> dict[str, str]:
    """A HospitalNotification, later a CareCommunication (same citizen), then a municipal record about
    another citizen; one refused post. Returns the bridge's message ids by name."""
    ids = {}
    stin = bed.post_message(example_bytes(STIN))
    assert stin.status_code == 200, stin.text
    ids["stin"] = stin.json()["id"]
    bed.clock.advance(timedelta(days=1).total_seconds())
    cc = bed.post_message(example_bytes(CC_NEW))
    assert cc.status_code == 200, cc.text
    ids["cc"] = cc.json()["id"]
    rec = bed.client.post(
        "/municipal/records",
        content=municipal_record(OTHER_CPR),
        params={"receiver": HOSPITAL},
        headers={"Content-Type": "application/json", **auth(REHAB_TOKEN)},
    )
    assert rec.status_code == 200, rec.text
    ids["record"] = rec.json()["id"]
    refused = bed.post_message(b'{"resourceType": "Bundle"}')
    assert refused.status_code in (400, 422)
    return ids


def search(bed: Bed, **params: Any) -> list[dict[str, Any]]:
    answer = bed.client.get("/fhir/AuditEvent", params=params, headers=auth(AUDIT_TOKEN))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    bundle = answer.json()
    Bundle.model_validate(bundle)  # a valid FHIR R4 searchset, AuditEvents included
    assert bundle["type"] == "searchset"
    return [e["resource"] for e in bundle.get("entry", [])]


def subtypes(events: list[dict[str, Any]]) -> list[str]:
    return [e["subtype"][0]["code"] for e in events]


def test_search_by_patient_finds_the_citizen_by_cpr_and_by_key(bed: Bed) -> None:
    ids = traffic(bed)
    about = search(bed, patient=STIN_CPR)
    assert subtypes(about) == ["accept:hospital-notification", "accept:care-communication"]
    for event in about:
        [patient] = [e for e in event["entity"] if e.get("role", {}).get("code") == "1"]
        assert patient["what"]["identifier"] == {"system": "urn:oid:1.2.208.176.1.2", "value": STIN_CPR}
    other = search(bed, patient=f"urn:oid:1.2.208.176.1.2|{OTHER_CPR}")
    assert subtypes(other) == ["accept:municipal-record"]
    # A later record names the citizen by key only; a CPR search still finds it.
    read = bed.client.get(f"/messages/{ids['stin']}", headers=auth(OPERATOR_TOKEN))
    assert read.status_code == 200
    about = search(bed, patient=f"Patient/{STIN_CPR}")
    assert subtypes(about)[-1] == "read"
    assert STIN_CPR not in json.dumps(about[-1])
    key = citizen_key(STIN_CPR, bed.settings.store.citizen_key_secret.get_secret_value().encode())
    assert search(bed, patient=f"{audit.CITIZEN_KEY_SYSTEM}|{key}") == about
    assert search(bed, patient="0101010101") == []


def test_search_by_entity_agent_and_date(bed: Bed) -> None:
    ids = traffic(bed)
    by_header = search(bed, entity=STIN_HEADER)
    assert subtypes(by_header) == ["accept:hospital-notification"]
    assert search(bed, entity=ids["cc"]) == search(bed, entity=CC_HEADER)
    assert subtypes(search(bed, entity=CC_HEADER)) == ["accept:care-communication"]
    assert subtypes(search(bed, agent=REHAB)) == ["accept:municipal-record"]
    hospital = search(bed, agent=HOSPITAL)
    assert subtypes(hospital) == [
        "accept:hospital-notification",
        "accept:care-communication",
        "accept:municipal-record",
        "reject",
    ]
    to_herlev = subtypes(search(bed, agent=HERLEV))
    assert to_herlev == ["accept:hospital-notification", "accept:care-communication"]
    first_day = by_header[0]["recorded"][:10]
    assert subtypes(search(bed, date=first_day)) == ["accept:hospital-notification"]
    assert subtypes(search(bed, date=f"gt{first_day}", agent=HOSPITAL)) == [
        "accept:care-communication",
        "accept:municipal-record",
        "reject",
    ]
    stin_at = by_header[0]["recorded"]
    assert subtypes(search(bed, date=[f"ge{stin_at}", f"le{stin_at}"])) == ["accept:hospital-notification"]
    assert subtypes(search(bed, date=f"lt{stin_at}")) == []
    # Every search is itself audited, with the query it asked.
    searches = search(bed, agent="auditor:inspector", entity="no-such-id")
    assert searches == []
    audited = [e for e in bed.store.read_audit(limit=1000) if e.record.action == "audit.searched"]
    assert len(audited) >= 10


def test_paging_follows_the_next_link(bed: Bed) -> None:
    traffic(bed)
    first = bed.client.get(
        "/fhir/AuditEvent", params={"_count": 2, "agent": HOSPITAL}, headers=auth(AUDIT_TOKEN)
    )
    page = first.json()
    assert len(page["entry"]) == 2
    [next_link] = [link["url"] for link in page["link"] if link["relation"] == "next"]
    rest = bed.client.get(next_link, headers=auth(AUDIT_TOKEN)).json()
    assert subtypes([e["resource"] for e in page["entry"] + rest["entry"]]) == [
        "accept:hospital-notification",
        "accept:care-communication",
        "accept:municipal-record",
        "reject",
    ]
    one = bed.client.get(page["entry"][0]["fullUrl"], headers=auth(AUDIT_TOKEN))
    assert one.status_code == 200 and one.json() == page["entry"][0]["resource"]
    assert bed.client.get("/fhir/AuditEvent/999999", headers=auth(AUDIT_TOKEN)).status_code == 404


def test_only_the_audit_role_searches_and_bad_parameters_are_named(bed: Bed) -> None:
    traffic(bed)
    assert bed.client.get("/fhir/AuditEvent").status_code == 401
    for token in (HOSPITAL_TOKEN, OPERATOR_TOKEN):
        refused = bed.client.get("/fhir/AuditEvent", headers=auth(token))
        assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"
    for params, where in (
        ({"date": "yesterday"}, "date"),
        ({"date": "2026-13-40"}, "date"),
        ({"patient": "Elmer"}, "patient"),
        ({"_count": "0"}, "_count"),
        ({"subject": "x"}, "subject"),
    ):
        answer = bed.client.get("/fhir/AuditEvent", params=params, headers=auth(AUDIT_TOKEN))
        assert answer.status_code == 400, params
        outcome = answer.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["expression"] == [where]
        assert "Elmer" not in answer.text


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")))
            found[labels] = float(m.group(2))
    return found


def test_metrics_count_traffic_and_show_the_queue_without_phi(bed: Bed) -> None:
    before = bed.client.get("/metrics").text
    ids = traffic(bed)
    assert bed.client.get(f"/messages/{ids['stin']}", headers=auth(OPERATOR_TOKEN)).status_code == 200
    answer = bed.client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    text = answer.text

    def delta(name: str, **labels: str) -> float:
        key = tuple(sorted(labels.items()))
        return _samples(text, name).get(key, 0.0) - _samples(before, name).get(key, 0.0)

    accepted = "bridge_messages_accepted_total"
    assert delta(accepted, kind="hospital-notification", sender=HOSPITAL) == 1
    assert delta(accepted, kind="care-communication", sender=HOSPITAL) == 1
    assert delta(accepted, kind="municipal-record", sender=REHAB) == 1
    assert sum(v for k, v in _samples(text, "bridge_messages_rejected_total").items()) >= 1
    depth = _samples(text, "bridge_queue_depth")
    assert depth[(("destination", HERLEV), ("state", "pending"))] == 2
    assert depth[(("destination", HOSPITAL), ("state", "pending"))] == 1
    age = _samples(text, "bridge_queue_oldest_age_seconds")
    assert age[(("destination", HERLEV),)] >= timedelta(days=1).total_seconds()
    assert _samples(text, "bridge_store_up")[()] == 1
    requests = _samples(text, "bridge_request_duration_seconds_count")
    assert requests[(("method", "POST"), ("route", "/fhir/$process-message"), ("status", "200"))] >= 2
    assert any(k[0][1] == "POST" and k[2][1] in ("400", "422") for k in requests)
    assert delta("bridge_store_duration_seconds_count", operation="message_trace") == 1
    assert delta("bridge_store_duration_seconds_count", operation="append_audit") == 1  # the trace read
    # No citizen, name or message id in any label.
    for needle in (STIN_CPR, OTHER_CPR, "Elmer", "Bruno", STIN_HEADER, *ids.values()):
        assert needle not in text


def test_readyz_fails_when_the_store_is_unreachable(bed: Bed) -> None:
    assert bed.client.get("/readyz").status_code == 200
    bed.store.close()
    answer = bed.client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["resourceType"] == "OperationOutcome"
    metrics = bed.client.get("/metrics")
    assert metrics.status_code == 200
    assert _samples(metrics.text, "bridge_store_up")[()] == 0
