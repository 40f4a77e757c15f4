"""HospitalNotification: classification of MedCom's examples, events both ways, errors with paths."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bridge.errors import InvalidMessage
from bridge.fhir.identifiers import gln_check_digit
from bridge.medcom.hospital_notification import (
    build_hospital_notification,
    classify,
    to_event,
)
from bridge.medcom.validation import validate_message
from bridge.municipal.events import (
    EpisodeOfCareId,
    HospitalStayEvent,
    MessageMeta,
    NotificationRecord,
    Party,
    medcom_code,
)
from bridge.municipal.model import Citizen, PersonName

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "medcom"


def assert_profile_valid(bundle: dict[str, Any]) -> None:
    """The bridge's own MedCom profile validation finds no error."""
    outcome = validate_message(bundle)
    assert not outcome.has_errors, outcome.to_fhir()


EXAMPLES = SHARED / "hospitalnotification"


def _index() -> dict[str, str]:
    """Bundle id -> use case code, from the example index in SOURCES.md."""
    text = (SHARED / "SOURCES.md").read_text(encoding="utf-8")
    section = text.split("HospitalNotification (medcomdk/")[1].split("\n\n")[0]
    rows = re.findall(r"^\| ([0-9a-z-]{36}) \| ([A-Z_]+)", section, re.M)
    return dict(rows)


INDEX = _index()


def load(bundle_id: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"Bundle-{bundle_id}.json").read_text(encoding="utf-8"))


def test_the_index_covers_every_example() -> None:
    files = {p.name.removeprefix("Bundle-").removesuffix(".json") for p in EXAMPLES.glob("Bundle-*.json")}
    assert set(INDEX) == files and len(files) == 12


@pytest.mark.parametrize(("bundle_id", "expected"), sorted(INDEX.items()))
def test_each_example_is_classified_as_its_use_case(bundle_id: str, expected: str) -> None:
    bundle = load(bundle_id)
    assert classify(bundle) == expected
    event = to_event(bundle)
    assert event.code == expected


def test_admission_example_reads_into_an_event() -> None:
    event = to_event(load("a5e5b880-c087-4055-b9ec-99108695f81d"))
    assert (event.kind, event.change, event.stay) == ("admitted", "new", "inpatient")
    assert event.citizen.cpr == "2509479989" and event.citizen.name.family == "Elmer"
    assert event.hospital_unit == Party(
        name="Hjerteafdelingen på Herlev og Gentofte hospital", sor="265161000016000", gln="5790000209354"
    )
    assert event.sender is None  # the unit sends itself
    assert event.receiver.sor == "953741000016009" and event.receiver.gln == "5790001348120"
    assert event.episode_of_care == [
        EpisodeOfCareId(
            system="https://sor2.sum.dsdn.dk/#id=265161000016000",
            value="bd481c38-a921-11ed-afa1-0242ac120002",
        )
    ]
    assert event.stay_start == dt.datetime(2022, 12, 7, 10, 0, tzinfo=dt.UTC)
    assert event.event_time == event.stay_start
    assert event.report_of_admission is True
    assert event.report_of_admission_recipient == event.hospital_unit
    assert event.message is not None and event.message.header_id == "b9b4818e-02de-4cc4-b418-d20cbc7b5404"
    assert event.earlier == [] and event.previous_message_id is None


def test_leave_discharge_and_history_are_read() -> None:
    back = to_event(load("e94de8ee-bd94-475e-b454-b8fbbef8a685"))
    assert back.kind == "back-from-leave"
    assert back.leave_start == dt.datetime(2022, 12, 13, 12, 0, 10, tzinfo=dt.UTC)
    assert back.event_time == back.leave_end == dt.datetime(2022, 12, 14, 13, 30, tzinfo=dt.UTC)
    assert back.previous_message_id == "e563a2b2-bf92-4b13-bbd2-0a021a95bded"  # the STOR it follows
    assert [r.activity for r in back.earlier] == ["admit-inpatient", "start-leave-inpatient"]
    assert back.earlier[1].previous_message_id == "b9b4818e-02de-4cc4-b418-d20cbc7b5404"
    cancel = to_event(load("c83671a4-9584-11ec-b909-0242ac120002"))
    assert cancel.code == "AN_STIN" and cancel.previous_message_id == "b9b4818e-02de-4cc4-b418-d20cbc7b5404"
    died = to_event(load("ld31e08a-b91f-49c3-841a-ce80e6380517"))
    assert died.kind == "died" and died.citizen.deceased and died.ongoing_activity == "admit-emergency"
    assert died.event_time == dt.datetime(2022, 12, 2, 5, 0, tzinfo=dt.UTC)


