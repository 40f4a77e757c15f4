"""Audit records: FHIR AuditEvent JSON for who did what, about whom, when, and with what outcome.

Every accept, rejection, delivery attempt outcome, receipt, replay, trace read, audit search and
console action leaves one AuditEvent in the store's hash-chained audit table (``OutboxStore.accept``
/ ``append_audit``), following the IHE Basic Audit Log Patterns (BALP) where they fit:

- who: ``agent`` - the requesting system (DICOM ``110150`` Application) or operator (``humanuser``),
  and the destination systems of an export;
- what: ``entity`` - the MessageHeader.id (a System Object), the resource types it carries;
- about whom: a ``Patient`` entity (role ``1``);
- when: ``recorded``; outcome: ``0`` success, ``4`` minor failure (the caller's input was refused or
  a delivery will be retried), ``8`` serious failure (a delivery was given up).

About whom. The audit trail is the one place where the citizen's CPR number (personnummer) is written
outside the payload: an auditor must be able to say about whom a message was, years later, after the
payload is purged by retention (``bridge.retention``) and whatever became of the deployment secret.
So the record of an accepted message names the citizen by CPR (system ``urn:oid:1.2.208.176.1.2``)
and carries the citizen key (the keyed hash the store routes by, ``bridge.outbox.keys``) as an entity
detail; every later record about the message (deliveries, receipts, replays, trace reads) names the
citizen by key only, which links it to the accept without repeating the number. ``GET /fhir/AuditEvent
?patient=<CPR>`` finds both kinds: the API turns the number into its key. Logs and metrics never see
either (``bridge.observability``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

from bridge.fhir.identifiers import CPR_SYSTEM
from bridge.outbox.port import AUDIT_GENESIS, AuditEntry, AuditRecord, OutboxStore, audit_hash

DICOM = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SECURITY_ROLE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
SUBTYPE_SYSTEM = "urn:fhir-bridge:audit"
#: The identifier system of citizen keys in audit records.
CITIZEN_KEY_SYSTEM = "urn:fhir-bridge:citizen-key"
#: The identifier system of system ids and operator names in audit records.
ACTOR_SYSTEM = "urn:fhir-bridge:system"
SOURCE = "fhir-bridge"

Outcome = Literal["0", "4", "8", "12"]
ActorKind = Literal["system", "operator", "bridge"]
DeliveryOutcome = Literal["delivered", "retry", "dead-lettered", "replayed"]


def _instant(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _agent(who: str, kind: ActorKind, requestor: bool) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "who": {"identifier": {"system": ACTOR_SYSTEM, "value": who}},
        "requestor": requestor,
    }
    if kind == "operator":
        agent["type"] = {"coding": [{"system": SECURITY_ROLE, "code": "humanuser", "display": "human user"}]}
    else:
        agent["type"] = {"coding": [{"system": DICOM, "code": "110150", "display": "Application"}]}
    return agent


def _patient(cpr: str | None, citizen_key: str | None) -> dict[str, Any] | None:
    if cpr is None and citizen_key is None:
        return None
    entity: dict[str, Any] = {
        "what": {
            "identifier": {"system": CPR_SYSTEM, "value": cpr}
            if cpr is not None
            else {"system": CITIZEN_KEY_SYSTEM, "value": citizen_key}
        },
        "type": {"system": AUDIT_ENTITY_TYPE, "code": "1", "display": "Person"},
        "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
    }
    if cpr is not None and citizen_key is not None:
        entity["detail"] = [{"type": "citizen-key", "valueString": citizen_key}]
    return entity


def audit_event(
    *,
    recorded: datetime,
    event: Literal["import", "export", "read", "query", "application"],
    action: Literal["C", "R", "U", "D", "E"],
    outcome: Outcome,
    actor: str,
    subtype: str,
    actor_kind: ActorKind = "system",
    message_header_id: str | None = None,
    citizen_key: str | None = None,
    patient_cpr: str | None = None,
    resource_types: Sequence[str] = (),
    destinations: Sequence[str] = (),
    description: str | None = None,
    query: str | None = None,
) -> dict[str, Any]:
    """An AuditEvent (FHIR R4 JSON); ``subtype`` is the bridge's action name.

    ``patient_cpr`` names the citizen by CPR (only the accept record does, see the module docstring);
    ``citizen_key`` links the record to every other record about the same citizen.
    """
    body: dict[str, Any] = {"resourceType": "AuditEvent", "type": _event_type(event)}
    body["subtype"] = [{"system": SUBTYPE_SYSTEM, "code": subtype}]
    body["action"] = action
    body["recorded"] = _instant(recorded)
    body["outcome"] = outcome
    if description:
        body["outcomeDesc"] = description
    body["agent"] = [_agent(actor, actor_kind, True)]
    body["agent"] += [_agent(d, "system", False) for d in destinations]
    body["source"] = {"observer": {"display": SOURCE}}
    entities: list[dict[str, Any]] = []
    if message_header_id is not None:
        entity: dict[str, Any] = {
            "what": {"identifier": {"value": message_header_id}},
            "type": {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
            "name": "MessageHeader.id",
        }
        if resource_types:
            entity["detail"] = [{"type": "resource-types", "valueString": " ".join(resource_types)}]
        entities.append(entity)
    patient = _patient(patient_cpr, citizen_key)
    if patient is not None:
        entities.append(patient)
    if query is not None:
        entities.append(
            {
                "type": {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                "query": _base64(query),
            }
        )
    if entities:
        body["entity"] = entities
    return body


def _event_type(event: str) -> dict[str, str]:
    if event == "import":
        return {"system": DICOM, "code": "110107", "display": "Import"}
    if event == "export":
        return {"system": DICOM, "code": "110106", "display": "Export"}
    if event == "application":
        return {"system": DICOM, "code": "110100", "display": "Application Activity"}
    # BALP: RESTful reads and searches are of type "rest" with the interaction as subtype.
    return {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}


def _base64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _record(
    action: str, actor: str, body: dict[str, Any], recorded: datetime, message_id: str | None
) -> AuditRecord:
    return AuditRecord(recorded, action, actor, orjson.dumps(body), message_id)


def accepted(
    *,
    recorded: datetime,
    actor: str,
    kind: str,
    message_id: str,
    header_id: str,
    citizen_key: str | None,
    destinations: Sequence[str],
    patient_cpr: str | None = None,
    resource_types: Sequence[str] = (),
) -> AuditRecord:
    """The audit record of a message accepted for delivery to ``destinations`` (names the citizen by CPR
    when ``patient_cpr`` is given)."""
    body = audit_event(
        recorded=recorded,
        event="import",
        action="C",
        outcome="0",
        actor=actor,
        subtype=f"accept:{kind}",
        message_header_id=header_id,
        citizen_key=citizen_key,
        patient_cpr=patient_cpr,
        resource_types=resource_types,
        destinations=destinations,
    )
    return _record("message.accepted", actor, body, recorded, message_id)


def rejected(
    *,
    recorded: datetime,
    actor: str,
    reason: str,
    header_id: str | None = None,
    citizen_key: str | None = None,
    actor_kind: ActorKind = "system",
) -> AuditRecord:
    """The audit record of a refused request (``reason`` names the class of problem, never PHI)."""
    body = audit_event(
        recorded=recorded,
        event="import",
        action="C",
        outcome="4",
        actor=actor,
        actor_kind=actor_kind,
        subtype="reject",
        message_header_id=header_id,
        citizen_key=citizen_key,
        description=reason,
    )
    return _record("message.rejected", actor, body, recorded, None)


_DELIVERY_OUTCOMES: dict[DeliveryOutcome, Outcome] = {
    "delivered": "0",
    "retry": "4",
    "dead-lettered": "8",
    "replayed": "0",
}


def delivery_outcome(
    *,
    recorded: datetime,
    actor: str,
    destination: str,
    message_id: str,
    header_id: str,
    outcome: DeliveryOutcome,
    citizen_key: str | None = None,
    reason: str | None = None,
    actor_kind: ActorKind | None = None,
) -> AuditRecord:
    """The audit record of a delivery attempt's outcome (delivered, to be retried, dead-lettered) or of
    an operator's replay of a dead letter."""
    kind: ActorKind = actor_kind or ("operator" if outcome == "replayed" else "bridge")
    body = audit_event(
        recorded=recorded,
        event="export",
        action="E" if outcome == "replayed" else "C",
        outcome=_DELIVERY_OUTCOMES[outcome],
        actor=actor,
        actor_kind=kind,
        subtype=f"delivery:{outcome}",
        message_header_id=header_id,
        citizen_key=citizen_key,
        destinations=(destination,),
        description=reason,
    )
    return _record(f"delivery.{outcome}", actor, body, recorded, message_id)


