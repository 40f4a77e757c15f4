"""Outbox store throughput on SQLite (WAL, synchronous=FULL) in a temporary directory; prints JSON.

    python benchmarks/outbox_sqlite.py [--messages 2000] [--citizens 200] [--batch 16]

accept: one transaction per message (message + 2 deliveries + audit record, hash-chained), fsync'd.
drain: claim_due(batch) + complete() per delivery until the queue is empty, honouring per-citizen order.
claim_latency: one claim_due over the full backlog (every citizen's head due), median of repeats.
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.clock import FakeClock
from bridge.outbox.port import AttemptRecord, AuditRecord, NewDelivery, NewMessage
from bridge.outbox.sqlite import SqliteOutboxStore

PAYLOAD = (
    b'{"resourceType":"Bundle","type":"message","entry":[]}' + b" " * 4000
)  # ~4 KB, a typical notification


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--citizens", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    clock = FakeClock()
    lease = timedelta(minutes=5)
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteOutboxStore(Path(tmp) / "outbox.db")
        store.migrate()

        started = time.perf_counter()
        for i in range(args.messages):
            now = clock.advance(timedelta(milliseconds=1))
            message = NewMessage(
                f"bundle-{i}",
                f"header-{i}",
                "rh",
                "hospital-notification",
                f"citizen-{i % args.citizens}",
                PAYLOAD,
                "application/fhir+json",
                now,
            )
            deliveries = [NewDelivery(d, PAYLOAD, "application/fhir+json") for d in ("kbh", "aarhus")]
            store.accept(message, deliveries, AuditRecord(now, "message.accepted", "rh", b"{}", message.id))
        accept_s = time.perf_counter() - started

        latencies = []
        for _ in range(5):
            t0 = time.perf_counter()
            claimed = store.claim_due("probe", clock.now(), lease, args.batch)
            latencies.append(time.perf_counter() - t0)
            for c in claimed:
                store.release(c.id, "probe", clock.now())

        attempt = AttemptRecord(clock.now(), timedelta(milliseconds=5), "delivered", 200)
        started = time.perf_counter()
        delivered = 0
        while batch := store.claim_due("w1", clock.now(), lease, args.batch):
            for c in batch:
                store.complete(c.id, "w1", attempt, clock.now())
                delivered += 1
        drain_s = time.perf_counter() - started
        store.close()

    print(
        json.dumps(
            {
                "benchmark": "outbox_sqlite",
                "messages": args.messages,
                "deliveries": delivered,
                "citizens": args.citizens,
                "batch": args.batch,
                "payload_bytes": len(PAYLOAD),
                "accept_per_s": round(args.messages / accept_s, 1),
                "accept_ms_mean": round(accept_s * 1000 / args.messages, 3),
                "drain_deliveries_per_s": round(delivered / drain_s, 1),
                "claim_latency_ms_median": round(statistics.median(latencies) * 1000, 3),
                "backlog_at_claim_probe": args.messages * 2,
                "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
