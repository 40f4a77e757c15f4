"""Audit records: FHIR AuditEvent JSON for what the bridge accepted, refused and delivered.

The audit trail is the one place that records who sent what about whom (DESIGN.md: no PHI in logs).
The citizen appears by the citizen key (a keyed hash of the CPR number, see ``bridge.outbox.keys``),
which links every event about one citizen without writing the number itself; whoever holds the
deployment secret can tell which citizen a key belongs to. Each record goes into the store's
hash-chained audit table (``OutboxStore.accept`` / ``append_audit``).

Codes: AuditEvent.type is DICOM ``110107`` Import for a message received, ``110106`` Export for a
delivery; ``outcome`` is ``0`` success, ``4`` minor failure (the caller's input was refused), ``8``
serious failure (a delivery was given up).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import orjson

from bridge.outbox.port import AuditRecord

DICOM = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
#: The identifier system of citizen keys in audit records.
CITIZEN_KEY_SYSTEM = "urn:fhir-bridge:citizen-key"
#: The identifier system of system ids and operator names in audit records.
ACTOR_SYSTEM = "urn:fhir-bridge:system"
SOURCE = "fhir-bridge"

Outcome = Literal["0", "4", "8", "12"]


def _instant(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def audit_event(
    *,
    recorded: datetime,
    event: Literal["import", "export"],
    action: Literal["C", "R", "U", "D", "E"],
    outcome: Outcome,
    actor: str,
    subtype: str,
    message_header_id: str | None = None,
    citizen_key: str | None = None,
    destinations: Sequence[str] = (),
    description: str | None = None,
) -> dict[str, Any]:
    """An AuditEvent (FHIR R4 JSON) about one message; ``subtype`` is the bridge's action name."""
    code, display = ("110107", "Import") if event == "import" else ("110106", "Export")
    body: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": DICOM, "code": code, "display": display},
        "subtype": [{"system": "urn:fhir-bridge:audit", "code": subtype}],
        "action": action,
        "recorded": _instant(recorded),
        "outcome": outcome,
    }
    if description:
        body["outcomeDesc"] = description
    body["agent"] = [{"who": {"identifier": {"system": ACTOR_SYSTEM, "value": actor}}, "requestor": True}]
    body["agent"] += [
        {"who": {"identifier": {"system": ACTOR_SYSTEM, "value": d}}, "requestor": False}
        for d in destinations
    ]
    body["source"] = {"observer": {"display": SOURCE}}
    entities: list[dict[str, Any]] = []
    if message_header_id is not None:
        entities.append(
            {
                "what": {"identifier": {"value": message_header_id}},
                "type": {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
                "name": "MessageHeader.id",
            }
        )
    if citizen_key is not None:
        entities.append(
            {
                "what": {"identifier": {"system": CITIZEN_KEY_SYSTEM, "value": citizen_key}},
                "type": {"system": AUDIT_ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    if entities:
        body["entity"] = entities
    return body


def accepted(
    *,
    recorded: datetime,
    actor: str,
    kind: str,
    message_id: str,
    header_id: str,
    citizen_key: str | None,
    destinations: Sequence[str],
) -> AuditRecord:
    """The audit record of a message accepted for delivery to ``destinations``."""
    body = audit_event(
        recorded=recorded,
        event="import",
        action="C",
        outcome="0",
        actor=actor,
        subtype=f"accept:{kind}",
        message_header_id=header_id,
        citizen_key=citizen_key,
        destinations=destinations,
    )
    return AuditRecord(recorded, "message.accepted", actor, orjson.dumps(body), message_id)


def rejected(
    *,
    recorded: datetime,
    actor: str,
    reason: str,
    header_id: str | None = None,
    citizen_key: str | None = None,
) -> AuditRecord:
    """The audit record of a refused message (``reason`` names the class of problem, never PHI)."""
    body = audit_event(
        recorded=recorded,
        event="import",
        action="C",
        outcome="4",
        actor=actor,
        subtype="reject",
        message_header_id=header_id,
        citizen_key=citizen_key,
        description=reason,
    )
    return AuditRecord(recorded, "message.rejected", actor, orjson.dumps(body))


def delivery_outcome(
    *,
    recorded: datetime,
    actor: str,
    destination: str,
    message_id: str,
    header_id: str,
    outcome: Literal["delivered", "dead-lettered", "replayed"],
    citizen_key: str | None = None,
    reason: str | None = None,
) -> AuditRecord:
    """The audit record of a delivery delivered, dead-lettered or replayed by an operator."""
    body = audit_event(
        recorded=recorded,
        event="export",
        action="E" if outcome == "replayed" else "C",
        outcome="8" if outcome == "dead-lettered" else "0",
        actor=actor,
        subtype=f"delivery:{outcome}",
        message_header_id=header_id,
        citizen_key=citizen_key,
        destinations=(destination,),
        description=reason,
    )
    return AuditRecord(recorded, f"delivery.{outcome}", actor, orjson.dumps(body), message_id)


def mappings_reloaded(
    *, recorded: datetime, actor: str, swapped: bool, versions: Sequence[str]
) -> AuditRecord:
    """An operator reloaded the mapping sets: in force (``swapped``) or refused, and the versions in force."""
    body: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": DICOM, "code": "110100", "display": "Application Activity"},
        "subtype": [{"system": "urn:fhir-bridge:audit", "code": "mappings.reload"}],
        "action": "E",
        "recorded": _instant(recorded),
        "outcome": "0" if swapped else "4",
        "outcomeDesc": ("in force: " if swapped else "refused; in force: ") + ", ".join(versions),
        "agent": [{"who": {"identifier": {"system": ACTOR_SYSTEM, "value": actor}}, "requestor": True}],
        "source": {"observer": {"display": SOURCE}},
    }
    return AuditRecord(
        recorded, "mappings.reloaded" if swapped else "mappings.refused", actor, orjson.dumps(body)
    )
