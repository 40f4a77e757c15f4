"""The outbox store port: what the ingress, the dispatcher and the operators ask of durable storage.

The store is where "durable before acknowledged" happens. One call, ``accept``, commits a message,
one delivery per destination and its audit record together; only then does the sender get a 2xx.
``accept_many`` commits several such requests in one transaction (one fsync for the batch).
Workers ``claim_due`` deliveries under a lease, and report back with ``complete``, ``schedule_retry``,
``dead_letter`` or ``release``. Every method takes ``now`` (or a timestamp inside its argument) from
the caller's ``Clock``; no adapter reads the system clock, so lease expiry and retry timing are testable.

The port is synchronous on purpose: both engines have solid blocking drivers (``sqlite3``, psycopg 3
with its pool), a store call is short, and the service runs store calls in a worker thread
(``anyio.to_thread``) - one implementation serves the CLI, the tests and the service, where an async
port would need a second, async SQLite driver and twin code paths.

Ordering: deliveries for the same citizen to the same destination leave in the order they were
accepted - only the oldest *open* (pending or leased) delivery of a (citizen key, destination) pair can
be claimed, so an admission that waits for a retry holds back the discharge behind it. The adapters
keep that oldest open delivery marked as the pair's *head* in every transition that opens or closes a
delivery, so a claim looks at heads only and costs the same however much waits behind them. A
dead-lettered delivery no longer holds the pair: one permanently refused message would otherwise stall
that citizen's flow until an operator acts. Replaying it (``retry_dead``) puts it back at its original
place, ahead of anything newer for the same pair that is still open.

Citizen keys are keyed hashes of the CPR number (see ``bridge.outbox.keys``); the CPR itself never
appears in a column outside the payload and the audit trail (``bridge.audit``: the accept record names
the citizen, because the audit trail is where "about whom" must be answerable).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol, TypeVar, runtime_checkable

from bridge.errors import BridgeError

_Row = TypeVar("_Row")

DeliveryState = Literal["pending", "leased", "delivered", "dead"]
MessageState = Literal["in-flight", "delivered", "dead"]
AttemptOutcome = Literal["delivered", "transient", "permanent"]
#: MedCom Acknowledgement response codes (MessageHeader.response.code).
ReceiptCode = Literal["ok", "transient-error", "fatal-error"]
AdmissionStatus = Literal["admitted", "on-leave", "discharged", "deceased", "cancelled"]
#: How an incoming message matches one already stored (MedCom reliable messaging, 043):
#: ``same``: Bundle.id and MessageHeader.id both seen - resend the original response;
#: ``header-reused``: MessageHeader.id seen with a new Bundle.id - a resubmission of a known message;
#: ``bundle-reused``: Bundle.id seen with a new MessageHeader.id - an error, Bundle.id must never be reused.
DuplicateKind = Literal["same", "header-reused", "bundle-reused"]

#: The ``prev_hash`` of the first audit entry.
AUDIT_GENESIS = "0" * 64


class StoreError(BridgeError):
    """The outbox store refused or could not perform an operation."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or is locked beyond its busy timeout; worth retrying later."""


class NotFound(StoreError):
    """No delivery or message has the given id."""


class LeaseLost(StoreError):
    """The worker no longer holds the delivery's lease (it expired and another worker claimed it)."""


class InvalidTransition(StoreError):
    """The delivery is not in a state that allows the operation (e.g. replaying one that is not dead)."""


