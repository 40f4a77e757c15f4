"""MedCom HospitalNotification (advis om sygehusophold): classify, read into events, build.

The use case of a notification follows from four elements (MedCom's "Overview of Hospital Notification
codes and HL7 FHIR resources"): Encounter.class (IMP inpatient / EMER acute ambulant), Encounter.status,
the activity of the message's own Provenance, and Patient.deceased:

====== ======== ============================ ===========================================
code   class    Encounter.status             Provenance.activity
====== ======== ============================ ===========================================
STAA   EMER     in-progress                  admit-emergency (RE_: revise-, AN_: cancel-,
                                             AN_ status cancelled/entered-in-error)
STIN   IMP      in-progress                  admit-inpatient (RE_/AN_ as STAA)
STOR   IMP      onleave                      start-leave-inpatient (AN_STOR: in-progress)
SLOR   IMP      in-progress                  end-leave-inpatient (AN_SLOR: onleave)
SLHJ   EMER/IMP finished                     discharge-[class]-home (AN_SLHJ: in-progress)
MORS   EMER/IMP finished, deceased = true    the activity of the ongoing stay
====== ======== ============================ ===========================================

A death correction (RE_MORS) looks like MORS, and a death cancellation (AN_MORS) carries the
previous status and activity with deceased = false: telling them apart needs to know that a death was
notified before, which the caller passes as ``previously_deceased``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from bridge.medcom.common import (
    ACT_CODE,
    DEFAULT_BASE_URL,
    EVENT_CODES,
    Clock,
    IdSource,
    MessageView,
    Organizations,
    ProvenanceView,
    coding,
    derived_id,
    destination,
    entry,
    fhir_datetime,
    new_uuid,
    parse_datetime,
    patient_resource,
    primary_destination,
    provenance_resource,
    read_citizen,
    read_message,
    read_party,
    read_provenances,
    ref,
    revision_of,
    sor_endpoint,
    utc_now,
)
from bridge.municipal.events import (
    EpisodeOfCareId,
    HospitalStayEvent,
    MessageMeta,
    NotificationRecord,
    Party,
)

EVENT = "hospital-notification-message"
_HN = "http://medcomfhir.dk/ig/hospitalnotification/StructureDefinition"
PROFILE_MESSAGE = f"{_HN}/medcom-hospitalNotification-message"
PROFILE_HEADER = f"{_HN}/medcom-hospitalNotification-messageHeader"
PROFILE_ENCOUNTER = f"{_HN}/medcom-hospitalNotification-encounter"
LEAVE_PERIOD_EXTENSION = f"{_HN}/medcom-hospitalnotifiation-leave-period-extension"
REPORT_OF_ADMISSION_EXTENSION = f"{_HN}/medcom-messaging-reportOfAdmissionExtension"
REPORT_OF_ADMISSION_RECIPIENT_EXTENSION = f"{_HN}/medcom-messaging-reportOfAdmissionRecipientExtension"

_CLASS_OF_STAY = {"inpatient": "IMP", "acute-ambulant": "EMER"}
_STAY_OF_CLASS = {v: k for k, v in _CLASS_OF_STAY.items()}


@dataclass(frozen=True, slots=True)
class UseCase:
    """One row of MedCom's table: a use case code and what the message must say."""

    code: str
    classes: frozenset[str]
    statuses: tuple[str, ...]  # the first one is what the bridge writes
    activity: str


