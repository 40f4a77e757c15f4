"""Crash loop: a worker process SIGKILLed again and again at random points while it delivers.

An API process accepts admissions for a few dozen citizens; then a worker process (``--role worker``)
is started and killed with SIGKILL at a random moment after it became ready, at least 30 times, while
the receiver answers slowly enough that every kill finds posts in flight. A last worker then runs to
the end. The receiver records every MessageHeader.id it gets.

Promised and checked: every acknowledged message arrives at least once; after the receiver's dedupe on
MessageHeader.id, exactly once (nothing unknown, nothing missing); each citizen's messages arrive in
the order they were accepted; nothing stays leased or pending in the store; nothing is dead.

Sizes: ``BRIDGE_RELIABILITY_KILLS`` (default 30) and ``BRIDGE_RELIABILITY_MESSAGES`` (default 700);
``BRIDGE_RELIABILITY_SEED`` repeats a run's kill times.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest
from harness import Proc, wait_until
from nodes import admissions, config, env_int, node, open_claims, order_violations, send, sims, with_store

from bridge.clock import SystemClock

pytestmark = pytest.mark.reliability

KILLS = env_int("BRIDGE_RELIABILITY_KILLS", 30)
MESSAGES = env_int("BRIDGE_RELIABILITY_MESSAGES", 700)
CITIZENS = 30
#: How long the receiver takes per message: slow enough that a kill always finds posts in flight.
RECEIVER_DELAY = 0.05


def test_worker_killed_at_random_points_loses_nothing_and_duplicates_nothing_after_dedupe(
    engine_url: str, tmp_path: Path, started: list[Proc]
) -> None:
    seed = env_int("BRIDGE_RELIABILITY_SEED", int.from_bytes(os.urandom(4), "big"))
    rng = random.Random(seed)
    hospital, municipality, _ = sims(tmp_path)
    started += [hospital, municipality]
    municipality.faults([], then={"delay": RECEIVER_DELAY})
    # A short lease brings a killed worker's deliveries back soon; the post timeout stays well inside it.
    settings = config(
        tmp_path, engine_url, hospital=hospital, municipality=municipality, lease="1500ms", timeout="500ms"
    )
    api = node(tmp_path, settings, "api", "api").start()
    started.append(api)
    began = time.monotonic()
    load = admissions(MESSAGES, CITIZENS)
    send(api.url, load)
    sent = time.monotonic()
    acknowledged = load.acknowledged
    assert len(acknowledged) == MESSAGES

    store = with_store(engine_url)
    worker = node(tmp_path, settings, "worker", "worker")
    started.append(worker)
    leased_at_kill: list[int] = []
    try:
        for _ in range(KILLS):
            worker.start()
            time.sleep(rng.uniform(0.05, 0.4))
            worker.kill9()
            leased_at_kill.append(len(store.list_deliveries("leased", limit=10_000)))
        crashed = time.monotonic()
        # A crash-free worker finishes what the crashes left.
        final = node(tmp_path, settings, "worker", "worker-final").start()
        started.append(final)
        wait_until(
            lambda: acknowledged <= {m["header_id"] for m in municipality.messages()},
            max(180, MESSAGES / 20),
            "every acknowledged message at the receiver",
            final,
        )
        wait_until(
            lambda: not any(open_claims(engine_url).values()), 60, "no leased or pending delivery", final
        )
        dead = store.list_deliveries("dead")
        stats = store.queue_stats(SystemClock().now())
    finally:
        store.close()

    state = municipality.state()
    received = state["messages"]
    ids = [m["header_id"] for m in received]
    summary = {
        "seed": seed,
        "kills": KILLS,
        "kills_with_work_leased": sum(1 for n in leased_at_kill if n),
        "messages": MESSAGES,
        "requests_at_receiver": state["requests"],
        "redelivered": state["duplicates"],
        "seconds": {
            "accept": round(sent - began, 1),
            "crash_loop": round(crashed - sent, 1),
            "finish": round(time.monotonic() - crashed, 1),
        },
    }
    print(json.dumps(summary))
    assert dead == []
    assert stats.by_state.get("leased", 0) == 0 and stats.by_state.get("pending", 0) == 0
    # At least once, and exactly once after the receiver's dedupe on MessageHeader.id.
    assert set(ids) == acknowledged, summary
    assert len(ids) == len(acknowledged)
    assert order_violations(load, received) == [], summary
    # The kills really interrupted deliveries: work was under lease at most kills, and some posts that
    # reached the receiver were never recorded as done, so they went out again.
    assert summary["kills_with_work_leased"] >= KILLS // 2, summary
    assert state["duplicates"] >= 1, summary