def new_id() -> str:
    """A fresh id for a stored row: a UUID of version 7 (RFC 9562), 48 bits of Unix time in
    milliseconds followed by 74 random bits.

    Ids made later sort later, so an index on them grows at its end: a batch of new messages and
    deliveries writes one index page, where random (version 4) ids changed a page per row."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big") >> 6  # 74 random bits
    value = (
        (millis & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76  # version 7
        | (rand >> 62) << 64  # 12 bits
        | 0b10 << 62  # the RFC variant
        | (rand & ((1 << 62) - 1))  # 62 bits
    )
    return str(uuid.UUID(int=value))


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A validated, routed incoming message, as the ingress hands it to ``accept``."""

    bundle_id: str
    header_id: str
    sender: str  # the authenticated system's id
    kind: str  # e.g. "hospital-notification", "care-communication", "municipal-record"
    citizen_key: str | None  # keyed hash of the CPR number, None for messages about no citizen
    payload: bytes  # the body as received
    content_type: str
    received_at: datetime
    response: bytes = b""  # the answer given to the sender, replayed verbatim for duplicates
    mapping_version: str | None = None  # the mapping sets that translated it ("name@version+digest; ...")
    id: str = field(default_factory=new_id)


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """One destination of a message, with the bytes that will go on the wire to it."""

    destination: str  # system id
    payload: bytes
    content_type: str
    expect_receipt: bool = False  # MedCom destinations answer with an Acknowledgement
    not_before: datetime | None = None  # None: due at once
    id: str = field(default_factory=new_id)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit fact; ``body`` is the FHIR AuditEvent JSON (the place that may name the citizen)."""

    recorded_at: datetime
    action: str  # e.g. "message.accepted", "delivery.dead-lettered", "payload.purged"
    actor: str  # system id or operator name
    body: bytes
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An appended audit record with its place in the hash chain."""

    seq: int
    record: AuditRecord
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """A stored message without its payload; ``state`` summarises its deliveries."""

    id: str
    bundle_id: str
    header_id: str
    sender: str
    kind: str
    citizen_key: str | None
    content_type: str
    received_at: datetime
    response: bytes
    state: MessageState
    payload_purged: bool
    mapping_version: str | None = None


@dataclass(frozen=True, slots=True)
class AcceptResult:
    """What ``accept`` did: stored a new message, or found an earlier one (``duplicate`` says how)."""

    message: MessageRecord
    delivery_ids: tuple[str, ...]
    duplicate: DuplicateKind | None = None

    @property
    def accepted(self) -> bool:
        """True when this call stored the message; False for a duplicate."""
        return self.duplicate is None


@dataclass(frozen=True, slots=True)
class AcceptRequest:
    """One message for ``accept_many``: what ``accept`` takes, as one value."""

    message: NewMessage
    deliveries: Sequence[NewDelivery]
    audit: AuditRecord
    admission: Admission | None = None  # stored like ``set_admission``, in the same transaction


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An earlier message matching a Bundle.id / MessageHeader.id pair, and how it matches."""

    kind: DuplicateKind
    message: MessageRecord


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery leased to one worker until ``lease_expires_at``."""

    id: str
    message_id: str
    header_id: str
    destination: str
    citizen_key: str | None
    payload: bytes
    content_type: str
    attempt: int  # 1 for the first attempt of the current cycle (replay and resend start a new cycle)
    accepted_at: datetime
    first_attempt_at: datetime
    lease_expires_at: datetime
    resends: int
    expect_receipt: bool


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """The result of one try to deliver, as the dispatcher reports it (no PHI in ``detail``)."""

    started_at: datetime
    latency: timedelta
    outcome: AttemptOutcome
    status_code: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Attempt:
    """A recorded attempt, for the trace."""

    number: int
    worker_id: str
    started_at: datetime
    latency: timedelta
    outcome: AttemptOutcome
    status_code: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A delivery's state without its payload."""

    id: str
    message_id: str
    destination: str
    citizen_key: str | None
    state: DeliveryState
    attempts: int
    resends: int
    created_at: datetime
    next_attempt_at: datetime
    first_attempt_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    delivered_at: datetime | None
    dead_at: datetime | None
    last_error: str | None
    expect_receipt: bool
    receipt_code: ReceiptCode | None
    receipt_at: datetime | None
    payload_purged: bool


@dataclass(frozen=True, slots=True)
class NewReceipt:
    """A MedCom Acknowledgement received from ``from_system`` for the message ``acknowledged_header_id``."""

    ack_header_id: str  # the Acknowledgement's own MessageHeader.id (stable across its resends)
    acknowledged_header_id: str  # MessageHeader.response.identifier
    from_system: str
    code: ReceiptCode
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Receipt:
    """A stored receipt; ``delivery_id`` is None when it matched no delivery."""

    ack_header_id: str
    acknowledged_header_id: str
    from_system: str
    code: ReceiptCode
    received_at: datetime
    delivery_id: str | None


@dataclass(frozen=True, slots=True)
class ReceiptMatch:
    """The delivery a receipt acknowledges; ``duplicate`` when this receipt was recorded before."""

    delivery_id: str
    message_id: str
    duplicate: bool