def _rows() -> dict[str, UseCase]:
    rows: list[UseCase] = []
    imp, emer = frozenset({"IMP"}), frozenset({"EMER"})
    cancelled = ("entered-in-error", "cancelled")
    for base, classes, activity in (("STAA", emer, "admit-emergency"), ("STIN", imp, "admit-inpatient")):
        rows += [
            UseCase(base, classes, ("in-progress",), activity),
            UseCase(f"RE_{base}", classes, ("in-progress",), f"revise-{activity}"),
            UseCase(f"AN_{base}", classes, cancelled, f"cancel-{activity}"),
        ]
    rows += [
        UseCase("STOR", imp, ("onleave",), "start-leave-inpatient"),
        UseCase("RE_STOR", imp, ("onleave",), "revise-start-leave-inpatient"),
        UseCase("AN_STOR", imp, ("in-progress",), "cancel-start-leave-inpatient"),
        UseCase("SLOR", imp, ("in-progress",), "end-leave-inpatient"),
        UseCase("RE_SLOR", imp, ("in-progress",), "revise-end-leave-inpatient"),
        UseCase("AN_SLOR", imp, ("onleave",), "cancel-end-leave-inpatient"),
    ]
    for klass in ("inpatient", "emergency"):
        classes = imp if klass == "inpatient" else emer
        rows += [
            UseCase("SLHJ", classes, ("finished",), f"discharge-{klass}-home"),
            UseCase("RE_SLHJ", classes, ("finished",), f"revise-discharge-{klass}-home"),
            UseCase("AN_SLHJ", classes, ("in-progress",), f"cancel-discharge-{klass}-home"),
        ]
    return {row.activity: row for row in rows}


#: Provenance.activity -> use case (all rows but the MORS family, whose activity is the ongoing one).
USE_CASES: dict[str, UseCase] = _rows()
#: Every use case code the bridge knows.
CODES: tuple[str, ...] = (
    *dict.fromkeys(row.code for row in USE_CASES.values()),
    "MORS",
    "RE_MORS",
    "AN_MORS",
)
_KIND_OF_BASE = {
    "STIN": "admitted",
    "STAA": "admitted",
    "STOR": "on-leave",
    "SLOR": "back-from-leave",
    "SLHJ": "discharged",
    "MORS": "died",
}


@dataclass(frozen=True, slots=True)
class _Facts:
    """What classification reads from a message."""

    klass: str | None
    status: str | None
    deceased: bool
    current: ProvenanceView | None
    encounter_path: str


def _facts(view: MessageView) -> _Facts:
    focus = (view.header.resource.get("focus") or [None])[0]
    found = view.resolve(focus, f"{view.header.path}.focus[0]", "Encounter")
    encounter = found.resource if found else {}
    enc_path = found.path if found else "Bundle.entry.resource.ofType(Encounter)"
    klass = (encounter.get("class") or {}).get("code")
    patients = list(view.all("Patient"))
    if len(patients) != 1:
        view.problems.add(
            "a HospitalNotification holds exactly one Patient (medcom-hospitalNotification-2)",
            "Bundle.entry.resource.ofType(Patient)",
            "invariant",
        )
    patient = patients[0].resource if patients else {}
    deceased = patient.get("deceasedBoolean") is True or patient.get("deceasedDateTime") is not None
    current, _ = read_provenances(view)
    return _Facts(klass, encounter.get("status"), deceased, current, enc_path)


def _classify(view: MessageView, facts: _Facts, previously_deceased: bool) -> str:
    problems = view.problems
    if facts.klass not in ("IMP", "EMER"):
        problems.add("Encounter.class must be IMP or EMER", f"{facts.encounter_path}.class", "code-invalid")
    activity = facts.current.activity if facts.current else None
    act_path = f"{facts.current.located.path}.activity" if facts.current else "Provenance.activity"
    if facts.deceased:
        if facts.status != "finished":
            problems.add(
                "a deceased patient's Encounter.status must be 'finished' (MORS)",
                f"{facts.encounter_path}.status",
                "business-rule",
            )
        if activity is not None and activity.startswith("cancel-"):
            problems.add(
                "a death notification carries the activity of the ongoing stay", act_path, "business-rule"
            )
        problems.raise_if_any()
        return "RE_MORS" if previously_deceased else "MORS"
    if previously_deceased:
        # AN_MORS: the previous status and the ongoing activity come back, deceased is false.
        problems.raise_if_any()
        return "AN_MORS"
    row = USE_CASES.get(activity or "")
    if row is None:
        problems.add(
            f"Provenance.activity {activity!r} is no HospitalNotification activity", act_path, "code-invalid"
        )
        problems.raise_now()
    if facts.klass is not None and facts.klass not in row.classes:
        problems.add(
            f"{row.code} ({row.activity}) needs Encounter.class "
            f"{'/'.join(sorted(row.classes))}, not {facts.klass}",
            f"{facts.encounter_path}.class",
            "business-rule",
        )
    if facts.status not in row.statuses:
        problems.add(
            f"{row.code} ({row.activity}) needs Encounter.status "
            f"{' or '.join(row.statuses)}, not {facts.status!r}",
            f"{facts.encounter_path}.status",
            "business-rule",
        )
    problems.raise_if_any()
    return row.code


