"""``destination_queues`` (the queue gauges of ``GET /metrics``) on both engines."""

from __future__ import annotations

from datetime import timedelta

from bridge.clock import FakeClock
from bridge.outbox.port import DestinationQueue, OutboxStore

from .conftest import Messages


def test_backlog_per_destination(store: OutboxStore, clock: FakeClock, messages: Messages) -> None:
    assert store.destination_queues() == []
    first_at = clock.now()
    store.accept(*messages.build(citizen="c1", destinations=("kbh", "aarhus")))
    clock.advance(60)
    store.accept(*messages.build(citizen="c2", destinations=("kbh",)))
    store.accept(*messages.build(citizen="c3", destinations=("odense",)))
    due = store.claim_due("w1", clock.now(), timedelta(minutes=5), 10)
    claimed = {(c.citizen_key, c.destination): c for c in due}
    assert len(claimed) == 4
    store.release(claimed["c2", "kbh"].id, "w1", clock.now())
    store.dead_letter(claimed["c1", "aarhus"].id, "w1", None, "refused", clock.now())
    queues = {q.destination: q for q in store.destination_queues()}
    assert queues["kbh"] == DestinationQueue("kbh", pending=1, leased=1, dead=0, oldest_open_at=first_at)
    assert queues["aarhus"] == DestinationQueue("aarhus", pending=0, leased=0, dead=1, oldest_open_at=None)
    assert queues["odense"].leased == 1
    assert queues["odense"].oldest_open_at == first_at + timedelta(seconds=60)
    assert list(queues) == sorted(queues)