@dataclass(frozen=True, slots=True)
class ReceiptCorrelation:
    """A receipt as ``record_receipts`` recorded it, and what it acknowledges.

    ``match`` is None when the receipt matches no delivery (now or when it was first recorded).
    ``message`` (the acknowledged message) and ``delivered_at`` (when the acknowledged delivery was
    delivered, None while it is not) are read for a new match only: a duplicate changes nothing.
    """

    receipt: NewReceipt
    match: ReceiptMatch | None
    message: MessageRecord | None = None
    delivered_at: datetime | None = None

    @property
    def new(self) -> bool:
        """True when this receipt matched a delivery and was not recorded before."""
        return self.match is not None and not self.match.duplicate


@dataclass(frozen=True, slots=True)
class ReceiptFollowUp:
    """What to store with a recorded receipt, in the same transaction.

    ``audit`` is appended when given. ``forward`` (e.g. the receipt queued to the original sender) is
    accepted - carrying its own audit record - only for a new match; it must be about no citizen
    (``citizen_key`` None): a receipt is about a message, and no pair lock is taken for it.
    """

    audit: AuditRecord | None = None
    forward: AcceptRequest | None = None


@dataclass(frozen=True, slots=True)
class RecordedReceipt:
    """One result of ``record_receipts``: the correlation, and the forward's ``accept`` result (None when
    nothing was forwarded; the ``StoreError`` when that forward alone failed and was rolled back)."""

    correlation: ReceiptCorrelation
    forwarded: AcceptResult | StoreError | None = None


#: Decides, from what a receipt acknowledges, what is stored with it (``record_receipts``). A pure
#: function of its argument: the store calls it inside its transaction.
ReceiptFollowUps = Callable[[ReceiptCorrelation], ReceiptFollowUp]


@dataclass(frozen=True, slots=True)
class DeliveryTrace:
    """One delivery with its attempts and receipts, oldest first."""

    delivery: DeliveryRecord
    attempts: tuple[Attempt, ...]
    receipts: tuple[Receipt, ...]


@dataclass(frozen=True, slots=True)
class MessageTrace:
    """Everything an operator needs to follow one message: received, each attempt, receipts, final state."""

    message: MessageRecord
    deliveries: tuple[DeliveryTrace, ...]


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """Filters for ``list_messages``; None means "any". Newest first."""

    sender: str | None = None
    destination: str | None = None
    kind: str | None = None
    state: MessageState | None = None
    received_from: datetime | None = None  # inclusive
    received_to: datetime | None = None  # exclusive
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Admission:
    """Where a citizen is admitted, as learned from HospitalNotifications (advis om sygehusophold)."""

    citizen_key: str
    hospital: str  # system id of the hospital that sent the notification
    status: AdmissionStatus
    since: datetime  # the notification's event time; older events never overwrite newer ones

    @property
    def is_admitted(self) -> bool:
        """True while the citizen belongs to the hospital (admitted or on leave)."""
        return self.status in ("admitted", "on-leave")


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts per delivery state and the backlog that is due now."""

    by_state: dict[str, int]
    due: int
    expired_leases: int
    oldest_due_at: datetime | None


@dataclass(frozen=True, slots=True)
class DestinationQueue:
    """One destination's backlog: open (pending, leased) and dead deliveries, and the oldest open one."""

    destination: str
    pending: int
    leased: int
    dead: int
    oldest_open_at: datetime | None  # when the oldest pending or leased delivery was created


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """How many delivered payloads and fully delivered message bodies a purge dropped."""

    deliveries: int
    messages: int


