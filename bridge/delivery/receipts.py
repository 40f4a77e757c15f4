"""MedCom receipts at the delivery end: correlate, forward, produce on a receiver's behalf, resend.

Three jobs, all on top of the outbox store:

- **Received Acknowledgements** (``handle_acknowledgement``, ``handle_acknowledgements`` for a batch): a
  FHIR receiver answers a delivery with a MedCom Acknowledgement, in the POST's response or later in a
  POST of its own. The bridge records it against the delivery it acknowledges and forwards it,
  unchanged, to the system that sent the original message - when that system speaks FHIR. A system
  that speaks municipal-v1 has no use for a MedCom receipt; it follows its message's state through
  ``GET /messages/{id}``. What is stored with a receipt (its audit record, the forward) is decided by a
  pure function (``receipt_follow_up``) that the store calls inside the one transaction recording the
  receipt (``OutboxStore.record_receipts``): a receipt is never recorded without its audit record and
  forward, whatever crashes, and a batch of them costs one commit.
- **Receipts on a receiver's behalf** (``queue_receipt``): a receiver that speaks municipal-v1 sends
  no MedCom receipts, so the bridge builds one for the original sender from the original message:
  ``ok`` when the receiver took it, ``fatal-error`` when it refused it, ``transient-error`` when the
  retry policy (or the resend policy) was exhausted. A FHIR receiver that refuses a message with a 4xx
  never acknowledges it either, so its ``fatal-error`` is produced the same way; likewise a FHIR
  receiver the bridge gave up on gets a ``transient-error`` (otherwise the sender waits forever).
- **Resends** (``resend_envelope``): MedCom resends a message whose receipt did not come with a new
  envelope - new Bundle.id and new timestamps (MR7.R: Bundle.timestamp and the message's own
  Provenance) - and the SAME MessageHeader.id, by which the receiver recognises the duplicate.

Every receipt is a message in the outbox like any other (one delivery, retried and traced the same
way). Its Bundle.id and MessageHeader.id derive from the acknowledged MessageHeader.id, the receiver
and the code, so the same event never queues a second receipt: the store reports it as a duplicate.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

import orjson

from bridge import audit
from bridge.clock import Clock
from bridge.errors import InvalidInput
from bridge.fhir.outcome import Issue
from bridge.fhir.parse import parse_fhir, sniff_format, to_xml
from bridge.medcom.acknowledgement import (
    EVENT as ACKNOWLEDGEMENT_EVENT,
)
from bridge.medcom.acknowledgement import (
    AckCode,
    Receipt,
    build_acknowledgement,
    medcom_issue,
    parse_acknowledgement,
)
from bridge.medcom.common import derived_id, event_code, fhir_datetime, read_message, read_provenances
from bridge.observability import metrics
from bridge.outbox.port import (
    AcceptRequest,
    AcceptResult,
    AuditRecord,
    NewDelivery,
    NewMessage,
    NewReceipt,
    OutboxStore,
    ReceiptCorrelation,
    ReceiptFollowUp,
    ReceiptMatch,
    RecordedReceipt,
    StoreError,
)
from bridge.settings import Settings

log = logging.getLogger("bridge.delivery.receipts")

FHIR_JSON = "application/fhir+json"
#: The ``kind`` of receipt messages in the outbox (the ingress classifies Acknowledgements the same way).
ACKNOWLEDGEMENT_KIND = "acknowledgement"

HandlingStatus = Literal["forwarded", "recorded", "duplicate", "unmatched"]


@dataclass(frozen=True, slots=True)
class ReceiptHandling:
    """What became of a received Acknowledgement.

    ``status``: ``forwarded`` - recorded and queued to the original sender; ``recorded`` - recorded,
    not forwarded (the sender speaks municipal-v1); ``duplicate`` - this Acknowledgement (its
    MessageHeader.id) was seen before and is ignored; ``unmatched`` - it acknowledges no message the
    bridge delivered to ``from_system``.
    """

    status: HandlingStatus
    receipt: Receipt
    match: ReceiptMatch | None = None
    forwarded: AcceptResult | None = None


@dataclass(frozen=True, slots=True)
class ReceivedAcknowledgement:
    """A readable MedCom Acknowledgement from ``from_system``, ready to be recorded.

    ``payload`` is what a forward carries (the Acknowledgement as JSON), serialised before the store's
    transaction rather than inside it.
    """

    receipt: Receipt
    from_system: str
    payload: bytes


def read_acknowledgement(ack: dict[str, Any], *, from_system: str) -> ReceivedAcknowledgement:
    """Read a MedCom Acknowledgement; raises ``InvalidMessage`` (naming each problem) when it is none."""
    return ReceivedAcknowledgement(parse_acknowledgement(ack), from_system, orjson.dumps(ack))


def handle_acknowledgement(
    settings: Settings, store: OutboxStore, clock: Clock, ack: dict[str, Any], *, from_system: str
) -> ReceiptHandling:
    """Record a MedCom Acknowledgement received from ``from_system`` and forward it to the original sender.

    Raises ``InvalidMessage`` (with an Outcome naming each problem) when ``ack`` is no readable
    Acknowledgement, and the ``StoreError`` of a forward that could not be stored.
    """
    (handled,) = handle_acknowledgements(
        settings, store, clock, [read_acknowledgement(ack, from_system=from_system)]
    )
    if isinstance(handled, StoreError):
        raise handled
    return handled


def handle_acknowledgements(
    settings: Settings, store: OutboxStore, clock: Clock, received: Sequence[ReceivedAcknowledgement]
) -> list[ReceiptHandling | StoreError]:
    """Record received Acknowledgements, their audit records and forwards in ONE store transaction.

    Each is handled as ``handle_acknowledgement`` says (``receipt_follow_up`` decides what is stored
    with it); one result per Acknowledgement, in order, or the ``StoreError`` of a forward that alone
    failed. Raises ``StoreError`` when nothing could be stored.
    """
    if not received:
        return []
    batch = AcknowledgementBatch.of(settings, clock.now(), received)
    return batch.handled(store.record_receipts(batch.receipts, batch.follow_up))


@dataclass(frozen=True, slots=True)
class AcknowledgementBatch:
    """Received Acknowledgements made ready for the store: what ``OutboxStore.record_receipts`` (or
    ``complete_with_receipts``, the dispatcher's delivered results with the receipts their receivers
    answered with) takes, and ``handled`` to read what it returns."""

    settings: Settings
    received: Sequence[ReceivedAcknowledgement]
    now: datetime
    receipts: list[NewReceipt]
    first: dict[tuple[str, str], ReceivedAcknowledgement]

    @classmethod
    def of(
        cls, settings: Settings, now: datetime, received: Sequence[ReceivedAcknowledgement]
    ) -> AcknowledgementBatch:
        # The first of several with one ack id is the one recorded (the others are its duplicates), so
        # the first one's envelope is what a forward carries.
        first: dict[tuple[str, str], ReceivedAcknowledgement] = {}
        for r in received:
            first.setdefault((r.receipt.header_id, r.from_system), r)
        return cls(settings, received, now, [new_receipt(r, now) for r in received], first)

    def follow_up(self, correlation: ReceiptCorrelation) -> ReceiptFollowUp:
        """What the store keeps with a receipt (``ReceiptFollowUps``)."""
        key = (correlation.receipt.ack_header_id, correlation.receipt.from_system)
        return receipt_follow_up(self.settings, self.first[key], correlation, self.now)

    def handled(self, recorded: Sequence[RecordedReceipt]) -> list[ReceiptHandling | StoreError]:
        """One result per Acknowledgement, in order, from what the store recorded."""
        return [
            _handled(self.settings, item, done, self.now)
            for item, done in zip(self.received, recorded, strict=True)
        ]


def new_receipt(received: ReceivedAcknowledgement, now: datetime) -> NewReceipt:
    """The store's record of a received Acknowledgement."""
    receipt = received.receipt
    return NewReceipt(
        ack_header_id=receipt.header_id,
        acknowledged_header_id=receipt.acknowledged_id,
        from_system=received.from_system,
        code=receipt.code,
        received_at=now,
    )


