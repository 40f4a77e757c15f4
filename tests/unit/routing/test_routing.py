"""Routing: MessageHeader.destination -> systems, routing rules, admissions learned from notifications."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.medcom.hospital_notification import stay_change, to_event
from bridge.outbox.port import Admission, AdmissionStatus
from bridge.routing import (
    Unroutable,
    admission_from_change,
    admission_from_event,
    admission_status,
    explicit_receivers,
    medcom_receivers,
    rule_receivers,
    sender_party,
    stay_status,
)
from bridge.settings import Settings, parse_settings

PROJECT = Path(__file__).resolve().parents[3]
MEDCOM = PROJECT.parent / "shared" / "medcom"
ENV = {"BRIDGE_CITIZEN_KEY_SECRET": "routing-tests-secret-0123456789", "HERLEV_OUTBOUND_TOKEN": "x"}
KEY = "c" * 64
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def settings(change: Any = None) -> Settings:
    data = yaml.safe_load((PROJECT / "examples" / "bridge.yaml").read_text(encoding="utf-8"))
    if change is not None:
        change(data)
    return parse_settings(data, ENV)


def message(folder: str, prefix: str) -> dict[str, Any]:
    [path] = (MEDCOM / folder).glob(f"Bundle-{prefix}*.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_every_official_message_resolves_to_its_configured_receiver() -> None:
    s = settings()
    for path in sorted((MEDCOM / "hospitalnotification").glob("Bundle-*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        assert [r.system.id for r in medcom_receivers(s, bundle)] == ["herlev-municipality"], path.name
    reply = message("carecommunication", "b56549f7")
    assert [r.system.id for r in medcom_receivers(s, reply)] == ["herlev-gentofte-hospital"]


def test_sender_party() -> None:
    assert sender_party(message("hospitalnotification", "a5e5b880")) == ("265161000016000", "5790000209354")


def test_receiver_found_by_gln_alone_and_by_sor_endpoint() -> None:
    s = settings()
    bundle = message("hospitalnotification", "a5e5b880")
    by_gln = copy.deepcopy(bundle)
    for e in by_gln["entry"]:
        res = e["resource"]
        if res["resourceType"] == "Organization":
            res["identifier"] = [i for i in res["identifier"] if i["system"] != "urn:oid:1.2.208.176.1.1"]
    assert [r.system.id for r in medcom_receivers(s, by_gln)] == ["herlev-municipality"]
    by_endpoint = copy.deepcopy(bundle)
    by_endpoint["entry"][0]["resource"]["destination"][0]["receiver"] = {"reference": "Organization/missing"}
    by_endpoint["entry"][0]["resource"]["destination"][0]["endpoint"] = (
        "https://sor2.sum.dsdn.dk/#id=1144561000016002"
    )
    assert [r.system.id for r in medcom_receivers(s, by_endpoint)] == ["rehab-municipality"]


def test_two_destinations_give_two_receivers_and_one_unknown_refuses_all() -> None:
    s = settings()
    bundle = message("hospitalnotification", "a5e5b880")
    header = bundle["entry"][0]["resource"]
    cc = copy.deepcopy(header["destination"][0])
    cc["extension"][0]["valueCoding"]["code"] = "cc"
    cc["receiver"] = {"reference": "Organization/missing"}
    cc["endpoint"] = "https://sor2.sum.dsdn.dk/#id=1144561000016002"
    header["destination"].append(cc)
    receivers = medcom_receivers(s, bundle)
    assert [(r.system.id, r.primary) for r in receivers] == [
        ("herlev-municipality", True),
        ("rehab-municipality", False),
    ]
    cc["endpoint"] = "https://sor2.sum.dsdn.dk/#id=123456789012345"
    with pytest.raises(Unroutable) as raised:
        medcom_receivers(s, bundle)
    [issue] = raised.value.outcome.issues
    assert issue.expression == ("Bundle.entry[0].resource.destination[1].receiver",)
    assert issue.code == "not-found"


def test_no_destination_is_unroutable() -> None:
    bundle = message("hospitalnotification", "a5e5b880")
    bundle["entry"][0]["resource"]["destination"] = []
    with pytest.raises(Unroutable):
        medcom_receivers(settings(), bundle)


def test_explicit_receivers() -> None:
    s = settings()
    assert [r.system.id for r in explicit_receivers(s, ["rehab-municipality", "rehab-municipality"])] == [
        "rehab-municipality"
    ]
    with pytest.raises(Unroutable) as raised:
        explicit_receivers(s, ["rehab-municipality", "nobody"])
    assert raised.value.outcome.issues[0].expression == ("receiver[1]",)


def admitted(status: AdmissionStatus, hospital: str = "herlev-gentofte-hospital") -> Admission:
    return Admission(KEY, hospital, status, T0)


@pytest.mark.parametrize(
    ("status", "routed"),
    [
        ("admitted", ["herlev-gentofte-hospital"]),
        ("on-leave", ["herlev-gentofte-hospital"]),
        ("discharged", None),
        ("deceased", None),
        ("cancelled", None),
    ],
)
def test_admitted_hospital_rule(status: AdmissionStatus, routed: list[str] | None) -> None:
    s = settings()
    kwargs = {"sender": "rehab-municipality", "kind": "municipal-record", "admission": admitted(status)}
    if routed is None:
        with pytest.raises(Unroutable):
            rule_receivers(s, **kwargs)  # type: ignore[arg-type]
    else:
        assert [r.system.id for r in rule_receivers(s, **kwargs)] == routed  # type: ignore[arg-type]


def test_admitted_hospital_otherwise_and_unknown_hospital() -> None:
    def otherwise(data: dict[str, Any]) -> None:
        data["routing"][0]["otherwise"] = ["herlev-municipality"]

    s = settings(otherwise)
    assert [
        r.system.id
        for r in rule_receivers(s, sender="rehab-municipality", kind="municipal-record", admission=None)
    ] == ["herlev-municipality"]
    # An admission at a hospital that is no longer configured falls back as well.
    gone = admitted("admitted", hospital="closed-hospital")
    assert [
        r.system.id
        for r in rule_receivers(s, sender="rehab-municipality", kind="municipal-record", admission=gone)
    ] == ["herlev-municipality"]


def test_rules_in_order_and_no_rule() -> None:
    def rules(data: dict[str, Any]) -> None:
        data["routing"] = [
            {
                "name": "rehab copies to herlev",
                "when": {"sender": "rehab-municipality"},
                "to": ["herlev-municipality"],
            },
            {
                "name": "records to the hospital",
                "when": {"kind": "municipal-record"},
                "to": "admitted-hospital",
            },
        ]

    s = settings(rules)
    first = rule_receivers(s, sender="rehab-municipality", kind="municipal-record", admission=None)
    assert [r.system.id for r in first] == ["herlev-municipality"]
    with pytest.raises(Unroutable, match="not admitted"):
        rule_receivers(s, sender="herlev-municipality", kind="municipal-record", admission=None)
    with pytest.raises(Unroutable, match="No routing rule"):
        rule_receivers(s, sender="herlev-municipality", kind="care-communication", admission=None)


@pytest.mark.parametrize(
    ("prefix", "code", "status"),
    [
        ("a5e5b880", "STIN", "admitted"),
        ("bfab3e80", "RE_STIN", "admitted"),
        ("c83671a4", "AN_STIN", "cancelled"),
        ("d3128d9b", "STOR", "on-leave"),
        ("e94de8ee", "SLOR", "admitted"),
        ("f4aa42a4", "SLHJ", "discharged"),
        ("g099bbf3", "MORS", "deceased"),
        ("h1c8e4a8", "STAA", "admitted"),
        ("kcab461b", "SLHJ", "discharged"),
    ],
)
def test_admission_learned_from_each_official_notification(prefix: str, code: str, status: str) -> None:
    event = to_event(message("hospitalnotification", prefix))
    assert event.code == code
    assert admission_status(event) == status
    admission = admission_from_event(event, hospital="herlev-gentofte-hospital", citizen_key=KEY)
    assert admission.status == status and admission.hospital == "herlev-gentofte-hospital"
    assert event.message is not None and admission.since == event.message.sent
    # The short reading the service uses when no receiver needs the municipal event tells the same.
    change = stay_change(message("hospitalnotification", prefix))
    assert (change.code, change.status_before_death) == (event.code, event.status_before_death)
    assert admission == admission_from_change(
        change.code,
        change.status_before_death,
        change.sent,
        hospital="herlev-gentofte-hospital",
        citizen_key=KEY,
    )


def test_a_cancelled_death_restores_the_state_before_it() -> None:
    event = to_event(message("hospitalnotification", "g099bbf3"))
    cancelled = event.model_copy(
        update={"change": "cancellation", "code": "AN_MORS", "status_before_death": "onleave"}
    )
    assert admission_status(cancelled) == "on-leave"
    assert stay_status("AN_MORS", "onleave") == "on-leave" and stay_status("AN_MORS") == "admitted"
