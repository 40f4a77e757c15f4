"""The accept pipeline: from a request body to a committed message, or a precise refusal.

    parse -> validate -> authorise sender -> route -> translate per destination
          -> NewMessage + NewDelivery per destination + AuditRecord (+ the admission it tells)
          -> ONE transaction (``bridge.committer``: concurrent accepts share it, and its fsync)

Everything up to the commit is pure apart from one read: for a HospitalNotification or a rule-routed
record, the citizen's admission. A resent MedCom message is recognised in the commit's own transaction
(a municipal record, whose ids are derived, is looked up first). The answer to the sender is
built before the commit and stored with the message, so that a duplicate is answered with exactly
the same bytes (MedCom reliable messaging: "the original response SHALL be resent").

What the synchronous answer is: the bridge is a message handler between the sender and the real
receiver, so its 200 means "durably accepted and routed", not "received by the receiver". It is an
OperationOutcome (information) naming the bridge's message id and the receiving systems. The MedCom
Acknowledgement comes later and asynchronously - forwarded from a FHIR receiver, or made by the bridge
on behalf of a receiver that speaks municipal JSON. Answering with an Acknowledgement here would
acknowledge twice, and MedCom forbids a positive acknowledgement followed by a negative one.

Errors are raised as ``InvalidInput`` subclasses carrying an Outcome; ``bridge.api.errors`` turns
each into an OperationOutcome with its HTTP status. CPR numbers never appear in a diagnostic.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio.to_thread
import orjson
from pydantic import ValidationError

from bridge import audit
from bridge.auth import require_owner
from bridge.clock import Clock
from bridge.committer import Committer, Outcomes
from bridge.errors import InvalidInput, InvalidMessage
from bridge.fhir import identifiers as ids
from bridge.fhir.outcome import Issue, Outcome
from bridge.fhir.parse import parse_fhir, to_xml
from bridge.medcom.duplicates import Seen, decide_duplicate
from bridge.medcom.hospital_notification import StayChange, stay_change, to_event
from bridge.municipal.events import HospitalStayEvent
from bridge.observability import metrics
from bridge.outbox.keys import citizen_key
from bridge.outbox.port import (
    AcceptRequest,
    AcceptResult,
    Admission,
    Duplicate,
    MessageRecord,
    NewDelivery,
    NewMessage,
    OutboxStore,
    StoreUnavailable,
    check_accept_requests,
    new_id,
)
from bridge.routing import (
    Receiver,
    admission_from_change,
    explicit_receivers,
    medcom_receivers,
    rule_receivers,
    sender_party,
)
from bridge.settings import Settings, System

Format = Literal["json", "xml"]

FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
MUNICIPAL_JSON = "application/json"
_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir"}
_XML_TYPES = {"application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir"}
#: Kind strings stored with each message (stable: filters and metrics use them).
#: Bodies up to this size are prepared on the service's event loop (``Ingress.prepares_inline``).
INLINE_BODY_BYTES = 64 * 1024

KIND_HOSPITAL_NOTIFICATION = "hospital-notification"
KIND_CARE_COMMUNICATION = "care-communication"
KIND_ACKNOWLEDGEMENT = "acknowledgement"
KIND_MUNICIPAL_RECORD = "municipal-record"
KIND_CORRESPONDENCE = "correspondence"
#: Ids of municipal records are derived from (sender, record id, version) in this namespace.
_RECORD_NAMESPACE = uuid.UUID("0b0f1c57-8d3e-5a41-9c62-3f7e2d9a4b10")


class UnsupportedMediaType(InvalidInput):
    """The body is neither FHIR JSON nor FHIR XML (HTTP 415)."""


class PayloadTooLarge(InvalidInput):
    """The body exceeds ``limits.max_body_bytes`` (HTTP 413)."""


class Conflict(InvalidInput):
    """The ids of the message clash with a different stored message (HTTP 409)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """What the API sends back: status, body bytes and their media type."""

    status: int
    body: bytes
    content_type: str