def receipt_status(settings: Settings, correlation: ReceiptCorrelation) -> HandlingStatus:
    """What becomes of a recorded receipt: forwarded only when it is new, matched, and its message's
    sender speaks FHIR (a municipal-v1 sender follows its message through ``GET /messages/{id}``)."""
    if correlation.match is None:
        return "unmatched"
    if correlation.match.duplicate:
        return "duplicate"
    original = correlation.message
    if original is None or not _speaks_fhir(settings, original.sender):
        return "recorded"
    return "forwarded"


def receipt_follow_up(
    settings: Settings, received: ReceivedAcknowledgement, correlation: ReceiptCorrelation, now: datetime
) -> ReceiptFollowUp:
    """What the store keeps with a recorded receipt: its audit record, and the forward to the sender.

    Pure: the store calls it inside its transaction, once it knows what the receipt acknowledges.
    """
    receipt, from_system = received.receipt, received.from_system
    status = receipt_status(settings, correlation)
    match, original = correlation.match, correlation.message
    received_record = partial(
        audit.receipt_received,
        recorded=now,
        from_system=from_system,
        ack_header_id=receipt.header_id,
        acknowledged_header_id=receipt.acknowledged_id,
        code=receipt.code,
    )
    if status != "forwarded" or match is None or original is None:
        return ReceiptFollowUp(
            audit=received_record(
                message_id=match.message_id if match is not None else None,
                citizen_key=original.citizen_key if status == "recorded" and original is not None else None,
                status=status,
            )
        )
    message = NewMessage(
        bundle_id=receipt.bundle_id,
        header_id=receipt.header_id,
        sender=from_system,
        kind=ACKNOWLEDGEMENT_KIND,
        citizen_key=None,
        payload=received.payload,
        content_type=FHIR_JSON,
        received_at=now,
    )
    # One record tells both the receipt and its forwarding, written in the forward's own transaction.
    record = received_record(
        message_id=match.message_id,
        citizen_key=original.citizen_key,
        status="forwarded",
        forwarded_to=original.sender,
    )
    return ReceiptFollowUp(forward=_forward_request(message, original.sender, record))


