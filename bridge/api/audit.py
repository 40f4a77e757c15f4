"""``GET /fhir/AuditEvent``: search the audit trail (auditors only), answered as a FHIR searchset Bundle.

Search parameters (FHIR R4 AuditEvent, as far as the bridge's records carry them):

- ``date``: ``recorded``, with the prefixes ``eq`` (default), ``ge``, ``gt``, ``le``, ``lt``; a date
  (``2026-11-26``) or a dateTime with a zone; repeat it for a range (``date=ge...&date=lt...``);
- ``entity``: what the event was about - a MessageHeader.id, the bridge's message id, or
  ``system|value`` of an entity identifier;
- ``agent``: who took part - a system id, ``operator:<name>`` or ``auditor:<name>``;
- ``patient``: the citizen - a CPR number (``2509479989``, ``Patient/2509479989`` or
  ``urn:oid:1.2.208.176.1.2|2509479989``) or a citizen key (``urn:fhir-bridge:citizen-key|<key>``). A CPR
  number is turned into its citizen key with the deployment secret, so it finds every record about the
  citizen, also those that name them by key only (see ``bridge.audit``).
- ``_count`` (1-500, default 50); the ``next`` link continues after the last entry returned.

Entries come oldest first; each AuditEvent's id is its place in the hash chain (``seq``). Every search
is itself audited. The search reads the trail in pages and filters here: it is meant for an auditor's
questions, not for bulk export (``fhir-bridge audit verify`` walks the whole chain).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import anyio.to_thread
import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from bridge import audit
from bridge.api.deps import AuditorCaller, clock_of, settings_of, store_of
from bridge.api.errors import error_responses
from bridge.errors import InvalidInput
from bridge.fhir.identifiers import CPR_SYSTEM
from bridge.fhir.outcome import Issue, Outcome
from bridge.outbox.keys import citizen_key
from bridge.outbox.port import AuditEntry, NotFound, OutboxStore

router = APIRouter(tags=["Audit"])

#: Who may search the audit trail: the auditor role (a system or an operator gets 403).
AuditReader = AuditorCaller

FHIR_JSON = "application/fhir+json"
MAX_COUNT = 500
DEFAULT_COUNT = 50
_PAGE = 1000
_PARAMS = frozenset({"date", "entity", "agent", "patient", "_count", "_after", "_format"})
_CPR = re.compile(r"^\d{6}-?\d{4}$")
_DATE = re.compile(r"^(eq|ge|gt|le|lt)?(\d{4}-\d{2}-\d{2})(T[0-9:.]+(Z|[+-]\d{2}:\d{2}))?$")


def _bad(parameter: str, diagnostics: str) -> InvalidInput:
    return InvalidInput(Outcome([Issue("error", "invalid", diagnostics, (parameter,))]))


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A parsed search: each list is AND-ed (every bound must hold, any given value must match)."""

    after: list[datetime] = field(default_factory=list)  # recorded >= (inclusive)
    before: list[datetime] = field(default_factory=list)  # recorded < (exclusive)
    entities: list[tuple[str | None, str]] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    patients: list[tuple[str | None, str | None]] = field(default_factory=list)  # (cpr, citizen key)
    count: int = DEFAULT_COUNT
    after_seq: int = 0


def _date_bounds(value: str) -> tuple[datetime | None, datetime | None]:
    """The [from, to) interval a ``date`` value asks for."""
    m = _DATE.match(value)
    if m is None:
        raise _bad(
            "date",
            "date must be a date (YYYY-MM-DD) or a dateTime with a zone, with an optional prefix "
            "eq, ge, gt, le or lt",
        )
    prefix = m.group(1) or "eq"
    try:
        if m.group(3):
            start = datetime.fromisoformat(m.group(2) + m.group(3).replace("Z", "+00:00")).astimezone(UTC)
            end = start + timedelta(microseconds=1)
        else:
            start = datetime.fromisoformat(m.group(2)).replace(tzinfo=UTC)
            end = start + timedelta(days=1)
    except ValueError:
        raise _bad("date", "date is not a valid date or dateTime") from None
    return {
        "eq": (start, end),
        "ge": (start, None),
        "gt": (end, None),
        "le": (None, end),
        "lt": (None, start),
    }[prefix]