# ------------------------------------------------------------------------------------------ pure steps
def request_format(content_type: str | None, body: bytes) -> Format:
    """``json`` or ``xml`` from the Content-Type; without one, from the first byte of the body.

    Raises ``UnsupportedMediaType`` for any other declared media type.
    """
    if content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        if media in _JSON_TYPES:
            return "json"
        if media in _XML_TYPES:
            return "xml"
        raise UnsupportedMediaType(
            Outcome(
                [
                    Issue(
                        "error",
                        "not-supported",
                        f"Unsupported media type {media[:80]!r}: send {FHIR_JSON} or {FHIR_XML}",
                    )
                ]
            )
        )
    head = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    return "xml" if head == b"<" else "json"


def answer_format(accept: str | None, request: Format) -> Format:
    """The format to answer in: what Accept asks for (FHIR JSON or XML), else the request's format."""
    if accept:
        for part in accept.split(","):
            media = part.split(";", 1)[0].strip().lower()
            if media in _XML_TYPES:
                return "xml"
            if media in _JSON_TYPES:
                return "json"
    return request


def render(resource: dict[str, Any], fmt: Format) -> tuple[bytes, str]:
    """A FHIR resource as body bytes and media type in ``fmt``."""
    if fmt == "xml":
        return to_xml(resource), FHIR_XML
    return orjson.dumps(resource), FHIR_JSON


def check_size(declared: int | None, limit: int) -> None:
    """Raise ``PayloadTooLarge`` when a declared or read body size exceeds ``limit``."""
    if declared is not None and declared > limit:
        raise PayloadTooLarge(
            Outcome([Issue("error", "too-long", f"The body is larger than the limit of {limit} bytes")])
        )


def validated_message(body: bytes, fmt: Format, settings: Settings) -> tuple[dict[str, Any], str]:
    """Parse and validate a MedCom message; return the Bundle and its kind.

    Raises ``InvalidMessage`` with the validator's Outcome (every problem with its location).
    """
    from bridge.medcom.validation import recognise, validate_message

    limits = settings.limits
    try:
        bundle = parse_fhir(body, fmt, max_bytes=limits.max_body_bytes, max_depth=limits.max_depth)
    except InvalidInput as exc:
        raise InvalidMessage(exc.outcome) from exc
    kind = recognise(bundle) if bundle.get("type") == "message" else None
    if kind is None:
        raise InvalidMessage(
            Outcome(
                [
                    Issue(
                        "error",
                        "not-supported",
                        "Not a MedCom message: $process-message takes a HospitalNotification, "
                        "CareCommunication or Acknowledgement Bundle",
                        ("Bundle",),
                    )
                ]
            )
        )
    outcome = validate_message(bundle)
    if outcome.has_errors:
        raise InvalidMessage(Outcome(outcome.errors))
    return bundle, kind


def authorise_sender(system: System, bundle: dict[str, Any]) -> None:
    """Raise ``Forbidden`` unless ``system`` owns the organisation in MessageHeader.sender."""
    sor, gln = sender_party(bundle)
    require_owner(system, sor=sor, gln=gln, where="Bundle.entry[0].resource.sender")


def patient_number(bundle: dict[str, Any]) -> str | None:
    """The CPR or X-eCPR number of the message's (first) Patient, or None."""
    for e in bundle.get("entry") or []:
        res = e.get("resource") if isinstance(e, dict) else None
        if isinstance(res, dict) and res.get("resourceType") == "Patient":
            for identifier in res.get("identifier") or []:
                if isinstance(identifier, dict) and identifier.get("system") in (
                    ids.CPR_SYSTEM,
                    ids.XECPR_SYSTEM,
                ):
                    value = identifier.get("value")
                    return value if isinstance(value, str) and value else None
    return None


def duplicate_reply(found: Duplicate, caller: System, bundle_id: str, header_id: str) -> Reply:
    """The answer to a message whose ids were seen before (MedCom 043, ``decide_duplicate``)."""
    if found.message.sender != caller.id:
        raise Conflict(
            Outcome(
                [
                    Issue(
                        "error",
                        "duplicate",
                        "These message ids were already used by another system",
                        ("Bundle.id",),
                    )
                ]
            )
        )
    seen = Seen(
        header_seen=found.kind in ("same", "header-reused"),
        bundle_header_id=found.message.header_id if found.kind in ("same", "bundle-reused") else None,
    )
    decision = decide_duplicate(seen, bundle_id, header_id)
    if decision.action == "reject":
        assert decision.issue is not None
        raise Conflict(Outcome([decision.issue]))
    return stored_reply(found.message)


