"""Acknowledgement: receipts built for real MedCom messages, MedCom's receipts read and correlated."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from bridge.errors import InvalidInput, InvalidMessage
from bridge.fhir.outcome import error
from bridge.medcom.acknowledgement import (
    ERROR_CODES,
    HL7_ACK_CODES,
    build_acknowledgement,
    correlate,
    medcom_issue,
    parse_acknowledgement,
)
from bridge.medcom.validation import validate_message
from bridge.municipal.events import Party

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "medcom"


def assert_profile_valid(bundle: dict[str, Any]) -> None:
    """The bridge's own MedCom profile validation finds no error."""
    outcome = validate_message(bundle)
    assert not outcome.has_errors, outcome.to_fhir()


MESSAGES = sorted((SHARED / "hospitalnotification").glob("Bundle-*.json")) + sorted(
    (SHARED / "carecommunication").glob("Bundle-*.json")
)
RECEIPTS = sorted((SHARED / "acknowledgement").glob("Bundle-*.json")) + sorted(
    (SHARED / "acknowledgement/testscripts-fixtures").glob("Binary-Ack-*.json")
)
NOW = dt.datetime(2024, 5, 1, 12, 0, 5, tzinfo=dt.UTC)


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def by_type(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def _org(bundle: dict[str, Any], reference: str) -> dict[str, Any]:
    return next(o for o in by_type(bundle, "Organization") if f"Organization/{o['id']}" == reference)


def _ids(org: dict[str, Any]) -> set[str]:
    return {i["value"] for i in org["identifier"]}


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: p.name[7:15])
@pytest.mark.parametrize("code", ["ok", "transient-error", "fatal-error"])
def test_receipt_for_each_official_message(path: Path, code: Any) -> None:
    message = read(path)
    issues = (
        [] if code == "ok" else [medcom_issue("MSG_VALUESET_VALUE_UNKNOWN", "bad code", "Bundle.entry[2]")]
    )
    ack = build_acknowledgement(message, code, issues=issues, now=lambda: NOW)
    Bundle.model_validate(ack)
    assert_profile_valid(ack)
    header = ack["entry"][0]["resource"]
    original = message["entry"][0]["resource"]
    assert header["response"]["identifier"] == original["id"] and header["response"]["code"] == code
    assert ack["id"] != message["id"] and header["id"] != original["id"]
    # The receipt goes back to the sender, from the primary receiver.
    assert _ids(_org(ack, header["destination"][0]["receiver"]["reference"])) == _ids(
        _org(message, original["sender"]["reference"])
    )
    assert _ids(_org(ack, header["sender"]["reference"])) == _ids(
        _org(message, original["destination"][0]["receiver"]["reference"])
    )
    assert header["destination"][0]["endpoint"] == original["source"]["endpoint"]
    copied, own = by_type(ack, "Provenance")
    assert copied["target"][0]["reference"] == f"MessageHeader/{original['id']}"
    assert own["activity"]["coding"][0]["code"] == "acknowledgement"
    assert own["entity"] == [{"role": "revision", "what": {"reference": f"MessageHeader/{original['id']}"}}]
    outcomes = by_type(ack, "OperationOutcome")
    assert len(outcomes) == (0 if code == "ok" else 1)
    receipt = parse_acknowledgement(ack)
    assert receipt.code == code and receipt.acknowledges(message)
    assert receipt.issues == tuple(issues)


@pytest.mark.parametrize("path", RECEIPTS, ids=lambda p: p.stem)
def test_official_receipts_are_read(path: Path) -> None:
    receipt = parse_acknowledgement(read(path))
    expected = {"a8c041b8": "ok", "bc9535ef": "fatal-error", "c9c2b2f6": "transient-error"}.get(
        path.stem[7:15]
    )
    if expected is None:  # test fixtures named after the HL7 v2 codes: AA, AE, AR
        expected = HL7_ACK_CODES[path.stem.split("-")[2][:2]]
    assert receipt.code == expected
    assert receipt.ok == (expected == "ok")
    assert (len(receipt.issues) > 0) == (expected != "ok")


def test_fatal_error_example_carries_medcoms_code() -> None:
    receipt = parse_acknowledgement(
        read(SHARED / "acknowledgement/Bundle-bc9535ef-ed94-4060-a928-7baddec7ee71.json")
    )
    assert receipt.issues[0].details == (ERROR_CODES, "MSG_VALUESET_VALUE_UNKNOWN")
    assert receipt.acknowledged_id == "53128d9b-cede-4c7f-8904-809eab322d7d"


def test_receipts_correlate_with_what_was_sent() -> None:
    sent = {read(p)["entry"][0]["resource"]["id"]: p.name for p in MESSAGES}
    cc = read(SHARED / "carecommunication/Bundle-add5e7e2-0c0f-4a4a-bfff-f6f984fa7e3c.json")
    ack = parse_acknowledgement(build_acknowledgement(cc, "ok"))
    assert correlate(ack, sent) == "Bundle-add5e7e2-0c0f-4a4a-bfff-f6f984fa7e3c.json"
    official = parse_acknowledgement(
        read(SHARED / "acknowledgement/Bundle-a8c041b8-c65a-4fde-a90f-962076918834.json")
    )
    assert correlate(official, sent) == "Bundle-add5e7e2-0c0f-4a4a-bfff-f6f984fa7e3c.json"
    assert correlate(official, {}) is None
    hn = read(MESSAGES[0])
    assert not official.acknowledges(hn)


def test_explicit_ids_sender_and_ok_with_a_note() -> None:
    message = read(MESSAGES[0])
    bridge = Party(name="Bridge", sor="12345678901", gln="5790000000005")
    ack = build_acknowledgement(
        message,
        "ok",
        issues=[error("duplicate of an earlier message", "Bundle.id", code="duplicate")],
        sender=bridge,
        bundle_id=str(uuid.UUID(int=1)),
        header_id=str(uuid.UUID(int=2)),
        provenance_id=str(uuid.UUID(int=3)),
        now=lambda: NOW,
    )
    assert ack["id"] == str(uuid.UUID(int=1)) and ack["timestamp"] == "2024-05-01T12:00:05Z"
    receipt = parse_acknowledgement(ack)
    assert receipt.sender == bridge and receipt.ok and receipt.issues[0].code == "duplicate"


def test_refusals() -> None:
    message = read(MESSAGES[0])
    with pytest.raises(InvalidInput, match="describes its errors"):
        build_acknowledgement(message, "fatal-error")
    with pytest.raises(InvalidInput, match="no acknowledgement code"):
        build_acknowledgement(message, "AE")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="never acknowledged"):
        build_acknowledgement(read(RECEIPTS[0]), "ok")
    with pytest.raises(ValueError, match="no MedCom"):
        medcom_issue("MSG_NOPE", "x")
    with pytest.raises(InvalidMessage, match="acknowledgement-message"):
        parse_acknowledgement(message)
    broken = read(RECEIPTS[1])
    broken["entry"][0]["resource"]["response"].pop("details")
    with pytest.raises(InvalidMessage) as info:
        parse_acknowledgement(broken)
    assert info.value.outcome.errors[0].expression == ("Bundle.entry[0].resource.response.details",)