def _token(value: str) -> tuple[str | None, str]:
    system, bar, code = value.partition("|")
    return (system or None, code) if bar else (None, value)


def _patient(value: str, secret: bytes) -> tuple[str | None, str | None]:
    system, code = _token(value.removeprefix("Patient/"))
    if system == audit.CITIZEN_KEY_SYSTEM:
        return None, code
    if system not in (None, CPR_SYSTEM) or not _CPR.match(code):
        raise _bad("patient", "patient must be a CPR number or urn:fhir-bridge:citizen-key|<key>")
    cpr = code.replace("-", "")
    return cpr, citizen_key(cpr, secret)


def parse_query(params: list[tuple[str, str]], secret: bytes) -> AuditQuery:
    """The search a query string asks for; ``InvalidInput`` (400) naming the parameter otherwise."""
    query = AuditQuery()
    count = DEFAULT_COUNT
    after_seq = 0
    for name, value in params:
        if name not in _PARAMS:
            raise _bad(name, f"unknown search parameter {name!r}; use date, entity, agent, patient, _count")
        if name == "date":
            start, end = _date_bounds(value)
            if start is not None:
                query.after.append(start)
            if end is not None:
                query.before.append(end)
        elif name == "entity":
            query.entities.append(_token(value.split("/", 1)[-1] if "|" not in value else value))
        elif name == "agent":
            query.agents.append(value.split("/", 1)[-1] if value.startswith("Device/") else value)
        elif name == "patient":
            query.patients.append(_patient(value, secret))
        elif name == "_count":
            if not value.isdigit() or not 1 <= int(value) <= MAX_COUNT:
                raise _bad("_count", f"_count must be a number from 1 to {MAX_COUNT}")
            count = int(value)
        elif name == "_after":
            if not value.isdigit():
                raise _bad("_after", "_after must be an audit record number")
            after_seq = int(value)
    return AuditQuery(
        query.after, query.before, query.entities, query.agents, query.patients, count, after_seq
    )


def _identifiers(entity: dict[str, Any]) -> list[tuple[str | None, str]]:
    found: list[tuple[str | None, str]] = []
    ident = (entity.get("what") or {}).get("identifier") or {}
    if "value" in ident:
        found.append((ident.get("system"), str(ident["value"])))
    for detail in entity.get("detail") or ():
        if detail.get("type") == "citizen-key":
            found.append((audit.CITIZEN_KEY_SYSTEM, str(detail.get("valueString"))))
    return found


def matches(entry: AuditEntry, body: dict[str, Any], query: AuditQuery) -> bool:
    """Whether one audit entry answers ``query``."""
    recorded = entry.record.recorded_at
    if any(recorded < bound for bound in query.after) or any(recorded >= b for b in query.before):
        return False
    entities = [i for e in body.get("entity") or () for i in _identifiers(e)]
    for system, value in query.entities:
        if not (
            (system is None and value == entry.record.message_id)
            or any(v == value and (system is None or s == system) for s, v in entities)
        ):
            return False
    agents = {
        str(((a.get("who") or {}).get("identifier") or {}).get("value")) for a in body.get("agent") or ()
    }
    if any(agent not in agents for agent in query.agents):
        return False
    for cpr, key in query.patients:
        if not any(
            (s == CPR_SYSTEM and v == cpr) or (s == audit.CITIZEN_KEY_SYSTEM and v == key)
            for s, v in entities
        ):
            return False
    return True


def search(store: OutboxStore, query: AuditQuery) -> tuple[list[tuple[AuditEntry, dict[str, Any]]], bool]:
    """Up to ``query.count`` matching entries after ``query.after_seq``, and whether more may follow."""
    found: list[tuple[AuditEntry, dict[str, Any]]] = []
    after = query.after_seq
    while True:
        page = store.read_audit(after_seq=after, limit=_PAGE)
        for entry in page:
            # No early stop at a ``date`` bound: recorded_at follows seq closely but not strictly
            # (several nodes, several clocks), so the whole trail after ``after_seq`` is read.
            body = orjson.loads(entry.record.body)
            if isinstance(body, dict) and matches(entry, body, query):
                found.append((entry, body))
                if len(found) > query.count:
                    return found[: query.count], True
        if len(page) < _PAGE:
            return found, False
        after = page[-1].seq


