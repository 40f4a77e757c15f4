"""The dispatcher against a real SQLite store and real loopback HTTP receivers, time moved by a FakeClock."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta

import orjson
import pytest
from delivery_bed import (
    ADMISSION,
    DISCHARGE,
    HOSPITAL,
    KOMMUNE,
    OUTBOUND_TOKEN,
    REHAB,
    Bed,
    Receiver,
    Reply,
    Request,
    message_variant,
)

from bridge.delivery import receipts as receipts_module
from bridge.delivery.receipts import receipt_ids
from bridge.medcom.acknowledgement import build_acknowledgement, parse_acknowledgement
from bridge.outbox.port import MessageFilter

Trio = tuple[Receiver, Receiver, Receiver]


def answers(*replies: Reply) -> Callable[[Request], Reply]:
    """A script answering the given replies in turn, then 200 for ever."""
    queue = list(replies)
    lock = threading.Lock()

    def script(_: Request) -> Reply:
        with lock:
            return queue.pop(0) if queue else Reply()

    return script


def receipts_in(receiver: Receiver) -> list[tuple[str, str]]:
    """(acknowledged MessageHeader.id, code) of every Acknowledgement a receiver got."""
    out: list[tuple[str, str]] = []
    for request in receiver.requests:
        receipt = parse_acknowledgement(request.json())
        out.append((receipt.acknowledged_id, receipt.code))
    return out


def test_delivers_the_message_unchanged_with_the_configured_headers(bed: Bed, trio: Trio) -> None:
    _, kommune, _ = trio
    payload = ADMISSION.read_bytes()
    message = bed.accept(payload)

    assert bed.dispatcher().run_once() == 1

    (request,) = kommune.requests
    assert request.body == payload
    assert request.headers["Authorization"] == f"Bearer {OUTBOUND_TOKEN}"
    assert request.headers["Content-Type"] == "application/fhir+json"
    assert request.headers["Accept"] == "application/fhir+json"
    trace = bed.delivery(message)
    assert trace.delivery.state == "delivered"
    (attempt,) = trace.attempts
    assert (attempt.outcome, attempt.status_code, attempt.detail) == ("delivered", 200, "HTTP 200")
    assert attempt.started_at == bed.clock.now() and attempt.worker_id == "w1"
    assert attempt.latency > timedelta(0)


def test_transient_failures_are_retried_at_the_policy_times_with_the_same_message(
    bed: Bed, trio: Trio
) -> None:
    _, kommune, _ = trio
    kommune.script = answers(Reply(503), Reply(502), Reply(429, {"Retry-After": "90"}))
    message = bed.accept(ADMISSION.read_bytes())
    dispatcher = bed.dispatcher()
    start = bed.clock.now()

    assert dispatcher.run_once() == 1  # 503
    assert bed.delivery(message).delivery.next_attempt_at == start + timedelta(seconds=2)
    bed.clock.advance(timedelta(seconds=1.9))
    assert dispatcher.run_once() == 0  # not due yet
    bed.clock.advance(timedelta(seconds=0.1))
    assert dispatcher.run_once() == 1  # 502; next after 2 * 2 s
    assert bed.delivery(message).delivery.next_attempt_at == bed.clock.now() + timedelta(seconds=4)
    bed.clock.advance(timedelta(seconds=4))
    assert dispatcher.run_once() == 1  # 429 + Retry-After: 90 s, beyond the policy's own 8 s
    assert bed.delivery(message).delivery.next_attempt_at == bed.clock.now() + timedelta(seconds=90)
    bed.clock.advance(timedelta(seconds=90))
    assert dispatcher.run_once() == 1

    trace = bed.delivery(message)
    assert trace.delivery.state == "delivered"
    assert [(a.outcome, a.status_code) for a in trace.attempts] == [
        ("transient", 503),
        ("transient", 502),
        ("transient", 429),
        ("delivered", 200),
    ]
    assert {r.header_id for r in kommune.requests} == {message.header_id}
    assert {r.body for r in kommune.requests} == {message.payload}


def test_a_timeout_is_transient(make_bed: Callable[..., Bed], trio: Trio) -> None:
    _, kommune, _ = trio
    bed = make_bed(kommune_extra={"timeout": "200ms"})
    kommune.script = answers(Reply(delay=1.0))
    message = bed.accept(ADMISSION.read_bytes())

    bed.dispatcher().run_once()

    trace = bed.delivery(message)
    assert trace.delivery.state == "pending"
    (attempt,) = trace.attempts
    assert (attempt.outcome, attempt.status_code, attempt.detail) == ("transient", None, "ReadTimeout")


def test_a_refusal_dead_letters_at_once_with_a_fatal_error_receipt_then_replay_delivers(
    bed: Bed, trio: Trio
) -> None:
    hospital, kommune, _ = trio
    kommune.script = answers(Reply(400, {"Content-Type": "application/fhir+json"}, b"{}"))
    message = bed.accept(ADMISSION.read_bytes())
    dispatcher = bed.dispatcher()

    dispatcher.run_once()
    trace = bed.delivery(message)
    assert trace.delivery.state == "dead"
    assert trace.delivery.last_error == "refused: HTTP 400"
    audit = [e for e in bed.store.read_audit() if e.record.action == "delivery.dead-lettered"]
    assert [e.record.message_id for e in audit] == [message.id]
    assert b"2509479989" not in audit[0].record.body  # the citizen appears by key only

    dispatcher.run_once()  # the receipt, queued on the municipality's behalf, goes to the hospital
    assert receipts_in(hospital) == [(message.header_id, "fatal-error")]
    ack = hospital.requests[0].json()
    assert ack["entry"][0]["resource"]["id"] == receipt_ids(message.header_id, KOMMUNE, "fatal-error")[1]

    # The operator fixes the receiver and replays: delivered, and no second receipt from the bridge.
    bed.store.retry_dead(trace.delivery.id, bed.clock.now())
    assert dispatcher.run_once() == 1
    assert bed.delivery(message).delivery.state == "delivered"
    assert len(kommune.requests) == 2 and kommune.requests[1].body == message.payload
    assert len(hospital.requests) == 1


def test_exhausting_the_policy_dead_letters_with_a_transient_error_receipt(
    make_bed: Callable[..., Bed], trio: Trio
) -> None:
    hospital, kommune, _ = trio
    bed = make_bed(retry={"max_attempts": 3})
    kommune.script = lambda _: Reply(503)
    message = bed.accept(ADMISSION.read_bytes())
    dispatcher = bed.dispatcher()

    for _ in range(3):
        assert dispatcher.run_once() == 1
        bed.clock.advance(timedelta(minutes=1))
    trace = bed.delivery(message)
    assert trace.delivery.state == "dead"
    assert trace.delivery.last_error == "gave up after 3 attempts: HTTP 503"
    assert len(kommune.requests) == 3

    dispatcher.run_once()
    assert receipts_in(hospital) == [(message.header_id, "transient-error")]


def test_municipal_receiver_gets_an_ok_receipt_on_its_behalf(bed: Bed, trio: Trio) -> None:
    hospital, _, rehab = trio
    municipal = json.dumps({"kind": "hospital-stay-event", "status": "admitted"}).encode()
    message = bed.accept(ADMISSION.read_bytes(), to=(REHAB,), delivery_payload={REHAB: municipal})
    dispatcher = bed.dispatcher()

    assert dispatcher.run_once() == 1
    (request,) = rehab.requests
    assert request.body == municipal
    assert request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in request.headers
    assert bed.delivery(message, REHAB).delivery.expect_receipt is False

    assert dispatcher.run_once() == 1  # the receipt
    assert receipts_in(hospital) == [(message.header_id, "ok")]
    receipt = parse_acknowledgement(hospital.requests[0].json())
    assert receipt.sender is not None and receipt.sender.sor == "953741000016009"  # the primary receiver
    receipts = bed.store.list_messages(MessageFilter(kind="acknowledgement"))
    assert [(m.sender, m.header_id) for m in receipts] == [
        (REHAB, receipt_ids(message.header_id, REHAB, "ok")[1])
    ]


def test_a_municipal_v1_sender_gets_no_medcom_receipt(bed: Bed, trio: Trio) -> None:
    hospital, kommune, _ = trio
    message = bed.accept(ADMISSION.read_bytes(), sender=REHAB, to=(HOSPITAL,), expect_receipt=False)
    kommune.script = answers()
    dispatcher = bed.dispatcher()
    hospital.script = answers(Reply(400))

    dispatcher.run_once()
    dispatcher.run_once()

    assert bed.delivery(message, HOSPITAL).delivery.state == "dead"
    assert bed.store.list_messages(MessageFilter(kind="acknowledgement")) == []
    assert kommune.requests == [] and len(hospital.requests) == 1


def test_a_synchronous_acknowledgement_is_recorded_and_forwarded_to_the_sender(bed: Bed, trio: Trio) -> None:
    hospital, kommune, _ = trio
    payload = ADMISSION.read_bytes()
    ack = build_acknowledgement(json.loads(payload), "ok")
    kommune.script = answers(Reply(200, {"Content-Type": "application/fhir+json"}, json.dumps(ack).encode()))
    message = bed.accept(payload)
    dispatcher = bed.dispatcher()

    dispatcher.run_once()
    trace = bed.delivery(message)
    assert (trace.delivery.receipt_code, [r.ack_header_id for r in trace.receipts]) == (
        "ok",
        [ack["entry"][0]["resource"]["id"]],
    )

    dispatcher.run_once()
    (forwarded,) = hospital.requests
    assert forwarded.json() == ack  # forwarded as the municipality sent it
    # A receipt that came needs no resend.
    bed.clock.advance(timedelta(hours=2))
    assert dispatcher.check_receipts().resent == 0


def test_a_receipt_whose_handling_fails_costs_its_forward_not_the_delivered_result(
    bed: Bed, trio: Trio, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, kommune, _ = trio
    payload = ADMISSION.read_bytes()
    ack = build_acknowledgement(json.loads(payload), "ok")
    kommune.script = answers(Reply(200, {"Content-Type": "application/fhir+json"}, json.dumps(ack).encode()))
    message = bed.accept(payload)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a defect in receipt handling")

    # It fails inside the transaction that stores the result with the receipt: the result must still
    # be stored (else the delivery would go out again and again), only without its receipt.
    monkeypatch.setattr(receipts_module, "receipt_follow_up", broken)
    dispatcher = bed.dispatcher()
    assert dispatcher.run_once() == 1

    trace = bed.delivery(message)
    assert (trace.delivery.state, trace.delivery.receipt_code, trace.receipts) == ("delivered", None, ())
    assert len(kommune.requests) == 1
    assert bed.store.list_messages(MessageFilter(kind="acknowledgement")) == []


def test_order_per_citizen_is_kept_and_one_failing_citizen_blocks_nobody_else(bed: Bed, trio: Trio) -> None:
    _, kommune, _ = trio
    admission = bed.accept(message_variant(ADMISSION))
    discharge = bed.accept(message_variant(DISCHARGE))
    other = bed.accept(message_variant(ADMISSION), cpr="0101010101")
    failing = {admission.header_id}
    kommune.script = lambda r: Reply(503) if r.header_id in failing else Reply()
    dispatcher = bed.dispatcher()

    dispatcher.run_once()
    # Both heads go out (in parallel, so in either order); the discharge stays behind.
    assert sorted(r.header_id for r in kommune.requests) == sorted([admission.header_id, other.header_id])
    assert bed.delivery(other).delivery.state == "delivered"
    for _ in range(2):  # the discharge waits behind its admission's retries
        bed.clock.advance(timedelta(seconds=10))
        dispatcher.run_once()
    assert discharge.header_id not in [r.header_id for r in kommune.requests]

    failing.clear()
    bed.clock.advance(timedelta(seconds=10))
    dispatcher.run_once()
    dispatcher.run_once()
    delivered = [r.header_id for r in kommune.requests if r.header_id != other.header_id]
    assert delivered[-2:] == [admission.header_id, discharge.header_id]
    assert bed.delivery(discharge).delivery.state == "delivered"


def test_missing_receipts_trigger_resends_with_the_same_header_then_dead_with_a_receipt(
    bed: Bed, trio: Trio
) -> None:
    hospital, kommune, _ = trio
    message = bed.accept(ADMISSION.read_bytes())
    dispatcher = bed.dispatcher()
    dispatcher.run_once()

    bed.clock.advance(timedelta(minutes=29))
    assert dispatcher.run_once() == 0 and len(kommune.requests) == 1
    for resend in (1, 2):
        bed.clock.advance(timedelta(minutes=1 if resend == 1 else 30))
        assert dispatcher.run_once() == 1
        assert len(kommune.requests) == 1 + resend
        assert bed.delivery(message).delivery.resends == resend
    first, *resent = kommune.requests
    assert {r.header_id for r in kommune.requests} == {message.header_id}
    assert len({r.bundle_id for r in kommune.requests}) == 3  # a new envelope each time
    for r in resent:
        bundle = r.json()
        assert bundle["timestamp"] != first.json()["timestamp"]
        assert [e["resource"] for e in bundle["entry"][1:]] != [
            e["resource"] for e in first.json()["entry"][1:]
        ]

    bed.clock.advance(timedelta(minutes=30))
    dispatcher.run_once()
    trace = bed.delivery(message)
    assert (trace.delivery.state, trace.delivery.last_error) == ("dead", "no receipt")
    dispatcher.run_once()
    assert receipts_in(hospital) == [(message.header_id, "transient-error")]


def test_concurrency_limit_per_destination_holds_and_other_destinations_flow(bed: Bed, trio: Trio) -> None:
    hospital, kommune, rehab = trio
    kommune.script = lambda _: Reply(delay=0.1)
    for _ in range(6):
        bed.accept(message_variant(ADMISSION), cpr=None, to=(KOMMUNE, REHAB))

    dispatcher = bed.dispatcher()
    while dispatcher.run_once():
        pass

    assert len(kommune.requests) == 6 and len(rehab.requests) == 6
    assert max(r.concurrent for r in kommune.requests) <= 2  # the municipality's limit
    assert all(d.state == "delivered" for d in bed.messages_to(KOMMUNE))
    assert len(receipts_in(hospital)) == 6  # an ok from the bridge for each municipal-v1 delivery


def test_a_long_backlog_to_one_destination_does_not_hold_back_another(
    make_bed: Callable[..., Bed], trio: Trio
) -> None:
    hospital, kommune, _ = trio
    bed = make_bed(dispatcher={"batch_size": 4})
    backlog = [bed.accept(message_variant(ADMISSION), cpr=None) for _ in range(12)]
    bed.clock.advance(timedelta(seconds=1))
    later = bed.accept(message_variant(ADMISSION), cpr=None, to=(HOSPITAL,), sender=KOMMUNE)

    dispatcher = bed.dispatcher()
    assert dispatcher.run_once() == 4
    # Oldest first across all destinations would have sent four of the backlog; the hospital's
    # share of the round took its one at once.
    assert [r.header_id for r in hospital.requests] == [later.header_id]
    assert len(kommune.requests) == 3
    while dispatcher.run_once():
        pass
    assert sorted(r.header_id for r in kommune.requests) == sorted(m.header_id for m in backlog)


def test_graceful_stop_releases_every_lease(bed: Bed, trio: Trio) -> None:
    _, kommune, _ = trio

    def hold(_: Request) -> Reply:
        kommune.release.wait(5)
        return Reply()

    kommune.script = hold
    for _ in range(5):
        bed.accept(message_variant(ADMISSION), cpr=None)
    dispatcher = bed.dispatcher()
    dispatcher.start()
    while len(kommune.requests) < 2:
        threading.Event().wait(0.01)
    assert bed.store.list_deliveries("leased")

    dispatcher.stop(timeout=0.2)

    assert bed.store.list_deliveries("leased") == []
    kommune.release.set()
    pending = bed.store.list_deliveries("pending")
    assert len(pending) == 5
    assert all(d.attempts == 0 for d in pending)  # released deliveries give back their attempt
    # Another worker takes them all over at once.
    kommune.script = lambda _: Reply()
    assert bed.dispatcher("w2").run_once() == 5
    assert len(bed.store.list_deliveries("delivered")) == 5


def test_a_result_after_the_lease_was_lost_is_dropped(bed: Bed, trio: Trio) -> None:
    _, kommune, _ = trio
    message = bed.accept(ADMISSION.read_bytes())
    stolen: list[str] = []

    def slow_and_stolen(_: Request) -> Reply:
        # While w1 waits for the answer, its lease runs out and w2 claims the delivery.
        bed.clock.advance(timedelta(minutes=3))
        stolen.extend(c.id for c in bed.store.claim_due("w2", bed.clock.now(), timedelta(minutes=2), 10))
        return Reply()

    kommune.script = slow_and_stolen
    assert bed.dispatcher().run_once() == 1

    trace = bed.delivery(message)
    assert stolen == [trace.delivery.id]
    assert (trace.delivery.state, trace.delivery.lease_owner) == ("leased", "w2")
    assert trace.attempts == ()  # w1's result was not recorded


def test_the_synchronous_receipts_of_a_batch_are_all_recorded_and_forwarded_byte_for_byte(
    make_bed: Callable[..., Bed], trio: Trio
) -> None:
    hospital, kommune, _ = trio
    bed = make_bed(kommune_extra={"concurrency": 8})
    answers_sent: dict[str, bytes] = {}  # by the MessageHeader.id acknowledged
    lock = threading.Lock()

    def acknowledge(request: Request) -> Reply:
        body = orjson.dumps(build_acknowledgement(request.json(), "ok"))
        with lock:
            answers_sent[request.header_id] = body
        return Reply(200, {"Content-Type": "application/fhir+json"}, body)

    kommune.script = acknowledge
    sent = [bed.accept(message_variant(ADMISSION), cpr=None) for _ in range(12)]
    dispatcher = bed.dispatcher()

    assert dispatcher.run_once() == 12
    for message in sent:
        trace = bed.delivery(message)
        assert (trace.delivery.state, trace.delivery.receipt_code) == ("delivered", "ok")
        assert len(trace.receipts) == 1

    assert dispatcher.run_once() == 12  # the forwards
    forwarded = {parse_acknowledgement(r.json()).acknowledged_id: r.body for r in hospital.requests}
    # Every receipt reached the sender, byte for byte as the municipality sent it.
    assert forwarded == {m.header_id: answers_sent[m.header_id] for m in sent}
    receipts = [e for e in bed.store.read_audit(limit=1000) if e.record.action == "receipt.received"]
    assert len(receipts) == 12
