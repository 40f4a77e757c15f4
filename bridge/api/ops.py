"""Operator endpoints: follow a message, list messages and dead letters, replay a dead delivery.

Operators authenticate with an operator token (``operators:`` in the configuration). A system may read
the traces and lists of its own messages - those it sent or that are addressed to it - and never
another system's; replaying a dead letter is for operators only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from bridge import audit
from bridge.api.deps import AnyCaller, OperatorCaller, clock_of, store_of
from bridge.api.errors import error_responses
from bridge.auth import Caller
from bridge.outbox.port import (
    Attempt,
    DeliveryRecord,
    DeliveryTrace,
    MessageFilter,
    MessageRecord,
    MessageTrace,
    NotFound,
    OutboxStore,
    Receipt,
)

router = APIRouter(tags=["Operations"])
#: The largest page offset: far beyond any store's rows, and a larger integer overflows the database's.
MAX_OFFSET = 2**31 - 1

_DELIVERY_EXAMPLE: dict[str, Any] = {
    "id": "0b6f2f4e-3c1d-4a57-9d4e-2f1a0c9b8e71",
    "message_id": "5b3a4d0e-8f0e-4c51-9c9e-0b1a2c3d4e5f",
    "destination": "herlev-municipality",
    "state": "dead",
    "attempts": 1,
    "resends": 0,
    "created_at": "2026-03-01T09:30:00.000000Z",
    "next_attempt_at": "2026-03-01T09:30:00.000000Z",
    "first_attempt_at": "2026-03-01T09:30:00.120000Z",
    "lease_owner": None,
    "lease_expires_at": None,
    "delivered_at": None,
    "dead_at": "2026-03-01T09:30:00.140000Z",
    "last_error": "permanent failure: HTTP 400",
    "expect_receipt": True,
    "receipt_code": None,
    "receipt_at": None,
    "payload_purged": False,
}
_MESSAGE_EXAMPLE: dict[str, Any] = {
    "id": "5b3a4d0e-8f0e-4c51-9c9e-0b1a2c3d4e5f",
    "bundle_id": "a5e5b880-c087-4055-b9ec-99108695f81d",
    "header_id": "b9b4818e-02de-4cc4-b418-d20cbc7b5404",
    "sender": "herlev-gentofte-hospital",
    "kind": "hospital-notification",
    "content_type": "application/fhir+json",
    "received_at": "2026-03-01T09:30:00.000000Z",
    "state": "dead",
    "payload_purged": False,
}
_TRACE_EXAMPLE: dict[str, Any] = {
    **_MESSAGE_EXAMPLE,
    "deliveries": [
        {
            **_DELIVERY_EXAMPLE,
            "history": [
                {
                    "number": 1,
                    "worker_id": "bridge-1:7f3a",
                    "started_at": "2026-03-01T09:30:00.120000Z",
                    "latency_ms": 18.4,
                    "outcome": "permanent",
                    "status_code": 400,
                    "detail": "HTTP 400",
                }
            ],
            "receipts": [],
        }
    ],
}


def _ok(description: str, example: Any) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description, "content": {"application/json": {"example": example}}}}


def _ts(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def message_json(m: MessageRecord) -> dict[str, Any]:
    """A stored message as JSON (no payload, no citizen data)."""
    return {
        "id": m.id,
        "bundle_id": m.bundle_id,
        "header_id": m.header_id,
        "sender": m.sender,
        "kind": m.kind,
        "content_type": m.content_type,
        "received_at": _ts(m.received_at),
        "state": m.state,
        "payload_purged": m.payload_purged,
        "mapping_version": m.mapping_version,
    }


def delivery_json(d: DeliveryRecord) -> dict[str, Any]:
    """A delivery's state as JSON (no payload)."""
    return {
        "id": d.id,
        "message_id": d.message_id,
        "destination": d.destination,
        "state": d.state,
        "attempts": d.attempts,
        "resends": d.resends,
        "created_at": _ts(d.created_at),
        "next_attempt_at": _ts(d.next_attempt_at),
        "first_attempt_at": _ts(d.first_attempt_at),
        "lease_owner": d.lease_owner,
        "lease_expires_at": _ts(d.lease_expires_at),
        "delivered_at": _ts(d.delivered_at),
        "dead_at": _ts(d.dead_at),
        "last_error": d.last_error,
        "expect_receipt": d.expect_receipt,
        "receipt_code": d.receipt_code,
        "receipt_at": _ts(d.receipt_at),
        "payload_purged": d.payload_purged,
    }


def _attempt(a: Attempt) -> dict[str, Any]:
    return {
        "number": a.number,
        "worker_id": a.worker_id,
        "started_at": _ts(a.started_at),
        "latency_ms": round(a.latency.total_seconds() * 1000, 3),
        "outcome": a.outcome,
        "status_code": a.status_code,
        "detail": a.detail,
    }


