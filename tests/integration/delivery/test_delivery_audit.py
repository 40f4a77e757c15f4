"""Every delivery attempt outcome and receipt leaves an audit record linked to its message, and counts in
the metrics: a 503, then delivered with a synchronous Acknowledgement forwarded to the sender; a 400 that
dead-letters."""

from __future__ import annotations

import json
from collections.abc import Callable

import orjson
from delivery_bed import ADMISSION, DISCHARGE, HOSPITAL, KOMMUNE, Bed, Receiver, Reply, Request

from bridge.audit import CITIZEN_KEY_SYSTEM, verify_trail
from bridge.medcom.acknowledgement import build_acknowledgement
from bridge.observability.metrics import DEAD_LETTERS, DELIVERIES, RETRIES

Trio = tuple[Receiver, Receiver, Receiver]


def answers(*replies: Reply) -> Callable[[Request], Reply]:
    queue = list(replies)

    def script(_: Request) -> Reply:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return script


def _value(counter: object, *labels: str) -> float:
    return float(counter.labels(*labels)._value.get())  # type: ignore[attr-defined]


def test_each_outcome_and_the_receipt_are_audited_and_counted(bed: Bed, trio: Trio) -> None:
    _, kommune, _ = trio
    payload = ADMISSION.read_bytes()
    ack = build_acknowledgement(json.loads(payload), "ok")
    body = json.dumps(ack).encode()
    kommune.script = answers(Reply(503), Reply(200, {"Content-Type": "application/fhir+json"}, body))
    before = (_value(DELIVERIES, KOMMUNE, "transient"), _value(DELIVERIES, KOMMUNE, "delivered"))
    retries_before = _value(RETRIES, KOMMUNE)
    message = bed.accept(payload)
    dispatcher = bed.dispatcher()

    dispatcher.run_once()  # 503
    bed.clock.advance(60)
    dispatcher.run_once()  # 200 with the Acknowledgement

    entries = [e for e in bed.store.read_audit(limit=100) if e.record.message_id == message.id]
    assert [e.record.action for e in entries] == [
        "message.accepted",
        "delivery.retry",
        "delivery.delivered",
        "receipt.received",
    ]
    retry, delivered, receipt = (orjson.loads(e.record.body) for e in entries[1:])
    assert (retry["outcome"], retry["outcomeDesc"]) == ("4", "HTTP 503")
    assert delivered["outcome"] == "0" and delivered["type"]["code"] == "110106"
    for event in (retry, delivered):
        assert [a["who"]["identifier"]["value"] for a in event["agent"]] == ["w1", KOMMUNE]
        assert event["entity"][0]["what"]["identifier"]["value"] == message.header_id
        assert event["entity"][1]["what"]["identifier"] == {
            "system": CITIZEN_KEY_SYSTEM,
            "value": message.citizen_key,
        }
    # The receipt: from the municipality, about the message, forwarded to the hospital that sent it.
    assert [(a["who"]["identifier"]["value"], a["requestor"]) for a in receipt["agent"]] == [
        (KOMMUNE, True),
        (HOSPITAL, False),
    ]
    assert receipt["outcomeDesc"].endswith(": ok, forwarded")
    assert b"2509479989" not in b"".join(e.record.body for e in entries[1:])
    assert verify_trail(bed.store).intact
    assert _value(DELIVERIES, KOMMUNE, "transient") - before[0] == 1
    assert _value(DELIVERIES, KOMMUNE, "delivered") - before[1] == 1
    assert _value(RETRIES, KOMMUNE) - retries_before == 1


def test_a_dead_letter_is_audited_and_counted(bed: Bed, trio: Trio) -> None:
    _, kommune, _ = trio
    kommune.script = answers(Reply(400))
    dead_before = _value(DEAD_LETTERS, KOMMUNE)
    message = bed.accept(DISCHARGE.read_bytes())
    bed.dispatcher().run_once()
    actions = [e.record.action for e in bed.store.read_audit(limit=100) if e.record.message_id == message.id]
    assert actions[:2] == ["message.accepted", "delivery.dead-lettered"]
    assert _value(DEAD_LETTERS, KOMMUNE) - dead_before == 1
    assert _value(DELIVERIES, KOMMUNE, "permanent") >= 1
