"""MedCom CareCommunication (korrespondancemeddelelse): municipal correspondence <-> FHIR message.

A CareCommunication is a Communication whose payloads are the message segments: text paragraphs (with
date, segment identifier, author PractitionerRole and the author's phone) and attachments. Replies and
forwards repeat earlier segments; each message in the thread has a Provenance that names the segments it
added (entity role ``source``) and the MessageHeader it answers (role ``revision``). The earlier
Provenances travel along, so the whole chain can be rebuilt by the receiver.

:func:`to_correspondence` and :func:`build_care_communication` are inverse: a correspondence built into a
message and read back is the same correspondence. :func:`reply` and :func:`forward` make the next message
of a thread from a received one, following MedCom's governance (a reply keeps the communication
identifier and omits earlier attachment data; a forward starts a new thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from bridge.medcom.common import (
    ACT_CODE,
    DEFAULT_BASE_URL,
    EVENT_CODES,
    MEDCOM,
    TERMINOLOGY,
    Clock,
    IdSource,
    Located,
    MessageView,
    Organizations,
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
from bridge.municipal.correspondence import (
    KIND_ACTIVITY,
    Attachment,
    Author,
    Correspondence,
    HospitalContact,
    Paragraph,
    Segment,
    ThreadMessage,
)
from bridge.municipal.events import EpisodeOfCareId, MessageMeta, Party
from bridge.municipal.model import PersonName

EVENT = "care-communication-message"
_CC = f"{MEDCOM}/carecommunication/StructureDefinition"
_CORE = f"{MEDCOM}/core/StructureDefinition"
PROFILE_MESSAGE = f"{_CC}/medcom-careCommunication-message"
PROFILE_HEADER = f"{_CC}/medcom-careCommunication-messageHeader"
PROFILE_COMMUNICATION = f"{_CC}/medcom-careCommunication-communication"
PROFILE_PROVENANCE = f"{_CC}/medcom-careCommunication-provenance"
PROFILE_PRACTITIONER_ROLE = f"{_CORE}/medcom-core-practitionerrole"
PROFILE_PRACTITIONER = f"{_CORE}/medcom-core-practitioner"
PROFILE_ENCOUNTER = f"{_CORE}/medcom-core-encounter"
DATETIME_EXTENSION = f"{_CORE}/medcom-core-datetime-extension"
IDENTIFIER_EXTENSION = f"{_CORE}/medcom-core-identifier-extension"
PRACTITIONER_EXTENSION = f"{_CORE}/medcom-core-practitioner-extension"
CONTACT_EXTENSION = f"{_CORE}/medcom-core-contact-extension"
CATEGORY_CODES = f"{TERMINOLOGY}/medcom-careCommunication-categoryCodes"
PRIORITY_CODES = "http://hl7.org/fhir/request-priority"
#: MessageHeader.definition of CareCommunication 5.0 (constraint medcom-carecommunication-definition-url).
DEFINITION = "http://medcomfhir.dk/ig/messagedefinitions/MessageDefinition/MedComCareCommunicationMessageDefinition|5.0"
_KIND_OF_ACTIVITY: dict[str, str] = {v: k for k, v in KIND_ACTIVITY.items()}


# ------------------------------------------------------------------------------------------------ build
class _Authors:
    """PractitionerRole + Practitioner resources, one pair per distinct author."""

    def __init__(self, header_id: str) -> None:
        self._header_id = header_id
        self._roles: dict[str, dict[str, Any]] = {}
        self.resources: list[dict[str, Any]] = []

    def add(self, author: Author) -> dict[str, Any]:
        key = author.model_dump_json()
        role = self._roles.get(key)
        if role is None:
            practitioner_id = derived_id(self._header_id, "Practitioner", key)
            name: dict[str, Any] = {"family": author.name.family}
            if author.name.given:
                name["given"] = list(author.name.given)
            practitioner = {
                "resourceType": "Practitioner",
                "id": practitioner_id,
                "meta": {"profile": [PROFILE_PRACTITIONER]},
                "name": [name],
            }
            code: dict[str, Any] = (
                {"coding": [coding(author.role_system, author.role)]}
                if author.role_system is not None
                else {"text": author.role}
            )
            role = {
                "resourceType": "PractitionerRole",
                "id": derived_id(self._header_id, "PractitionerRole", key),
                "meta": {"profile": [PROFILE_PRACTITIONER_ROLE]},
                "practitioner": ref(practitioner),
                "code": [code],
            }
            self._roles[key] = role
            self.resources += [role, practitioner]
        return role


def _payload(segment: Segment, orgs: Organizations, authors: _Authors) -> dict[str, Any]:
    extensions: list[dict[str, Any]] = [
        {"url": DATETIME_EXTENSION, "valueDateTime": fhir_datetime(segment.time)},
        {
            "url": IDENTIFIER_EXTENSION,
            "valueIdentifier": {"value": segment.id, "assigner": ref(orgs.add(segment.organization))},
        },
    ]
    if segment.author is not None:
        extensions.append({"url": PRACTITIONER_EXTENSION, "valueReference": ref(authors.add(segment.author))})
    if segment.contact is not None:
        extensions.append(
            {"url": CONTACT_EXTENSION, "valueContactPoint": {"system": "phone", "value": segment.contact}}
        )
    payload: dict[str, Any] = {"extension": extensions}
    if isinstance(segment, Paragraph):
        payload["contentString"] = segment.text
        return payload
    attachment: dict[str, Any] = {}
    if segment.content_type is not None:
        attachment["contentType"] = segment.content_type
    if segment.data is not None:
        attachment["data"] = segment.data
    if segment.url is not None:
        attachment["url"] = segment.url
    attachment["title"] = segment.title
    if segment.creation is not None:
        attachment["creation"] = fhir_datetime(segment.creation)
    payload["contentAttachment"] = attachment
    return payload


def _entities(segment_ids: Sequence[str], previous: str | None, by_identifier: bool) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = [
        {"role": "source", "what": {"identifier": {"value": i}}} for i in segment_ids
    ]
    if previous is not None:
        what = (
            {"identifier": {"value": previous}}
            if by_identifier
            else {"reference": f"MessageHeader/{previous}"}
        )
        entities.append({"role": "revision", "what": what})
    return entities


def build_care_communication(
    corr: Correspondence,
    *,
    new_id: IdSource = new_uuid,
    now: Clock | None = None,
    base_url: str = DEFAULT_BASE_URL,
) -> dict[str, Any]:
    """Build a CareCommunication message (FHIR JSON) from a municipal correspondence.

    Ids and times come from ``corr.message``; when it is absent, new ones come from ``new_id`` and
    ``now``. Every earlier message of the thread (``corr.earlier``) is repeated as a Provenance.
    """
    meta = corr.message
    if meta is None:
        stamp = (now or utc_now)()
        meta = MessageMeta(
            bundle_id=new_id(), header_id=new_id(), timestamp=stamp, sent=stamp, provenance_id=new_id()
        )
    hid = meta.header_id
    orgs = Organizations(hid)
    sender = orgs.add(corr.sender)
    receiver = orgs.add(corr.receiver)
    authors = _Authors(hid)
    patient = patient_resource(corr.citizen, derived_id(hid, "Patient"))
    communication: dict[str, Any] = {
        "resourceType": "Communication",
        "id": derived_id(hid, "Communication"),
        "meta": {"profile": [PROFILE_COMMUNICATION]},
        "identifier": [{"value": corr.thread_id}],
        "status": "unknown",
        "category": [{"coding": [coding(CATEGORY_CODES, corr.category)]}],
    }
    if corr.priority is not None:
        communication["priority"] = corr.priority
    communication["subject"] = ref(patient)
    if corr.topic is not None:
        communication["topic"] = {"text": corr.topic}
    encounter: dict[str, Any] | None = None
    if corr.hospital_contact is not None:
        contact = corr.hospital_contact
        encounter = {
            "resourceType": "Encounter",
            "id": derived_id(hid, "Encounter"),
            "meta": {"profile": [PROFILE_ENCOUNTER]},
            "status": contact.status,
            "class": coding(ACT_CODE, contact.stay),
            "subject": ref(patient),
            "episodeOfCare": [
                {"identifier": {"system": e.system, "value": e.value}} for e in contact.episode_of_care
            ],
        }
        communication["encounter"] = ref(encounter)
    communication["payload"] = [_payload(s, orgs, authors) for s in corr.segments]
    header = {
        "resourceType": "MessageHeader",
        "id": hid,
        "meta": {"profile": [PROFILE_HEADER]},
        "eventCoding": coding(EVENT_CODES, EVENT),
        "destination": [destination(receiver, meta.destination_endpoint or sor_endpoint(corr.receiver.sor))],
        "sender": ref(sender),
        "source": {"endpoint": meta.source_endpoint or sor_endpoint(corr.sender.sor) or "urn:unknown"},
        "focus": [ref(communication)],
        "definition": DEFINITION,
    }
    provenances = [
        provenance_resource(
            link.provenance_id or derived_id(hid, "Provenance", link.message_id),
            header_id=link.message_id,
            activity=link.activity,
            occurred=link.occurred,
            recorded=link.recorded,
            agent_org=orgs.add(link.sender),
            entities=_entities(link.segment_ids, link.previous_message_id, link.previous_by_identifier),
            profile=PROFILE_PROVENANCE,
        )
        for link in corr.earlier
    ]
    provenances.append(
        provenance_resource(
            meta.provenance_id,
            header_id=hid,
            activity=KIND_ACTIVITY[corr.kind],
            occurred=meta.sent,
            recorded=meta.recorded,
            agent_org=sender,
            entities=_entities(
                corr.new_segment_ids or [], corr.previous_message_id, corr.previous_by_identifier
            ),
            profile=PROFILE_PROVENANCE,
        )
    )
    resources = [header, patient, communication]
    if encounter is not None:
        resources.append(encounter)
    resources += [*authors.resources, *orgs.resources(), *provenances]
    return {
        "resourceType": "Bundle",
        "id": meta.bundle_id,
        "meta": {"profile": [PROFILE_MESSAGE]},
        "type": "message",
        "timestamp": fhir_datetime(meta.timestamp),
        "entry": [entry(r, base_url) for r in resources],
    }


# ------------------------------------------------------------------------------------------------ read
def _extensions(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        e["url"]: e
        for e in node.get("extension") or []
        if isinstance(e, dict) and isinstance(e.get("url"), str)
    }


def _author(view: MessageView, reference: Any, path: str) -> Author | None:
    role = view.resolve(reference, path, "PractitionerRole")
    if role is None:
        return None
    codes = (role.resource.get("code") or [{}])[0]
    codings = codes.get("coding") or []
    role_code, role_system = (
        (codings[0].get("code"), codings[0].get("system")) if codings else (codes.get("text"), None)
    )
    practitioner = view.resolve(
        role.resource.get("practitioner"), f"{role.path}.practitioner", "Practitioner"
    )
    if practitioner is None:
        return None
    name = (practitioner.resource.get("name") or [{}])[0]
    try:
        return Author(
            name=PersonName(given=list(name.get("given") or []), family=name.get("family") or ""),
            role=role_code or "",
            role_system=role_system,
        )
    except ValidationError as exc:
        view.problems.pydantic(exc, role.path)
        return None


def _segment(view: MessageView, payload: dict[str, Any], path: str) -> Segment | None:
    ext = _extensions(payload)
    problems = view.problems
    ident = (ext.get(IDENTIFIER_EXTENSION) or {}).get("valueIdentifier") or {}
    if not ident.get("value"):
        problems.add(
            "a payload needs its segment identifier (identifier extension)", f"{path}.extension", "required"
        )
        return None
    organization = read_party(
        view, ident.get("assigner"), f"{path}.extension('{IDENTIFIER_EXTENSION}').assigner"
    )
    time = parse_datetime(
        (ext.get(DATETIME_EXTENSION) or {}).get("valueDateTime"),
        f"{path}.extension('{DATETIME_EXTENSION}')",
        problems,
    )
    author = None
    if PRACTITIONER_EXTENSION in ext:
        author = _author(view, ext[PRACTITIONER_EXTENSION].get("valueReference"), f"{path}.extension")
    contact = ((ext.get(CONTACT_EXTENSION) or {}).get("valueContactPoint") or {}).get("value")
    common: dict[str, Any] = {
        "id": ident["value"],
        "time": time,
        "organization": organization,
        "author": author,
        "contact": contact,
    }
    try:
        if "contentString" in payload:
            return Paragraph(text=payload["contentString"], **common)
        att = payload.get("contentAttachment")
        if not isinstance(att, dict):
            problems.add(
                "a payload holds contentString or contentAttachment", f"{path}.content[x]", "required"
            )
            return None
        creation = parse_datetime(
            att.get("creation"), f"{path}.contentAttachment.creation", problems, required=False
        )
        return Attachment(
            title=att.get("title"),
            content_type=att.get("contentType"),
            data=att.get("data"),
            url=att.get("url"),
            creation=creation,
            **common,
        )
    except ValidationError as exc:
        problems.pydantic(exc, path)
        return None


def _sources(prov: dict[str, Any]) -> list[str]:
    return [
        e["what"]["identifier"]["value"]
        for e in prov.get("entity") or []
        if isinstance(e, dict)
        and e.get("role") == "source"
        and isinstance(((e.get("what") or {}).get("identifier") or {}).get("value"), str)
    ]


def _thread_message(
    view: MessageView, located: Located, activity: str | None, occurred: Any, recorded: Any
) -> ThreadMessage | None:
    prov = located.resource
    agent = (prov.get("agent") or [{}])[0]
    sender = read_party(view, agent.get("who"), f"{located.path}.agent[0].who")
    previous, _, by_identifier = revision_of(prov)
    try:
        return ThreadMessage(
            message_id=next(
                iter(t.get("reference", "").rsplit("/", 1)[-1] for t in prov.get("target") or [])
            ),
            activity=activity,
            occurred=occurred,
            recorded=None if recorded == occurred else recorded,
            sender=sender,
            previous_message_id=previous,
            previous_by_identifier=by_identifier,
            segment_ids=_sources(prov),
            provenance_id=prov.get("id"),
        )
    except ValidationError as exc:
        view.problems.pydantic(exc, located.path)
        return None


def to_correspondence(bundle: Any) -> Correspondence:
    """Translate a CareCommunication message into a municipal correspondence (raises InvalidMessage)."""
    view = read_message(bundle, EVENT)
    problems = view.problems
    header = view.header.resource
    found = view.resolve((header.get("focus") or [None])[0], f"{view.header.path}.focus[0]", "Communication")
    if found is None:
        problems.raise_now()
    comm, path = found.resource, found.path
    thread_id = ((comm.get("identifier") or [{}])[0]).get("value")
    category = (((comm.get("category") or [{}])[0]).get("coding") or [{}])[0].get("code")
    citizen = read_citizen(view, comm.get("subject"), f"{path}.subject")
    sender = read_party(view, header.get("sender"), f"{view.header.path}.sender")
    dest = primary_destination(view)
    receiver = read_party(view, dest[0].get("receiver"), f"{dest[1]}.receiver") if dest else None
    segments = [
        s
        for i, p in enumerate(comm.get("payload") or [])
        if (s := _segment(view, p, f"{path}.payload[{i}]")) is not None
    ]
    contact = None
    if comm.get("encounter") is not None:
        enc = view.resolve(comm["encounter"], f"{path}.encounter", "Encounter")
        if enc is not None:
            episodes = [
                EpisodeOfCareId(
                    system=e["identifier"].get("system", ""), value=e["identifier"].get("value", "")
                )
                for e in enc.resource.get("episodeOfCare") or []
                if isinstance(e, dict) and isinstance(e.get("identifier"), dict)
            ]
            try:
                contact = HospitalContact(
                    status=enc.resource.get("status"),
                    stay=(enc.resource.get("class") or {}).get("code"),
                    episode_of_care=episodes,
                )
            except ValidationError as exc:
                problems.pydantic(exc, enc.path)
    current, earlier_views = read_provenances(view)
    earlier = [
        t
        for pv in earlier_views
        if (t := _thread_message(view, pv.located, pv.activity, pv.occurred, pv.recorded)) is not None
    ]
    kind = _KIND_OF_ACTIVITY.get(current.activity or "") if current else None
    if current is not None and kind is None:
        problems.add(
            f"Provenance.activity {current.activity!r} is no CareCommunication activity",
            f"{current.located.path}.activity",
            "code-invalid",
        )
    problems.raise_if_any()
    assert current is not None and current.occurred is not None
    previous, _, by_identifier = revision_of(current.located.resource)
    source_endpoint = (header.get("source") or {}).get("endpoint")
    dest_endpoint = dest[0].get("endpoint") if dest else None
    try:
        return Correspondence(
            kind=kind,
            thread_id=thread_id,
            category=category,
            topic=(comm.get("topic") or {}).get("text"),
            priority=comm.get("priority"),
            citizen=citizen,
            sender=sender,
            receiver=receiver,
            segments=segments,
            previous_message_id=previous,
            previous_by_identifier=by_identifier,
            hospital_contact=contact,
            earlier=earlier,
            new_segment_ids=_sources(current.located.resource),
            message=MessageMeta(
                bundle_id=view.bundle_id,
                header_id=view.header_id,
                timestamp=parse_datetime(view.bundle["timestamp"], "Bundle.timestamp", problems),
                sent=current.occurred,
                recorded=None if current.recorded == current.occurred else current.recorded,
                provenance_id=current.located.resource.get("id"),
                source_endpoint=None
                if sender is None or source_endpoint == sor_endpoint(sender.sor)
                else source_endpoint,
                destination_endpoint=None
                if receiver is None or dest_endpoint == sor_endpoint(receiver.sor)
                else dest_endpoint,
            ),
        )
    except ValidationError as exc:
        problems.pydantic(exc, path)
        problems.raise_now()


# ------------------------------------------------------------------------------------------------ threads
def _as_thread_message(corr: Correspondence) -> ThreadMessage:
    if corr.message is None:
        raise ValueError("only a sent or received correspondence (with message ids) can be answered")
    return ThreadMessage(
        message_id=corr.message.header_id,
        activity=KIND_ACTIVITY[corr.kind],
        occurred=corr.message.sent,
        recorded=corr.message.recorded,
        sender=corr.sender,
        previous_message_id=corr.previous_message_id,
        previous_by_identifier=corr.previous_by_identifier,
        segment_ids=list(corr.new_segment_ids or []),
        provenance_id=corr.message.provenance_id,
    )


def _without_data(segments: Sequence[Segment]) -> list[Segment]:
    # medcom-carecommunication-6: repeated attachments keep identifier, time, title and author, not data.
    return [s.model_copy(update={"data": None}) if isinstance(s, Attachment) else s for s in segments]


def reply(
    received: Correspondence, new_segments: Sequence[Segment], *, message: MessageMeta | None = None
) -> Correspondence:
    """The reply to a received (or sent) correspondence: same thread, sender and receiver swapped."""
    return Correspondence(
        kind="reply",
        thread_id=received.thread_id,
        category=received.category,
        topic=received.topic,
        priority=received.priority,
        citizen=received.citizen,
        sender=received.receiver,
        receiver=received.sender,
        segments=[*_without_data(received.segments), *new_segments],
        previous_message_id=_as_thread_message(received).message_id,
        hospital_contact=received.hospital_contact,
        earlier=[*received.earlier, _as_thread_message(received)],
        new_segment_ids=[s.id for s in new_segments],
        message=message,
    )


def forward(
    received: Correspondence,
    new_segments: Sequence[Segment],
    *,
    sender: Party,
    receiver: Party,
    thread_id: str,
    message: MessageMeta | None = None,
) -> Correspondence:
    """Forward a correspondence with all its segments to a new receiver, as a new thread."""
    return Correspondence(
        kind="forward",
        thread_id=thread_id,
        category=received.category,
        topic=received.topic,
        priority=received.priority,
        citizen=received.citizen,
        sender=sender,
        receiver=receiver,
        segments=[*received.segments, *new_segments],
        previous_message_id=_as_thread_message(received).message_id,
        hospital_contact=received.hospital_contact,
        earlier=[*received.earlier, _as_thread_message(received)],
        new_segment_ids=[s.id for s in new_segments],
        message=message,
    )


__all__ = ["EVENT", "build_care_communication", "forward", "reply", "to_correspondence"]
