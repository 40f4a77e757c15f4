"""What the console's overview shows per destination: the backlog now and the last hour's deliveries.

The backlog comes from the store's ``destination_queues``. The last hour comes from the audit trail,
which holds a record of every delivery outcome (``delivery.delivered``, ``delivery.retry``,
``delivery.dead-lettered``) with its time and destination: the trail's end is found by a binary search
over ``read_audit`` (the port reads forwards only), then pages are read backwards until they are older
than the window. The read is capped (``max_records``); a busier hour is shown from its newest records
and the overview says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson

from bridge.audit import ACTOR_SYSTEM
from bridge.outbox.port import AuditEntry, OutboxStore

WINDOW = timedelta(hours=1)
BUCKETS = 12
_PAGE = 1000
#: A little older than the window is read too: records of several processes are not strictly in
#: time order along the chain.
_SLACK = timedelta(minutes=1)
_FAILED = frozenset({"delivery.retry", "delivery.dead-lettered"})


@dataclass(slots=True)
class Bucket:
    """Delivery outcomes in one slice of the window."""

    start: datetime
    delivered: int = 0
    failed: int = 0


@dataclass(slots=True)
class DestinationOverview:
    """One destination: its backlog, the age of its oldest open delivery, and the window's outcomes."""

    destination: str
    pending: int = 0
    leased: int = 0
    dead: int = 0
    oldest_age: timedelta | None = None
    buckets: list[Bucket] = field(default_factory=list)

    @property
    def depth(self) -> int:
        """Open deliveries: pending and leased."""
        return self.pending + self.leased

    @property
    def delivered(self) -> int:
        """Deliveries that succeeded in the window."""
        return sum(b.delivered for b in self.buckets)

    @property
    def failed(self) -> int:
        """Failed attempts (retried or dead-lettered) in the window."""
        return sum(b.failed for b in self.buckets)


@dataclass(frozen=True, slots=True)
class Overview:
    """Every destination's overview, the window, and whether the window was read in full."""

    now: datetime
    window: timedelta
    destinations: list[DestinationOverview]
    complete: bool


def last_seq(store: OutboxStore) -> int:
    """The ``seq`` of the newest audit entry (0 for an empty trail), in O(log n) reads."""
    first = store.read_audit(after_seq=0, limit=1)
    if not first:
        return 0
    lo = first[0].seq  # an existing entry
    hi = max(2 * lo, 1)
    while probe := store.read_audit(after_seq=hi, limit=1):
        lo = probe[0].seq
        hi = 2 * lo
    # Now lo exists and nothing lies beyond hi.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        probe = store.read_audit(after_seq=mid, limit=1)
        if probe:
            lo = probe[0].seq
        else:
            hi = mid
    after = store.read_audit(after_seq=lo, limit=1)
    return after[0].seq if after else lo


def recent_entries(
    store: OutboxStore, since: datetime, max_records: int = 20_000
) -> tuple[list[AuditEntry], bool]:
    """Audit entries recorded at or after ``since`` (newest pages first), and whether all were read."""
    end = last_seq(store)
    found: list[AuditEntry] = []
    read = 0
    size = max(1, min(_PAGE, max_records))
    while end > 0:
        start = max(0, end - size)
        page = store.read_audit(after_seq=start, limit=end - start)
        read += len(page)
        found.extend(e for e in page if e.record.recorded_at >= since)
        if not page or start == 0 or page[0].record.recorded_at < since - _SLACK:
            return found, True
        if read >= max_records:
            return found, False
        end = start
    return found, True


def _destination(body: bytes) -> str | None:
    """The destination agent (the one not requesting) of a delivery outcome record."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    for agent in event.get("agent") or () if isinstance(event, dict) else ():
        ident = (agent.get("who") or {}).get("identifier") or {}
        if not agent.get("requestor") and ident.get("system") == ACTOR_SYSTEM:
            value = ident.get("value")
            return value if isinstance(value, str) else None
    return None


def overview(
    store: OutboxStore,
    destinations: list[str],
    now: datetime,
    window: timedelta = WINDOW,
    buckets: int = BUCKETS,
    max_records: int = 20_000,
) -> Overview:
    """The overview of ``destinations`` (the configured systems) plus any other with a backlog."""
    since = now - window
    width = window / buckets
    by_id: dict[str, DestinationOverview] = {}

    def get(dest: str) -> DestinationOverview:
        if dest not in by_id:
            by_id[dest] = DestinationOverview(
                dest, buckets=[Bucket(since + i * width) for i in range(buckets)]
            )
        return by_id[dest]

    for dest in destinations:
        get(dest)
    for queue in store.destination_queues():
        item = get(queue.destination)
        item.pending, item.leased, item.dead = queue.pending, queue.leased, queue.dead
        if queue.oldest_open_at is not None:
            item.oldest_age = max(now - queue.oldest_open_at, timedelta(0))
    entries, complete = recent_entries(store, since, max_records)
    for entry in entries:
        action = entry.record.action
        if action != "delivery.delivered" and action not in _FAILED:
            continue
        index = int((entry.record.recorded_at - since) / width)
        if index == buckets and entry.record.recorded_at == now:
            index -= 1  # an outcome at this very moment belongs to the last slice
        if not 0 <= index < buckets:
            continue
        target = _destination(entry.record.body)
        if target is None:
            continue
        bucket = get(target).buckets[index]
        if action == "delivery.delivered":
            bucket.delivered += 1
        else:
            bucket.failed += 1
    return Overview(now, window, [by_id[k] for k in sorted(by_id)], complete)