def _handled(
    settings: Settings, received: ReceivedAcknowledgement, done: RecordedReceipt, now: datetime
) -> ReceiptHandling | StoreError:
    """The handling of one recorded receipt, with its log line and receipt-latency metric."""
    correlation, receipt, from_system = done.correlation, received.receipt, received.from_system
    status = receipt_status(settings, correlation)
    if status == "unmatched":
        log.info("receipt %s from %s matches no delivery", receipt.header_id, from_system)
        return ReceiptHandling("unmatched", receipt)
    if status == "duplicate":
        log.info("receipt %s from %s seen before; ignored", receipt.header_id, from_system)
        return ReceiptHandling("duplicate", receipt, correlation.match)
    if correlation.delivered_at is not None:
        metrics.receipt_latency(from_system, (now - correlation.delivered_at).total_seconds())
    if status == "recorded":
        return ReceiptHandling("recorded", receipt, correlation.match)
    if isinstance(done.forwarded, StoreError):
        log.warning("receipt %s: forward not stored (%s)", receipt.header_id, type(done.forwarded).__name__)
        return done.forwarded
    original = correlation.message
    log.info(
        "receipt %s (%s) for message %s forwarded to %s",
        receipt.header_id,
        receipt.code,
        original.id if original is not None else None,
        original.sender if original is not None else None,
    )
    return ReceiptHandling("forwarded", receipt, correlation.match, done.forwarded)


def receipt_ids(acknowledged_header_id: str, receiver: str, code: AckCode) -> tuple[str, str]:
    """(Bundle.id, MessageHeader.id) of the receipt the bridge produces for one event; stable."""
    header_id = derived_id(acknowledged_header_id, "on-behalf-receipt", receiver, code)
    return derived_id(header_id, "Bundle"), header_id


def receipt_issues(code: AckCode, reason: str) -> list[Issue]:
    """The OperationOutcome issues of a receipt the bridge produces (``reason`` holds no PHI)."""
    if code == "ok":
        return []
    if code == "transient-error":
        return [
            medcom_issue(
                "MSG_Mailbox_Out_Of_Operation",
                f"the receiving system did not take the message; the bridge gave up ({reason})",
            )
        ]
    return [Issue("error", "processing", f"the receiving system refused the message ({reason})")]


