"""Outbox store throughput on SQLite and PostgreSQL, side by side, in one run; prints JSON.

    python benchmarks/outbox.py [--engine sqlite|postgres|both] [--url postgresql://...]
                                [--messages 2000] [--citizens 200] [--batch 16] [--threads 4]

PostgreSQL runs in a scratch schema on the server named by --url (default: $BRIDGE_TEST_POSTGRES_URL),
dropped afterwards; SQLite in a temporary file (WAL, synchronous=FULL).

accept: one transaction per message (message + 2 deliveries + hash-chained audit record), committed
durably; ``accept_per_s`` from one thread, ``accept_concurrent_per_s`` from --threads threads, each
with its own store (as separate bridge processes would have).
drain: claim_due(batch) + complete_many() per batch until the queue is empty, per-citizen order kept;
``drain_deliveries_per_s`` from one worker, ``drain_concurrent_per_s`` from --threads workers.
claim_latency: one claim_due over the full backlog (every citizen's head due), median of repeats;
on PostgreSQL after ANALYZE (as autovacuum keeps it), and before it (``..._before_analyze``).
accept_many_per_s: messages/s through accept_many with batches of 1, 16 and 64 (one transaction and
one commit per batch), one thread.
claim_behind_heads_ms: ms per claim_due call on a fresh store where --heads citizens have their head
delivery waiting for a retry an hour away (a receiver that is down) and 0, 20,000 and 100,000
deliveries are queued behind those heads, all of them due; nothing is claimable, so the figure is
what a dispatcher's idle poll costs. The backlog is accepted in batches of 500 with a small payload;
on PostgreSQL it is ANALYZEd every 10,000 and before each probe (as autovacuum would; without it,
statements prepared while the tables were small keep plans that scan them whole).
Both engines run in the same Python process, so the figures compare the stores, not the hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from bridge.clock import FakeClock
from bridge.outbox.port import (
    AcceptRequest,
    AttemptRecord,
    AuditRecord,
    NewDelivery,
    NewMessage,
    OutboxStore,
)
from bridge.outbox.postgres import PostgresOutboxStore
from bridge.outbox.sqlite import SqliteOutboxStore

PAYLOAD = b'{"resourceType":"Bundle","type":"message","entry":[]}' + b" " * 4000  # ~4 KB
LEASE = timedelta(minutes=5)


@contextmanager
def sqlite_opener() -> Iterator[Callable[[], OutboxStore]]:
    with tempfile.TemporaryDirectory() as tmp:
        yield lambda: SqliteOutboxStore(Path(tmp) / "outbox.db")


@contextmanager
def postgres_opener(server: str) -> Iterator[Callable[[], OutboxStore]]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    parts = urlsplit(server)
    query = urlencode([*parse_qsl(parts.query), ("options", f"-csearch_path={schema}")])
    url = urlunsplit(parts._replace(query=query))
    try:
        yield lambda: PostgresOutboxStore.from_url(url)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def request(
    clock: FakeClock,
    i: int,
    citizen: str,
    destinations: tuple[str, ...] = ("kbh", "aarhus"),
    payload: bytes = PAYLOAD,
) -> AcceptRequest:
    now = clock.now()
    tag = uuid.uuid4().hex  # several figures accept into one store: ids must not repeat across them
    message = NewMessage(
        f"bundle-{i}-{tag}",
        f"header-{i}-{tag}",
        "rh",
        "hospital-notification",
        citizen,
        payload,
        "application/fhir+json",
        now,
    )
    deliveries = [NewDelivery(d, payload, "application/fhir+json") for d in destinations]
    return AcceptRequest(message, deliveries, AuditRecord(now, "message.accepted", "rh", b"{}", message.id))


def accept_all(store: OutboxStore, clock: FakeClock, first: int, count: int, citizens: int) -> None:
    for i in range(first, first + count):
        r = request(clock, i, f"citizen-{i % citizens}")
        store.accept(r.message, r.deliveries, r.audit)


def accept_many_rates(store: OutboxStore, clock: FakeClock, citizens: int) -> dict[str, float]:
    """Messages/s through accept_many, per batch size; the same number of messages for each."""
    total = 1024
    rates: dict[str, float] = {}
    for size in (1, 16, 64):
        batches = [
            [request(clock, i, f"citizen-{i % citizens}") for i in range(start, start + size)]
            for start in range(0, total, size)
        ]
        started = time.perf_counter()
        for batch in batches:
            store.accept_many(batch)
        rates[str(size)] = round(total / (time.perf_counter() - started), 1)
    return rates


def analyze(store: OutboxStore) -> None:
    """On PostgreSQL, refresh the planner's statistics as autovacuum would (a no-op on SQLite)."""
    if isinstance(store, PostgresOutboxStore):
        with store.pool.connection() as conn:
            conn.execute("ANALYZE")


def claim_behind_heads(opener: Callable[[], OutboxStore], heads: int, batch: int) -> dict[str, float]:
    """ms per claim_due with 0, 20,000 and 100,000 due deliveries queued behind heads in retry."""
    clock = FakeClock()
    store = opener()
    try:
        store.migrate()
        small = b'{"resourceType":"Bundle"}'
        store.accept_many([request(clock, i, f"down-{i}", ("kbh",), small) for i in range(heads)])
        attempt = AttemptRecord(clock.now(), timedelta(milliseconds=5), "transient", 503)
        retry_at = clock.now() + timedelta(hours=1)
        for claimed in store.claim_due("w", clock.now(), LEASE, heads):
            store.schedule_retry(claimed.id, "w", attempt, retry_at, clock.now())
        queued = 0
        figures: dict[str, float] = {}
        for target in (0, 20_000, 100_000):
            while queued < target:
                count = min(500, target - queued)
                store.accept_many(
                    [
                        request(clock, i, f"down-{i % heads}", ("kbh",), small)
                        for i in range(queued, queued + count)
                    ]
                )
                queued += count
                if queued % 10_000 == 0:
                    analyze(store)  # plans made while the tables were small would scan them whole
            analyze(store)
            latencies = []
            for _ in range(9):
                t0 = time.perf_counter()
                found = store.claim_due("probe", clock.now(), LEASE, batch)
                latencies.append(time.perf_counter() - t0)
                assert found == [], "only heads in retry and the backlog behind them: nothing is due"
            figures[str(target)] = round(statistics.median(latencies) * 1000, 3)
        return figures
    finally:
        store.close()


