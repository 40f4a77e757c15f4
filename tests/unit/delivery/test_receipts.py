"""Receipts at the delivery end: resend envelopes, stable receipt ids, on-behalf receipts, received ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from delivery_bed import ADMISSION, DISCHARGE, HOSPITAL, KOMMUNE, REHAB, Bed, message_variant, settings_for

from bridge.delivery.receipts import (
    handle_acknowledgement,
    handle_acknowledgements,
    queue_receipt,
    read_acknowledgement,
    receipt_ids,
    receipt_issues,
    resend_envelope,
)
from bridge.errors import InvalidInput, InvalidMessage
from bridge.fhir.parse import parse_xml, to_xml
from bridge.medcom.acknowledgement import AckCode, build_acknowledgement, parse_acknowledgement
from bridge.medcom.validation import validate_message

NOW = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)


def _own_provenance(bundle: dict) -> dict:  # type: ignore[type-arg]
    header_id = bundle["entry"][0]["resource"]["id"]
    return next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Provenance"
        and e["resource"]["target"][0]["reference"].endswith(header_id)
    )


@pytest.mark.parametrize("example", [ADMISSION, DISCHARGE], ids=["admission", "discharge"])
def test_a_resend_has_a_new_envelope_and_the_same_header(example: Path) -> None:
    original = json.loads(example.read_bytes())
    resent = json.loads(resend_envelope(example.read_bytes(), "application/fhir+json", NOW, lambda: "new-id"))

    assert resent["id"] == "new-id" != original["id"]
    assert resent["timestamp"] == "2026-03-01T09:30:15Z"
    assert resent["entry"][0] == original["entry"][0]  # MessageHeader untouched
    assert _own_provenance(resent)["recorded"] == "2026-03-01T09:30:15Z"
    assert _own_provenance(resent)["occurredDateTime"] == _own_provenance(original)["occurredDateTime"]
    # Nothing else changes: the letter is the same.
    for key in ("id", "timestamp"):
        resent.pop(key), original.pop(key)
    _own_provenance(resent).pop("recorded"), _own_provenance(original).pop("recorded", None)
    assert resent == original


def test_a_resent_message_is_still_a_valid_medcom_message() -> None:
    resent = json.loads(resend_envelope(ADMISSION.read_bytes(), "", NOW))
    assert not validate_message(resent).has_errors


def test_a_resend_keeps_xml_as_xml() -> None:
    xml = to_xml(json.loads(ADMISSION.read_bytes()))
    resent = resend_envelope(xml, "application/fhir+xml", NOW, lambda: "xml-envelope")
    assert resent.lstrip().startswith(b"<?xml")
    bundle = parse_xml(resent)
    assert bundle["id"] == "xml-envelope"
    assert (
        bundle["entry"][0]["resource"]["id"]
        == json.loads(ADMISSION.read_bytes())["entry"][0]["resource"]["id"]
    )


def test_a_resend_of_something_else_is_refused() -> None:
    with pytest.raises(InvalidInput):
        resend_envelope(b'{"resourceType": "Patient"}', "application/fhir+json", NOW)
    with pytest.raises(InvalidInput):
        resend_envelope(b"not json", "application/fhir+json", NOW)


def test_receipt_ids_are_stable_and_distinct_per_event() -> None:
    assert receipt_ids("h1", KOMMUNE, "ok") == receipt_ids("h1", KOMMUNE, "ok")
    events = {
        receipt_ids(h, r, c) for h in ("h1", "h2") for r in (KOMMUNE, REHAB) for c in ("ok", "fatal-error")
    }
    assert len(events) == 8
    bundle_id, header_id = receipt_ids("h1", KOMMUNE, "ok")
    assert bundle_id != header_id


def test_negative_receipts_explain_themselves() -> None:
    assert receipt_issues("ok", "") == []
    (fatal,) = receipt_issues("fatal-error", "refused: HTTP 400")
    assert (fatal.severity, fatal.code) == ("error", "processing") and "HTTP 400" in fatal.diagnostics
    (transient,) = receipt_issues("transient-error", "gave up after 3 attempts: HTTP 503")
    assert transient.code == "transient"
    assert transient.details is not None and transient.details[1] == "MSG_Mailbox_Out_Of_Operation"


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[Bed]:
    url = "http://127.0.0.1:9/unused"
    b = Bed(tmp_path, settings_for(url, url, url))
    yield b
    b.close()


@pytest.mark.parametrize("code", ["ok", "fatal-error", "transient-error"])
def test_a_receipt_on_behalf_is_a_valid_acknowledgement_queued_once(bed: Bed, code: AckCode) -> None:
    message = bed.accept(ADMISSION.read_bytes(), to=(REHAB,))

    first = queue_receipt(
        bed.settings,
        bed.store,
        bed.clock,
        message_id=message.id,
        receiver=REHAB,
        code=code,
        reason="why",
    )
    again = queue_receipt(
        bed.settings,
        bed.store,
        bed.clock,
        message_id=message.id,
        receiver=REHAB,
        code=code,
        reason="why",
    )

    assert first is not None and first.accepted
    assert again is not None and again.duplicate == "same"
    (delivery,) = [d for d in bed.store.list_deliveries() if d.destination == HOSPITAL]
    ack = json.loads(bed.store.delivery_payload(delivery.id) or b"")
    assert not validate_message(ack).has_errors
    receipt = parse_acknowledgement(ack)
    assert (receipt.acknowledged_id, receipt.code) == (message.header_id, code)
    assert (receipt.bundle_id, receipt.header_id) == receipt_ids(message.header_id, REHAB, code)
    assert receipt.timestamp == bed.clock.now().replace(microsecond=0)


def test_no_receipt_for_an_acknowledgement_or_a_municipal_sender(bed: Bed) -> None:
    ack = build_acknowledgement(json.loads(ADMISSION.read_bytes()), "ok")
    acked = bed.accept(json.dumps(ack).encode(), kind="acknowledgement", cpr=None, to=(KOMMUNE,))
    from_municipality = bed.accept(
        json.dumps(json.loads(DISCHARGE.read_bytes())).encode(), sender=REHAB, to=(HOSPITAL,)
    )
    for message in (acked, from_municipality):
        assert (
            queue_receipt(
                bed.settings, bed.store, bed.clock, message_id=message.id, receiver=KOMMUNE, code="ok"
            )
            is None
        )
    assert (
        queue_receipt(bed.settings, bed.store, bed.clock, message_id="unknown", receiver=KOMMUNE, code="ok")
        is None
    )


def test_a_received_acknowledgement_is_recorded_forwarded_once_and_duplicates_ignored(bed: Bed) -> None:
    message = bed.accept(ADMISSION.read_bytes())
    ack = build_acknowledgement(json.loads(ADMISSION.read_bytes()), "ok")

    first = handle_acknowledgement(bed.settings, bed.store, bed.clock, ack, from_system=KOMMUNE)
    again = handle_acknowledgement(bed.settings, bed.store, bed.clock, ack, from_system=KOMMUNE)

    assert first.status == "forwarded" and first.forwarded is not None and first.forwarded.accepted
    assert first.match is not None and first.match.message_id == message.id
    assert again.status == "duplicate"
    (forward,) = [d for d in bed.store.list_deliveries() if d.destination == HOSPITAL]
    assert json.loads(bed.store.delivery_payload(forward.id) or b"") == ack
    assert bed.delivery(message).delivery.receipt_code == "ok"


def test_an_acknowledgement_from_the_wrong_system_or_for_nothing_matches_nothing(bed: Bed) -> None:
    bed.accept(ADMISSION.read_bytes())
    ack = build_acknowledgement(json.loads(ADMISSION.read_bytes()), "ok")
    handling = handle_acknowledgement(bed.settings, bed.store, bed.clock, ack, from_system=REHAB)
    assert handling.status == "unmatched" and handling.forwarded is None
    assert [d.destination for d in bed.store.list_deliveries()] == [KOMMUNE]


def test_an_acknowledgement_to_a_municipal_sender_is_recorded_not_forwarded(bed: Bed) -> None:
    message = bed.accept(ADMISSION.read_bytes(), sender=REHAB, to=(KOMMUNE,))
    ack = build_acknowledgement(
        json.loads(ADMISSION.read_bytes()), "fatal-error", issues=receipt_issues("fatal-error", "x")
    )
    handling = handle_acknowledgement(bed.settings, bed.store, bed.clock, ack, from_system=KOMMUNE)
    assert handling.status == "recorded"
    assert bed.delivery(message).delivery.receipt_code == "fatal-error"
    assert [d.destination for d in bed.store.list_deliveries()] == [KOMMUNE]


def test_something_that_is_no_acknowledgement_is_refused(bed: Bed) -> None:
    with pytest.raises(InvalidMessage):
        handle_acknowledgement(
            bed.settings, bed.store, bed.clock, json.loads(ADMISSION.read_bytes()), from_system=KOMMUNE
        )


def test_a_batch_of_acknowledgements_is_handled_as_one_by_one_would_in_one_store_call(bed: Bed) -> None:
    to_fhir_sender = bed.accept(message_variant(ADMISSION))
    to_municipal_sender = bed.accept(message_variant(DISCHARGE), sender=REHAB)
    ack_a = build_acknowledgement(json.loads(to_fhir_sender.payload), "ok")
    ack_b = build_acknowledgement(
        json.loads(to_municipal_sender.payload),
        "transient-error",
        issues=receipt_issues("transient-error", "x"),
    )
    stray = build_acknowledgement(json.loads(message_variant(ADMISSION)), "ok")
    received = [
        read_acknowledgement(ack_a, from_system=KOMMUNE),
        read_acknowledgement(ack_a, from_system=KOMMUNE),  # the same one twice in the batch
        read_acknowledgement(ack_b, from_system=KOMMUNE),
        read_acknowledgement(stray, from_system=KOMMUNE),
    ]
    calls: list[int] = []
    record_receipts = bed.store.record_receipts

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(args[0]))
        return record_receipts(*args, **kwargs)

    bed.store.record_receipts = counted  # type: ignore[method-assign]

    handled = handle_acknowledgements(bed.settings, bed.store, bed.clock, received)

    assert calls == [4]  # one store call (one transaction) for the batch
    assert [h.status for h in handled if not isinstance(h, Exception)] == [
        "forwarded",
        "duplicate",
        "recorded",
        "unmatched",
    ]
    (forward,) = bed.messages_to(HOSPITAL)
    # Forwarded as the receiver sent it, with the same bytes the one-by-one path stores.
    assert bed.store.delivery_payload(forward.id) == orjson.dumps(ack_a)
    assert bed.delivery(to_fhir_sender).delivery.receipt_code == "ok"
    assert bed.delivery(to_municipal_sender).delivery.receipt_code == "transient-error"
    trail = [e.record.body for e in bed.store.read_audit(limit=100) if e.record.action == "receipt.received"]
    assert [json.loads(b)["outcomeDesc"].rsplit(", ", 1)[1] for b in trail] == [
        "forwarded",
        "duplicate",
        "recorded",
        "unmatched",
    ]