def test_sender_other_than_unit_and_two_episode_ids() -> None:
    other = to_event(load("m908i967-9ie3-9023-b9ec-98108695f01d"))
    assert other.hospital_unit == Party(name="Hjertemedicinsk sengeafs. S103", sor="399841000016000")
    assert other.sender is not None and other.sender.sor == "265161000016000"
    two = to_event(load("n73ccf30-80b9-4bd2-bf50-1ac1914498f0"))
    assert [e.system for e in two.episode_of_care] == [
        "https://www.esundhed.dk/Registre/Landspatientregisteret",
        "https://sor2.sum.dsdn.dk/#id=265161000016000",
    ]


@pytest.mark.parametrize("bundle_id", sorted(INDEX))
def test_example_event_to_message_and_back_is_the_identity(bundle_id: str) -> None:
    event = to_event(load(bundle_id))
    message = build_hospital_notification(event)
    Bundle.model_validate(message)
    assert_profile_valid(message)
    assert to_event(message) == event
    assert classify(message) == INDEX[bundle_id]


def test_rebuilt_example_keeps_the_official_content() -> None:
    original = load("e94de8ee-bd94-475e-b454-b8fbbef8a685")
    rebuilt = build_hospital_notification(to_event(original))

    def strip(bundle: dict[str, Any]) -> dict[str, Any]:
        by_type: dict[str, Any] = {}
        for e in bundle["entry"]:
            r = {k: v for k, v in e["resource"].items() if k not in ("text", "meta", "id")}
            by_type.setdefault(r["resourceType"], []).append(r)
        return by_type

    got, want = strip(rebuilt), strip(original)
    assert rebuilt["id"] == original["id"] and rebuilt["timestamp"] == original["timestamp"]
    assert got["Encounter"][0]["extension"] == want["Encounter"][0]["extension"]
    assert got["Encounter"][0]["period"] == want["Encounter"][0]["period"]
    assert (
        got["MessageHeader"][0]["destination"][0]["endpoint"]
        == want["MessageHeader"][0]["destination"][0]["endpoint"]
    )
    assert [p["activity"] for p in got["Provenance"]] == [p["activity"] for p in want["Provenance"]]
    assert [p.get("entity") for p in got["Provenance"]] == [p.get("entity") for p in want["Provenance"]]


# --------------------------------------------------------------------------------------------- death
def test_death_correction_and_cancellation_need_to_know_about_the_death() -> None:
    mors = to_event(load("g099bbf3-3fca-4722-a248-bfe1aa956410"))
    correction = mors.model_copy(update={"change": "correction", "code": None})
    correction = HospitalStayEvent.model_validate(correction.model_dump())
    message = build_hospital_notification(correction)
    assert classify(message) == "MORS"  # on its own it looks like MORS
    assert classify(message, previously_deceased=True) == "RE_MORS"
    assert to_event(message, previously_deceased=True) == correction

    data = mors.model_dump()
    data |= {"change": "cancellation", "code": None, "status_before_death": "onleave"}
    data["leave_start"] = data["leave_start"] or data["stay_start"]
    data["ongoing_activity"] = "start-leave-inpatient"
    cancel = HospitalStayEvent.model_validate(data)
    message = build_hospital_notification(cancel)
    patient = next(e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Patient")
    encounter = next(e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Encounter")
    assert patient["deceasedBoolean"] is False and encounter["status"] == "onleave"
    assert classify(message, previously_deceased=True) == "AN_MORS"
    assert to_event(message, previously_deceased=True) == cancel


# --------------------------------------------------------------------------------------------- errors
def _resource(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type)


def test_status_that_contradicts_the_activity_is_named_by_path() -> None:
    bundle = copy.deepcopy(load("a5e5b880-c087-4055-b9ec-99108695f81d"))
    _resource(bundle, "Encounter")["status"] = "finished"
    with pytest.raises(InvalidMessage) as info:
        classify(bundle)
    issue = info.value.outcome.errors[0]
    assert issue.expression == ("Bundle.entry[2].resource.status",)
    assert issue.code == "business-rule" and "STIN" in issue.diagnostics


def test_class_that_contradicts_the_activity_is_named_by_path() -> None:
    bundle = copy.deepcopy(load("d3128d9b-cede-4c7f-8904-809eab322d7d"))
    _resource(bundle, "Encounter")["class"]["code"] = "EMER"
    with pytest.raises(InvalidMessage) as info:
        to_event(bundle)
    assert info.value.outcome.errors[0].expression == ("Bundle.entry[2].resource.class",)


def test_unknown_activity_and_deceased_but_in_progress() -> None:
    bundle = copy.deepcopy(load("a5e5b880-c087-4055-b9ec-99108695f81d"))
    _resource(bundle, "Provenance")["activity"]["coding"][0]["code"] = "new-message"
    with pytest.raises(InvalidMessage) as info:
        classify(bundle)
    assert info.value.outcome.errors[0].expression == ("Bundle.entry[5].resource.activity",)
    bundle = copy.deepcopy(load("a5e5b880-c087-4055-b9ec-99108695f81d"))
    _resource(bundle, "Patient")["deceasedBoolean"] = True
    with pytest.raises(InvalidMessage, match="finished"):
        classify(bundle)


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda b: b.update(type="collection"), "Bundle.type"),
        (lambda b: b["entry"].reverse(), "Bundle.entry[0].resource"),
        (
            lambda b: b["entry"][0]["resource"].update(eventCoding={"code": "x"}),
            "Bundle.entry[0].resource.eventCoding",
        ),
        (
            lambda b: b["entry"][0]["resource"].update(focus=[{"reference": "Encounter/nope"}]),
            "Bundle.entry[0].resource.focus[0]",
        ),
        (lambda b: b["entry"].pop(), "Bundle.entry.resource.ofType(Provenance)"),
        (
            lambda b: _resource(b, "Encounter")["period"].update(start="2022-12-07"),
            "Bundle.entry[2].resource.period.start",
        ),
        (
            lambda b: _resource(b, "Patient")["identifier"][0].update(value="9999999999"),
            "Bundle.entry[1].resource.identifier[0].value",
        ),
    ],
)
def test_broken_messages_raise_invalid_message_with_a_path(mutate: Any, path: str) -> None:
    bundle = copy.deepcopy(load("a5e5b880-c087-4055-b9ec-99108695f81d"))
    mutate(bundle)
    with pytest.raises(InvalidMessage) as info:
        to_event(bundle)
    expressions = [e for issue in info.value.outcome.errors for e in issue.expression]
    assert path in expressions, info.value.outcome.to_fhir()