def receipt_received(
    *,
    recorded: datetime,
    from_system: str,
    ack_header_id: str,
    acknowledged_header_id: str,
    code: str,
    message_id: str | None,
    citizen_key: str | None = None,
    status: str = "recorded",
    forwarded_to: str | None = None,
) -> AuditRecord:
    """The audit record of a MedCom Acknowledgement received from ``from_system`` (``code`` is its
    response code; ``status`` what the bridge did with it: recorded, forwarded, duplicate, unmatched;
    ``forwarded_to`` the original sender it goes on to)."""
    body = audit_event(
        recorded=recorded,
        event="import",
        action="C",
        outcome="0" if code == "ok" else "4",
        actor=from_system,
        subtype="receipt",
        message_header_id=acknowledged_header_id,
        citizen_key=citizen_key,
        destinations=(forwarded_to,) if forwarded_to else (),
        description=f"Acknowledgement {ack_header_id}: {code}, {status}",
    )
    return _record("receipt.received", from_system, body, recorded, message_id)


def trace_read(
    *,
    recorded: datetime,
    actor: str,
    actor_kind: ActorKind,
    message_id: str,
    header_id: str,
    citizen_key: str | None,
) -> AuditRecord:
    """The audit record of a message trace read by an operator or the sending system (BALP read)."""
    body = audit_event(
        recorded=recorded,
        event="read",
        action="R",
        outcome="0",
        actor=actor,
        actor_kind=actor_kind,
        subtype="read",
        message_header_id=header_id,
        citizen_key=citizen_key,
    )
    body["subtype"].append({"system": RESTFUL_INTERACTION, "code": "read"})
    return _record("trace.read", actor, body, recorded, message_id)


