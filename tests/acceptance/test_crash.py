"""``kill -9`` of the bridge in the middle of a burst, then a restart: nothing that got a 2xx is lost.

Eight senders post 500 admissions (500 citizens) as fast as the bridge takes them; once about half
are accepted the bridge process is killed with SIGKILL - no shutdown, deliveries in flight under lease.
A new bridge process on the same database must deliver every message that was answered with a 2xx
at least once, and leave no delivery claimed or pending.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import orjson
import pytest
import yaml
from harness import HOSPITAL_TOKEN, OPERATOR_TOKEN, Bridge, header_id, wait_until

from bridge.simulators import traffic

BURST = 500
SENDERS = 8


def _burst(
    bridge: Bridge, bodies: list[tuple[str, bytes]], accepted: list[str], stop: threading.Event
) -> None:
    lock = threading.Lock()
    queue = list(reversed(bodies))

    def sender() -> None:
        headers = {"Authorization": f"Bearer {HOSPITAL_TOKEN}", "Content-Type": "application/fhir+json"}
        with httpx.Client(base_url=bridge.url, headers=headers, timeout=5) as client:
            while not stop.is_set():
                with lock:
                    if not queue:
                        return
                    hid, body = queue.pop()
                try:
                    response = client.post("/fhir/$process-message", content=body)
                except httpx.HTTPError:
                    continue  # no answer: the sender may not count on this one
                if 200 <= response.status_code < 300:
                    with lock:
                        accepted.append(hid)

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


@pytest.mark.reliability
def test_kill_9_during_a_burst_loses_no_accepted_message(start_stack: Any) -> None:
    stack = start_stack(
        "fhir",
        extra={
            "dispatcher": {"lease": "3s", "poll_interval": "50ms", "batch_size": 32, "shutdown_grace": "5s"}
        },
    )
    messages = [traffic.notification(traffic.admission(1000 + i)) for i in range(BURST)]
    bodies = [(header_id(m), orjson.dumps(m)) for m in messages]
    accepted: list[str] = []
    stop = threading.Event()
    burst = threading.Thread(target=_burst, args=(stack.bridge, bodies, accepted, stop))
    burst.start()
    wait_until(lambda: len(accepted) >= BURST // 2, 120, "half the burst accepted", stack.bridge)
    stack.bridge.kill9()
    killed_at = len(accepted)
    burst.join(60)
    assert not burst.is_alive()
    acknowledged = set(accepted)
    assert len(acknowledged) >= killed_at > 0
    delivered_before_restart = {m["header_id"] for m in stack.municipality.messages()}

    restarted = Bridge(stack.directory, _config_of(stack.bridge), name="bridge-restarted")
    restarted.start()
    try:
        wait_until(
            lambda: acknowledged <= {m["header_id"] for m in stack.municipality.messages()},
            120,
            "every acknowledged message at the municipality",
            restarted,
        )

        def settled() -> bool:
            with restarted.client(OPERATOR_TOKEN) as ops:
                open_ = [
                    d
                    for state in ("leased", "pending")
                    for d in ops.get("/deliveries", params={"state": state}).json()["deliveries"]
                ]
            return not open_

        # Nothing stays claimed: the dead worker's leases expire and the new process finishes them.
        wait_until(settled, 60, "no leased or pending delivery", restarted)
        with restarted.client(OPERATOR_TOKEN) as ops:
            assert ops.get("/deliveries", params={"state": "dead"}).json()["deliveries"] == []
            for hid in sorted(acknowledged)[:25]:
                trace = ops.get(f"/messages/{hid}").json()
                assert trace["header_id"] == hid
                assert {d["state"] for d in trace["deliveries"]} == {"delivered"}
    finally:
        restarted.stop()

    received = stack.municipality.messages()
    assert all(m["valid"] for m in received)
    # At least once: a message may arrive twice (its delivery was in flight at the kill), never zero.
    assert acknowledged <= {m["header_id"] for m in received}
    assert len(delivered_before_restart) < len(acknowledged)  # the kill really left work behind


def _config_of(bridge: Bridge) -> dict[str, Any]:
    return dict(yaml.safe_load(bridge.config_path.read_text()))
