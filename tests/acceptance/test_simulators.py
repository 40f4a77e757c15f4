"""The simulated peers themselves: what the acceptance tests rely on them to do.

A peer runs in this process on a loopback port: it must dedupe by MessageHeader.id and answer a
duplicate with the same receipt, refuse to acknowledge an invalid message with ``ok``, misbehave
exactly as scripted, and record receipts without acknowledging them. The synthetic citizens must be
valid CPR numbers that can belong to no living person.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from shared_data import SHARED

from bridge.fhir.identifiers import check_cpr, cpr_birth_date
from bridge.medcom.acknowledgement import build_acknowledgement, parse_acknowledgement
from bridge.medcom.validation import validate_message
from bridge.simulators import traffic
from bridge.simulators.peer import Inbox, Peer, PeerServer

FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def peer() -> Iterator[httpx.Client]:
    server = PeerServer(Peer(Inbox())).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            yield client
    finally:
        server.stop()


@given(st.integers(min_value=0, max_value=13_439_999))
def test_synthetic_citizens_are_valid_and_born_before_1900(n: int) -> None:
    cpr = traffic.synthetic_cpr(n)
    assert check_cpr(cpr) is None
    born = cpr_birth_date(cpr)
    assert born is not None and born.year < 1900


def test_built_messages_are_valid_medcom(peer: httpx.Client) -> None:
    admission = traffic.admission(1)
    first = traffic.notification(admission)
    for message in (
        first,
        traffic.notification(traffic.discharge(admission, traffic.header_id(first))),
        traffic.care_communication(
            traffic.correspondence(1, sender=traffic.HERLEV_MUNICIPALITY, receiver=traffic.HOSPITAL_UNIT)
        ),
    ):
        assert not validate_message(message).errors
    # New ids every time: two notifications of one event are two messages.
    assert traffic.header_id(traffic.notification(admission)) != traffic.header_id(first)


def test_a_duplicate_is_recorded_once_and_answered_with_the_same_receipt(peer: httpx.Client) -> None:
    message = orjson.dumps(traffic.notification(traffic.admission(2)))
    first = peer.post("/fhir/$process-message", content=message, headers=FHIR)
    second = peer.post("/fhir/$process-message", content=message, headers=FHIR)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    receipt = parse_acknowledgement(first.json())
    assert (
        receipt.code == "ok" and receipt.acknowledged_id == json.loads(message)["entry"][0]["resource"]["id"]
    )
    state = peer.get("/_sim/state").json()
    assert state["duplicates"] == 1
    (only,) = state["messages"]
    assert only["copies"] == 2 and only["code"] == "STIN" and only["citizen"] == traffic.synthetic_cpr(2)
    counts = peer.get("/_sim/counts").json()
    assert counts == {"messages": 1, "receipts": 0, "requests": 2, "duplicates": 1, "faulted": 0}


def test_an_invalid_message_gets_a_fatal_error_receipt(peer: httpx.Client) -> None:
    path = SHARED / "medcom" / "hospitalnotification" / "Bundle-a5e5b880-c087-4055-b9ec-99108695f81d.json"
    message = json.loads(path.read_bytes())
    patient = next(e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["identifier"][0]["value"] = "3213999999"  # no 32nd of December: not a CPR number
    answer = peer.post("/x", content=orjson.dumps(message), headers=FHIR)
    receipt = parse_acknowledgement(answer.json())
    assert receipt.code == "fatal-error" and receipt.issues
    assert peer.get("/_sim/state").json()["messages"][0]["valid"] is False

    # Too broken to acknowledge (the sender cannot be read): refused over HTTP, not recorded.
    message["entry"][0]["resource"]["sender"] = {"reference": "Organization/missing"}
    message["entry"][0]["resource"]["id"] = "another-header"
    refused = peer.post("/x", content=orjson.dumps(message), headers=FHIR)
    assert refused.status_code == 400 and refused.json()["resourceType"] == "OperationOutcome"
    assert len(peer.get("/_sim/state").json()["messages"]) == 1


def test_faults_happen_as_scripted_then_the_peer_recovers(peer: httpx.Client) -> None:
    script = [{"status": 503}, {"status": 429, "retry_after": 2}, {"delay": 0.2, "status": 504}]
    assert peer.post("/_sim/faults", json={"script": script, "then": None}).status_code == 200
    body = orjson.dumps(traffic.notification(traffic.admission(3)))
    answers = [peer.post("/x", content=body, headers=FHIR) for _ in range(4)]
    assert [a.status_code for a in answers] == [503, 429, 504, 200]
    assert answers[1].headers["retry-after"] == "2"
    state = peer.get("/_sim/state").json()
    assert state["faulted"] == 3 and state["requests"] == 4 and len(state["messages"]) == 1
    assert peer.post("/_sim/faults", json={"script": "nonsense"}).status_code == 400


def test_receipts_are_recorded_and_never_acknowledged(peer: httpx.Client) -> None:
    message = traffic.notification(traffic.admission(4))
    ack = build_acknowledgement(message, "ok")
    answer = peer.post("/fhir/$process-message", content=orjson.dumps(ack), headers=FHIR)
    assert answer.status_code == 200 and answer.content == b""
    (receipt,) = peer.get("/_sim/state").json()["receipts"]
    assert receipt["acknowledged_id"] == traffic.header_id(message) and receipt["code"] == "ok"


def test_municipal_json_is_recorded_by_its_message_id(peer: httpx.Client) -> None:
    event = traffic.admission(5).model_dump(mode="json", exclude_none=True)
    event["message"] = {
        "bundle_id": "b-1",
        "header_id": "h-1",
        "timestamp": "2024-01-01T10:00:00+01:00",
        "sent": "2024-01-01T10:00:00+01:00",
        "provenance_id": "p-1",
    }
    for _ in range(2):
        assert (
            peer.post(
                "/records", content=orjson.dumps(event), headers={"Content-Type": "application/json"}
            ).status_code
            == 200
        )
    (only,) = peer.get("/_sim/state").json()["messages"]
    assert only["header_id"] == "h-1" and only["kind"] == "hospital-stay-event-v1" and only["copies"] == 2
    assert (
        peer.post("/records", content=b"{not json", headers={"Content-Type": "application/json"}).status_code
        == 400
    )


def test_a_pool_of_connections_opened_at_once_is_served() -> None:
    """A dispatcher opens its whole pool at once: every connection's first request is answered."""
    server = PeerServer(Peer(Inbox())).start()
    try:
        # Connect all first, then send on each: the listen queue holds every connection until accepted.
        # A full queue drops the handshake, and the client's retransmission comes a second later.
        sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=0.9) for _ in range(100)]
        for sock in sockets:
            sock.settimeout(10)

        def ask(sock: socket.socket) -> bytes:
            with sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: peer\r\nConnection: close\r\n\r\n")
                return sock.recv(64)

        with ThreadPoolExecutor(max_workers=100) as pool:
            answers = list(pool.map(ask, sockets))
    finally:
        server.stop()
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