def audit_searched(*, recorded: datetime, actor: str, query: str, found: int) -> AuditRecord:
    """The audit record of a search of the audit trail itself (BALP query; ``query`` is the query string)."""
    body = audit_event(
        recorded=recorded,
        event="query",
        action="E",
        outcome="0",
        actor=actor,
        actor_kind="operator",
        subtype="search",
        description=f"{found} entries",
        query=query,
    )
    body["subtype"].append({"system": RESTFUL_INTERACTION, "code": "search-type"})
    return _record("audit.searched", actor, body, recorded, None)


def console_action(
    *,
    recorded: datetime,
    actor: str,
    action: str,
    outcome: Outcome = "0",
    message_id: str | None = None,
    header_id: str | None = None,
    citizen_key: str | None = None,
    description: str | None = None,
) -> AuditRecord:
    """The audit record of an operator's action in the console (``action`` e.g. ``login``, ``logout``,
    ``login-refused``, ``view``)."""
    body = audit_event(
        recorded=recorded,
        event="application",
        action="E",
        outcome=outcome,
        actor=actor,
        actor_kind="operator",
        subtype=f"console:{action}",
        message_header_id=header_id,
        citizen_key=citizen_key,
        description=description,
    )
    return _record(f"console.{action}", actor, body, recorded, message_id)