def queue_receipt(
    settings: Settings,
    store: OutboxStore,
    clock: Clock,
    *,
    message_id: str,
    receiver: str,
    code: AckCode,
    reason: str = "",
) -> AcceptResult | None:
    """Queue the receipt ``receiver`` would have sent for message ``message_id``, on its behalf.

    Returns None when no receipt is due: the sender speaks municipal-v1, the message is no MedCom
    message (or is itself an Acknowledgement, KR2.R), or its payload was purged. Queuing the same
    event twice stores it once (the second result is a duplicate).
    """
    original = store.message_record(message_id)
    if original is None or original.kind == ACKNOWLEDGEMENT_KIND:
        return None
    if not _speaks_fhir(settings, original.sender):
        return None
    payload = store.message_payload(message_id)
    if payload is None:
        log.warning("message %s has no payload left; no receipt on behalf of %s", message_id, receiver)
        return None
    try:
        bundle = parse_fhir(payload, sniff_format(payload, original.content_type))
    except InvalidInput:
        return None
    if not isinstance(bundle, dict) or event_code(bundle) in (None, ACKNOWLEDGEMENT_EVENT):
        return None
    now = clock.now()
    bundle_id, header_id = receipt_ids(original.header_id, receiver, code)
    stamp = now.astimezone(UTC).replace(microsecond=0)
    try:
        ack = build_acknowledgement(
            bundle,
            code,
            issues=receipt_issues(code, reason or code),
            bundle_id=bundle_id,
            header_id=header_id,
            provenance_id=derived_id(header_id, "Provenance"),
            now=lambda: stamp,
        )
    except InvalidInput:
        log.warning("message %s cannot be acknowledged on behalf of %s", message_id, receiver)
        return None
    message = NewMessage(
        bundle_id=bundle_id,
        header_id=header_id,
        sender=receiver,
        kind=ACKNOWLEDGEMENT_KIND,
        citizen_key=None,
        payload=orjson.dumps(ack),
        content_type=FHIR_JSON,
        received_at=now,
    )
    result = _queue(store, message, original.sender, receiver, now)
    if result.accepted:
        log.info(
            "receipt %s (%s) for message %s queued on behalf of %s", header_id, code, message_id, receiver
        )
    return result


def resend_envelope(
    payload: bytes, content_type: str, now: datetime, new_id: Callable[[], str] | None = None
) -> bytes:
    """The same MedCom message in a new envelope: new Bundle.id and timestamps, same MessageHeader.id.

    The message's own Provenance (the one whose target is the MessageHeader) gets the new time as
    ``recorded``; ``occurredDateTime`` stays, it is when the event happened. The format (JSON or XML)
    is kept. Raises ``InvalidInput`` when the payload is no MedCom message.
    """
    fmt = sniff_format(payload, content_type)
    bundle = parse_fhir(payload, fmt, max_bytes=max(len(payload), 1))
    view = read_message(bundle)
    current, _ = read_provenances(view)
    stamp = fhir_datetime(now.astimezone(UTC).replace(microsecond=0))
    bundle["id"] = (new_id or _uuid)()
    bundle["timestamp"] = stamp
    if current is not None:
        current.located.resource["recorded"] = stamp
    return to_xml(bundle) if fmt == "xml" else orjson.dumps(bundle)


def _uuid() -> str:
    return str(uuid.uuid4())


def _speaks_fhir(settings: Settings, system_id: str) -> bool:
    system = settings.system(system_id)
    return system is not None and system.format == "fhir"


def _forward_request(message: NewMessage, to: str, record: AuditRecord) -> AcceptRequest:
    """``message`` (a receipt) as one delivery to ``to``, with its audit record."""
    delivery = NewDelivery(destination=to, payload=message.payload, content_type=FHIR_JSON)
    return AcceptRequest(message, [delivery], record)


def _queue(
    store: OutboxStore,
    message: NewMessage,
    to: str,
    actor: str,
    now: datetime,
    record: AuditRecord | None = None,
) -> AcceptResult:
    record = record or audit.accepted(
        recorded=now,
        actor=actor,
        kind=message.kind,
        message_id=message.id,
        header_id=message.header_id,
        citizen_key=None,
        destinations=(to,),
    )
    request = _forward_request(message, to, record)
    return store.accept(request.message, request.deliveries, request.audit)


__all__ = [
    "ACKNOWLEDGEMENT_KIND",
    "AcknowledgementBatch",
    "ReceiptHandling",
    "ReceivedAcknowledgement",
    "handle_acknowledgement",
    "handle_acknowledgements",
    "new_receipt",
    "queue_receipt",
    "read_acknowledgement",
    "receipt_follow_up",
    "receipt_ids",
    "receipt_issues",
    "receipt_status",
    "resend_envelope",
]