@pytest.mark.parametrize("thing", [None, [], "text", {"resourceType": "Patient"}])
def test_non_bundles_are_rejected(thing: Any) -> None:
    with pytest.raises(InvalidMessage):
        classify(thing)


def test_the_event_model_refuses_impossible_events() -> None:
    base = to_event(load("h1c8e4a8-6b45-4669-94ad-2a99ad96bf03")).model_dump()
    with pytest.raises(ValidationError, match="leave exists only for inpatients"):
        HospitalStayEvent.model_validate(
            base | {"kind": "on-leave", "code": None, "leave_start": base["stay_start"]}
        )
    with pytest.raises(ValidationError, match="stay_end"):
        HospitalStayEvent.model_validate(base | {"kind": "discharged", "code": None})
    with pytest.raises(ValidationError, match="code is"):
        HospitalStayEvent.model_validate(base | {"code": "STIN"})


# --------------------------------------------------------------------------------------------- property
OFFSETS = st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=1)), dt.timezone(dt.timedelta(hours=2))])
TIMES = st.builds(
    lambda d, tz: d.replace(tzinfo=tz),
    st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 1, 1)),
    OFFSETS,
)
IDS = st.uuids().map(str)
NAMES = st.text(st.characters(categories=["L"]), min_size=1, max_size=12)


def _gln(digits: str) -> str:
    return digits + str(gln_check_digit(digits))


PARTIES = st.builds(
    Party,
    name=st.none() | NAMES,
    sor=st.from_regex(r"[1-9][0-9]{10,17}", fullmatch=True),
    gln=st.from_regex(r"[0-9]{12}", fullmatch=True).map(_gln),
)
CPRS = st.builds(
    lambda d, rest: d.strftime("%d%m%y") + rest,
    st.dates(min_value=dt.date(1940, 1, 1), max_value=dt.date(1999, 12, 31)),
    st.from_regex(r"[0-3][0-9]{3}", fullmatch=True),
)
COMBOS = [
    (kind, change, stay)
    for kind in ("admitted", "on-leave", "back-from-leave", "discharged", "died")
    for change in ("new", "correction", "cancellation")
    for stay in ("inpatient", "acute-ambulant")
    if not (kind in ("on-leave", "back-from-leave") and stay == "acute-ambulant")
]
ONGOING = ["admit-inpatient", "start-leave-inpatient", "end-leave-inpatient", "revise-admit-inpatient"]