def drain(store: OutboxStore, worker: str, clock: FakeClock, batch: int) -> int:
    attempt = AttemptRecord(clock.now(), timedelta(milliseconds=5), "delivered", 200)
    delivered = 0
    idle = 0
    while idle < 3:  # another worker may hold the heads for a moment; stop after a few empty claims
        claimed = store.claim_due(worker, clock.now(), LEASE, batch)
        if not claimed:
            idle += 1
            continue
        idle = 0
        store.complete_many(worker, [(c.id, attempt) for c in claimed], clock.now())
        delivered += len(claimed)
    return delivered


def claim_latencies(store: OutboxStore, clock: FakeClock, batch: int) -> list[float]:
    latencies = []
    for _ in range(5):
        t0 = time.perf_counter()
        claimed = store.claim_due("probe", clock.now(), LEASE, batch)
        latencies.append(time.perf_counter() - t0)
        for c in claimed:
            store.release(c.id, "probe", clock.now())
    return latencies


def in_threads(count: int, work: Callable[[int], Any]) -> float:
    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def run(engine: str, opener: Callable[[], OutboxStore], args: argparse.Namespace) -> dict[str, Any]:
    clock = FakeClock()
    stores = [opener() for _ in range(args.threads)]
    store = stores[0]
    store.migrate()
    try:
        started = time.perf_counter()
        accept_all(store, clock, 0, args.messages, args.citizens)
        accept_s = time.perf_counter() - started

        cold = claim_latencies(store, clock, args.batch)
        if isinstance(store, PostgresOutboxStore):
            # What autovacuum does within a minute of a burst: with statistics the planner walks the
            # due index and stops at the limit; without, it may sort the whole backlog (cold figure).
            with store.pool.connection() as conn:
                conn.execute("ANALYZE")
        latencies = claim_latencies(store, clock, args.batch)

        started = time.perf_counter()
        delivered = drain(store, "w0", clock, args.batch)
        drain_s = time.perf_counter() - started

        share = args.messages // args.threads
        accept_concurrent_s = in_threads(
            args.threads,
            lambda n: accept_all(stores[n], clock, args.messages + n * share, share, args.citizens),
        )
        counts = [0] * args.threads

        def work(n: int) -> None:
            counts[n] = drain(stores[n], f"w{n}", clock, args.batch)

        drain_concurrent_s = in_threads(args.threads, work)
        stats = store.queue_stats(clock.now())
        assert stats.by_state["pending"] == stats.by_state["leased"] == 0, stats

        analyze(store)
        accept_many_per_s = accept_many_rates(store, clock, args.citizens)
    finally:
        for s in stores:
            s.close()
    return {
        "engine": engine,
        "accept_per_s": round(args.messages / accept_s, 1),
        "accept_ms_mean": round(accept_s * 1000 / args.messages, 3),
        "accept_concurrent_per_s": round(share * args.threads / accept_concurrent_s, 1),
        "drain_deliveries_per_s": round(delivered / drain_s, 1),
        "drain_concurrent_per_s": round(sum(counts) / drain_concurrent_s, 1),
        "claim_latency_ms_median": round(statistics.median(latencies) * 1000, 3),
        "claim_latency_before_analyze_ms_median": round(statistics.median(cold) * 1000, 3),
        "backlog_at_claim_probe": args.messages * 2,
        "accept_many_per_s": accept_many_per_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--url", default=os.environ.get("BRIDGE_TEST_POSTGRES_URL", ""))
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--citizens", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--heads", type=int, default=500, help="citizens whose heads wait for a retry")
    args = parser.parse_args()
    if args.engine in ("postgres", "both") and not args.url:
        parser.error("PostgreSQL needs --url or BRIDGE_TEST_POSTGRES_URL")
    results = []
    openers: dict[str, Callable[[], AbstractContextManager[Callable[[], OutboxStore]]]] = {
        "sqlite": sqlite_opener,
        "postgres": lambda: postgres_opener(args.url),
    }
    for engine in ("sqlite", "postgres"):
        if args.engine not in (engine, "both"):
            continue
        with openers[engine]() as opener:
            result = run(engine, opener, args)
        with openers[engine]() as opener:  # a store of its own: nothing else queued in it
            result["claim_behind_heads_ms"] = claim_behind_heads(opener, args.heads, args.batch)
        results.append(result)
    server_version = None
    if args.engine in ("postgres", "both"):
        with psycopg.connect(args.url) as conn:
            server_version = conn.info.server_version
    print(
        json.dumps(
            {
                "benchmark": "outbox",
                "messages": args.messages,
                "deliveries_per_message": 2,
                "citizens": args.citizens,
                "batch": args.batch,
                "threads": args.threads,
                "heads_in_retry": args.heads,
                "payload_bytes": len(PAYLOAD),
                "results": results,
                "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version,
                "postgresql_server_version": server_version,
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
