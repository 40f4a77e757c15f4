"""Lease expiry under a controllable clock: expired leases are reclaimed, live ones are never stolen.

Three dispatchers (workers A, B and C) share one store on each engine and one ``FakeClock``; they post
official MedCom HospitalNotifications to a loopback receiver that holds the first copy of every message
open until the test lets go - so A and C are "hung" mid-post for as long as the test wants, as a worker
on a stalled network or a crashed process would be. Only the clock decides when a lease is over.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from delivery_bed import ADMISSION, FHIR_JSON, KOMMUNE, SECRET, Receiver, Reply, Request, message_variant
from delivery_bed import settings_for as bed_settings
from harness import wait_until

from bridge.clock import FakeClock
from bridge.delivery.dispatcher import Dispatcher
from bridge.outbox import open_store
from bridge.outbox.keys import citizen_key
from bridge.outbox.port import AuditRecord, NewDelivery, NewMessage, OutboxStore
from bridge.settings import Settings

pytestmark = pytest.mark.reliability

LEASE = timedelta(minutes=2)
TICK = timedelta(microseconds=1)


class HoldFirstCopies:
    """Receiver script: the first request for each MessageHeader.id waits until ``release``; copies
    that come again (a second worker's redelivery) are answered at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Reply:
        with self._lock:
            copies = self.seen[request.header_id] = self.seen.get(request.header_id, 0) + 1
        if copies == 1:
            self.release.wait(30)
        return Reply()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, HoldFirstCopies]]:
    script = HoldFirstCopies()
    kommune = Receiver(script)
    try:
        yield kommune, script
    finally:
        script.release.set()
        kommune.close()


@pytest.fixture
def store(engine_url: str) -> Iterator[OutboxStore]:
    opened = open_store(engine_url)
    try:
        yield opened
    finally:
        opened.close()


def _settings(kommune: Receiver, batch_size: int) -> Settings:
    # The hospital and rehab systems get nothing in these tests; their endpoints are never called.
    unused = "http://127.0.0.1:9/unused"
    return bed_settings(
        unused,
        kommune.url,
        unused,
        dispatcher={"lease": "2m", "batch_size": batch_size},
        kommune_extra={"concurrency": 8},
    )


def _accept(store: OutboxStore, clock: FakeClock, count: int) -> list[str]:
    """``count`` admissions, each for its own citizen, to the FHIR municipality; their delivery ids."""
    ids = []
    for i in range(count):
        payload = message_variant(ADMISSION)
        now = clock.now()
        message = NewMessage(
            bundle_id=str(uuid.uuid4()),
            header_id=str(uuid.uuid4()),
            sender="hospital",
            kind="hospital-notification",
            citizen_key=citizen_key(f"citizen-{i}", SECRET),
            payload=payload,
            content_type=FHIR_JSON,
            received_at=now,
        )
        delivery = NewDelivery(destination=KOMMUNE, payload=payload, content_type=FHIR_JSON)
        audit = AuditRecord(now, "message.accepted", "hospital", b'{"resourceType":"AuditEvent"}', message.id)
        result = store.accept(message, [delivery], audit)
        ids.extend(result.delivery_ids)
    return ids


def _in_background(dispatcher: Dispatcher) -> tuple[threading.Thread, list[int]]:
    handled: list[int] = []
    thread = threading.Thread(target=lambda: handled.append(dispatcher.run_once()), daemon=True)
    thread.start()
    return thread, handled


def _attempts_by(store: OutboxStore, delivery_id: str) -> list[str]:
    found = [t for t in store.list_deliveries(limit=1000) if t.id == delivery_id]
    assert len(found) == 1
    trace = store.message_trace(found[0].message_id)
    assert trace is not None
    return [a.worker_id for d in trace.deliveries for a in d.attempts]