def mappings_reloaded(
    *, recorded: datetime, actor: str, swapped: bool, versions: Sequence[str]
) -> AuditRecord:
    """An operator reloaded the mapping sets: in force (``swapped``) or refused, and the versions in force."""
    body = audit_event(
        recorded=recorded,
        event="application",
        action="E",
        outcome="0" if swapped else "4",
        actor=actor,
        actor_kind="operator",
        subtype="mappings.reload",
        description=("in force: " if swapped else "refused; in force: ") + ", ".join(versions),
    )
    return _record("mappings.reloaded" if swapped else "mappings.refused", actor, body, recorded, None)


def bundle_resource_types(bundle: dict[str, Any]) -> list[str]:
    """The distinct resource types in a message Bundle, in order of first appearance (no PHI)."""
    seen: list[str] = []
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if isinstance(kind, str) and kind not in seen:
            seen.append(kind)
    return seen


# -- verification ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TrailReport:
    """The result of walking the audit chain: how far it is intact, and the first break if any."""

    entries: int  # entries read
    head_seq: int  # the last entry's seq (0 when empty)
    head_hash: str  # the last entry's hash (the genesis hash when empty)
    broken_at: int | None = None  # seq of the first entry that does not fit the chain
    problem: str | None = None  # what is wrong there, in words

    @property
    def intact(self) -> bool:
        """True when every entry follows from the one before it."""
        return self.broken_at is None


def check_entry(entry: AuditEntry, prev: AuditEntry | None) -> str | None:
    """What is wrong with ``entry`` after ``prev`` (None: the chain's start), or None when it fits.

    An entry whose own hash no longer matches its content was changed. An entry that matches its own
    hash but not the previous entry's means records between the two were deleted (or the previous
    one rewritten together with its hash, which the same check catches at the next entry).
    """
    prev_hash = AUDIT_GENESIS if prev is None else prev.hash
    if audit_hash(entry.prev_hash, entry.record) != entry.hash:
        return f"audit record {entry.seq} was changed: its content no longer matches its hash"
    if entry.prev_hash != prev_hash:
        where = "the start of the trail" if prev is None else f"record {prev.seq}"
        return (
            f"audit record(s) missing before record {entry.seq}: it does not follow {where} "
            "(deleted, or the previous record rewritten)"
        )
    return None


def verify_trail(
    store: OutboxStore, *, page: int = 1000, anchor: tuple[int, str] | None = None
) -> TrailReport:
    """Walk the store's whole audit chain, ``page`` entries a read, and report the first break.

    A chain cannot tell that its newest records were cut off; ``anchor`` (a ``seq`` and the hash an
    earlier run reported for it, kept somewhere else) catches that: the entry must still be there
    with the same hash.
    """
    prev: AuditEntry | None = None
    count = 0
    anchored = anchor is None
    while True:
        entries = store.read_audit(after_seq=prev.seq if prev is not None else 0, limit=page)
        for entry in entries:
            problem = check_entry(entry, prev)
            if problem is not None:
                return TrailReport(count, entry.seq, entry.hash, entry.seq, problem)
            if anchor is not None and entry.seq == anchor[0]:
                if entry.hash != anchor[1]:
                    return TrailReport(
                        count,
                        entry.seq,
                        entry.hash,
                        entry.seq,
                        f"audit record {entry.seq} is not the "
                        "anchored one: its hash differs from the hash recorded earlier",
                    )
                anchored = True
            prev = entry
            count += 1
        if len(entries) < page:
            break
    head_seq, head_hash = (prev.seq, prev.hash) if prev is not None else (0, AUDIT_GENESIS)
    if not anchored and anchor is not None:
        return TrailReport(
            count,
            head_seq,
            head_hash,
            anchor[0],
            f"audit record {anchor[0]} is missing: the trail was cut back to record {head_seq}",
        )
    return TrailReport(count, head_seq, head_hash)
