"""The OutboxStore conformance suite: every adapter must pass all of it, on a real database."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest

from bridge.clock import FakeClock
from bridge.outbox.port import (
    AUDIT_GENESIS,
    AcceptRequest,
    AcceptResult,
    Admission,
    AttemptRecord,
    AuditRecord,
    InvalidTransition,
    LeaseLost,
    MessageFilter,
    NewDelivery,
    NewMessage,
    NewReceipt,
    NotFound,
    OutboxStore,
    ReceiptCorrelation,
    ReceiptFollowUp,
    StoreError,
    StoreUnavailable,
    verify_audit_chain,
)

from .conftest import (
    ACK_OK,
    ACK_TRANSIENT,
    ADMISSION,
    DISCHARGE,
    DUPLICATE_A,
    DUPLICATE_B,
    LEAVE,
    Messages,
    assert_heads,
    load_example,
)

LEASE = timedelta(seconds=60)


def ok(clock: FakeClock, status: int = 200) -> AttemptRecord:
    return AttemptRecord(clock.now(), timedelta(milliseconds=12.5), "delivered", status, "")


def failed(clock: FakeClock, status: int | None = 503, outcome: str = "transient") -> AttemptRecord:
    assert outcome in ("transient", "permanent")
    return AttemptRecord(
        clock.now(),
        timedelta(milliseconds=40),
        "transient" if outcome == "transient" else "permanent",
        status,
        f"HTTP {status}" if status else "ConnectTimeout",
    )


def test_implements_the_port(store: OutboxStore) -> None:
    assert isinstance(store, OutboxStore)


def test_migrate_is_idempotent(store: OutboxStore) -> None:
    assert store.migrate() == 0
    store.ping()


# -- accept ------------------------------------------------------------------------------------------


def test_accept_commits_message_deliveries_and_audit_together(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    message, deliveries, audit = messages.from_example(ADMISSION, destinations=("kbh", "aarhus"))
    result = store.accept(message, deliveries, audit)

    assert result.accepted and result.duplicate is None
    assert result.delivery_ids == tuple(d.id for d in deliveries)
    assert result.message.id == message.id
    assert result.message.state == "in-flight"
    trace = store.message_trace(message.id)
    assert trace is not None
    assert trace.message.header_id == load_example(ADMISSION).header_id
    assert [t.delivery.destination for t in trace.deliveries] == ["kbh", "aarhus"]
    assert all(t.delivery.state == "pending" and t.delivery.attempts == 0 for t in trace.deliveries)
    entries = store.read_audit()
    assert [(e.record.action, e.record.message_id) for e in entries] == [("message.accepted", message.id)]
    assert entries[0].prev_hash == AUDIT_GENESIS


def test_the_mapping_version_of_a_message_is_kept(store: OutboxStore, messages: Messages) -> None:
    message, deliveries, audit = messages.build(destinations=("kbh",))
    labelled = dataclasses.replace(message, mapping_version="borgerjournal-v1@1.0.0+0123456789ab")
    assert store.accept(labelled, deliveries, audit).message.mapping_version == labelled.mapping_version
    trace = store.message_trace(labelled.id)
    assert trace is not None and trace.message.mapping_version == "borgerjournal-v1@1.0.0+0123456789ab"
    other, other_deliveries, other_audit = messages.build(destinations=("kbh",))
    assert store.accept(other, other_deliveries, other_audit).message.mapping_version is None


def test_accept_is_all_or_nothing(store: OutboxStore, messages: Messages) -> None:
    message, deliveries, audit = messages.build(destinations=("kbh", "aarhus"))
    # The second delivery reuses the first one's id, so its insert fails after the message row was written.
    clashing = [deliveries[0], replace(deliveries[1], id=deliveries[0].id)]
    with pytest.raises(StoreError):
        store.accept(message, clashing, audit)

    assert store.message_trace(message.id) is None
    assert store.find_by_ids(message.bundle_id, message.header_id) is None
    assert store.read_audit() == []
    assert store.list_deliveries() == []
    # And the store still works afterwards.
    assert store.accept(message, deliveries, audit).accepted


def test_accept_rejects_two_deliveries_to_one_destination(store: OutboxStore, messages: Messages) -> None:
    message, deliveries, audit = messages.build(destinations=("kbh",))
    with pytest.raises(ValueError, match="one delivery per destination"):
        store.accept(message, [deliveries[0], replace(deliveries[0], id=str(uuid.uuid4()))], audit)


def test_exact_duplicate_returns_the_first_answer_and_stores_nothing(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    first = store.accept(*messages.from_example(ADMISSION))
    clock.advance(5)
    again = store.accept(*messages.from_example(ADMISSION))

    assert again.duplicate == "same" and not again.accepted
    assert again.message.id == first.message.id
    assert again.message.response == first.message.response
    assert again.delivery_ids == first.delivery_ids
    assert len(store.list_deliveries()) == 1
    assert len(store.read_audit()) == 1


def test_resubmission_with_new_bundle_id_is_reported_as_header_reused(
    store: OutboxStore, messages: Messages
) -> None:
    first = store.accept(*messages.from_example(DUPLICATE_A))
    a, b = load_example(DUPLICATE_A), load_example(DUPLICATE_B)
    assert a.header_id == b.header_id and a.bundle_id != b.bundle_id

    again = store.accept(*messages.from_example(DUPLICATE_B))

    assert again.duplicate == "header-reused"
    assert again.message.id == first.message.id
    assert len(store.list_deliveries()) == 1


def test_reused_bundle_id_with_new_header_id_is_reported(store: OutboxStore, messages: Messages) -> None:
    ex = load_example(ADMISSION)
    first = store.accept(*messages.build(bundle_id=ex.bundle_id, header_id=ex.header_id))
    again = store.accept(*messages.build(bundle_id=ex.bundle_id, header_id=str(uuid.uuid4())))
    assert again.duplicate == "bundle-reused"
    assert again.message.id == first.message.id


def test_find_by_ids(store: OutboxStore, messages: Messages) -> None:
    ex = load_example(ADMISSION)
    stored = store.accept(*messages.from_example(ADMISSION)).message

    assert store.find_by_ids(str(uuid.uuid4()), str(uuid.uuid4())) is None
    same = store.find_by_ids(ex.bundle_id, ex.header_id)
    header = store.find_by_ids(str(uuid.uuid4()), ex.header_id)
    bundle = store.find_by_ids(ex.bundle_id, str(uuid.uuid4()))
    assert same is not None and (same.kind, same.message.id) == ("same", stored.id)
    assert header is not None and (header.kind, header.message.id) == ("header-reused", stored.id)
    assert bundle is not None and (bundle.kind, bundle.message.id) == ("bundle-reused", stored.id)


def test_concurrent_accepts_of_one_message_store_it_once(
    store_factory: Callable[[], OutboxStore], messages: Messages
) -> None:
    stores = [store_factory(), store_factory()]  # two connections to one database, as two processes would
    args = messages.from_example(ADMISSION)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def submit(i: int) -> None:
        barrier.wait()
        results.append(stores[i % 2].accept(*args).accepted)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert len(stores[0].list_deliveries()) == 1


# -- accept_many -------------------------------------------------------------------------------------


def test_accept_many_commits_a_batch_in_order(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    requests = [
        AcceptRequest(*messages.build(citizen="c1", destinations=("kbh", "aarhus"))) for _ in range(5)
    ]

    results = store.accept_many(requests)

    assert [r.message.id for r in results if isinstance(r, AcceptResult) and r.accepted] == [
        r.message.id for r in requests
    ]
    for request, result in zip(requests, results, strict=True):
        assert isinstance(result, AcceptResult)
        assert result.delivery_ids == tuple(d.id for d in request.deliveries)
    entries = store.read_audit()
    assert [e.record.message_id for e in entries] == [r.message.id for r in requests]
    assert verify_audit_chain(entries) is None
    assert assert_heads(store) == {requests[0].deliveries[0].id, requests[0].deliveries[1].id}
    assert store.accept_many([]) == []
    # Per-citizen order holds across the batch: the first request's deliveries go first.
    assert {c.id for c in store.claim_due("w1", clock.now(), LEASE, limit=10)} == {
        d.id for d in requests[0].deliveries
    }


def test_accept_many_finds_duplicates_within_the_batch_and_against_earlier_ones(
    store: OutboxStore, messages: Messages
) -> None:
    earlier = AcceptRequest(*messages.from_example(DUPLICATE_A))
    assert isinstance(store.accept_many([earlier])[0], AcceptResult)
    fresh = AcceptRequest(*messages.build())
    resubmitted = AcceptRequest(*messages.from_example(DUPLICATE_B))  # same MessageHeader.id as earlier
    again = replace(fresh, message=replace(fresh.message, id=str(uuid.uuid4())))  # same ids as fresh

    results = store.accept_many([fresh, resubmitted, again])

    first, second, third = results
    assert isinstance(first, AcceptResult) and first.accepted
    assert isinstance(second, AcceptResult) and second.duplicate == "header-reused"
    assert second.message.id == earlier.message.id
    assert isinstance(third, AcceptResult) and third.duplicate == "same"
    assert (third.message.id, third.delivery_ids) == (fresh.message.id, first.delivery_ids)
    assert len(store.list_deliveries()) == 2
    entries = store.read_audit()
    assert [e.record.message_id for e in entries] == [earlier.message.id, fresh.message.id]


def test_a_failing_request_is_reported_in_its_slot_and_the_others_commit(
    store: OutboxStore, messages: Messages
) -> None:
    before = AcceptRequest(*messages.build(citizen="c1"))
    broken = AcceptRequest(*messages.build(citizen="c1"))
    # Its delivery reuses the first request's delivery id: the insert fails inside the transaction.
    broken = replace(broken, deliveries=[replace(broken.deliveries[0], id=before.deliveries[0].id)])
    after = AcceptRequest(*messages.build(citizen="c1"))

    results = store.accept_many([before, broken, after])

    assert isinstance(results[0], AcceptResult) and results[0].accepted
    assert isinstance(results[1], StoreError)
    assert isinstance(results[2], AcceptResult) and results[2].accepted
    assert store.message_trace(broken.message.id) is None
    assert store.find_by_ids(broken.message.bundle_id, broken.message.header_id) is None
    assert [d.message_id for d in store.list_deliveries()] == [before.message.id, after.message.id]
    entries = store.read_audit()
    assert [e.record.message_id for e in entries] == [before.message.id, after.message.id]
    assert verify_audit_chain(entries) is None
    assert assert_heads(store) == {before.deliveries[0].id}
    # accept raises the error of its one request, and stores nothing of it.
    with pytest.raises(StoreError):
        store.accept(broken.message, broken.deliveries, broken.audit)
    assert len(store.read_audit()) == 2


def test_accept_many_refuses_two_deliveries_to_one_destination_before_storing_anything(
    store: OutboxStore, messages: Messages
) -> None:
    good = AcceptRequest(*messages.build())
    bad = AcceptRequest(*messages.build())
    bad = replace(bad, deliveries=[bad.deliveries[0], replace(bad.deliveries[0], id=str(uuid.uuid4()))])
    with pytest.raises(ValueError, match="one delivery per destination"):
        store.accept_many([good, bad])
    assert store.list_deliveries() == [] and store.read_audit() == []


def test_admissions_are_stored_with_their_messages(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    key = "citizen-admitted"
    start = clock.now()
    admitted = Admission(key, "rh", "admitted", start)
    discharged = Admission(key, "rh", "discharged", start + timedelta(days=3))
    on_leave = Admission(key, "rh", "on-leave", start + timedelta(days=1))  # older, arrives later

    results = store.accept_many(
        [
            AcceptRequest(*messages.build(citizen=key), admission=admitted),
            AcceptRequest(*messages.build(citizen=key), admission=discharged),
            AcceptRequest(*messages.build(citizen=key), admission=on_leave),
        ]
    )

    assert all(isinstance(r, AcceptResult) and r.accepted for r in results)
    assert store.current_admission(key) == discharged
    # A later batch with a newer state wins; a duplicate's admission is not applied.
    first = messages.build(citizen=key)
    elsewhere = Admission(key, "ouh", "admitted", start + timedelta(days=5))
    assert store.accept(*first, admission=elsewhere).accepted
    newest = Admission(key, "rh", "deceased", start + timedelta(days=9))
    duplicate = store.accept(*first, admission=newest)
    assert duplicate.duplicate == "same"
    assert store.current_admission(key) == elsewhere


def test_the_admission_of_a_failing_request_is_rolled_back_with_it(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    good = AcceptRequest(*messages.build(citizen="c1"))
    broken = AcceptRequest(
        *messages.build(citizen="c2"), admission=Admission("c2", "rh", "admitted", clock.now())
    )
    broken = replace(broken, deliveries=[replace(broken.deliveries[0], id=good.deliveries[0].id)])
    results = store.accept_many([good, broken])
    assert isinstance(results[1], StoreError)
    assert store.current_admission("c2") is None


# -- claim, lease, complete --------------------------------------------------------------------------


def test_claim_leases_due_deliveries_once(store: OutboxStore, messages: Messages, clock: FakeClock) -> None:
    message, deliveries, audit = messages.from_example(ADMISSION, destinations=("kbh", "aarhus"))
    store.accept(message, deliveries, audit)

    claimed = store.claim_due("w1", clock.now(), LEASE, limit=10)

    assert [c.destination for c in claimed] == ["kbh", "aarhus"]
    first = claimed[0]
    assert first.payload == deliveries[0].payload
    assert first.header_id == message.header_id
    assert first.attempt == 1
    assert first.first_attempt_at == clock.now()
    assert first.lease_expires_at == clock.now() + LEASE
    assert store.claim_due("w2", clock.now(), LEASE, limit=10) == []
    leased = store.list_deliveries("leased")
    assert {d.lease_owner for d in leased} == {"w1"}


def test_claim_respects_limit_and_not_before(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    for _ in range(3):
        store.accept(*messages.build())
    store.accept(*messages.build(not_before_in=timedelta(minutes=5)))

    long_lease = timedelta(hours=1)
    assert len(store.claim_due("w1", clock.now(), long_lease, limit=2)) == 2
    assert len(store.claim_due("w1", clock.now(), long_lease, limit=10)) == 1
    assert store.claim_due("w1", clock.now(), long_lease, limit=10) == []
    clock.advance(timedelta(minutes=5))
    assert len(store.claim_due("w1", clock.now(), long_lease, limit=10)) == 1


def test_claim_skips_the_named_destinations(store: OutboxStore, messages: Messages, clock: FakeClock) -> None:
    store.accept(*messages.build(destinations=("kbh",)))
    store.accept(*messages.build(destinations=("aarhus",)))
    store.accept(*messages.build(destinations=("kbh", "odense")))

    claimed = store.claim_due("w1", clock.now(), LEASE, limit=10, skip_destinations={"kbh"})
    assert sorted(c.destination for c in claimed) == ["aarhus", "odense"]
    assert store.claim_due("w1", clock.now(), LEASE, limit=10, skip_destinations=["kbh", "x"]) == []
    # An expired lease is not taken over for a skipped destination either.
    kbh = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert [c.destination for c in kbh] == ["kbh", "kbh"]
    clock.advance(LEASE)
    taken_over = store.claim_due("w2", clock.now(), LEASE, limit=10, skip_destinations=("kbh",))
    assert sorted(c.destination for c in taken_over) == ["aarhus", "odense"]
    again = store.claim_due("w2", clock.now(), LEASE, limit=10)
    assert sorted(c.id for c in again) == sorted(c.id for c in kbh)
    assert {c.attempt for c in again} == {2}


def test_a_claim_per_destination_is_fair_between_destinations(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    # A long, old backlog to kbh; then a little to aarhus, and one to a destination nobody names.
    backlog = [messages.build(citizen=f"c{n}", destinations=("kbh",)) for n in range(12)]
    for m in backlog:
        store.accept(*m)
    clock.advance(timedelta(seconds=1))
    newer = [messages.build(citizen=f"a{n}", destinations=("aarhus",)) for n in range(2)]
    for m in newer:
        store.accept(*m)
    store.accept(*messages.build(destinations=("retired",)))
    names = {"kbh": 10, "aarhus": 10}

    first = store.claim_due("w1", clock.now(), LEASE, limit=6, per_destination=names)
    # aarhus gets its two at once, not after kbh's backlog; kbh takes what aarhus cannot use.
    assert Counter(c.destination for c in first) == {"kbh": 4, "aarhus": 2}
    kbh = [c.message_id for c in first if c.destination == "kbh"]
    assert kbh == [m[0].id for m in backlog[:4]]  # oldest first within a destination

    # A destination's number caps it; an unnamed one gets what the named ones leave.
    second = store.claim_due("w1", clock.now(), LEASE, limit=10, per_destination={"kbh": 3, "aarhus": 3})
    assert Counter(c.destination for c in second) == {"kbh": 3, "retired": 1}
    # Skipped destinations get nothing, named or not; expired leases come first.
    clock.advance(LEASE)
    third = store.claim_due(
        "w2", clock.now(), LEASE, limit=5, skip_destinations={"retired"}, per_destination={"kbh": 4}
    )
    assert len(third) == 5 and "retired" not in {c.destination for c in third}
    assert {c.attempt for c in third} == {2}  # all taken over from w1, the oldest work


def test_message_and_delivery_payloads_read_back(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    message, deliveries, audit = messages.from_example(ADMISSION)
    store.accept(message, deliveries, audit)

    assert store.message_payload(message.id) == load_example(ADMISSION).payload
    assert store.message_payload(str(uuid.uuid4())) is None
    assert store.delivery_payload(deliveries[0].id) == deliveries[0].payload
    assert store.delivery_payload(str(uuid.uuid4())) is None
    (claimed,) = store.claim_due("w1", clock.now(), LEASE, limit=1)
    store.complete(claimed.id, "w1", ok(clock), clock.now())
    store.purge_payloads(clock.now() + timedelta(days=1))
    assert store.message_payload(message.id) is None
    assert store.delivery_payload(deliveries[0].id) is None


def test_give_up_receipt_parks_an_unacknowledged_delivery_as_dead(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    message, deliveries, audit = messages.from_example(ADMISSION, expect_receipt=True)
    store.accept(message, deliveries, audit)
    (claimed,) = store.claim_due("w1", clock.now(), LEASE, limit=1)
    with pytest.raises(InvalidTransition):
        store.give_up_receipt(claimed.id, "no receipt", clock.now())  # still leased
    store.complete(claimed.id, "w1", ok(clock), clock.now())

    store.give_up_receipt(claimed.id, "no receipt", clock.now())
    (dead,) = store.list_deliveries("dead")
    assert (dead.id, dead.last_error, dead.dead_at) == (claimed.id, "no receipt", clock.now())
    assert store.receipt_overdue(clock.now() + timedelta(days=1), timedelta(0), 5, 10) == []
    with pytest.raises(InvalidTransition):
        store.give_up_receipt(claimed.id, "no receipt", clock.now())
    with pytest.raises(NotFound):
        store.give_up_receipt(str(uuid.uuid4()), "no receipt", clock.now())
    # A replay sends it again with a fresh budget.
    store.retry_dead(claimed.id, clock.now())
    (replayed,) = store.claim_due("w1", clock.now(), LEASE, limit=1)
    assert replayed.id == claimed.id and replayed.attempt == 1


def test_give_up_receipt_refuses_a_delivery_that_got_its_receipt(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    message, deliveries, audit = messages.from_example(ADMISSION, expect_receipt=True)
    store.accept(message, deliveries, audit)
    (claimed,) = store.claim_due("w1", clock.now(), LEASE, limit=1)
    store.complete(claimed.id, "w1", ok(clock), clock.now())
    store.record_receipt(NewReceipt(str(uuid.uuid4()), message.header_id, "kbh", "ok", clock.now()))
    with pytest.raises(InvalidTransition):
        store.give_up_receipt(claimed.id, "no receipt", clock.now())


def test_expired_lease_is_reclaimed_by_another_worker(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    store.accept(*messages.from_example(ADMISSION))
    (crashed,) = store.claim_due("w1", clock.now(), LEASE, limit=1)

    clock.advance(LEASE - timedelta(seconds=1))
    assert store.claim_due("w2", clock.now(), LEASE, limit=1) == []
    assert store.queue_stats(clock.now()).expired_leases == 0
    clock.advance(timedelta(seconds=1))
    assert store.queue_stats(clock.now()).expired_leases == 1
    (reclaimed,) = store.claim_due("w2", clock.now(), LEASE, limit=1)

    assert reclaimed.id == crashed.id
    assert reclaimed.attempt == 2  # the crashed try counts: it may have reached the receiver
    assert reclaimed.first_attempt_at == crashed.first_attempt_at
    with pytest.raises(LeaseLost):
        store.complete(crashed.id, "w1", ok(clock), clock.now())
    store.complete(reclaimed.id, "w2", ok(clock), clock.now())
    assert store.list_deliveries("delivered")[0].id == crashed.id


def test_an_expired_lease_can_still_be_completed_by_its_holder(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    store.accept(*messages.build())
    (claimed,) = store.claim_due("w1", clock.now(), LEASE, limit=1)
    clock.advance(LEASE * 2)  # slow, but nobody else took it over
    store.complete(claimed.id, "w1", ok(clock), clock.now())
    assert store.list_deliveries("delivered")[0].id == claimed.id


def test_complete_records_the_attempt_and_the_message_state(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    message, deliveries, audit = messages.from_example(ADMISSION)
    store.accept(message, deliveries, audit)
    (claimed,) = store.claim_due("w1", clock.now(), LEASE, limit=1)
    clock.advance(1)
    store.complete(claimed.id, "w1", ok(clock, 202), clock.now())

    trace = store.message_trace(message.header_id)  # by MessageHeader.id as well as by id
    assert trace is not None
    assert trace.message.state == "delivered"
    (delivery,) = trace.deliveries
    assert delivery.delivery.state == "delivered"
    assert delivery.delivery.delivered_at == clock.now()
    assert delivery.delivery.lease_owner is None
    (attempt,) = delivery.attempts
    assert (attempt.number, attempt.worker_id, attempt.status_code, attempt.outcome) == (
        1,
        "w1",
        202,
        "delivered",
    )
    assert attempt.latency == timedelta(milliseconds=12.5)
    with pytest.raises(LeaseLost):
        store.complete(claimed.id, "w1", ok(clock), clock.now())
    with pytest.raises(NotFound):
        store.complete(str(uuid.uuid4()), "w1", ok(clock), clock.now())


def test_complete_many_delivers_a_batch_and_names_the_lost_leases(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    for _ in range(3):
        store.accept(*messages.build())
    first, second, third = store.claim_due("w1", clock.now(), LEASE, limit=3)
    store.release(third.id, "w1", clock.now())
    unknown = str(uuid.uuid4())

    lost = store.complete_many(
        "w1",
        [(first.id, ok(clock)), (second.id, ok(clock, 202)), (third.id, ok(clock)), (unknown, ok(clock))],
        clock.now(),
    )

    assert lost == [third.id, unknown]
    delivered = {d.id: d for d in store.list_deliveries("delivered")}
    assert set(delivered) == {first.id, second.id}
    assert delivered[first.id].delivered_at == clock.now()
    trace = store.message_trace(second.message_id)
    assert trace is not None
    assert [(a.number, a.status_code) for a in trace.deliveries[0].attempts] == [(1, 202)]
    (pending,) = store.list_deliveries("pending")
    assert pending.id == third.id
    assert store.complete_many("w1", [], clock.now()) == []


def test_complete_many_appends_the_audit_records_of_what_it_completes_in_the_same_transaction(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    for _ in range(3):
        store.accept(*messages.build())
    first, second, third = store.claim_due("w1", clock.now(), LEASE, limit=3)
    store.release(third.id, "w1", clock.now())  # its lease is gone: no result, no audit record
    before = len(store.read_audit(limit=100))

    def record(delivery_id: str) -> AuditRecord:
        return AuditRecord(clock.now(), "delivery.delivered", "w1", delivery_id.encode(), None)

    lost = store.complete_many(
        "w1",
        [(second.id, ok(clock)), (third.id, ok(clock)), (first.id, ok(clock))],
        clock.now(),
        {d.id: record(d.id) for d in (first, second, third)},
    )

    assert lost == [third.id]
    trail = store.read_audit(limit=100)
    assert [e.record.body for e in trail[before:]] == [second.id.encode(), first.id.encode()]
    assert verify_audit_chain(trail) is None
    # Without records nothing more is audited.
    store.accept(*messages.build())
    (fourth,) = store.claim_due("w1", clock.now(), LEASE, limit=1)
    assert store.complete_many("w1", [(fourth.id, ok(clock))], clock.now(), {}) == []
    assert len(store.read_audit(limit=100)) == len(trail) + 1  # the accept's record only


def test_schedule_retry_makes_the_delivery_due_later(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    store.accept(*messages.build())
    (claimed,) = store.claim_due("w1", clock.now(), LEASE, limit=1)
    store.schedule_retry(
        claimed.id, "w1", failed(clock, 503), clock.now() + timedelta(seconds=30), clock.now()
    )

    (pending,) = store.list_deliveries("pending")
    assert pending.next_attempt_at == clock.now() + timedelta(seconds=30)
    assert pending.last_error == "HTTP 503"
    clock.advance(29)
    assert store.claim_due("w1", clock.now(), LEASE, limit=1) == []
    clock.advance(1)
    (again,) = store.claim_due("w2", clock.now(), LEASE, limit=1)
    assert again.attempt == 2
    with pytest.raises(LeaseLost):
        store.schedule_retry(claimed.id, "w1", failed(clock), clock.now(), clock.now())


def test_dead_letter_and_operator_replay(store: OutboxStore, messages: Messages, clock: FakeClock) -> None:
    message, deliveries, audit = messages.build()
    store.accept(message, deliveries, audit)
    (claimed,) = store.claim_due("w1", clock.now(), LEASE, limit=1)
    store.dead_letter(
        claimed.id, "w1", failed(clock, 422, "permanent"), "HTTP 422 from receiver", clock.now()
    )

    (dead,) = store.list_deliveries("dead")
    assert dead.dead_at == clock.now() and dead.last_error == "HTTP 422 from receiver"
    assert store.message_trace(message.id).message.state == "dead"  # type: ignore[union-attr]
    assert store.claim_due("w1", clock.now(), LEASE, limit=1) == []
    with pytest.raises(NotFound):
        store.retry_dead(str(uuid.uuid4()), clock.now())


def test_retry_dead_gives_a_fresh_budget(store: OutboxStore, messages: Messages, clock: FakeClock) -> None:
    store.accept(*messages.build())
    (claimed,) = store.claim_due("w1", clock.now(), LEASE, limit=1)
    store.dead_letter(claimed.id, "w1", None, "max age reached", clock.now())
    with pytest.raises(LeaseLost):
        store.dead_letter(claimed.id, "w1", None, "twice", clock.now())

    clock.advance(timedelta(hours=1))
    store.retry_dead(claimed.id, clock.now())
    (replayed,) = store.claim_due("w2", clock.now(), LEASE, limit=1)
    assert replayed.id == claimed.id
    assert replayed.attempt == 1
    assert replayed.first_attempt_at == clock.now()
    with pytest.raises(InvalidTransition):
        store.retry_dead(claimed.id, clock.now())  # leased, not dead
    with pytest.raises(NotFound):
        store.retry_dead(str(uuid.uuid4()), clock.now())


def test_release_hands_the_delivery_back_unattempted(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    store.accept(*messages.build())
    (claimed,) = store.claim_due("w1", clock.now(), LEASE, limit=1)
    clock.advance(1)
    store.release(claimed.id, "w1", clock.now())

    (pending,) = store.list_deliveries("pending")
    assert (pending.attempts, pending.first_attempt_at, pending.lease_owner) == (0, None, None)
    (again,) = store.claim_due("w2", clock.now(), LEASE, limit=1)
    assert again.attempt == 1
    with pytest.raises(LeaseLost):
        store.release(claimed.id, "w1", clock.now())


def test_record_attempt_adds_to_the_trace_only(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    message, deliveries, audit = messages.build()
    store.accept(message, deliveries, audit)
    (claimed,) = store.claim_due("w1", clock.now(), LEASE, limit=1)
    store.record_attempt(claimed.id, "w1", failed(clock, None))

    trace = store.message_trace(message.id)
    assert trace is not None
    assert trace.deliveries[0].delivery.state == "leased"
    assert [a.detail for a in trace.deliveries[0].attempts] == ["ConnectTimeout"]
    with pytest.raises(NotFound):
        store.record_attempt(str(uuid.uuid4()), "w1", ok(clock))


# -- concurrency and order ---------------------------------------------------------------------------


def test_two_claimers_never_share_a_delivery(
    store_factory: Callable[[], OutboxStore], messages: Messages, clock: FakeClock
) -> None:
    first = store_factory()
    second = store_factory()
    total = 120
    for i in range(total):
        first.accept(*messages.build(citizen=f"citizen-{i % 40}", destinations=("kbh", "aarhus")))
    claimed: dict[str, list[str]] = {"a": [], "b": []}
    came_back_empty = {"a": False, "b": False}
    completion_log: list[str] = []
    log_lock = threading.Lock()
    barrier = threading.Barrier(2)

    def worker(name: str, store: OutboxStore) -> None:
        # Rounds: both workers claim at the same moment, then complete what they got (heads of the
        # per-citizen queues only become claimable once the delivery before them is done).
        while True:
            barrier.wait()
            batch = store.claim_due(name, clock.now(), LEASE, limit=3)
            for c in batch:
                claimed[name].append(c.id)
                store.complete(c.id, name, ok(clock), clock.now())
                with log_lock:
                    completion_log.append(c.id)
            came_back_empty[name] = not batch
            barrier.wait()
            if all(came_back_empty.values()):
                return

    threads = [threading.Thread(target=worker, args=(n, s)) for n, s in (("a", first), ("b", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    all_claims = [d for ids in claimed.values() for d in ids]
    assert len(all_claims) == len(set(all_claims)) == total * 2
    assert claimed["a"] and claimed["b"]
    assert first.queue_stats(clock.now()).by_state["delivered"] == total * 2
    # Per citizen and destination, completions happened in acceptance order.
    position = {d: i for i, d in enumerate(completion_log)}
    pairs: dict[tuple[str | None, str], list[str]] = {}
    for d in first.list_deliveries(limit=1000):  # oldest first
        pairs.setdefault((d.citizen_key, d.destination), []).append(d.id)
    for ids in pairs.values():
        assert [position[i] for i in ids] == sorted(position[i] for i in ids)


def test_same_citizen_same_destination_goes_out_in_acceptance_order(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    admission = messages.from_example(ADMISSION, destinations=("kbh", "aarhus"))
    clock.advance(1)
    leave = messages.from_example(LEAVE, destinations=("kbh",))
    clock.advance(1)
    discharge = messages.from_example(DISCHARGE, destinations=("kbh",))
    other = messages.build(citizen="someone-else", destinations=("kbh",))
    for args in (admission, leave, discharge, other):
        store.accept(*args)
    assert load_example(ADMISSION).cpr == load_example(DISCHARGE).cpr  # one citizen

    claimed = store.claim_due("w1", clock.now(), LEASE, limit=10)
    # Only the admission is claimable for the citizen at kbh; aarhus and the other citizen are independent.
    assert {(c.message_id, c.destination) for c in claimed} == {
        (admission[0].id, "kbh"),
        (admission[0].id, "aarhus"),
        (other[0].id, "kbh"),
    }
    adm_kbh = next(c for c in claimed if c.message_id == admission[0].id and c.destination == "kbh")
    for c in claimed:
        if c is not adm_kbh:
            store.complete(c.id, "w1", ok(clock), clock.now())
    # The admission fails and waits for a retry: the leave and discharge still wait behind it.
    store.schedule_retry(adm_kbh.id, "w1", failed(clock), clock.now() + timedelta(minutes=1), clock.now())
    assert store.claim_due("w1", clock.now(), LEASE, limit=10) == []
    clock.advance(timedelta(minutes=1))
    (retry,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert retry.id == adm_kbh.id
    store.complete(retry.id, "w1", ok(clock), clock.now())
    (nxt,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert nxt.message_id == leave[0].id
    store.complete(nxt.id, "w1", ok(clock), clock.now())
    (last,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert last.message_id == discharge[0].id


def test_a_dead_letter_stops_holding_its_citizen_and_replay_restores_its_place(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    first = messages.build(citizen="c1")
    clock.advance(1)
    second = messages.build(citizen="c1")
    clock.advance(1)
    third = messages.build(citizen="c1")
    for args in (first, second, third):
        store.accept(*args)

    (head,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert head.message_id == first[0].id
    store.dead_letter(head.id, "w1", failed(clock, 400, "permanent"), "HTTP 400", clock.now())
    (nxt,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert nxt.message_id == second[0].id
    store.complete(nxt.id, "w1", ok(clock), clock.now())

    store.retry_dead(head.id, clock.now())
    (replayed,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert replayed.id == head.id  # ahead of the third, which was accepted later


def test_messages_without_citizen_are_not_ordered(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    for _ in range(3):
        store.accept(*messages.build(citizen=None))
    assert len(store.claim_due("w1", clock.now(), LEASE, limit=10)) == 3


# -- the head marker ---------------------------------------------------------------------------------
# Only the head of a (citizen, destination) pair is claimable; every test reads the marker back by SQL
# (assert_heads) and checks it against the invariant on every row after each transition.


def _one_each(store: OutboxStore, messages: Messages, clock: FakeClock, *citizens: str | None) -> list[str]:
    """Accept one message to kbh per citizen given, a second apart; their delivery ids in order."""
    ids = []
    for citizen in citizens:
        message, deliveries, audit = messages.build(citizen=citizen, expect_receipt=True)
        store.accept(message, deliveries, audit)
        ids.append(deliveries[0].id)
        clock.advance(1)
    return ids


def test_the_next_delivery_becomes_the_head_when_the_head_completes_or_dies(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    a, b, c, other = _one_each(store, messages, clock, "c1", "c1", "c1", "c2")
    assert assert_heads(store) == {a, other}

    claimed = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert {x.id for x in claimed} == {a, other}
    assert assert_heads(store) == {a, other}  # a leased head stays the head
    store.complete(a, "w1", ok(clock), clock.now())
    assert assert_heads(store) == {b, other}

    (head,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert head.id == b
    store.dead_letter(b, "w1", failed(clock, 400, "permanent"), "HTTP 400", clock.now())
    assert assert_heads(store) == {c, other}  # the dead letter frees its pair
    (head,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert head.id == c
    store.complete(c, "w1", ok(clock), clock.now())
    assert assert_heads(store) == {other}
    assert store.claim_due("w1", clock.now(), LEASE, limit=10) == []


def test_retries_and_releases_keep_the_head(store: OutboxStore, messages: Messages, clock: FakeClock) -> None:
    a, b = _one_each(store, messages, clock, "c1", "c1")
    (head,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    store.schedule_retry(head.id, "w1", failed(clock), clock.now() + timedelta(minutes=1), clock.now())
    assert assert_heads(store) == {a}
    assert store.claim_due("w1", clock.now(), LEASE, limit=10) == []  # b waits behind the retry
    clock.advance(timedelta(minutes=1))
    (head,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    store.release(head.id, "w1", clock.now())
    assert assert_heads(store) == {a}
    clock.advance(LEASE)
    (head,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    clock.advance(LEASE)
    (taken_over,) = store.claim_due("w2", clock.now(), LEASE, limit=10)  # an expired lease
    assert head.id == taken_over.id == a
    assert assert_heads(store) == {a}
    store.complete(a, "w2", ok(clock), clock.now())
    assert assert_heads(store) == {b}


def test_a_replayed_dead_letter_takes_the_head_back_from_a_newer_pending_one(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    a, b, c = _one_each(store, messages, clock, "c1", "c1", "c1")
    (head,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    store.dead_letter(head.id, "w1", None, "refused", clock.now())
    assert assert_heads(store) == {b}

    store.retry_dead(a, clock.now())

    assert assert_heads(store) == {a}
    (replayed,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert replayed.id == a
    store.complete(a, "w1", ok(clock), clock.now())
    assert assert_heads(store) == {b}
    assert [x.id for x in store.claim_due("w1", clock.now(), LEASE, limit=10)] == [b]
    store.complete(b, "w1", ok(clock), clock.now())
    assert assert_heads(store) == {c}


def test_a_replayed_dead_letter_takes_the_head_from_a_newer_leased_one_which_still_finishes(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    a, b, c = _one_each(store, messages, clock, "c1", "c1", "c1")
    (head,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    store.dead_letter(head.id, "w1", None, "refused", clock.now())
    (in_flight,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert in_flight.id == b

    store.retry_dead(a, clock.now())

    assert assert_heads(store) == {a}  # b keeps its lease but is no longer the head
    (replayed,) = store.claim_due("w2", clock.now(), LEASE, limit=10)
    assert replayed.id == a
    store.complete(b, "w1", ok(clock), clock.now())  # the lease it held still counts
    assert assert_heads(store) == {a}
    assert store.claim_due("w2", clock.now(), LEASE, limit=10) == []  # c waits for a
    store.complete(a, "w2", ok(clock), clock.now())
    assert assert_heads(store) == {c}


def test_a_resent_delivery_goes_back_to_its_place_at_the_head(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    a, b = _one_each(store, messages, clock, "c1", "c1")
    (head,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    store.complete(head.id, "w1", ok(clock), clock.now())
    assert assert_heads(store) == {b}

    store.resend(a, b"new envelope", clock.now())  # no receipt came for a

    assert assert_heads(store) == {a}
    (resent,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert (resent.id, resent.payload) == (a, b"new envelope")
    store.complete(a, "w1", ok(clock), clock.now())
    assert assert_heads(store) == {b}
    store.give_up_receipt(a, "no receipt", clock.now())  # delivered -> dead: closed either way
    assert assert_heads(store) == {b}


def test_the_head_moves_right_whatever_order_a_pairs_backlog_reopens_in(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    # A head move looks at the pair's two oldest open deliveries only; replays and a resend in any
    # order, with a leased delivery losing the head and finishing, keep the oldest open one the head.
    a, b, c, d, e = _one_each(store, messages, clock, "c1", "c1", "c1", "c1", "c1")
    for expected in (a, b):
        (head,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
        assert head.id == expected
        store.dead_letter(head.id, "w1", None, "refused", clock.now())
    (head,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert head.id == c
    store.complete(c, "w1", ok(clock), clock.now())
    (in_flight,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert in_flight.id == d
    assert assert_heads(store) == {d}

    store.retry_dead(b, clock.now())
    assert assert_heads(store) == {b}  # d keeps its lease
    store.retry_dead(a, clock.now())
    assert assert_heads(store) == {a}
    store.resend(c, b"again", clock.now())
    assert assert_heads(store) == {a}
    store.complete(d, "w1", ok(clock), clock.now())
    assert assert_heads(store) == {a}
    for expected, next_head in ((a, {b}), (b, {c}), (c, {e}), (e, set())):
        (head,) = store.claim_due("w2", clock.now(), LEASE, limit=10)
        assert head.id == expected
        store.complete(expected, "w2", ok(clock), clock.now())
        assert assert_heads(store) == next_head


def test_complete_many_moves_the_head_of_every_pair_it_closes(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    first = _one_each(store, messages, clock, "c1", "c2", "c3", None)
    second = _one_each(store, messages, clock, "c1", "c2", "c3")
    heads = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert {x.id for x in heads} == set(first)
    store.release(first[2], "w1", clock.now())  # c3's head is handed back: its lease is lost below

    lost = store.complete_many("w1", [(x.id, ok(clock)) for x in heads], clock.now())

    assert lost == [first[2]]
    assert assert_heads(store) == {second[0], second[1], first[2]}
    assert {x.id for x in store.claim_due("w1", clock.now(), LEASE, limit=10)} == {
        second[0],
        second[1],
        first[2],
    }


def test_every_open_delivery_without_a_citizen_is_a_head(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    a, b, c = _one_each(store, messages, clock, None, None, None)
    assert assert_heads(store) == {a, b, c}
    claimed = {x.id: x for x in store.claim_due("w1", clock.now(), LEASE, limit=2)}
    assert set(claimed) == {a, b}
    store.complete(a, "w1", ok(clock), clock.now())
    store.dead_letter(b, "w1", None, "refused", clock.now())
    assert assert_heads(store) == {c}
    store.retry_dead(b, clock.now())
    store.resend(a, b"again", clock.now())
    assert assert_heads(store) == {a, b, c}
    assert len(store.claim_due("w1", clock.now(), LEASE, limit=10)) == 3


def test_a_claim_looks_at_the_heads_not_the_backlog_behind_them(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    """5,000 deliveries queued behind 10 heads waiting for a retry (a receiver that is down)."""
    down = [f"citizen-{i}" for i in range(10)]
    heads = _one_each(store, messages, clock, *down)
    for claimed in store.claim_due("w1", clock.now(), LEASE, limit=100):
        store.schedule_retry(claimed.id, "w1", failed(clock), clock.now() + timedelta(hours=1), clock.now())
    for start in range(0, 5000, 500):
        requests = [AcceptRequest(*messages.build(citizen=down[i % 10])) for i in range(start, start + 500)]
        assert all(isinstance(r, AcceptResult) and r.accepted for r in store.accept_many(requests))
    due = _one_each(store, messages, clock, "up-1", "up-2", None)

    claimed = store.claim_due("w1", clock.now(), LEASE, limit=100)

    assert sorted(c.id for c in claimed) == sorted(due)  # the due heads, none of the 5,000
    assert assert_heads(store) == {*heads, *due}
    store.complete_many("w1", [(c.id, ok(clock)) for c in claimed], clock.now())
    clock.advance(timedelta(hours=1))
    assert sorted(c.id for c in store.claim_due("w1", clock.now(), LEASE, limit=100)) == sorted(heads)
    assert store.queue_stats(clock.now()).by_state["pending"] == 5000


# -- receipts ----------------------------------------------------------------------------------------


def test_receipt_correlates_to_the_delivery_it_acknowledges(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    ack = load_example(ACK_OK)
    assert ack.response is not None
    message, deliveries, audit = messages.build(
        header_id=ack.response["identifier"], destinations=("kbh", "aarhus"), expect_receipt=True
    )
    store.accept(message, deliveries, audit)
    receipt = NewReceipt(ack.header_id, ack.response["identifier"], "kbh", ack.response["code"], clock.now())

    match = store.record_receipt(receipt)

    assert match is not None and not match.duplicate
    assert (match.delivery_id, match.message_id) == (deliveries[0].id, message.id)
    again = store.record_receipt(replace(receipt, received_at=clock.now() + timedelta(seconds=5)))
    assert again is not None and again.duplicate and again.delivery_id == deliveries[0].id
    trace = store.message_trace(message.id)
    assert trace is not None
    kbh, aarhus = trace.deliveries
    assert (kbh.delivery.receipt_code, kbh.delivery.receipt_at) == ("ok", clock.now())
    assert [r.ack_header_id for r in kbh.receipts] == [ack.header_id]
    assert aarhus.delivery.receipt_code is None and aarhus.receipts == ()


def test_receipt_for_an_unknown_message_or_from_the_wrong_system_matches_nothing(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    ack = load_example(ACK_TRANSIENT)
    assert ack.response is not None
    message, deliveries, audit = messages.build(header_id=ack.response["identifier"], destinations=("kbh",))
    store.accept(message, deliveries, audit)

    unknown = NewReceipt(str(uuid.uuid4()), str(uuid.uuid4()), "kbh", "ok", clock.now())
    assert store.record_receipt(unknown) is None
    assert store.record_receipt(unknown) is None  # stored once, still unmatched
    wrong_sender = NewReceipt(
        ack.header_id, ack.response["identifier"], "aarhus", "transient-error", clock.now()
    )
    assert store.record_receipt(wrong_sender) is None
    assert store.list_deliveries()[0].receipt_code is None


def _receipt_audit(clock: FakeClock, correlation: ReceiptCorrelation, status: str) -> AuditRecord:
    match = correlation.match
    return AuditRecord(
        clock.now(),
        "receipt.received",
        correlation.receipt.from_system,
        f'{{"ack": "{correlation.receipt.ack_header_id}", "status": "{status}"}}'.encode(),
        None if match is None else match.message_id,
    )


def _forward(clock: FakeClock, correlation: ReceiptCorrelation, to: str) -> AcceptRequest:
    """The receipt as a message of its own, queued to ``to`` (what the bridge does for a FHIR sender)."""
    receipt = correlation.receipt
    message = NewMessage(
        bundle_id=f"bundle-of-{receipt.ack_header_id}",
        header_id=receipt.ack_header_id,
        sender=receipt.from_system,
        kind="acknowledgement",
        citizen_key=None,
        payload=f'{{"ack": "{receipt.ack_header_id}"}}'.encode(),
        content_type="application/fhir+json",
        received_at=clock.now(),
    )
    audit = _receipt_audit(clock, correlation, "forwarded")
    return AcceptRequest(message, [NewDelivery(to, message.payload, "application/fhir+json")], audit)


def test_record_receipts_records_a_batch_with_audit_and_forwards_in_one_go(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    # Two messages from rh, delivered to kbh; one known receipt already stored.
    first = messages.build(citizen="c1", expect_receipt=True)
    second = messages.build(citizen="c2", expect_receipt=True)
    for m in (first, second):
        store.accept(*m)
    claimed = {c.message_id: c for c in store.claim_due("w1", clock.now(), LEASE, 10)}
    delivered_at = clock.now()
    store.complete_many("w1", [(c.id, ok(clock)) for c in claimed.values()], delivered_at)
    earlier = NewReceipt("ack-earlier", first[0].header_id, "kbh", "ok", clock.now())
    assert store.record_receipt(earlier) is not None
    clock.advance(timedelta(seconds=3))
    now = clock.now()
    batch = [
        NewReceipt("ack-earlier", first[0].header_id, "kbh", "ok", now),  # seen before
        NewReceipt("ack-2", second[0].header_id, "kbh", "fatal-error", now),  # new, matches
        NewReceipt("ack-2", second[0].header_id, "kbh", "fatal-error", now),  # its duplicate, same batch
        NewReceipt("ack-x", str(uuid.uuid4()), "kbh", "ok", now),  # acknowledges nothing
        NewReceipt("ack-y", second[0].header_id, "aarhus", "ok", now),  # from a system it never went to
    ]
    seen: list[ReceiptCorrelation] = []

    def follow_up(correlation: ReceiptCorrelation) -> ReceiptFollowUp:
        seen.append(correlation)
        if correlation.new:
            return ReceiptFollowUp(forward=_forward(clock, correlation, "rh"))
        # A forward for anything but a new match is never stored.
        status = "duplicate" if correlation.match is not None else "unmatched"
        return ReceiptFollowUp(_receipt_audit(clock, correlation, status), _forward(clock, correlation, "rh"))

    audit_before = len(store.read_audit(limit=1000))
    recorded = store.record_receipts(batch, follow_up)

    assert [r.correlation for r in recorded] == seen
    assert [r.correlation.receipt for r in recorded] == batch
    duplicate, new, again, unknown, wrong = recorded
    assert duplicate.correlation.match is not None and duplicate.correlation.match.duplicate
    assert duplicate.correlation.match.message_id == first[0].id
    assert (duplicate.correlation.message, duplicate.forwarded) == (None, None)
    assert new.correlation.new and new.correlation.match is not None
    assert new.correlation.match.delivery_id == claimed[second[0].id].id
    assert new.correlation.message is not None and new.correlation.message.id == second[0].id
    assert (new.correlation.message.sender, new.correlation.message.citizen_key) == ("rh", "c2")
    assert new.correlation.delivered_at == delivered_at
    assert isinstance(new.forwarded, AcceptResult) and new.forwarded.accepted
    assert again.correlation.match is not None and again.correlation.match.duplicate
    assert again.forwarded is None
    assert (unknown.correlation.match, unknown.forwarded) == (None, None)
    assert (wrong.correlation.match, wrong.forwarded) == (None, None)
    # The receipt is on its delivery; the forward is one delivery to rh; audit records in batch order.
    (kbh,) = store.message_trace(second[0].id).deliveries  # type: ignore[union-attr]
    assert (kbh.delivery.receipt_code, kbh.delivery.receipt_at) == ("fatal-error", now)
    assert [r.ack_header_id for r in kbh.receipts] == ["ack-2"]
    forwards = store.list_messages(MessageFilter(kind="acknowledgement"))
    assert [(m.header_id, m.sender) for m in forwards] == [("ack-2", "kbh")]
    (to_rh,) = [d for d in store.list_deliveries() if d.destination == "rh"]
    assert to_rh.message_id == forwards[0].id and to_rh.state == "pending"
    trail = store.read_audit(limit=1000)[audit_before:]
    assert [(e.record.action, e.record.body) for e in trail] == [
        ("receipt.received", b'{"ack": "ack-earlier", "status": "duplicate"}'),
        ("receipt.received", b'{"ack": "ack-2", "status": "forwarded"}'),
        ("receipt.received", b'{"ack": "ack-2", "status": "duplicate"}'),
        ("receipt.received", b'{"ack": "ack-x", "status": "unmatched"}'),
        ("receipt.received", b'{"ack": "ack-y", "status": "unmatched"}'),
    ]
    assert verify_audit_chain(store.read_audit(limit=1000)) is None
    # Unmatched receipts are stored too: seen again, they are still unmatched, not new.
    (later,) = store.record_receipts([batch[3]], lambda c: ReceiptFollowUp())
    assert later.correlation.match is None
    assert store.record_receipts([], follow_up) == []


def test_a_failing_forward_is_rolled_back_alone_and_a_forward_naming_a_citizen_is_refused(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    one, two = messages.build(expect_receipt=True), messages.build(expect_receipt=True)
    for m in (one, two):
        store.accept(*m)
    batch = [
        NewReceipt("ack-1", one[0].header_id, "kbh", "ok", clock.now()),
        NewReceipt("ack-2", two[0].header_id, "kbh", "ok", clock.now()),
    ]

    def clashing(correlation: ReceiptCorrelation) -> ReceiptFollowUp:
        forward = _forward(clock, correlation, "rh")
        if correlation.receipt.ack_header_id == "ack-1":  # its id is taken: an integrity error
            forward = replace(forward, message=replace(forward.message, id=one[0].id))
        return ReceiptFollowUp(_receipt_audit(clock, correlation, "recorded"), forward)

    failed_one, stored_two = store.record_receipts(batch, clashing)

    assert isinstance(failed_one.forwarded, StoreError)
    assert isinstance(stored_two.forwarded, AcceptResult) and stored_two.forwarded.accepted
    # The receipt and its audit record stay; only the forward went.
    assert store.list_deliveries()[0].receipt_code == "ok"
    assert [m.header_id for m in store.list_messages(MessageFilter(kind="acknowledgement"))] == ["ack-2"]
    assert len([e for e in store.read_audit(limit=100) if e.record.action == "receipt.received"]) == 3

    three = messages.build(expect_receipt=True)
    store.accept(*three)
    about_someone = NewReceipt("ack-3", three[0].header_id, "kbh", "ok", clock.now())

    def naming_a_citizen(correlation: ReceiptCorrelation) -> ReceiptFollowUp:
        forward = _forward(clock, correlation, "rh")
        return ReceiptFollowUp(forward=replace(forward, message=replace(forward.message, citizen_key="c1")))

    with pytest.raises(ValueError, match="citizen"):
        store.record_receipts([about_someone], naming_a_citizen)
    assert store.record_receipt(about_someone) is not None  # nothing of the refused batch was stored
    assert store.record_receipt(about_someone).duplicate  # type: ignore[union-attr]


def test_complete_with_receipts_stores_results_and_receipts_in_one_transaction(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    first = messages.build(citizen="c1", expect_receipt=True)
    second = messages.build(citizen="c2", expect_receipt=True)
    # The second's lease goes to another worker: its result does not count, its receipt does.
    store.accept(*second)
    (two,) = store.claim_due("w1", clock.now(), LEASE, 10)
    clock.advance(LEASE + timedelta(seconds=1))
    (taken,) = store.claim_due("w2", clock.now(), LEASE, 10)
    store.accept(*first)
    (one,) = store.claim_due("w1", clock.now(), LEASE, 10)
    now = clock.now()
    records = {c.id: AuditRecord(now, "delivery.delivered", "w1", b"{}", c.message_id) for c in (one, two)}
    receipts = [
        NewReceipt("ack-1", first[0].header_id, "kbh", "ok", now),
        NewReceipt("ack-2", second[0].header_id, "kbh", "ok", now),
    ]
    audit_before = len(store.read_audit(limit=1000))

    lost, recorded = store.complete_with_receipts(
        "w1",
        [(one.id, ok(clock)), (two.id, ok(clock))],
        now,
        records,
        receipts,
        lambda c: ReceiptFollowUp(forward=_forward(clock, c, "rh")),
    )

    assert lost == [taken.id]
    assert [r.correlation.receipt for r in recorded] == receipts
    assert all(isinstance(r.forwarded, AcceptResult) and r.forwarded.accepted for r in recorded)
    states = {d.id: (d.state, d.receipt_code) for d in store.list_deliveries() if d.destination == "kbh"}
    assert states == {one.id: ("delivered", "ok"), two.id: ("leased", "ok")}
    forwards = store.list_messages(MessageFilter(kind="acknowledgement"))
    assert sorted(m.header_id for m in forwards) == ["ack-1", "ack-2"]
    trail = store.read_audit(limit=1000)[audit_before:]
    assert [e.record.action for e in trail] == ["delivery.delivered", "receipt.received", "receipt.received"]
    assert verify_audit_chain(store.read_audit(limit=1000)) is None
    assert store.complete_with_receipts("w1", [], now, {}, [], lambda c: ReceiptFollowUp()) == ([], [])

    # A failing follow-up fails the whole transaction: neither the result nor the receipt is stored.
    third = messages.build(citizen="c3", expect_receipt=True)
    store.accept(*third)
    (three,) = [c for c in store.claim_due("w1", clock.now(), LEASE, 10) if c.message_id == third[0].id]

    def naming_a_citizen(correlation: ReceiptCorrelation) -> ReceiptFollowUp:
        forward = _forward(clock, correlation, "rh")
        return ReceiptFollowUp(forward=replace(forward, message=replace(forward.message, citizen_key="c1")))

    with pytest.raises(ValueError, match="citizen"):
        store.complete_with_receipts(
            "w1",
            [(three.id, ok(clock))],
            now,
            {},
            [NewReceipt("ack-3", third[0].header_id, "kbh", "ok", now)],
            naming_a_citizen,
        )
    (left,) = [d for d in store.list_deliveries() if d.id == three.id]
    assert (left.state, left.receipt_code) == ("leased", None)


def test_message_record_reads_a_message_by_id_or_header_id(store: OutboxStore, messages: Messages) -> None:
    message, deliveries, audit = messages.build(citizen="c1", destinations=("kbh", "aarhus"))
    store.accept(message, deliveries, audit)

    by_id = store.message_record(message.id)
    assert by_id is not None and by_id == store.message_record(message.header_id)
    assert by_id == store.message_trace(message.id).message  # type: ignore[union-attr]
    assert (by_id.sender, by_id.citizen_key, by_id.state) == ("rh", "c1", "in-flight")
    assert store.message_record(str(uuid.uuid4())) is None


def test_missing_receipt_triggers_resend_up_to_the_limit(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    wait = timedelta(minutes=30)
    message, deliveries, audit = messages.from_example(ADMISSION, expect_receipt=True)
    store.accept(message, deliveries, audit)
    no_receipt_wanted = messages.build(expect_receipt=False)
    store.accept(*no_receipt_wanted)
    for c in store.claim_due("w1", clock.now(), LEASE, limit=10):
        store.complete(c.id, "w1", ok(clock), clock.now())

    clock.advance(wait - timedelta(seconds=1))
    assert store.receipt_overdue(clock.now(), wait, max_resends=2, limit=10) == []
    clock.advance(timedelta(seconds=1))
    (overdue,) = store.receipt_overdue(clock.now(), wait, max_resends=2, limit=10)
    assert overdue.id == deliveries[0].id

    store.resend(overdue.id, b"new envelope", clock.now())
    (resent,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    assert (resent.payload, resent.resends, resent.attempt) == (b"new envelope", 1, 1)
    store.complete(resent.id, "w1", ok(clock), clock.now())
    clock.advance(wait)
    (overdue,) = store.receipt_overdue(clock.now(), wait, max_resends=2, limit=10)
    assert overdue.resends == 1
    assert store.receipt_overdue(clock.now(), wait, max_resends=1, limit=10) == []
    store.resend(overdue.id, b"third envelope", clock.now())
    with pytest.raises(InvalidTransition):
        store.resend(overdue.id, b"not while pending", clock.now())
    with pytest.raises(NotFound):
        store.resend(str(uuid.uuid4()), b"x", clock.now())

    # A receipt ends the wait.
    store.complete(store.claim_due("w1", clock.now(), LEASE, limit=1)[0].id, "w1", ok(clock), clock.now())
    store.record_receipt(NewReceipt(str(uuid.uuid4()), message.header_id, "kbh", "ok", clock.now()))
    clock.advance(wait)
    assert store.receipt_overdue(clock.now(), wait, max_resends=5, limit=10) == []


# -- operators ---------------------------------------------------------------------------------------


def test_list_messages_filters(store: OutboxStore, messages: Messages, clock: FakeClock) -> None:
    start = clock.now()
    from_rh = messages.from_example(ADMISSION, destinations=("kbh",), sender="rh")
    store.accept(*from_rh)
    clock.advance(10)
    from_kbh = messages.build(sender="kbh", destinations=("rh",), kind="care-communication")
    store.accept(*from_kbh)
    clock.advance(10)
    dead = messages.build(sender="rh", destinations=("aarhus",))
    store.accept(*dead)
    for c in store.claim_due("w1", clock.now(), LEASE, limit=10):
        if c.message_id == dead[0].id:
            store.dead_letter(c.id, "w1", None, "gone", clock.now())
        elif c.message_id == from_kbh[0].id:
            store.complete(c.id, "w1", ok(clock), clock.now())

    def ids(**kw: object) -> list[str]:
        return [m.id for m in store.list_messages(MessageFilter(**kw))]  # type: ignore[arg-type]

    assert ids() == [dead[0].id, from_kbh[0].id, from_rh[0].id]  # newest first
    assert ids(sender="rh") == [dead[0].id, from_rh[0].id]
    assert ids(destination="rh") == [from_kbh[0].id]
    assert ids(kind="care-communication") == [from_kbh[0].id]
    assert ids(state="dead") == [dead[0].id]
    assert ids(state="delivered") == [from_kbh[0].id]
    assert ids(state="in-flight") == [from_rh[0].id]
    assert ids(received_from=start + timedelta(seconds=10)) == [dead[0].id, from_kbh[0].id]
    assert ids(received_to=start + timedelta(seconds=10)) == [from_rh[0].id]
    assert ids(limit=1, offset=1) == [from_kbh[0].id]


def test_list_deliveries_by_state(store: OutboxStore, messages: Messages, clock: FakeClock) -> None:
    store.accept(*messages.build(destinations=("kbh", "aarhus", "odense")))
    a, b, _ = store.claim_due("w1", clock.now(), LEASE, limit=3)
    store.complete(a.id, "w1", ok(clock), clock.now())
    store.dead_letter(b.id, "w1", None, "refused", clock.now())

    assert [d.destination for d in store.list_deliveries()] == ["kbh", "aarhus", "odense"]
    assert [d.destination for d in store.list_deliveries("delivered")] == ["kbh"]
    assert [d.destination for d in store.list_deliveries("dead")] == ["aarhus"]
    assert [d.destination for d in store.list_deliveries("leased")] == ["odense"]
    assert store.list_deliveries("pending") == []
    assert [d.destination for d in store.list_deliveries(limit=1, offset=2)] == ["odense"]


def test_message_trace_of_unknown_id_is_none(store: OutboxStore) -> None:
    assert store.message_trace(str(uuid.uuid4())) is None


# -- audit -------------------------------------------------------------------------------------------


def test_audit_is_a_hash_chain(store: OutboxStore, messages: Messages, clock: FakeClock) -> None:
    store.accept(*messages.build())
    for i in range(4):
        clock.advance(1)
        store.append_audit(AuditRecord(clock.now(), "delivery.attempted", f"w{i}", b'{"n":%d}' % i))

    entries = store.read_audit()
    assert [e.seq for e in entries] == sorted(e.seq for e in entries) and len(entries) == 5
    assert verify_audit_chain(entries) is None
    assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(entries))
    tail = store.read_audit(after_seq=entries[2].seq, limit=10)
    assert [e.seq for e in tail] == [entries[3].seq, entries[4].seq]
    assert verify_audit_chain(tail, prev_hash=entries[2].hash) is None

    tampered = list(entries)
    tampered[2] = replace(entries[2], record=replace(entries[2].record, actor="someone-else"))
    assert verify_audit_chain(tampered) == entries[2].seq


# -- retention ---------------------------------------------------------------------------------------


def test_purge_drops_delivered_payloads_only(
    store: OutboxStore, messages: Messages, clock: FakeClock
) -> None:
    delivered = messages.build(destinations=("kbh",))
    dead = messages.build(destinations=("aarhus",))
    partly = messages.build(destinations=("kbh", "odense"))
    for args in (delivered, dead, partly):
        store.accept(*args)
    for c in store.claim_due("w1", clock.now(), timedelta(days=7), limit=10):
        if c.destination == "aarhus":
            store.dead_letter(c.id, "w1", None, "refused", clock.now())
        elif c.destination == "kbh":
            store.complete(c.id, "w1", ok(clock), clock.now())
        # odense stays leased
    clock.advance(timedelta(days=1))
    late = messages.build(destinations=("kbh",))
    store.accept(*late)
    (late_claim,) = store.claim_due("w1", clock.now(), LEASE, limit=10)
    store.complete(late_claim.id, "w1", ok(clock), clock.now())

    result = store.purge_payloads(older_than=clock.now() - timedelta(hours=1))

    assert (result.deliveries, result.messages) == (2, 1)
    purged = {d.id: d.payload_purged for d in store.list_deliveries()}
    assert purged == {
        delivered[1][0].id: True,
        dead[1][0].id: False,
        partly[1][0].id: True,
        partly[1][1].id: False,
        late[1][0].id: False,
    }
    states = {m.id: m.payload_purged for m in store.list_messages(MessageFilter())}
    assert states == {delivered[0].id: True, dead[0].id: False, partly[0].id: False, late[0].id: False}
    assert store.purge_payloads(older_than=clock.now() - timedelta(hours=1)) == type(result)(0, 0)
    # The trace survives the purge.
    trace = store.message_trace(delivered[0].id)
    assert trace is not None and trace.deliveries[0].attempts[0].outcome == "delivered"


# -- admissions --------------------------------------------------------------------------------------


def test_admission_state_follows_the_newest_notification(store: OutboxStore, clock: FakeClock) -> None:
    key = load_example(ADMISSION).citizen_key
    assert key is not None
    assert store.current_admission(key) is None
    admitted = Admission(key, "rh", "admitted", clock.now())
    assert store.set_admission(admitted)
    assert store.current_admission(key) == admitted
    assert store.current_admission(key).is_admitted  # type: ignore[union-attr]

    discharged = Admission(key, "rh", "discharged", clock.now() + timedelta(days=3))
    assert store.set_admission(discharged)
    # A late-arriving older notification does not undo the discharge.
    assert not store.set_admission(Admission(key, "rh", "on-leave", clock.now() + timedelta(days=1)))
    current = store.current_admission(key)
    assert current == discharged and not current.is_admitted
    elsewhere = Admission(key, "ouh", "admitted", clock.now() + timedelta(days=10))
    assert store.set_admission(elsewhere)
    assert store.current_admission(key) == elsewhere


# -- health ------------------------------------------------------------------------------------------


def test_queue_stats(store: OutboxStore, messages: Messages, clock: FakeClock) -> None:
    empty = store.queue_stats(clock.now())
    assert (empty.by_state, empty.due, empty.oldest_due_at) == (
        {"pending": 0, "leased": 0, "delivered": 0, "dead": 0},
        0,
        None,
    )
    start = clock.now()
    store.accept(*messages.build(destinations=("kbh", "aarhus", "odense")))
    store.accept(*messages.build(not_before_in=timedelta(hours=1)))
    clock.advance(5)
    (a,) = store.claim_due("w1", clock.now(), LEASE, limit=1)
    store.complete(a.id, "w1", ok(clock), clock.now())

    stats = store.queue_stats(clock.now())
    assert stats.by_state == {"pending": 3, "leased": 0, "delivered": 1, "dead": 0}
    assert stats.due == 2
    assert stats.oldest_due_at == start


def test_closed_store_is_unavailable(store: OutboxStore) -> None:
    store.ping()
    store.close()
    with pytest.raises(StoreUnavailable):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.append_audit(AuditRecord(FakeClock().now(), "x", "y", b"{}"))


def test_ids_reach_the_deliveries(store: OutboxStore, messages: Messages) -> None:
    message, deliveries, audit = messages.build(destinations=("kbh",))
    explicit = NewDelivery("aarhus", b"x", "application/json", id="fixed-delivery-id")
    result = store.accept(message, [*deliveries, explicit], audit)
    assert result.delivery_ids[-1] == "fixed-delivery-id"
