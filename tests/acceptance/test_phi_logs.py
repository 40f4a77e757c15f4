"""Nothing the bridge logs names a citizen: the service runs as a real process on loopback with the
acceptance suite's traffic - every official MedCom HospitalNotification and CareCommunication, municipal
records, refused and hostile posts carrying CPR numbers and names, a dead letter and its replay, trace
reads and an audit search by CPR - at debug level, and every CPR number and name in those fixtures is
searched for in everything the process wrote to stdout and stderr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from harness import (
    HOSPITAL_TOKEN,
    MUNICIPALITY_TOKEN,
    OPERATOR_TOKEN,
    hash_token,
    header_id,
    post_fhir,
    wait_until,
)
from shared_data import SHARED

from bridge.simulators import traffic

PROJECT = Path(__file__).resolve().parents[2]
HOSPITAL_NOTIFICATIONS = sorted((SHARED / "medcom" / "hospitalnotification").glob("Bundle-*.json"))
CARE_COMMUNICATIONS = sorted((SHARED / "medcom" / "carecommunication").glob("Bundle-*.json"))
RECORDS = sorted((PROJECT / "examples" / "records").glob("*.json"))
AUDITOR_TOKEN = "acceptance-auditor-token"
CPR_SYSTEMS = {"urn:oid:1.2.208.176.1.2", "urn:oid:1.2.208.176.1.6.1.1"}


def _names_and_cprs(value: Any, found: set[str]) -> None:
    """Every CPR identifier, HumanName part and municipal citizen field in a fixture."""
    if isinstance(value, dict):
        if value.get("system") in CPR_SYSTEMS and isinstance(value.get("value"), str):
            found.add(value["value"])
        for key in ("family", "cpr"):
            if isinstance(value.get(key), str):
                found.add(value[key])
        for key in ("given", "prefix"):
            parts = value.get(key)
            if isinstance(parts, list):
                found.update(p for p in parts if isinstance(p, str))
        for item in value.values():
            _names_and_cprs(item, found)
    elif isinstance(value, list):
        for item in value:
            _names_and_cprs(item, found)


def needles(fixtures: list[Any]) -> set[str]:
    found: set[str] = set()
    for fixture in fixtures:
        _names_and_cprs(fixture, found)
    return {n for n in found if len(n) >= 3}


def test_no_cpr_number_or_name_is_ever_logged(start_stack: Any) -> None:
    stack = start_stack(
        "municipal-v1",
        with_rehab=True,
        extra={"auditors": [{"name": "inspector", "sha256": hash_token(AUDITOR_TOKEN)}]},
    )
    bridge = stack.bridge
    # Again at debug level, so every library's chatter is in the log too.
    bridge.stop()
    bridge.argv += ["--log-level", "debug"]
    bridge.start()

    sent: list[Any] = []
    accepted = 0
    with bridge.client(HOSPITAL_TOKEN) as hospital:
        for path in HOSPITAL_NOTIFICATIONS + CARE_COMMUNICATIONS:
            message = json.loads(path.read_bytes())
            sent.append(message)
            answer = post_fhir(hospital, message)
            assert answer.status_code < 500, answer.text
            accepted += answer.status_code == 200
        # Refused on purpose, each carrying a citizen: broken structure, a sender it does not own,
        # malformed JSON and XML, an unknown element.
        stin = json.loads(
            HOSPITAL_NOTIFICATIONS[0].read_text().replace(HOSPITAL_NOTIFICATIONS[0].stem[7:15], "0badc0de")
        )
        stin["entry"][0]["resource"]["id"] = "0badc0de-0000-4000-8000-000000000001"
        broken = {**stin, "entry": stin["entry"][1:]}
        as_municipality = json.dumps(stin).replace("265161000016000", "953741000016009")
        stranger = json.loads(as_municipality.replace("399841000016000", "953741000016009"))
        odd = {**stin, "unexpected": {"note": "Bruno Elmer 2509479989"}}
        for body in (
            orjson.dumps(broken),
            orjson.dumps(stranger),
            orjson.dumps(odd),
            b'{"resourceType": "Bundle", "patient": "2509479989 Bruno Elmer"',
        ):
            answer = post_fhir(hospital, body)
            assert 400 <= answer.status_code < 500, (body[:80], answer.text)
        xml = b"<Bundle xmlns='http://hl7.org/fhir'><id value='2509479989'/><name>Bruno Elmer</name>"
        answer = hospital.post(
            "/fhir/$process-message", content=xml, headers={"Content-Type": "application/fhir+xml"}
        )
        assert 400 <= answer.status_code < 500
        # A citizen admitted, then a record about them from the municipality.
        admitted = traffic.notification(traffic.admission(7))
        sent.append(admitted)
        assert post_fhir(hospital, admitted).status_code == 200
    wait_until(
        lambda: any(m["header_id"] == header_id(admitted) for m in stack.municipality.messages()),
        60,
        "the admission at the municipality",
        bridge,
    )

    stack.rehab.faults([], then={"status": 400})  # the rehab system refuses what it gets: dead letters
    with bridge.client(MUNICIPALITY_TOKEN) as municipality:
        headers = {"Content-Type": "application/json"}
        record = traffic.municipal_record(7, municipality=traffic.HERLEV_MUNICIPALITY)
        sent.append(record)
        answer = municipality.post("/municipal/records", content=orjson.dumps(record), headers=headers)
        assert answer.status_code == 200, answer.text
        for path in RECORDS:
            data = json.loads(path.read_bytes())
            sent.append(data)
            answer = municipality.post(
                "/municipal/records",
                content=orjson.dumps(data),
                params={"receiver": ["herlev-gentofte-hospital", "rehab-municipality"]},
                headers=headers,
            )
            assert answer.status_code == 200, answer.text
        citizen = {"cpr": "2509479989", "name": {"given": ["Bruno"], "family": "Elmer"}, "born": "?"}
        refused = municipality.post(
            "/municipal/records", content=orjson.dumps({**record, "citizen": citizen}), headers=headers
        )
        assert 400 <= refused.status_code < 500

    with bridge.client(OPERATOR_TOKEN) as ops:
        wait_until(
            lambda: bool(ops.get("/deliveries", params={"state": "dead"}).json()["deliveries"]),
            60,
            "a dead letter",
            bridge,
        )
        stack.rehab.faults([])
        for dead in ops.get("/deliveries", params={"state": "dead"}).json()["deliveries"]:
            assert ops.post(f"/deliveries/{dead['id']}/retry").status_code == 200
            assert ops.get(f"/messages/{dead['message_id']}").status_code == 200
        wait_until(
            lambda: (
                ops.get("/deliveries", params={"state": "dead"}).json()["deliveries"] == []
                and ops.get("/deliveries", params={"state": "pending"}).json()["deliveries"] == []
            ),
            60,
            "every delivery settled",
            bridge,
        )
    with bridge.client(AUDITOR_TOKEN) as auditor:
        found = auditor.get("/fhir/AuditEvent", params={"patient": "2509479989"})
        assert found.status_code == 200 and found.json()["entry"]
    assert bridge.stop() == 0

    log = bridge.log_path.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in log.splitlines() if line.strip()]
    assert accepted >= 10 and len(lines) > 50
    for line in lines:
        event = json.loads(line)  # every line is one structured JSON event
        assert {"event", "level", "timestamp"} <= set(event), line
    targets = needles(sent)
    assert {"2509479989", "Elmer", "Bruno", traffic.synthetic_cpr(7), "Hansen"} <= targets
    leaked = sorted(n for n in targets if n in log)
    assert leaked == [], f"{len(leaked)} CPR numbers or names in the bridge's log: {leaked[:5]}"
