"""Delivery through failures: retries until acknowledged, dead letters, operator replay, duplicates.

A real bridge delivers to a simulated municipality that is told to fail - 503s, a response slower than
the configured timeout, 429 with Retry-After, a 400 - and the tests read what the peers received and
the bridge's own message traces.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from datetime import datetime
from typing import Any

import yaml
from harness import HOSPITAL_TOKEN, OPERATOR_TOKEN, Bridge, header_id, post_fhir, wait_until

from bridge.simulators import traffic

MUNICIPALITY = "herlev-municipality"


def _admit_and_discharge(client: Any, citizens: range) -> dict[str, list[str]]:
    """Admit every citizen, then discharge them all; the MessageHeader.ids per citizen, in order."""
    sent: dict[str, list[str]] = {}
    admitted = []
    for n in citizens:
        event = traffic.admission(n)
        message = traffic.notification(event)
        assert post_fhir(client, message).status_code == 200
        admitted.append((n, event, header_id(message)))
        sent[traffic.synthetic_cpr(n)] = [header_id(message)]
    for n, event, hid in admitted:
        message = traffic.notification(traffic.discharge(event, hid))
        assert post_fhir(client, message).status_code == 200
        sent[traffic.synthetic_cpr(n)].append(header_id(message))
    return sent


def _trace(stack: Any, hid: str) -> dict[str, Any]:
    with stack.bridge.client(OPERATOR_TOKEN) as ops:
        response = ops.get(f"/messages/{hid}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _delivery(trace: dict[str, Any], destination: str) -> dict[str, Any]:
    return next(d for d in trace["deliveries"] if d["destination"] == destination)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_failing_receiver_gets_every_message_in_order_per_citizen(start_stack: Any) -> None:
    stack = start_stack("fhir")
    script = [
        {"status": 503},
        {"status": 503},
        {"delay": 2.0},  # longer than the 1 s timeout: the bridge gives up on the attempt and retries
        {"status": 429, "retry_after": 1},
        {"status": 503},
        {"status": 502},
        {"status": 429, "retry_after": 1},
    ]
    stack.municipality.faults(script)
    with stack.bridge.client(HOSPITAL_TOKEN) as client:
        sent = _admit_and_discharge(client, range(100, 106))

    total = sum(len(ids) for ids in sent.values())
    wait_until(lambda: len(stack.municipality.messages()) == total, 90, "every message", stack.bridge)
    state = stack.municipality.state()
    assert state["faulted"] == len(script)
    received: dict[str, list[str]] = {}
    for m in state["messages"]:
        assert m["valid"], m
        received.setdefault(m["citizen"], []).append(m["header_id"])
    assert received == sent  # every message, admission before discharge for each citizen

    # Retry-After was honoured: the attempt after a 429 came at least a second later.
    traces = [_trace(stack, hid) for ids in sent.values() for hid in ids]
    history = [a for t in traces for a in _delivery(t, MUNICIPALITY)["history"]]
    gaps = []
    for trace in traces:
        attempts = _delivery(trace, MUNICIPALITY)["history"]
        for before, after in itertools.pairwise(attempts):
            if before["status_code"] == 429:
                end = _at(before["started_at"]).timestamp() + before["latency_ms"] / 1000
                gaps.append(_at(after["started_at"]).timestamp() - end)
    assert len(gaps) == 2 and min(gaps) >= 0.95, gaps
    assert sum(1 for a in history if a["outcome"] == "transient") == len(script)
    assert all(_delivery(t, MUNICIPALITY)["state"] == "delivered" for t in traces)


def test_a_refused_message_is_dead_at_once_and_an_operator_replays_it(start_stack: Any) -> None:
    stack = start_stack("fhir")
    stack.municipality.faults([], then={"status": 400})
    message = traffic.notification(traffic.admission(200))
    hid = header_id(message)
    with stack.bridge.client(HOSPITAL_TOKEN) as client:
        assert post_fhir(client, message).status_code == 200

    # The sender hears fatal-error at once (no retries for a 400).
    wait_until(
        lambda: any(r["acknowledged_id"] == hid for r in stack.hospital.receipts()),
        30,
        "the fatal-error receipt",
        stack.bridge,
    )
    (receipt,) = [r for r in stack.hospital.receipts() if r["acknowledged_id"] == hid]
    assert receipt["code"] == "fatal-error"
    assert stack.municipality.state()["requests"] == 1
    delivery = _delivery(_trace(stack, hid), MUNICIPALITY)
    assert delivery["state"] == "dead" and delivery["attempts"] == 1

    with stack.bridge.client(OPERATOR_TOKEN) as ops:
        dead = ops.get("/deliveries", params={"state": "dead"}).json()["deliveries"]
        assert [d["id"] for d in dead] == [delivery["id"]]
        stack.municipality.faults([])  # the receiver is fixed
        replay = ops.post(f"/deliveries/{delivery['id']}/retry")
        assert replay.status_code == 200, replay.text
        again = ops.post(f"/deliveries/{delivery['id']}/retry")
        assert again.status_code == 409  # no longer dead
        assert again.json()["resourceType"] == "OperationOutcome"

    wait_until(lambda: len(stack.municipality.messages()) == 1, 30, "the replayed message", stack.bridge)
    assert stack.municipality.messages()[0]["header_id"] == hid
    assert _delivery(_trace(stack, hid), MUNICIPALITY)["state"] == "delivered"
    # The municipality's own ok receipt follows the earlier fatal-error.
    wait_until(
        lambda: (
            [r["code"] for r in stack.hospital.receipts() if r["acknowledged_id"] == hid]
            == ["fatal-error", "ok"]
        ),
        30,
        "the ok receipt after the replay",
        stack.bridge,
    )
    with stack.bridge.client(OPERATOR_TOKEN) as ops:
        assert ops.get("/deliveries", params={"state": "dead"}).json()["deliveries"] == []


def test_the_operator_endpoints_need_an_operator(start_stack: Any) -> None:
    stack = start_stack("fhir")
    with stack.bridge.client(None) as anonymous:
        assert anonymous.get("/deliveries", params={"state": "dead"}).status_code == 401
    with stack.bridge.client(HOSPITAL_TOKEN) as system:
        assert system.get("/deliveries", params={"state": "dead"}).status_code == 403
        assert system.post("/deliveries/anything/retry").status_code == 403


def test_the_same_message_three_times_is_delivered_once_and_answered_alike(start_stack: Any) -> None:
    stack = start_stack("fhir")
    message = traffic.notification(traffic.admission(300))
    hid = header_id(message)
    with stack.bridge.client(HOSPITAL_TOKEN) as client:
        answers = [post_fhir(client, message) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].content == answers[1].content == answers[2].content

    wait_until(lambda: len(stack.municipality.messages()) == 1, 30, "the message", stack.bridge)
    wait_until(
        lambda: any(r["acknowledged_id"] == hid for r in stack.hospital.receipts()),
        30,
        "its receipt",
        stack.bridge,
    )
    with stack.bridge.client(HOSPITAL_TOKEN) as client:
        late = post_fhir(client, message)  # after delivery: still the same answer
    assert late.status_code == 200 and late.content == answers[0].content
    state = stack.municipality.state()
    assert state["requests"] == 1 and state["messages"][0]["copies"] == 1
    receipts = [r for r in stack.hospital.receipts() if r["acknowledged_id"] == hid]
    assert {r["header_id"] for r in receipts} == {receipts[0]["header_id"]}
    assert receipts[0]["code"] == "ok"


def test_a_graceful_stop_finishes_or_releases_in_flight_deliveries(start_stack: Any) -> None:
    stack = start_stack("fhir")
    stack.municipality.faults([{"delay": 0.8}] * 4)  # slow, but inside the 1 s timeout
    messages = [traffic.notification(traffic.admission(500 + i)) for i in range(4)]
    with stack.bridge.client(HOSPITAL_TOKEN) as client:
        for message in messages:
            assert post_fhir(client, message).status_code == 200
    wait_until(lambda: stack.municipality.state()["requests"] >= 1, 30, "a delivery in flight", stack.bridge)
    started = time.monotonic()
    assert stack.bridge.stop() == 0  # SIGTERM: a clean exit, within the 5 s shutdown grace
    assert time.monotonic() - started < 10
    # Nothing is left leased: each in-flight delivery was finished or handed back.
    db = sqlite3.connect(f"file:{stack.directory / 'bridge.db'}?mode=ro", uri=True)
    try:
        states = dict(db.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall())
    finally:
        db.close()
    assert states and "leased" not in states, states

    restarted = Bridge(stack.directory, yaml.safe_load(stack.bridge.config_path.read_text()), name="again")
    restarted.start()
    try:
        wait_until(lambda: len(stack.municipality.messages()) == 4, 30, "all four messages", restarted)

        def unfinished() -> list[Any]:
            with restarted.client(OPERATOR_TOKEN) as ops:
                return [
                    d
                    for state in ("leased", "pending", "dead")
                    for d in ops.get("/deliveries", params={"state": state}).json()["deliveries"]
                ]

        # The receiver has them; the bridge records the answers (and forwards the receipts) just after.
        wait_until(lambda: not unfinished(), 30, "every delivery finished", restarted)
    finally:
        restarted.stop()
    assert {m["header_id"] for m in stack.municipality.messages()} == {header_id(m) for m in messages}


def test_a_missing_receipt_makes_the_bridge_resend_with_the_same_header_id(start_stack: Any) -> None:
    stack = start_stack("fhir", extra={"medcom": {"receipt_timeout": "2s", "max_resends": 2}})
    stack.municipality.faults([{"status": 200}])  # taken, but the Acknowledgement never comes
    message = traffic.notification(traffic.admission(600))
    hid = header_id(message)
    with stack.bridge.client(HOSPITAL_TOKEN) as client:
        assert post_fhir(client, message).status_code == 200

    # The resend carries the same MessageHeader.id (a new Bundle.id); this time the receipt comes.
    wait_until(lambda: len(stack.municipality.messages()) == 1, 30, "the resent message", stack.bridge)
    resent = stack.municipality.body(hid)
    assert resent["entry"][0]["resource"]["id"] == hid
    assert resent["id"] != message["id"]
    wait_until(
        lambda: [r["code"] for r in stack.hospital.receipts() if r["acknowledged_id"] == hid] == ["ok"],
        30,
        "the receipt of the resend",
        stack.bridge,
    )
    delivery = _delivery(_trace(stack, hid), MUNICIPALITY)
    assert delivery["resends"] == 1 and delivery["receipt_code"] == "ok"
    assert stack.municipality.state()["requests"] == 2
