"""Three bridge processes on one PostgreSQL: one API node, two worker nodes, 2,000 messages, 20 citizens.

Half the citizens live in a municipality that speaks FHIR, half in one that speaks municipal JSON; the
hospital gets the receipts. Each citizen's admissions are posted one after another (the next after the
2xx for the previous), the citizens in parallel, while both workers claim from the same tables.

Promised and checked, from the store and the receivers:
- no delivery is claimed twice within a lease: every claim the store counted became exactly one recorded
  attempt, attempts of one delivery never overlap, and no receiver got any message twice;
- both workers did work (their worker ids differ, so a lease names one process);
- each citizen's messages reached its receiver in the order they were accepted.
"""

from __future__ import annotations

import json
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import Proc, wait_until
from nodes import admissions, config, env_int, node, open_claims, order_violations, send, sims

from bridge.simulators import traffic

pytestmark = pytest.mark.reliability

MESSAGES = env_int("BRIDGE_RELIABILITY_CONCURRENT_MESSAGES", 2000)
CITIZENS = 20


def test_two_workers_and_an_api_node_on_one_postgres_claim_each_delivery_once_and_keep_order(
    postgres_url: str, tmp_path: Path, started: list[Proc]
) -> None:
    hospital, municipality, rehab = sims(tmp_path, rehab=True)
    assert rehab is not None
    started += [hospital, municipality, rehab]
    settings = config(
        tmp_path, postgres_url, hospital=hospital, municipality=municipality, rehab=rehab,
        lease="30s", timeout="10s",
    )  # fmt: skip
    api = node(tmp_path, settings, "api", "api").start()
    workers = [node(tmp_path, settings, "worker", f"worker{i}").start() for i in (1, 2)]
    started += [api, *workers]

    load = admissions(MESSAGES, CITIZENS, to=[traffic.HERLEV_MUNICIPALITY, traffic.REHAB_MUNICIPALITY])
    send(api.url, load, senders=10)
    acknowledged = load.acknowledged
    assert len(acknowledged) == MESSAGES and load.failures == 0

    def arrived() -> set[str]:
        return {m["header_id"] for sim in (municipality, rehab) for m in sim.messages()}

    wait_until(
        lambda: acknowledged <= arrived(),
        max(240, MESSAGES / 10),
        "every message at its receiver",
        workers[0],
    )
    wait_until(lambda: not any(open_claims(postgres_url).values()), 60, "no open delivery", workers[0])

    for sim in (municipality, rehab):
        state = sim.state()
        assert state["duplicates"] == 0, sim.name  # nothing went out twice
        assert len(state["messages"]) == MESSAGES // 2, sim.name
        assert order_violations(load, state["messages"]) == [], sim.name
    assert len(hospital.receipts()) == MESSAGES  # one receipt per message, back to the sender

    rows = _deliveries_with_attempts(postgres_url)
    assert len(rows) == 2 * MESSAGES  # one delivery per message and one per receipt
    assert {r["state"] for r in rows} == {"delivered"}
    overlapping = [r["id"] for r in rows if _overlap(r["attempts"])]
    not_one_attempt_per_claim = [r["id"] for r in rows if r["claims"] != len(r["attempts"])]
    assert not_one_attempt_per_claim == []
    assert overlapping == []
    workers_seen = {a["worker_id"] for r in rows for a in r["attempts"]}
    assert len(workers_seen) == 2, workers_seen
    print(
        json.dumps(
            {
                "messages": MESSAGES,
                "deliveries": len(rows),
                "claimed_more_than_once": sum(1 for r in rows if r["claims"] > 1),
                "attempts_per_worker": {
                    w: sum(1 for r in rows for a in r["attempts"] if a["worker_id"] == w)
                    for w in workers_seen
                },
            }
        )
    )


def _deliveries_with_attempts(url: str) -> list[dict[str, Any]]:
    """Every delivery with its claim count (``deliveries.attempts``) and its recorded attempts."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        deliveries = conn.execute("SELECT id, state, attempts FROM deliveries").fetchall()
        attempts = conn.execute(
            "SELECT delivery_id, number, worker_id, started_at, latency_ms FROM attempts ORDER BY id"
        ).fetchall()
    by_delivery: dict[str, list[dict[str, Any]]] = {}
    for delivery_id, number, worker_id, started_at, latency_ms in attempts:
        by_delivery.setdefault(delivery_id, []).append(
            {
                "number": number,
                "worker_id": worker_id,
                "start": started_at,
                "end": started_at + timedelta(milliseconds=latency_ms),
            }
        )
    return [
        {"id": i, "state": state, "claims": claims, "attempts": by_delivery.get(i, [])}
        for i, state, claims in deliveries
    ]


def _overlap(attempts: list[dict[str, Any]]) -> bool:
    """True when two attempts of one delivery were in flight at the same time."""
    spans = sorted((a["start"], a["end"]) for a in attempts)
    return any(later_start < earlier_end for (_, earlier_end), (later_start, _) in pairwise(spans))