def resource(entry: AuditEntry, body: dict[str, Any]) -> dict[str, Any]:
    """The stored AuditEvent with its place in the chain as id."""
    rest = {k: v for k, v in body.items() if k not in ("resourceType", "id")}
    return {"resourceType": "AuditEvent", "id": str(entry.seq), **rest}


def searchset(
    base: str, params: list[tuple[str, str]], found: list[tuple[AuditEntry, dict[str, Any]]], more: bool
) -> dict[str, Any]:
    """The searchset Bundle of a page of matches, with self and (when ``more``) next links."""
    kept = [(k, v) for k, v in params if k != "_after"]
    links = [{"relation": "self", "url": f"{base}?{urlencode(params)}" if params else base}]
    if more and found:
        after = urlencode([*kept, ("_after", found[-1][0].seq)])
        links.append({"relation": "next", "url": f"{base}?{after}"})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {"fullUrl": f"{base}/{entry.seq}", "resource": resource(entry, body), "search": {"mode": "match"}}
            for entry, body in found
        ],
    }


def _run_search(
    store: OutboxStore, query: AuditQuery, audited: Callable[[int], Any]
) -> tuple[list[tuple[AuditEntry, dict[str, Any]]], bool]:
    found, more = search(store, query)
    store.append_audit(audited(len(found)))
    return found, more


@router.get(
    "/fhir/AuditEvent",
    summary="Search the audit trail",
    description="AuditEvents (FHIR R4) of every accept, rejection, delivery outcome, receipt, replay, trace "
    "read and console action, oldest first, as a searchset Bundle. Parameters: `date` (prefixes eq, ge, gt, "
    "le, lt), `entity` (MessageHeader.id or message id), `agent` (system id, operator:<name>), `patient` "
    "(CPR number or citizen key), `_count`. Auditors only; every search is itself audited.",
    responses={
        200: {"description": "A searchset Bundle", "content": {FHIR_JSON: {}}},
        **error_responses(400, 401, 403, 503),
    },
)
async def search_audit(request: Request, caller: AuditReader) -> Response:
    params = list(request.query_params.multi_items())
    secret = settings_of(request).store.citizen_key_secret.get_secret_value().encode("utf-8")
    query = parse_query(params, secret)
    now = clock_of(request).now()
    # The query string names the citizen (patient=CPR): it is audited in the audit trail, nowhere else.
    text = urlencode(params)

    def audited(n: int) -> Any:
        return audit.audit_searched(recorded=now, actor=caller.name, query=text, found=n)

    found, more = await anyio.to_thread.run_sync(_run_search, store_of(request), query, audited)
    base = str(request.base_url).rstrip("/") + "/fhir/AuditEvent"
    return Response(orjson.dumps(searchset(base, params, found, more)), media_type=FHIR_JSON)


@router.get(
    "/fhir/AuditEvent/{seq}",
    summary="Read one audit record",
    description="The AuditEvent at place `seq` of the hash chain (auditors only).",
    responses={
        200: {"description": "An AuditEvent", "content": {FHIR_JSON: {}}},
        **error_responses(400, 401, 403, 404),
    },
)
async def read_audit_event(
    request: Request,
    seq: Annotated[int, Path(le=2**63 - 1)],  # a larger integer overflows the database's
    caller: AuditReader,
) -> Response:
    store = store_of(request)
    entries = await anyio.to_thread.run_sync(lambda: store.read_audit(after_seq=max(seq - 1, 0), limit=1))
    if not entries or entries[0].seq != seq:
        raise NotFound(f"AuditEvent/{seq}")
    body = orjson.loads(entries[0].record.body)
    return Response(orjson.dumps(resource(entries[0], body)), media_type=FHIR_JSON)