def classify(bundle: Any, *, previously_deceased: bool = False) -> str:
    """The MedCom use case code of a HospitalNotification, e.g. ``"STIN"`` or ``"RE_STIN"``.

    ``previously_deceased`` says that a death (MORS) was already notified for this stay: a message with
    the patient still deceased is then RE_MORS, one without is AN_MORS. Raises InvalidMessage naming
    each element that contradicts MedCom's table.
    """
    view = read_message(bundle, EVENT)
    facts = _facts(view)
    return _classify(view, facts, previously_deceased)


def _record(view: MessageView, pv: ProvenanceView) -> NotificationRecord | None:
    previous, role, _ = revision_of(pv.located.resource)
    try:
        return NotificationRecord(
            message_id=pv.target_id or "",
            activity=pv.activity,
            occurred=pv.occurred,
            recorded=None if pv.recorded == pv.occurred else pv.recorded,
            previous_message_id=previous,
            previous_role=role,
            provenance_id=pv.located.resource.get("id"),
        )
    except ValidationError as exc:
        view.problems.pydantic(exc, pv.located.path)
        return None


@dataclass(frozen=True, slots=True)
class StayChange:
    """What a HospitalNotification tells about the citizen's stay, read without building the whole
    municipal event: the notification code, the encounter status a cancelled death restores, and when
    the notification was sent (its own Provenance). Enough for the admission state the bridge keeps
    (``bridge.routing.rules.admission_from_change``)."""

    code: str
    status_before_death: str | None
    sent: datetime


def stay_change(bundle: Any, *, previously_deceased: bool = False) -> StayChange:
    """The ``StayChange`` of a HospitalNotification (raises InvalidMessage as ``to_event`` does for
    the parts it reads). A message for FHIR receivers only needs this, not ``to_event``."""
    view = read_message(bundle, EVENT)
    code = _classify(view, _facts(view), previously_deceased)
    header = view.header.resource
    encounter = view.resolve((header.get("focus") or [None])[0], f"{view.header.path}.focus[0]", "Encounter")
    assert encounter is not None  # _classify raised otherwise
    current, _ = read_provenances(view)
    view.problems.raise_if_any()
    assert current is not None and current.occurred is not None
    status = encounter.resource.get("status") if code == "AN_MORS" else None
    return StayChange(code, status, current.occurred)