def _receipt(r: Receipt) -> dict[str, Any]:
    return {
        "ack_header_id": r.ack_header_id,
        "from_system": r.from_system,
        "code": r.code,
        "received_at": _ts(r.received_at),
    }


def _delivery_trace(t: DeliveryTrace) -> dict[str, Any]:
    return {
        **delivery_json(t.delivery),
        "history": [_attempt(a) for a in t.attempts],
        "receipts": [_receipt(r) for r in t.receipts],
    }


def trace_json(trace: MessageTrace) -> dict[str, Any]:
    """A message trace: received, each delivery with every attempt and receipt, and the final state."""
    return {**message_json(trace.message), "deliveries": [_delivery_trace(d) for d in trace.deliveries]}


def visible_to(caller: Caller, trace: MessageTrace) -> bool:
    """Operators see every message; a system sees those it sent or that are addressed to it."""
    if caller.system is None:
        return True
    own = caller.system.id
    return trace.message.sender == own or any(d.delivery.destination == own for d in trace.deliveries)


def _json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type="application/json")


@router.get(
    "/messages/{message_id}",
    summary="Trace of one message",
    description="By the bridge's message id or the MessageHeader.id: when it was received, each "
    "delivery with every attempt (time, outcome, HTTP status, latency), receipts and the final state.",
    responses={**_ok("The trace", _TRACE_EXAMPLE), **error_responses(401, 403, 404, 503)},
)
async def get_message(request: Request, message_id: str, caller: AnyCaller) -> Response:
    store = store_of(request)
    trace = await anyio.to_thread.run_sync(store.message_trace, message_id)
    if trace is None or not visible_to(caller, trace):
        raise NotFound(message_id)
    read = audit.trace_read(
        recorded=clock_of(request).now(),
        actor=caller.name,
        actor_kind="system" if caller.system is not None else "operator",
        message_id=trace.message.id,
        header_id=trace.message.header_id,
        citizen_key=trace.message.citizen_key,
    )
    await anyio.to_thread.run_sync(store.append_audit, read)
    return _json(trace_json(trace))


def _list_messages(store: OutboxStore, filters: MessageFilter, caller: Caller) -> list[MessageRecord]:
    if caller.system is None:
        return store.list_messages(filters)
    own = caller.system.id
    # A system sees what it sent and what is addressed to it; both lists are merged newest first.
    sent = store.list_messages(_replace(filters, sender=own, destination=filters.destination))
    if filters.sender not in (None, own):
        sent = []
    received = (
        []
        if filters.destination not in (None, own)
        else store.list_messages(_replace(filters, sender=filters.sender, destination=own))
    )
    merged = {m.id: m for m in [*sent, *received]}
    ordered = sorted(merged.values(), key=lambda m: m.received_at, reverse=True)
    return ordered[: filters.limit]


def _replace(filters: MessageFilter, *, sender: str | None, destination: str | None) -> MessageFilter:
    return MessageFilter(
        sender=sender,
        destination=destination,
        kind=filters.kind,
        state=filters.state,
        received_from=filters.received_from,
        received_to=filters.received_to,
        limit=filters.limit,
        offset=filters.offset,
    )