def stored_reply(message: MessageRecord) -> Reply:
    """The answer first given for ``message``, byte for byte."""
    body = message.response
    xml = body.lstrip()[:1] == b"<"
    return Reply(200, body, FHIR_XML if xml else FHIR_JSON)


def accepted_outcome(message_id: str, header_id: str, receivers: Sequence[Receiver]) -> dict[str, Any]:
    """The synchronous answer to an accepted message (no PHI: ids and system ids only)."""
    names = ", ".join(r.system.id for r in receivers)
    return {
        "resourceType": "OperationOutcome",
        "id": message_id,
        "issue": [
            {
                "severity": "information",
                "code": "informational",
                "diagnostics": f"Accepted message {header_id} for delivery to {names}",
            }
        ],
    }


def _json_dump(model: Any) -> bytes:
    return str(model.model_dump_json(exclude_none=True)).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated, routed and translated message, ready for ``Ingress.commit``."""

    caller: System
    message: NewMessage
    deliveries: list[NewDelivery]
    receivers: tuple[Receiver, ...]
    admission: Admission | None = None
    cpr: str | None = None  # for the audit record only (the one place that names the citizen)
    resource_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceivedAcknowledgement:
    """A validated Acknowledgement from ``caller``, for the receipt handling in ``Ingress.commit``."""

    caller: System
    bundle: dict[str, Any]


# ------------------------------------------------------------------------------------------ the pipeline
@dataclass
class Ingress:
    """The accept pipeline bound to one deployment's settings, store and clock."""

    settings: Settings
    store: OutboxStore
    clock: Clock
    #: Called after each commit that queued deliveries (the dispatcher looks for work at once).
    on_queued: Callable[[], None] | None = None
    #: Batch concurrent accepts into one transaction (``bridge.committer``); False commits each alone.
    group_commit: bool = True

    def __post_init__(self) -> None:
        self._secret = self.settings.store.citizen_key_secret.get_secret_value().encode("utf-8")
        self._committer = Committer(self.store) if self.group_commit else None
        self._embedded_store = self.settings.store.url.startswith("sqlite:")
        self._on_loop: list[tuple[AcceptRequest, asyncio.Future[AcceptResult]]] = []

    def close(self) -> None:
        """Commit what is queued and stop the committer (the service is stopping)."""
        if self._committer is not None:
            self._committer.close()

    def citizen_key(self, number: str | None) -> str | None:
        """The keyed hash the store orders and routes by (None without a number)."""
        return None if not number else citizen_key(number, self._secret)

    # -- MedCom messages ---------------------------------------------------------------------------
    def process_message(
        self, caller: System, body: bytes, content_type: str | None, accept: str | None = None
    ) -> Reply:
        """Accept a MedCom message POSTed to ``$process-message`` (JSON or XML)."""
        prepared = self.prepare_message(caller, body, content_type, accept)
        return prepared if isinstance(prepared, Reply) else self.commit(prepared)

    def prepare_message(
        self, caller: System, body: bytes, content_type: str | None, accept: str | None = None
    ) -> Reply | Prepared | ReceivedAcknowledgement:
        """Everything before the commit: parse, validate, authorise, route and translate. Returns the
        answer at once (a received Acknowledgement; a duplicate that can no longer be routed) or what
        ``commit`` stores - a duplicate among those is recognised and answered there. Only short reads
        touch the store here; the service runs this step on its event loop and hands ``commit`` - the
        fsync'd writes - to a worker thread."""
        fmt = request_format(content_type, body)
        check_size(len(body), self.settings.limits.max_body_bytes)
        bundle, kind = validated_message(body, fmt, self.settings)
        authorise_sender(caller, bundle)
        if kind == KIND_ACKNOWLEDGEMENT:
            # Receipt handling recognises a repeated Acknowledgement itself (and records it only once).
            return ReceivedAcknowledgement(caller, bundle)
        bundle_id, header_id = str(bundle["id"]), str(bundle["entry"][0]["resource"]["id"])
        try:
            return self._prepare_new(caller, body, fmt, accept, bundle, kind, bundle_id, header_id)
        except InvalidInput:
            # A message that was accepted before is answered as it was then, even if routing it again
            # fails now (a receiver removed from the configuration since, say).
            found = self.store.find_by_ids(bundle_id, header_id)
            if found is not None:
                return duplicate_reply(found, caller, bundle_id, header_id)
            raise

    def _prepare_new(
        self,
        caller: System,
        body: bytes,
        fmt: Format,
        accept: str | None,
        bundle: dict[str, Any],
        kind: str,
        bundle_id: str,
        header_id: str,
    ) -> Prepared:
        """Route and translate a validated message, as a new one.

        There is no duplicate lookup before it: a resent message is recognised in the accept's own
        transaction (``OutboxStore.accept_many`` compares the ids under the write lock, which a lookup
        here could not replace anyway) and answered with the first answer, byte for byte. Resends are
        rare; a lookup on every accept would cost each new message a read of a freshly changed
        database."""
        receivers = medcom_receivers(self.settings, bundle)
        cpr = patient_number(bundle)
        key = self.citizen_key(cpr)
        event: HospitalStayEvent | None = None
        change: StayChange | None = None
        previous: Admission | None = None
        if kind == KIND_HOSPITAL_NOTIFICATION:
            previous = self.store.current_admission(key) if key is not None else None
            deceased = previous is not None and previous.status == "deceased"
            change = stay_change(bundle, previously_deceased=deceased)
            if any(r.system.format != "fhir" for r in receivers):
                # Only a municipal receiver needs the whole event (a pydantic model, the costliest
                # part of the accept after validation); FHIR receivers get the message as it came.
                event = to_event(bundle, previously_deceased=deceased)
        wire = body if fmt == "json" else orjson.dumps(bundle)
        deliveries = [self._medcom_delivery(r.system, kind, bundle, wire, event) for r in receivers]
        message_id = new_id()
        response, _ = render(accepted_outcome(message_id, header_id, receivers), answer_format(accept, fmt))
        message = NewMessage(
            bundle_id=bundle_id,
            header_id=header_id,
            sender=caller.id,
            kind=kind,
            citizen_key=key,
            payload=body,
            content_type=FHIR_XML if fmt == "xml" else FHIR_JSON,
            received_at=self.clock.now(),
            response=response,
            id=message_id,
        )
        admission = None
        if change is not None and key is not None:
            admission = admission_from_change(
                change.code, change.status_before_death, change.sent, hospital=caller.id, citizen_key=key
            )
            if previous is not None and previous.since >= admission.since:
                admission = None  # not newer than what is known: the store would keep its state anyway
        return Prepared(
            caller,
            message,
            deliveries,
            tuple(receivers),
            admission,
            cpr=cpr,
            resource_types=tuple(audit.bundle_resource_types(bundle)),
        )

    def commit(self, prepared: Prepared | ReceivedAcknowledgement) -> Reply:
        """Store a prepared message with its deliveries, its audit record and the admission it tells in
        one transaction. Answers 200 only after the commit."""
        if isinstance(prepared, ReceivedAcknowledgement):
            return self._acknowledgement(prepared.caller, prepared.bundle)
        return self._prepared_reply(prepared, self._store_request(self._prepared_request(prepared)))

    async def commit_async(self, prepared: Prepared | ReceivedAcknowledgement) -> Reply:
        """``commit`` for the event loop: the messages prepared in one turn of the loop go to the
        committer's thread together, as one batch, and are committed in one ``accept_many``
        transaction (with whatever else waits there).

        The loop never waits for the disk: while one batch syncs, it goes on reading, validating and
        routing the next. On a disk whose fsync takes milliseconds (tens of them when busy), a commit
        on the loop held every other request back for that long - and on SQLite, where processes take
        turns at the writer lock, also while another process synced. One hand-over per batch, not per
        request, keeps the thread's cost small.
        """
        if isinstance(prepared, ReceivedAcknowledgement) or self._committer is None:
            return await anyio.to_thread.run_sync(self.commit, prepared)
        request = self._prepared_request(prepared)
        check_accept_requests([request])
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AcceptResult] = loop.create_future()
        self._on_loop.append((request, future))
        if len(self._on_loop) == 1:
            loop.call_soon(self._hand_over, loop)
        result = await future
        self._accepted(request, result)
        return self._prepared_reply(prepared, result)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the committer what this turn of the loop prepared; answer each once committed."""
        batch, self._on_loop = self._on_loop, []
        assert self._committer is not None

        def committed(outcomes: Outcomes) -> None:  # on the committer's thread
            loop.call_soon_threadsafe(_settle, batch, outcomes)

        try:
            self._committer.submit_many([request for request, _ in batch], committed)
        except Exception as exc:  # the service is stopping: nothing of this batch was accepted
            _settle(batch, exc)

    def prepares_inline(self, size: int) -> bool:
        """Whether the service may prepare a body of ``size`` bytes on its event loop rather than in a
        worker thread.

        A thread hop per request costs more than the whole HTTP exchange, so small bodies are prepared
        on the loop - when the store is the embedded one, whose reads (the duplicate lookup, the
        admission) take microseconds. A database server that is away would block such a read for
        its pool timeout, and a large body takes long to validate: both stay off the loop.
        """
        return self._embedded_store and size <= INLINE_BODY_BYTES

    def _prepared_request(self, prepared: Prepared) -> AcceptRequest:
        return self._request(
            prepared.message,
            prepared.deliveries,
            prepared.receivers,
            cpr=prepared.cpr,
            resource_types=prepared.resource_types,
            admission=prepared.admission,
        )

    def _prepared_reply(self, prepared: Prepared, result: AcceptResult) -> Reply:
        message = prepared.message
        if not result.accepted:
            found = Duplicate(result.duplicate or "same", result.message)
            return duplicate_reply(found, prepared.caller, message.bundle_id, message.header_id)
        response = message.response
        return Reply(200, response, FHIR_XML if response[:1] == b"<" else FHIR_JSON)

    def _medcom_delivery(
        self,
        system: System,
        kind: str,
        bundle: dict[str, Any],
        wire: bytes,
        event: HospitalStayEvent | None,
    ) -> NewDelivery:
        if system.format == "fhir":
            # A FHIR receiver answers a MedCom message (not an Acknowledgement) with an Acknowledgement.
            return NewDelivery(system.id, wire, FHIR_JSON, expect_receipt=kind != KIND_ACKNOWLEDGEMENT)
        if kind == KIND_HOSPITAL_NOTIFICATION and event is not None:
            return NewDelivery(system.id, _json_dump(event), MUNICIPAL_JSON)
        if kind == KIND_CARE_COMMUNICATION:
            from bridge.medcom.care_communication import to_correspondence

            return NewDelivery(system.id, _json_dump(to_correspondence(bundle)), MUNICIPAL_JSON)
        raise InvalidMessage(
            Outcome(
                [
                    Issue(
                        "error",
                        "not-supported",
                        f"System {system.id!r} speaks {system.format}, which has no form for a {kind}",
                        ("Bundle.entry[0].resource.eventCoding",),
                    )
                ]
            )
        )

    def _acknowledgement(self, caller: System, bundle: dict[str, Any]) -> Reply:
        """Hand a received Acknowledgement to the receipt handling (correlate, forward to the sender).

        The answer does not depend on what became of it, so a resent Acknowledgement gets the same bytes.
        """
        from bridge.delivery.receipts import handle_acknowledgement

        handle_acknowledgement(self.settings, self.store, self.clock, bundle, from_system=caller.id)
        header_id = str(bundle["entry"][0]["resource"]["id"])
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": f"Acknowledgement {header_id} received",
                }
            ],
        }
        return Reply(200, orjson.dumps(outcome), FHIR_JSON)

    def _request(
        self,
        message: NewMessage,
        deliveries: Sequence[NewDelivery],
        receivers: Sequence[Receiver],
        *,
        cpr: str | None = None,
        resource_types: Sequence[str] = (),
        admission: Admission | None = None,
    ) -> AcceptRequest:
        """The message with its deliveries, its audit record and the admission it tells."""
        record = audit.accepted(
            patient_cpr=cpr,
            resource_types=resource_types,
            recorded=message.received_at,
            actor=message.sender,
            kind=message.kind,
            message_id=message.id,
            header_id=message.header_id,
            citizen_key=message.citizen_key,
            destinations=[r.system.id for r in receivers],
        )
        return AcceptRequest(message, deliveries, record, admission)

    def _store_request(self, request: AcceptRequest) -> AcceptResult:
        if self._committer is not None:
            result = self._committer.accept(request)
        else:
            result = self.store.accept(request.message, request.deliveries, request.audit, request.admission)
        self._accepted(request, result)
        return result

    def _accepted(self, request: AcceptRequest, result: AcceptResult) -> None:
        if result.accepted:
            metrics.accepted(request.message.kind, request.message.sender)
        if result.accepted and request.deliveries and self.on_queued is not None:
            self.on_queued()

    # -- municipal posts ------------------------------------------------------------------------------
    def municipal_record(self, caller: System, body: bytes, receivers: Sequence[str] = ()) -> Reply:
        """Accept a municipal care record in the caller's format (municipal-v1, or another mapping set such
        as borgerjournal-v1): translate now, route, store."""
        from bridge.translate import CANONICAL, fhir_to_record, loaded_set, mapping_sets, parse_record

        check_size(len(body), self.settings.limits.max_body_bytes)
        data = self._json_object(body)
        sender_format = caller.format if caller.format != "fhir" else CANONICAL
        versions: list[str] = []
        if sender_format == CANONICAL:
            record = parse_record(data)
            fhir_bundle: dict[str, Any] | None = None
            versions.append(mapping_sets()[CANONICAL].version)
        else:
            chosen = loaded_set(sender_format)
            fhir_bundle = chosen.to_fhir(data)
            record, _ = fhir_to_record(fhir_bundle)  # the canonical view: citizen, organisations, ids
            versions.append(chosen.version)
        org = record.organization
        for where, party in (
            ("organization.municipality", org.municipality),
            ("organization.unit", org.unit),
        ):
            # Organisations no system owns are the municipality's own business; one another system
            # owns would let this caller speak as that system.
            owner = self.settings.owner_of(sor=party.sor, gln=party.gln) if party.sor or party.gln else None
            if owner is not None and owner.id != caller.id:
                require_owner(caller, sor=party.sor, gln=party.gln, where=where)
        key = self.citizen_key(record.citizen.cpr)
        meta = record.metadata
        header_id = str(uuid.uuid5(_RECORD_NAMESPACE, f"{caller.id}\x00{meta.record_id}\x00{meta.version}"))
        found = self.store.find_by_ids(header_id, header_id)
        if found is not None:
            return duplicate_reply(found, caller, header_id, header_id)
        if receivers:
            resolved = explicit_receivers(self.settings, receivers)
        else:
            admission = self.store.current_admission(key) if key is not None else None
            resolved = rule_receivers(
                self.settings, sender=caller.id, kind=KIND_MUNICIPAL_RECORD, admission=admission
            )
        deliveries = []
        for r in resolved:
            wanted = r.system.format
            if wanted == sender_format:
                deliveries.append(NewDelivery(r.system.id, body, MUNICIPAL_JSON))
                continue
            if fhir_bundle is None:
                from bridge.translate import record_to_fhir

                fhir_bundle = record_to_fhir(record)
            if wanted == "fhir":
                deliveries.append(NewDelivery(r.system.id, orjson.dumps(fhir_bundle), FHIR_JSON))
            elif wanted == CANONICAL:
                deliveries.append(
                    NewDelivery(
                        r.system.id, record.model_dump_json(exclude_none=True).encode(), MUNICIPAL_JSON
                    )
                )
            else:
                target = loaded_set(wanted)
                document, _ = target.to_municipal(fhir_bundle)
                deliveries.append(NewDelivery(r.system.id, orjson.dumps(document), MUNICIPAL_JSON))
                versions.append(target.version)
        return self._accept_municipal(
            caller,
            KIND_MUNICIPAL_RECORD,
            header_id,
            header_id,
            key,
            body,
            deliveries,
            resolved,
            mapping_version="; ".join(dict.fromkeys(versions)),
            cpr=record.citizen.cpr,
        )

    def municipal_correspondence(self, caller: System, body: bytes, receivers: Sequence[str] = ()) -> Reply:
        """Accept a correspondence (correspondence-v1 JSON): it becomes a CareCommunication for FHIR
        receivers; the receiver is the correspondence's ``receiver`` organisation unless named."""
        from bridge.medcom.care_communication import build_care_communication
        from bridge.municipal.correspondence import Correspondence
        from bridge.translate import validation_issues

        check_size(len(body), self.settings.limits.max_body_bytes)
        data = self._json_object(body)
        try:
            corr = Correspondence.model_validate(data)
        except ValidationError as exc:
            raise InvalidInput(validation_issues(exc), "the correspondence is not valid") from exc
        require_owner(caller, sor=corr.sender.sor, gln=corr.sender.gln, where="sender")
        # The message ids are fixed here, before the duplicate lookup, so a resent correspondence
        # that carries its ids (``message``) is recognised; one without ids is always new.
        message = build_care_communication(corr, now=self._now_seconds)
        bundle_id, header_id = str(message["id"]), str(message["entry"][0]["resource"]["id"])
        found = self.store.find_by_ids(bundle_id, header_id)
        if found is not None:
            return duplicate_reply(found, caller, bundle_id, header_id)
        if receivers:
            resolved = explicit_receivers(self.settings, receivers)
        else:
            owner = self.settings.owner_of(sor=corr.receiver.sor, gln=corr.receiver.gln)
            if owner is None:
                from bridge.routing import Unroutable

                raise Unroutable(
                    Outcome(
                        [
                            Issue(
                                "error",
                                "not-found",
                                "No system of this bridge owns the receiver",
                                ("receiver",),
                            )
                        ]
                    )
                )
            resolved = [Receiver(owner, "receiver")]
        key = self.citizen_key(corr.citizen.cpr)
        wire: bytes | None = None
        deliveries = []
        for r in resolved:
            if r.system.format == "fhir":
                wire = wire or orjson.dumps(message)
                deliveries.append(NewDelivery(r.system.id, wire, FHIR_JSON, expect_receipt=True))
            else:
                deliveries.append(NewDelivery(r.system.id, body, MUNICIPAL_JSON))
        return self._accept_municipal(
            caller,
            KIND_CORRESPONDENCE,
            bundle_id,
            header_id,
            key,
            body,
            deliveries,
            resolved,
            cpr=corr.citizen.cpr,
        )

    def _now_seconds(self) -> Any:
        return self.clock.now().replace(microsecond=0)

    def _json_object(self, body: bytes) -> dict[str, Any]:
        from bridge.fhir.parse import parse_json

        limits = self.settings.limits
        data = parse_json(body, max_bytes=limits.max_body_bytes, max_depth=limits.max_depth)
        if not isinstance(data, dict):
            raise InvalidInput(Outcome([Issue("error", "structure", "The body must be a JSON object")]))
        return data

    def _accept_municipal(
        self,
        caller: System,
        kind: str,
        bundle_id: str,
        header_id: str,
        key: str | None,
        body: bytes,
        deliveries: list[NewDelivery],
        receivers: Sequence[Receiver],
        *,
        mapping_version: str | None = None,
        cpr: str | None = None,
    ) -> Reply:
        message_id = new_id()
        response = orjson.dumps(accepted_outcome(message_id, header_id, receivers))
        message = NewMessage(
            bundle_id=bundle_id,
            header_id=header_id,
            sender=caller.id,
            kind=kind,
            citizen_key=key,
            payload=body,
            content_type=MUNICIPAL_JSON,
            received_at=self.clock.now(),
            response=response,
            mapping_version=mapping_version,
            id=message_id,
        )
        result = self._store_request(self._request(message, deliveries, receivers, cpr=cpr))
        if not result.accepted:
            return duplicate_reply(
                Duplicate(result.duplicate or "same", result.message), caller, bundle_id, header_id
            )
        return Reply(200, response, FHIR_JSON)

    # -- audit of refusals ----------------------------------------------------------------------------
    def record_refusal(self, caller: System, exc: InvalidInput) -> None:
        """Audit a refused post by an authenticated system (best effort: a store outage is not
        reported twice)."""
        first = exc.outcome.errors[0] if exc.outcome.errors else None
        reason = f"{type(exc).__name__}: {first.code}" if first else type(exc).__name__
        metrics.rejected(reason)
        try:
            self.store.append_audit(audit.rejected(recorded=self.clock.now(), actor=caller.id, reason=reason))
        except StoreUnavailable:
            pass


def _settle(batch: list[tuple[AcceptRequest, asyncio.Future[AcceptResult]]], outcomes: Outcomes) -> None:
    """Answer the requests of a committed (or failed) batch, on the event loop."""
    for i, (_, future) in enumerate(batch):
        if future.done():  # the sender went away; what was committed stays committed
            continue
        outcome = outcomes if isinstance(outcomes, BaseException) else outcomes[i]
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