def to_event(bundle: Any, *, previously_deceased: bool = False) -> HospitalStayEvent:
    """Translate a HospitalNotification into a municipal hospital stay event (raises InvalidMessage)."""
    view = read_message(bundle, EVENT)
    facts = _facts(view)
    code = _classify(view, facts, previously_deceased)
    problems = view.problems
    header = view.header.resource
    encounter = view.resolve((header.get("focus") or [None])[0], f"{view.header.path}.focus[0]", "Encounter")
    assert encounter is not None  # _classify raised otherwise
    enc, enc_path = encounter.resource, encounter.path
    base = code.removeprefix("RE_").removeprefix("AN_")
    change = "correction" if code.startswith("RE_") else "cancellation" if code.startswith("AN_") else "new"
    citizen = read_citizen(view, enc.get("subject"), f"{enc_path}.subject")
    unit = read_party(view, enc.get("serviceProvider"), f"{enc_path}.serviceProvider")
    sender = read_party(view, header.get("sender"), f"{view.header.path}.sender")
    dest = primary_destination(view)
    receiver = read_party(view, dest[0].get("receiver"), f"{dest[1]}.receiver") if dest else None
    episodes = []
    for i, eoc in enumerate(enc.get("episodeOfCare") or []):
        identifier = eoc.get("identifier") if isinstance(eoc, dict) else None
        if not isinstance(identifier, dict) or not identifier.get("system") or not identifier.get("value"):
            problems.add(
                "episodeOfCare needs an identifier with system and value", f"{enc_path}.episodeOfCare[{i}]"
            )
            continue
        episodes.append(EpisodeOfCareId(system=identifier["system"], value=identifier["value"]))
    period = enc.get("period") or {}
    stay_start = parse_datetime(period.get("start"), f"{enc_path}.period.start", problems)
    stay_end = parse_datetime(period.get("end"), f"{enc_path}.period.end", problems, required=False)
    leave: dict[str, Any] = {}
    for ext in enc.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == LEAVE_PERIOD_EXTENSION:
            leave = ext.get("valuePeriod") or {}
    leave_path = f"{enc_path}.extension('{LEAVE_PERIOD_EXTENSION}').valuePeriod"
    leave_start = parse_datetime(leave.get("start"), f"{leave_path}.start", problems, required=False)
    leave_end = parse_datetime(leave.get("end"), f"{leave_path}.end", problems, required=False)
    roa: bool | None = None
    roa_recipient: Party | None = None
    for ext in header.get("extension") or []:
        if not isinstance(ext, dict):
            continue
        if ext.get("url") == REPORT_OF_ADMISSION_EXTENSION:
            roa = ext.get("valueBoolean")
        elif ext.get("url") == REPORT_OF_ADMISSION_RECIPIENT_EXTENSION:
            roa_recipient = read_party(view, ext.get("valueReference"), f"{view.header.path}.extension")
    current, earlier_views = read_provenances(view)
    earlier = [r for pv in earlier_views if (r := _record(view, pv)) is not None]
    problems.raise_if_any()
    assert current is not None and current.occurred is not None
    previous, _, _ = revision_of(current.located.resource)
    source_endpoint = (header.get("source") or {}).get("endpoint")
    dest_endpoint = dest[0].get("endpoint") if dest else None
    try:
        return HospitalStayEvent(
            kind=_KIND_OF_BASE[base],
            change=change,
            stay=_STAY_OF_CLASS[facts.klass or ""],
            code=code,
            citizen=citizen,
            hospital_unit=unit,
            sender=None if sender == unit else sender,
            receiver=receiver,
            episode_of_care=episodes,
            stay_start=stay_start,
            stay_end=stay_end,
            leave_start=leave_start,
            leave_end=leave_end,
            ongoing_activity=current.activity if base == "MORS" else None,
            status_before_death=enc.get("status") if code == "AN_MORS" else None,
            report_of_admission=roa,
            report_of_admission_recipient=roa_recipient,
            previous_message_id=previous,
            earlier=earlier,
            message=MessageMeta(
                bundle_id=view.bundle_id,
                header_id=view.header_id,
                timestamp=parse_datetime(view.bundle["timestamp"], "Bundle.timestamp", problems),
                sent=current.occurred,
                recorded=None if current.recorded == current.occurred else current.recorded,
                provenance_id=current.located.resource.get("id"),
                source_endpoint=None
                if source_endpoint == sor_endpoint(sender.sor if sender else None)
                else source_endpoint,
                destination_endpoint=None
                if dest_endpoint == sor_endpoint(receiver.sor if receiver else None)
                else dest_endpoint,
            ),
        )
    except ValidationError as exc:
        problems.pydantic(exc, "Bundle")
        problems.raise_now()


def _status_and_activity(event: HospitalStayEvent) -> tuple[str, str]:
    code = event.code or ""
    if event.kind == "died":
        status = event.status_before_death if event.change == "cancellation" else "finished"
        return str(status), str(event.ongoing_activity)
    klass = _CLASS_OF_STAY[event.stay]
    for row in USE_CASES.values():
        if row.code == code and klass in row.classes:
            return row.statuses[0], row.activity
    raise AssertionError(f"no MedCom table row for {code} {klass}")  # the model forbids this