@runtime_checkable
class OutboxStore(Protocol):
    """Durable storage for messages, deliveries, attempts, receipts, admissions and the audit chain."""

    def migrate(self) -> int:
        """Apply pending schema migrations; return how many were applied."""
        ...

    def close(self) -> None:
        """Release every connection."""
        ...

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` when the database cannot answer a trivial query."""
        ...

    def accept(
        self,
        message: NewMessage,
        deliveries: Sequence[NewDelivery],
        audit: AuditRecord,
        admission: Admission | None = None,
    ) -> AcceptResult:
        """Store message, deliveries and audit record in ONE transaction, or report the earlier duplicate.

        ``admission`` is recorded as ``set_admission`` would, in the same transaction, unless the message
        is a duplicate. ``accept_many`` with one request; its ``StoreError`` is raised.
        """
        ...

    def accept_many(self, requests: Sequence[AcceptRequest]) -> list[AcceptResult | StoreError]:
        """``accept`` for several messages in ONE transaction (one commit), in order; one result per request.

        Each request is handled as ``accept`` would, duplicates included: a later request with the ids of
        an earlier one in the batch is its duplicate. A request that fails on its own (an integrity error)
        is rolled back alone and reported as the ``StoreError`` in its slot; the others commit. Audit
        records are chained in request order. When the transaction as a whole fails (database
        unavailable, locked), nothing is stored and the error is raised, as ``accept`` raises it.
        Raises ``ValueError`` before storing anything when a request has two deliveries to one destination.
        """
        ...

    def find_by_ids(self, bundle_id: str, header_id: str) -> Duplicate | None:
        """The stored message matching either id, and how it matches; None when both are new."""
        ...

    def claim_due(
        self,
        worker_id: str,
        now: datetime,
        lease: timedelta,
        limit: int,
        *,
        skip_destinations: Collection[str] = (),
        per_destination: Mapping[str, int] | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due deliveries (oldest due first), honouring per-citizen order.

        Deliveries to ``skip_destinations`` are left alone: the dispatcher names the destinations
        whose concurrency limit is reached, so their backlog does not crowd out the others.

        With ``per_destination`` (how many each destination may take now), the claim is fair between
        destinations rather than oldest first across all: each named destination gets an equal share
        of ``limit`` (at most its number, oldest first within it), what one cannot use goes to the
        others (``claim_by_destination``), and a destination not named gets what is left after them.
        Leases taken over from a worker that went quiet still come first and count against their
        destination's number.
        """
        ...

    def complete(self, delivery_id: str, worker_id: str, attempt: AttemptRecord, now: datetime) -> None:
        """Mark a leased delivery delivered and record the attempt; ``LeaseLost`` if no longer ours."""
        ...

    def complete_many(
        self,
        worker_id: str,
        completed: Sequence[tuple[str, AttemptRecord]],
        now: datetime,
        audit: Mapping[str, AuditRecord] | None = None,
    ) -> list[str]:
        """``complete`` for several deliveries in ONE transaction (one commit for a batch).

        Returns the ids no longer leased to ``worker_id`` (lease lost, or unknown); those are left
        unchanged, the others are delivered with their attempt recorded. ``audit`` holds an audit
        record by delivery id: each delivery this call completes has its record appended in the same
        transaction, in the order of ``completed`` (a lost one has none: its result does not count).
        """
        ...

    def schedule_retry(
        self, delivery_id: str, worker_id: str, attempt: AttemptRecord, retry_at: datetime, now: datetime
    ) -> None:
        """Record a failed attempt and make the delivery due again at ``retry_at``."""
        ...

    def dead_letter(
        self, delivery_id: str, worker_id: str, attempt: AttemptRecord | None, reason: str, now: datetime
    ) -> None:
        """Give up on a leased delivery: record the last attempt (if any) and park it as dead."""
        ...

    def release(self, delivery_id: str, worker_id: str, now: datetime) -> None:
        """Hand a leased delivery back unattempted (graceful shutdown); it is due at once."""
        ...

    def retry_dead(self, delivery_id: str, now: datetime) -> None:
        """Operator replay: a dead delivery becomes due now with a fresh retry budget."""
        ...

    def give_up_receipt(self, delivery_id: str, reason: str, now: datetime) -> None:
        """Park a delivered delivery whose receipt never came (resends exhausted) as dead.

        Raises ``InvalidTransition`` unless the delivery is delivered, expects a receipt and has none.
        """
        ...

    def record_attempt(self, delivery_id: str, worker_id: str, attempt: AttemptRecord) -> None:
        """Add an attempt to the trace without changing the delivery's state."""
        ...

    def record_receipt(self, receipt: NewReceipt) -> ReceiptMatch | None:
        """Store a receipt and attach it to the delivery it acknowledges; None when none matches."""
        ...

    def record_receipts(
        self, receipts: Sequence[NewReceipt], follow_up: ReceiptFollowUps
    ) -> list[RecordedReceipt]:
        """Record several receipts, each as ``record_receipt`` would, in ONE transaction (one commit).

        For each receipt, in order, the store correlates it (a later receipt with the ack id of an
        earlier one in the batch is its duplicate), calls ``follow_up`` with the correlation and stores
        what that returns - the audit record, and for a new match the forward - in the same
        transaction: a receipt is never recorded without its audit record and forward, nor forwarded
        twice. A forward that fails on its own (an integrity error) is rolled back alone and reported
        in its slot. When the transaction fails as a whole nothing is stored and the error is raised.
        Raises ``ValueError`` (nothing stored) when a forward names a citizen.
        """
        ...

    def complete_with_receipts(
        self,
        worker_id: str,
        completed: Sequence[tuple[str, AttemptRecord]],
        now: datetime,
        audit: Mapping[str, AuditRecord],
        receipts: Sequence[NewReceipt],
        follow_up: ReceiptFollowUps,
    ) -> tuple[list[str], list[RecordedReceipt]]:
        """``complete_many`` and then ``record_receipts`` in ONE transaction (one commit where there
        were two): a batch of delivered results with the receipts their receivers answered with.

        Returns what each returns: the ids whose lease was lost, and one ``RecordedReceipt`` per
        receipt. A receipt is recorded whether or not its delivery's lease was lost (the receiver did
        acknowledge the message). When the transaction fails as a whole nothing is stored and the
        error is raised.
        """
        ...

    def receipt_overdue(
        self, now: datetime, wait: timedelta, max_resends: int, limit: int
    ) -> list[DeliveryRecord]:
        """Delivered deliveries that expect a receipt, got none within ``wait``, and may still be resent."""
        ...

    def resend(self, delivery_id: str, payload: bytes, now: datetime) -> None:
        """Queue a delivered delivery again with a new envelope (``payload``), counting one resend."""
        ...

    def message_trace(self, message_id: str) -> MessageTrace | None:
        """The trace of a message by its id or its MessageHeader.id."""
        ...

    def message_record(self, message_id: str) -> MessageRecord | None:
        """A message by its id or its MessageHeader.id, without the trace of its deliveries.

        One query, where ``message_trace`` reads every delivery, attempt and receipt: for the delivery
        path, which needs only who sent a message and about whom.
        """
        ...

    def message_payload(self, message_id: str) -> bytes | None:
        """The body of a message as received (``NewMessage.payload``); None when unknown or purged."""
        ...

    def delivery_payload(self, delivery_id: str) -> bytes | None:
        """The bytes a delivery puts on the wire (after any resend); None when unknown or purged."""
        ...

    def list_messages(self, filters: MessageFilter) -> list[MessageRecord]:
        """Messages matching ``filters``, newest first."""
        ...

    def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100, offset: int = 0
    ) -> list[DeliveryRecord]:
        """Deliveries in ``state`` (all when None), oldest first."""
        ...

    def append_audit(self, record: AuditRecord) -> AuditEntry:
        """Append one record to the hash-chained audit trail."""
        ...

    def append_audit_many(self, records: Sequence[AuditRecord]) -> list[AuditEntry]:
        """Append several records to the audit trail in ONE transaction, in order (one commit for a
        batch of delivery outcomes)."""
        ...

    def read_audit(self, after_seq: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries with ``seq > after_seq``, in order."""
        ...

    def purge_payloads(self, older_than: datetime) -> PurgeResult:
        """Drop payloads of deliveries delivered before ``older_than`` (dead ones are kept for replay)."""
        ...

    def set_admission(self, admission: Admission) -> bool:
        """Record a citizen's admission state; False when a newer state is already known."""
        ...

    def current_admission(self, citizen_key: str) -> Admission | None:
        """The latest known admission state of a citizen."""
        ...

    def queue_stats(self, now: datetime) -> QueueStats:
        """Delivery counts for metrics and health."""
        ...

    def destination_queues(self) -> list[DestinationQueue]:
        """The backlog of every destination that has open or dead deliveries, by destination id."""
        ...


def fair_shares(total: int, wants: Mapping[str, int]) -> dict[str, int]:
    """``total`` split between destinations, each wanting at most ``wants[d]``: an equal share for
    each, and what one cannot use (it wants less) goes to the others. Never more than ``total`` in
    all, nor more than a destination wants. Pure."""
    shares: dict[str, int] = {}
    left = max(total, 0)
    ordered = sorted((n, d) for d, n in wants.items() if n > 0)
    for i, (want, destination) in enumerate(ordered):
        share = min(want, -(-left // (len(ordered) - i)))  # the ceiling of an equal share of what is left
        shares[destination] = share
        left -= share
    return shares


def claim_by_destination(
    limit: int,
    per_destination: Mapping[str, int],
    skip: Collection[str],
    claim_to: Callable[[str, int], list[_Row]],
    claim_rest: Callable[[int, Collection[str]], list[_Row]],
) -> list[_Row]:
    """The pending part of ``OutboxStore.claim_due`` with ``per_destination``, inside an adapter's
    transaction: ``claim_to(destination, n)`` claims up to n of one destination (oldest first),
    ``claim_rest(n, skipped)`` up to n of any destination but the skipped ones.

    First each named destination claims its fair share of ``limit`` (at most what it may take);
    then what some could not use goes to those that took their whole share; then destinations not
    named at all (none of the dispatcher's: say, one no longer configured) take what is left.
    """
    wants = {d: n for d, n in per_destination.items() if n > 0 and d not in skip}
    rows: list[_Row] = []
    for destination, share in fair_shares(limit, wants).items():
        claimed = claim_to(destination, share)
        rows += claimed
        if len(claimed) < share:
            wants[destination] = 0  # nothing more is due there
        else:
            wants[destination] -= share
    if len(rows) < limit:
        for destination, share in fair_shares(limit - len(rows), wants).items():
            rows += claim_to(destination, share)
    if len(rows) < limit:
        rows += claim_rest(limit - len(rows), {*skip, *per_destination})
    return rows


def check_accept_requests(requests: Sequence[AcceptRequest]) -> None:
    """Raise ``ValueError`` when a request has two deliveries to one destination (a caller's mistake)."""
    for request in requests:
        destinations = [d.destination for d in request.deliveries]
        if len(set(destinations)) != len(destinations):
            raise ValueError("a message has at most one delivery per destination")


def check_receipt_forward(follow_up: ReceiptFollowUp) -> None:
    """Raise ``ValueError`` when a receipt's forward names a citizen or is not one message to one place.

    Receipts take no pair lock (``record_receipts``); a forward about a citizen would need one.
    """
    forward = follow_up.forward
    if forward is None:
        return
    if forward.message.citizen_key is not None:
        raise ValueError("a receipt's forward is about no citizen (citizen_key must be None)")
    check_accept_requests([forward])


def only_result(results: Sequence[AcceptResult | StoreError]) -> AcceptResult:
    """The result of a one-request ``accept_many``, or its ``StoreError`` raised."""
    (result,) = results
    if isinstance(result, StoreError):
        raise result
    return result


def classify_duplicate(
    candidates: Sequence[MessageRecord], bundle_id: str, header_id: str
) -> Duplicate | None:
    """How stored ``candidates`` (matching either id) relate to an incoming Bundle.id / MessageHeader.id.

    A reused Bundle.id is reported even when the MessageHeader.id matches another message: reusing a
    Bundle.id is the sender's error whatever else matches.
    """
    by_bundle = next((m for m in candidates if m.bundle_id == bundle_id), None)
    by_header = next((m for m in candidates if m.header_id == header_id), None)
    if by_bundle is not None and by_header is not None and by_bundle.id == by_header.id:
        return Duplicate("same", by_bundle)
    if by_bundle is not None:
        return Duplicate("bundle-reused", by_bundle)
    if by_header is not None:
        return Duplicate("header-reused", by_header)
    return None


def audit_hash(prev_hash: str, record: AuditRecord) -> str:
    """The chain hash of ``record`` after ``prev_hash``: SHA-256 over length-prefixed fields.

    Length prefixes make the encoding unambiguous, so no two different records hash alike by
    shifting bytes between fields.
    """
    h = hashlib.sha256()
    parts = (
        prev_hash.encode(),
        format_timestamp(record.recorded_at).encode(),
        record.action.encode(),
        record.actor.encode(),
        (record.message_id or "").encode(),
        record.body,
    )
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def verify_audit_chain(entries: Sequence[AuditEntry], prev_hash: str = AUDIT_GENESIS) -> int | None:
    """The ``seq`` of the first entry that breaks the chain after ``prev_hash``; None when it is intact."""
    for entry in entries:
        if entry.prev_hash != prev_hash or audit_hash(prev_hash, entry.record) != entry.hash:
            return entry.seq
        prev_hash = entry.hash
    return None


def format_timestamp(when: datetime) -> str:
    """A fixed-width UTC text form that sorts like time (microseconds always written).

    ``isoformat`` rather than ``strftime``: the same text (``2026-03-01T09:30:15.123456Z``) for a
    fraction of the cost, and the store writes several timestamps per delivery.
    """
    if when.tzinfo is not UTC:
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("timestamps in the store must be timezone-aware")
        when = when.astimezone(UTC)
    return when.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