@st.composite
def events(draw: st.DrawFn) -> HospitalStayEvent:
    kind, change, stay = draw(st.sampled_from(COMBOS))
    start = draw(TIMES)
    later = st.builds(
        lambda d: start + d, st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(days=90))
    )
    leave_start = draw(later) if kind in ("on-leave", "back-from-leave") else draw(st.none() | later)
    leave_end = draw(later) if kind == "back-from-leave" and leave_start else None
    records = draw(
        st.lists(
            st.builds(
                NotificationRecord,
                message_id=IDS,
                activity=st.sampled_from(ONGOING),
                occurred=TIMES,
                recorded=st.none() | TIMES,
                previous_message_id=st.none() | IDS,
                previous_role=st.sampled_from(["revision", "removal"]),
                provenance_id=IDS,
            ),
            max_size=3,
        )
    )
    for r in records:
        if r.previous_message_id is None:
            r.previous_role = None
    citizen = Citizen(
        cpr=draw(CPRS), name=PersonName(given=draw(st.lists(NAMES, max_size=2)), family=draw(NAMES))
    )
    cancelled_death = kind == "died" and change == "cancellation"
    before_death = draw(st.sampled_from(["in-progress", "onleave"])) if cancelled_death else None
    if before_death == "onleave" and leave_start is None:
        leave_start = draw(later)  # a restored leave carries its period (medcom-hospitalNotification-6)
    return HospitalStayEvent(
        kind=kind,
        change=change,
        stay=stay,
        citizen=citizen,
        hospital_unit=draw(PARTIES),
        sender=draw(st.none() | PARTIES),
        receiver=draw(PARTIES),
        episode_of_care=[
            EpisodeOfCareId(system="https://sor2.sum.dsdn.dk/#id=265161000016000", value=draw(IDS))
        ],
        stay_start=start,
        stay_end=draw(later) if kind in ("discharged", "died") else None,
        leave_start=leave_start,
        leave_end=leave_end,
        ongoing_activity=draw(st.sampled_from(ONGOING)) if kind == "died" else None,
        status_before_death=before_death,
        report_of_admission=draw(st.none() | st.booleans()),
        previous_message_id=draw(st.none() | IDS),
        earlier=records,
        message=MessageMeta(
            bundle_id=draw(IDS),
            header_id=draw(IDS),
            timestamp=draw(TIMES),
            sent=draw(TIMES),
            recorded=draw(st.none() | TIMES),
            provenance_id=draw(IDS),
        ),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_event_to_message_to_event_is_the_identity(event: HospitalStayEvent) -> None:
    message = build_hospital_notification(event)
    assert_profile_valid(message)
    deceased_before = event.kind == "died" and event.change != "new"
    assert to_event(message, previously_deceased=deceased_before) == event
    assert classify(message, previously_deceased=deceased_before) == event.code
    assert event.code == medcom_code(event.kind, event.change, event.stay)


@pytest.mark.parametrize(("kind", "change", "stay"), COMBOS)
def test_every_use_case_builds_a_valid_fhir_bundle(kind: str, change: str, stay: str) -> None:
    start = dt.datetime(2024, 3, 1, 8, 0, tzinfo=dt.UTC)
    event = HospitalStayEvent.model_validate(
        {
            "kind": kind,
            "change": change,
            "stay": stay,
            "citizen": {"cpr": "2509479989", "name": {"family": "Elmer", "given": ["Bruno"]}},
            "hospital_unit": {"name": "Hjerteafdelingen", "sor": "265161000016000", "gln": "5790000209354"},
            "receiver": {"name": "Plejecenter Herlev", "sor": "953741000016009", "gln": "5790001348120"},
            "episode_of_care": [
                {"system": "https://sor2.sum.dsdn.dk/#id=265161000016000", "value": str(uuid.uuid4())}
            ],
            "stay_start": start,
            "stay_end": start + dt.timedelta(days=3) if kind in ("discharged", "died") else None,
            "leave_start": start + dt.timedelta(days=1) if kind in ("on-leave", "back-from-leave") else None,
            "leave_end": start + dt.timedelta(days=2) if kind == "back-from-leave" else None,
            "ongoing_activity": "admit-inpatient" if kind == "died" else None,
            "status_before_death": "in-progress" if kind == "died" and change == "cancellation" else None,
        }
    )
    ids = iter(str(uuid.UUID(int=i)) for i in range(1, 10))
    message = build_hospital_notification(event, new_id=lambda: next(ids), now=lambda: start)
    Bundle.model_validate(message)
    assert_profile_valid(message)
    assert message["id"] == str(uuid.UUID(int=1))
    assert classify(message, previously_deceased=kind == "died" and change != "new") == event.code