def build_hospital_notification(
    event: HospitalStayEvent,
    *,
    new_id: IdSource = new_uuid,
    now: Clock | None = None,
    base_url: str = DEFAULT_BASE_URL,
) -> dict[str, Any]:
    """Build a HospitalNotification message (FHIR JSON) from a hospital stay event.

    Ids and times come from ``event.message``; when it is absent, new ones come from ``new_id`` and
    ``now``. Earlier notifications (``event.earlier``) are repeated as Provenances, and the message's own
    Provenance names ``previous_message_id`` with role ``revision`` (``removal`` for a cancellation).
    """
    meta = event.message
    if meta is None:
        stamp = (now or utc_now)()
        meta = MessageMeta(
            bundle_id=new_id(), header_id=new_id(), timestamp=stamp, sent=stamp, provenance_id=new_id()
        )
    hid = meta.header_id
    orgs = Organizations(hid)
    unit = orgs.add(event.hospital_unit)
    sender_party = event.sender or event.hospital_unit
    sender = orgs.add(sender_party)
    receiver = orgs.add(event.receiver)
    status, activity = _status_and_activity(event)
    patient = patient_resource(event.citizen, derived_id(hid, "Patient"))
    if event.kind == "died":
        patient["deceasedBoolean"] = event.change != "cancellation"
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": derived_id(hid, "Encounter"),
        "meta": {"profile": [PROFILE_ENCOUNTER]},
    }
    if event.leave_start is not None:
        leave = {"start": fhir_datetime(event.leave_start)}
        if event.leave_end is not None:
            leave["end"] = fhir_datetime(event.leave_end)
        encounter["extension"] = [{"url": LEAVE_PERIOD_EXTENSION, "valuePeriod": leave}]
    period = {"start": fhir_datetime(event.stay_start)}
    if event.stay_end is not None:
        period["end"] = fhir_datetime(event.stay_end)
    encounter |= {
        "status": status,
        "class": coding(ACT_CODE, _CLASS_OF_STAY[event.stay]),
        "subject": ref(patient),
        "episodeOfCare": [
            {"identifier": {"system": e.system, "value": e.value}} for e in event.episode_of_care
        ],
        "period": period,
        "serviceProvider": ref(unit),
    }
    header: dict[str, Any] = {
        "resourceType": "MessageHeader",
        "id": hid,
        "meta": {"profile": [PROFILE_HEADER]},
    }
    extensions: list[dict[str, Any]] = []
    if event.report_of_admission is not None:
        extensions.append({"url": REPORT_OF_ADMISSION_EXTENSION, "valueBoolean": event.report_of_admission})
    if event.report_of_admission_recipient is not None:
        recipient = orgs.add(event.report_of_admission_recipient)
        extensions.append({"url": REPORT_OF_ADMISSION_RECIPIENT_EXTENSION, "valueReference": ref(recipient)})
    if extensions:
        header["extension"] = extensions
    header |= {
        "eventCoding": coding(EVENT_CODES, EVENT),
        "destination": [destination(receiver, meta.destination_endpoint or sor_endpoint(event.receiver.sor))],
        "sender": ref(sender),
        "source": {"endpoint": meta.source_endpoint or sor_endpoint(sender_party.sor) or "urn:unknown"},
        "focus": [ref(encounter)],
    }
    provenances = []
    for rec in event.earlier:
        entities = None
        if rec.previous_message_id is not None:
            entities = [
                {
                    "role": rec.previous_role or "revision",
                    "what": {"reference": f"MessageHeader/{rec.previous_message_id}"},
                }
            ]
        provenances.append(
            provenance_resource(
                rec.provenance_id or derived_id(hid, "Provenance", rec.message_id),
                header_id=rec.message_id,
                activity=rec.activity,
                occurred=rec.occurred,
                recorded=rec.recorded,
                agent_org=sender,
                entities=entities,
            )
        )
    own_entities = None
    if event.previous_message_id is not None:
        role = "removal" if event.change == "cancellation" else "revision"
        own_entities = [{"role": role, "what": {"reference": f"MessageHeader/{event.previous_message_id}"}}]
    provenances.append(
        provenance_resource(
            meta.provenance_id,
            header_id=hid,
            activity=activity,
            occurred=meta.sent,
            recorded=meta.recorded,
            agent_org=sender,
            entities=own_entities,
        )
    )
    resources = [header, patient, encounter, *orgs.resources(), *provenances]
    return {
        "resourceType": "Bundle",
        "id": meta.bundle_id,
        "meta": {"profile": [PROFILE_MESSAGE]},
        "type": "message",
        "timestamp": fhir_datetime(meta.timestamp),
        "entry": [entry(r, base_url) for r in resources],
    }


__all__ = [
    "CODES",
    "EVENT",
    "USE_CASES",
    "UseCase",
    "build_hospital_notification",
    "classify",
    "to_event",
]