def test_a_live_lease_is_never_stolen_however_often_others_look(
    store: OutboxStore, receiver: tuple[Receiver, HoldFirstCopies]
) -> None:
    kommune, script = receiver
    clock = FakeClock()
    settings = _settings(kommune, batch_size=16)
    ids = _accept(store, clock, 6)
    a = Dispatcher(settings, store, clock, worker_id="A")
    b = Dispatcher(settings, store, clock, worker_id="B")
    try:
        thread, handled = _in_background(a)
        wait_until(lambda: len(kommune.requests) == 6, 10, "A's six posts to be in flight")
        claimed_at = clock.now()
        # B looks again and again while A's leases run: at the start, through the lease, and at its last
        # microsecond. It never claims, and so never posts.
        for step in [*(LEASE * k / 8 for k in range(8)), LEASE - TICK]:
            clock.set(claimed_at + step)
            assert b.run_once() == 0, f"B claimed a live lease {step} after A's claim"
            assert store.queue_stats(clock.now()).expired_leases == 0
        assert len(kommune.requests) == 6
        script.release.set()
        thread.join(10)
        assert handled == [6]
    finally:
        a.stop(timeout=1)
        b.stop(timeout=1)
    assert {d.id for d in store.list_deliveries("delivered")} == set(ids)
    for delivery_id in ids:
        assert _attempts_by(store, delivery_id) == ["A"]


def test_expired_leases_are_reclaimed_and_only_those(
    store: OutboxStore, receiver: tuple[Receiver, HoldFirstCopies]
) -> None:
    kommune, script = receiver
    clock = FakeClock()
    settings = _settings(kommune, batch_size=3)
    ids = _accept(store, clock, 6)
    a = Dispatcher(settings, store, clock, worker_id="A")
    b = Dispatcher(settings, store, clock, worker_id="B")
    c = Dispatcher(settings, store, clock, worker_id="C")
    try:
        start = clock.now()
        thread_a, handled_a = _in_background(a)  # the three oldest, leased until start + LEASE
        wait_until(lambda: len(kommune.requests) == 3, 10, "A's posts to be in flight")
        clock.set(start + LEASE / 2)
        thread_c, handled_c = _in_background(c)  # the next three, leased until start + 1.5 LEASE
        wait_until(lambda: len(kommune.requests) == 6, 10, "C's posts to be in flight")
        held_by = {d.id: d.lease_owner for d in store.list_deliveries("leased")}
        assert held_by == {**dict.fromkeys(ids[:3], "A"), **dict.fromkeys(ids[3:], "C")}

        clock.set(start + LEASE - TICK)
        assert b.run_once() == 0  # A's leases are one microsecond from their end
        clock.set(start + LEASE)
        assert b.run_once() == 3  # A's expired leases, delivered again; C's live ones untouched
        delivered = {d.id for d in store.list_deliveries("delivered")}
        assert delivered == set(ids[:3])
        assert {d.id: d.lease_owner for d in store.list_deliveries("leased")} == dict.fromkeys(ids[3:], "C")

        # The hung posts come back: A's results are dropped (its leases were lost), C's count.
        script.release.set()
        thread_a.join(10)
        thread_c.join(10)
        assert (handled_a, handled_c) == ([3], [3])
    finally:
        for dispatcher in (a, b, c):
            dispatcher.stop(timeout=1)
    assert {d.id for d in store.list_deliveries("delivered")} == set(ids)
    assert store.list_deliveries("leased") == [] and store.list_deliveries("pending") == []
    for delivery_id in ids[:3]:
        assert _attempts_by(store, delivery_id) == ["B"]
    for delivery_id in ids[3:]:
        assert _attempts_by(store, delivery_id) == ["C"]
    # Claims per delivery (the store counts each claim): twice for A's, once for C's.
    claims = {d.id: d.attempts for d in store.list_deliveries("delivered")}
    assert [claims[i] for i in ids] == [2, 2, 2, 1, 1, 1]
    # At-least-once on the wire: A's three went out twice (the receiver dedupes), C's once.
    assert sorted(script.seen.values()) == [1, 1, 1, 2, 2, 2]