@router.get(
    "/messages",
    summary="List messages",
    description="Newest first. Filters: sender, destination (system ids), kind, state, received "
    "from (inclusive) / to (exclusive) as ISO 8601 times with a timezone.",
    responses={
        **_ok("Messages", {"messages": [_MESSAGE_EXAMPLE], "limit": 50, "offset": 0}),
        **error_responses(400, 401, 403, 503),
    },
)
async def list_messages(
    request: Request,
    caller: AnyCaller,
    sender: str | None = None,
    destination: str | None = None,
    kind: str | None = None,
    state: Literal["in-flight", "delivered", "dead"] | None = None,
    received_from: Annotated[datetime | None, Query(alias="from")] = None,
    received_to: Annotated[datetime | None, Query(alias="to")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Response:
    from bridge.errors import InvalidInput
    from bridge.fhir.outcome import Issue, Outcome

    for name, value in (("from", received_from), ("to", received_to)):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(Outcome([Issue("error", "value", "A time needs a timezone", (name,))]))
    filters = MessageFilter(sender, destination, kind, state, received_from, received_to, limit, offset)
    found = await anyio.to_thread.run_sync(_list_messages, store_of(request), filters, caller)
    return _json({"messages": [message_json(m) for m in found], "limit": limit, "offset": offset})


@router.get(
    "/deliveries",
    summary="List deliveries",
    description="Deliveries in a state, oldest first; `state=dead` lists the dead letters an operator "
    "should look at (operators only).",
    responses={
        **_ok("Deliveries", {"deliveries": [_DELIVERY_EXAMPLE], "limit": 100, "offset": 0}),
        **error_responses(400, 401, 403, 503),
    },
)
async def list_deliveries(
    request: Request,
    caller: OperatorCaller,
    state: Literal["pending", "leased", "delivered", "dead"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Response:
    store = store_of(request)
    found = await anyio.to_thread.run_sync(store.list_deliveries, state, limit, offset)
    return _json({"deliveries": [delivery_json(d) for d in found], "limit": limit, "offset": offset})


def _retry(store: OutboxStore, delivery_id: str, caller: Caller, now: datetime) -> dict[str, Any]:
    # The port has no lookup of one delivery; the dead list is short (operators empty it), and the
    # store itself decides below whether the replay is allowed (NotFound, InvalidTransition).
    dead = next((d for d in store.list_deliveries("dead", limit=100_000) if d.id == delivery_id), None)
    store.retry_dead(delivery_id, now)
    if dead is None:  # replayed by someone else between the two calls
        raise NotFound(delivery_id)
    trace = store.message_trace(dead.message_id)
    header_id = trace.message.header_id if trace is not None else dead.message_id
    store.append_audit(
        audit.delivery_outcome(
            recorded=now,
            actor=caller.name,
            destination=dead.destination,
            message_id=dead.message_id,
            header_id=header_id,
            outcome="replayed",
            citizen_key=dead.citizen_key,
        )
    )
    return {**delivery_json(dead), "state": "pending", "next_attempt_at": _ts(now)}


@router.post(
    "/deliveries/{delivery_id}/retry",
    summary="Replay a dead letter",
    description="Makes a dead delivery due now with a fresh retry budget, at its original place in "
    "the citizen's order. 409 when the delivery is not dead (operators only).",
    responses={
        **_ok("The delivery, pending again", {**_DELIVERY_EXAMPLE, "state": "pending"}),
        **error_responses(401, 403, 404, 409, 503),
    },
)
async def retry_delivery(request: Request, delivery_id: str, caller: OperatorCaller) -> Response:
    now = clock_of(request).now()
    found = await anyio.to_thread.run_sync(_retry, store_of(request), delivery_id, caller, now)
    return _json(found)


# -- mappings ---------------------------------------------------------------------------------------------
@router.get(
    "/admin/mappings",
    summary="The mapping sets in force",
    description="Name and version (`name@version+digest of the files`) of every mapping set in force; each "
    "stored message records the versions that translated it (operators only).",
    responses={
        **_ok("Versions by set", {"municipal-v1": "municipal-v1@1.0.0+8f8a51d2da94"}),
        **error_responses(401, 403),
    },
)
async def get_mappings(request: Request, caller: OperatorCaller) -> Response:
    from bridge.translate import mapping_sets

    sets = await anyio.to_thread.run_sync(mapping_sets)
    return _json({name: loaded.version for name, loaded in sorted(sets.items())})


@router.post(
    "/admin/mappings/reload",
    summary="Reload the mapping sets",
    description="Loads the mapping sets from disk again, compiles them and runs every set's golden cases; "
    "only if all of that passes do the new mappings take effect (200 with the versions now in force). "
    "Otherwise the mappings in force stay and the answer is 422 with an OperationOutcome naming each "
    "problem. The same happens when the service receives SIGHUP (operators only).",
    responses={
        **_ok("Reloaded", {"swapped": True, "versions": {"municipal-v1": "municipal-v1@1.0.0+8f8a51d2da94"}}),
        **error_responses(401, 403, 422),
    },
)
async def post_mappings_reload(request: Request, caller: OperatorCaller) -> Response:
    from bridge.fhir.outcome import Issue, Outcome
    from bridge.translate import reload_mappings

    report = await anyio.to_thread.run_sync(reload_mappings)
    now = clock_of(request).now()
    await anyio.to_thread.run_sync(
        store_of(request).append_audit,
        audit.mappings_reloaded(
            recorded=now, actor=caller.name, swapped=report.swapped, versions=list(report.versions.values())
        ),
    )
    if report.swapped:
        from bridge.supervisor import reload_everywhere

        reload_everywhere()  # the other API processes of this service, if any, load the same files
        return _json(report.to_json())
    issues = [Issue("error", "invariant", problem) for problem in report.problems]
    in_force = ", ".join(report.versions.values())
    issues.append(Issue("information", "informational", f"the mappings in force stay: {in_force}"))
    return Response(
        orjson.dumps(Outcome(issues).to_fhir()), status_code=422, media_type="application/fhir+json"
    )
