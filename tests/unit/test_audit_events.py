"""Every AuditEvent the bridge writes is valid FHIR R4: who, what, about whom, when and how it went."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from bridge import audit
from bridge.outbox.port import AuditRecord

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
KEY = "f" * 64

BUILDERS: dict[str, Callable[[], AuditRecord]] = {
    "accepted": lambda: audit.accepted(
        recorded=NOW,
        actor="herlev-gentofte-hospital",
        kind="hospital-notification",
        message_id="m-1",
        header_id="h-1",
        citizen_key=KEY,
        destinations=["herlev-municipality"],
        patient_cpr="2509479989",
        resource_types=["MessageHeader", "Patient", "Encounter"],
    ),
    "retry": lambda: audit.delivery_outcome(
        recorded=NOW,
        actor="worker-1",
        destination="herlev-municipality",
        message_id="m-1",
        header_id="h-1",
        outcome="retry",
        citizen_key=KEY,
        reason="HTTP 503",
    ),
    "receipt": lambda: audit.receipt_received(
        recorded=NOW,
        from_system="herlev-municipality",
        ack_header_id="a-1",
        acknowledged_header_id="h-1",
        code="transient-error",
        message_id="m-1",
        citizen_key=KEY,
        status="forwarded",
    ),
    "trace": lambda: audit.trace_read(
        recorded=NOW,
        actor="operator:on-call",
        actor_kind="operator",
        message_id="m-1",
        header_id="h-1",
        citizen_key=KEY,
    ),
    "search": lambda: audit.audit_searched(
        recorded=NOW, actor="auditor:inspector", query="patient=2509479989", found=3
    ),
    "console": lambda: audit.console_action(
        recorded=NOW, actor="operator:on-call", action="retry", message_id="m-1", header_id="h-1"
    ),
    "reload": lambda: audit.mappings_reloaded(
        recorded=NOW, actor="operator:on-call", swapped=False, versions=["municipal-v1@1.0.0"]
    ),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_event_is_valid_fhir(name: str) -> None:
    record = BUILDERS[name]()
    body: dict[str, Any] = orjson.loads(record.body)
    AuditEvent.model_validate(body)
    assert record.recorded_at == NOW and body["recorded"] == "2026-11-26T12:00:00Z"
    [requestor] = [a for a in body["agent"] if a["requestor"]]
    assert requestor["who"]["identifier"]["value"] == record.actor
    assert requestor["type"]["coding"][0]["code"] in ("110150", "humanuser")


def test_the_accept_names_the_citizen_by_cpr_and_key_and_lists_the_resource_types() -> None:
    body = orjson.loads(BUILDERS["accepted"]().body)
    header, patient = body["entity"]
    assert header["detail"] == [{"type": "resource-types", "valueString": "MessageHeader Patient Encounter"}]
    assert patient["what"]["identifier"] == {"system": "urn:oid:1.2.208.176.1.2", "value": "2509479989"}
    assert patient["detail"] == [{"type": "citizen-key", "valueString": KEY}]
    assert patient["role"]["code"] == "1"


def test_later_events_name_the_citizen_by_key_only() -> None:
    for name in ("retry", "receipt", "trace"):
        record = BUILDERS[name]()
        assert b"2509479989" not in record.body
        patient = orjson.loads(record.body)["entity"][-1]
        assert patient["what"]["identifier"] == {"system": audit.CITIZEN_KEY_SYSTEM, "value": KEY}


def test_outcomes_and_actions() -> None:
    def outcome(name: str) -> tuple[str, str, str]:
        record = BUILDERS[name]()
        body = orjson.loads(record.body)
        return record.action, body["outcome"], body["action"]

    assert outcome("accepted") == ("message.accepted", "0", "C")
    assert outcome("retry") == ("delivery.retry", "4", "C")
    assert outcome("receipt") == ("receipt.received", "4", "C")  # a transient-error receipt
    assert outcome("trace") == ("trace.read", "0", "R")
    assert outcome("search") == ("audit.searched", "0", "E")
    assert outcome("console") == ("console.retry", "0", "E")
    assert outcome("reload") == ("mappings.refused", "4", "E")
    # The auditor's query is kept (base64, as FHIR's entity.query is) with the search record.
    search = orjson.loads(BUILDERS["search"]().body)
    assert search["entity"][0]["role"]["code"] == "24" and search["entity"][0]["query"]


def test_resource_types_of_a_bundle() -> None:
    bundle = {"entry": [{"resource": {"resourceType": t}} for t in ("MessageHeader", "Patient", "Patient")]}
    assert audit.bundle_resource_types(bundle) == ["MessageHeader", "Patient"]
    assert audit.bundle_resource_types({"entry": [{"resource": "x"}, 3]}) == []
