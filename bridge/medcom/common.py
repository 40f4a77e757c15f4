"""Reading and building MedCom message Bundles: the parts every MedCom message shares.

A MedCom message is a ``Bundle`` of type ``message`` whose first entry is the MessageHeader; the sender
and receivers are Organizations with a SOR id and a GLN/EAN; the primary receiver carries MedCom's
destination-use extension; every message has Provenances (one per message in its history). The
functions here are pure: they read plain FHIR JSON dicts and build new ones. Problems become
:class:`bridge.fhir.outcome.Issue` objects located by a FHIRPath-style path, and are raised together
as one :class:`bridge.errors.InvalidMessage`.

Code systems, extension and profile URLs are MedCom's (medcomfhir.dk IGs: Messaging 4.0, Core,
HospitalNotification 3.0, CareCommunication 5.0, Acknowledgement 2.0, Terminology 2.0).
"""

from __future__ import annotations

import datetime as dt
import html
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from pydantic import ValidationError

from bridge.errors import InvalidMessage
from bridge.fhir import identifiers as ids
from bridge.fhir.outcome import Issue, Outcome, error
from bridge.municipal.events import Party
from bridge.municipal.model import Citizen, PersonName

MEDCOM = "http://medcomfhir.dk/ig"
TERMINOLOGY = f"{MEDCOM}/terminology/CodeSystem"
EVENT_CODES = f"{TERMINOLOGY}/medcom-messaging-eventCodes"
ACTIVITY_CODES = f"{TERMINOLOGY}/medcom-messaging-activityCodes"
DESTINATION_USE = f"{TERMINOLOGY}/medcom-messaging-destinationUse"
DESTINATION_USE_EXTENSION = f"{MEDCOM}/messaging/StructureDefinition/medcom-messaging-destinationUseExtension"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

PROFILE_ORGANIZATION = f"{MEDCOM}/messaging/StructureDefinition/medcom-messaging-organization"
PROFILE_PROVENANCE = f"{MEDCOM}/messaging/StructureDefinition/medcom-messaging-provenance"
PROFILE_PATIENT = f"{MEDCOM}/core/StructureDefinition/medcom-core-patient"
PROFILE_CORE_ORGANIZATION = f"{MEDCOM}/core/StructureDefinition/medcom-core-organization"

#: MedCom addresses a receiver by its SOR id on the SOR endpoint (MessageHeader.destination.endpoint).
SOR_ENDPOINT_PREFIX = "https://sor2.sum.dsdn.dk/#id="
#: Base of the fullUrls the bridge writes; references inside the Bundle are relative (``Type/id``).
DEFAULT_BASE_URL = "https://fhir-bridge.invalid/fhir/"
#: Namespace of the ids the bridge derives for resources inside one message (uuid5 of the header id).
_ID_NAMESPACE = uuid.UUID("6f1d3c8e-2b1a-5c4e-9f0a-4d3b2c1a0e9f")


def new_uuid() -> str:
    """A fresh UUID (version 4) as a string: the default id source at the edge."""
    return str(uuid.uuid4())


def utc_now() -> dt.datetime:
    """The current time in UTC, to the second: the default clock at the edge."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


IdSource = Callable[[], str]
Clock = Callable[[], dt.datetime]


def derived_id(header_id: str, *parts: str) -> str:
    """A stable id for a resource inside a message, derived from the MessageHeader.id (uuid5)."""
    return str(uuid.uuid5(_ID_NAMESPACE, "/".join((header_id, *parts))))


def sor_endpoint(sor: str | None) -> str | None:
    """The SOR endpoint MedCom uses to address an organisation, or None without a SOR id."""
    return None if sor is None else SOR_ENDPOINT_PREFIX + sor


def fhir_datetime(value: dt.datetime) -> str:
    """A FHIR dateTime/instant with its timezone (MedCom requires one)."""
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") and value.utcoffset() == dt.timedelta(0) else text


def coding(system: str, code: str) -> dict[str, Any]:
    return {"system": system, "code": code}


def ref(resource: dict[str, Any]) -> dict[str, str]:
    """A relative reference (``Type/id``) to a resource of the Bundle."""
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


def entry(resource: dict[str, Any], base_url: str = DEFAULT_BASE_URL) -> dict[str, Any]:
    """A Bundle entry whose fullUrl lets relative references resolve inside the Bundle."""
    return {"fullUrl": f"{base_url}{resource['resourceType']}/{resource['id']}", "resource": resource}


def narrative(*lines: str) -> dict[str, str]:
    """A generated narrative (Resource.text) holding ``lines``, escaped."""
    body = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'}


def organization_resource(party: Party, resource_id: str) -> dict[str, Any]:
    """A MedComMessagingOrganization (SOR and GLN), or a MedComCoreOrganization when one is missing."""
    identifier = []
    if party.gln is not None:
        identifier.append({"system": ids.GLN_SYSTEM, "value": party.gln})
    if party.sor is not None:
        identifier.append({"system": ids.SOR_SYSTEM, "value": party.sor})
    messaging = party.sor is not None and party.gln is not None
    org: dict[str, Any] = {
        "resourceType": "Organization",
        "id": resource_id,
        "meta": {"profile": [PROFILE_ORGANIZATION if messaging else PROFILE_CORE_ORGANIZATION]},
        "text": narrative(
            party.name or "Organization",
            *(f"{label}: {value}" for label, value in (("GLN", party.gln), ("SOR", party.sor)) if value),
        ),
        "identifier": identifier,
    }
    if party.name is not None:
        org["name"] = party.name
    return org


class Organizations:
    """Organization resources of one message being built: one resource per distinct party."""

    def __init__(self, header_id: str) -> None:
        self._header_id = header_id
        self._by_party: dict[tuple[str | None, str | None, str | None], dict[str, Any]] = {}

    def add(self, party: Party) -> dict[str, Any]:
        """The resource for ``party`` (created at the first call)."""
        key = (party.sor, party.gln, party.name)
        found = self._by_party.get(key)
        if found is None:
            rid = derived_id(self._header_id, "Organization", *(k or "" for k in key))
            found = self._by_party[key] = organization_resource(party, rid)
        return found

    def resources(self) -> list[dict[str, Any]]:
        return list(self._by_party.values())


def patient_resource(citizen: Citizen, resource_id: str) -> dict[str, Any]:
    """A MedComCorePatient: CPR (or X-eCPR replacement number), official name, deceased when true."""
    replacement = citizen.cpr_kind == "replacement"
    identifier: dict[str, Any] = {
        "system": ids.XECPR_SYSTEM if replacement else ids.CPR_SYSTEM,
        "value": citizen.cpr,
    }
    if replacement:
        identifier = {"use": "temp", **identifier}
    name: dict[str, Any] = {"use": "official", "family": citizen.name.family}
    if citizen.name.given:
        name["given"] = list(citizen.name.given)
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": resource_id,
        "meta": {"profile": [PROFILE_PATIENT]},
        "text": narrative(" ".join([*citizen.name.given, citizen.name.family])),
        "identifier": [identifier],
        "name": [name],
    }
    return patient


def destination(receiver_org: dict[str, Any], endpoint: str | None, use: str = "primary") -> dict[str, Any]:
    """A MessageHeader.destination with MedCom's destination-use extension (primary or cc)."""
    dest: dict[str, Any] = {
        "extension": [{"url": DESTINATION_USE_EXTENSION, "valueCoding": coding(DESTINATION_USE, use)}],
    }
    if endpoint is not None:
        dest["endpoint"] = endpoint
    dest["receiver"] = ref(receiver_org)
    return dest


def provenance_resource(
    resource_id: str,
    *,
    header_id: str,
    activity: str,
    occurred: dt.datetime,
    recorded: dt.datetime | None,
    agent_org: dict[str, Any],
    entities: list[dict[str, Any]] | None = None,
    profile: str = PROFILE_PROVENANCE,
) -> dict[str, Any]:
    """A MedComMessagingProvenance describing the message with MessageHeader ``header_id``."""
    prov: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": resource_id,
        "meta": {"profile": [profile]},
        "target": [{"reference": f"MessageHeader/{header_id}"}],
        "occurredDateTime": fhir_datetime(occurred),
        "recorded": fhir_datetime(recorded or occurred),
        "activity": {"coding": [coding(ACTIVITY_CODES, activity)]},
        "agent": [{"who": ref(agent_org)}],
    }
    if entities:
        prov["entity"] = entities
    return prov


# ------------------------------------------------------------------------------------------------ reading
class Problems:
    """Collects issues while reading a message; ``raise_if_any`` raises them together."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def add(self, diagnostics: str, path: str, code: str = "invalid") -> None:
        self.issues.append(error(diagnostics, path, code=code))  # type: ignore[arg-type]

    def fail(self, diagnostics: str, path: str, code: str = "invalid") -> NoReturn:
        self.add(diagnostics, path, code)
        self.raise_now()

    def raise_now(self) -> NoReturn:
        raise InvalidMessage(Outcome(list(self.issues)))

    def raise_if_any(self) -> None:
        if self.issues:
            self.raise_now()

    def pydantic(self, exc: ValidationError, path: str) -> None:
        """Translate a pydantic error into issues under ``path``."""
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            self.add(err["msg"], f"{path}.{loc}" if loc else path, "value")


@dataclass(slots=True)
class Located:
    """A resource of the Bundle with its FHIRPath-style location."""

    resource: dict[str, Any]
    path: str


@dataclass(slots=True)
class MessageView:
    """An indexed, read-only view of a MedCom message Bundle."""

    bundle: dict[str, Any]
    header: Located
    problems: Problems
    _by_key: dict[str, Located] = field(default_factory=dict)

    @property
    def bundle_id(self) -> str:
        return str(self.bundle["id"])

    @property
    def header_id(self) -> str:
        return str(self.header.resource["id"])

    def all(self, resource_type: str) -> Iterator[Located]:
        """Every resource of one type, in Bundle order."""
        for i, e in enumerate(self.bundle.get("entry") or []):
            res = e.get("resource") if isinstance(e, dict) else None
            if isinstance(res, dict) and res.get("resourceType") == resource_type:
                yield Located(res, f"Bundle.entry[{i}].resource")

    def resolve(self, reference: Any, path: str, expected: str | None = None) -> Located | None:
        """The resource a reference points to; records a problem and returns None when it does not."""
        target = reference.get("reference") if isinstance(reference, dict) else None
        if not isinstance(target, str) or not target:
            self.problems.add("a reference is required", path, "required")
            return None
        found = self._by_key.get(target)
        if found is None and "/" in target:
            # An absolute RESTful URL resolves like its last two segments (``Type/id``).
            found = self._by_key.get("/".join(target.rstrip("/").split("/")[-2:]))
        if found is None:
            self.problems.add(f"reference {target!r} does not resolve inside the Bundle", path, "not-found")
            return None
        if expected is not None and found.resource.get("resourceType") != expected:
            self.problems.add(f"reference {target!r} must point to a {expected}", path, "invalid")
            return None
        return found


def read_message(bundle: Any, event_code: str | None = None) -> MessageView:
    """Check the envelope of a MedCom message and index its entries (raises InvalidMessage)."""
    problems = Problems()
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        problems.fail("a MedCom message is a FHIR Bundle", "Bundle", "structure")
    if bundle.get("type") != "message":
        problems.add("Bundle.type must be 'message'", "Bundle.type", "value")
    if not isinstance(bundle.get("id"), str) or not bundle["id"]:
        problems.add("Bundle.id is required (it is the envelope id)", "Bundle.id", "required")
    if not isinstance(bundle.get("timestamp"), str):
        problems.add("Bundle.timestamp is required", "Bundle.timestamp", "required")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        problems.fail("a message has entries, the MessageHeader first", "Bundle.entry", "required")
    by_key: dict[str, Located] = {}
    for i, e in enumerate(entries):
        res = e.get("resource") if isinstance(e, dict) else None
        path = f"Bundle.entry[{i}].resource"
        if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
            problems.add("an entry holds a resource with a resourceType", path, "structure")
            continue
        located = Located(res, path)
        if isinstance(res.get("id"), str):
            by_key[f"{res['resourceType']}/{res['id']}"] = located
        full_url = e.get("fullUrl")
        if isinstance(full_url, str):
            by_key.setdefault(full_url, located)
    first = entries[0].get("resource") if isinstance(entries[0], dict) else None
    if not isinstance(first, dict) or first.get("resourceType") != "MessageHeader":
        problems.fail(
            "the first entry of a message is its MessageHeader", "Bundle.entry[0].resource", "structure"
        )
    assert isinstance(first, dict)  # fail() raised otherwise
    header = Located(first, "Bundle.entry[0].resource")
    if not isinstance(first.get("id"), str) or not first["id"]:
        problems.add("MessageHeader.id is required (it is the letter id)", f"{header.path}.id", "required")
    raw_event = first.get("eventCoding")
    event: dict[str, Any] = raw_event if isinstance(raw_event, dict) else {}
    if event.get("system") != EVENT_CODES or not isinstance(event.get("code"), str):
        problems.add(
            f"MessageHeader.eventCoding must use {EVENT_CODES}", f"{header.path}.eventCoding", "value"
        )
    elif event_code is not None and event["code"] != event_code:
        problems.add(
            f"this is a {event['code']!r}, not a {event_code!r}", f"{header.path}.eventCoding.code", "value"
        )
    problems.raise_if_any()
    return MessageView(bundle=bundle, header=header, problems=problems, _by_key=by_key)


def event_code(bundle: Any) -> str | None:
    """The MedCom event code of a message (``hospital-notification-message`` ...), or None."""
    try:
        first = bundle["entry"][0]["resource"]
        code = first["eventCoding"]["code"]
    except (KeyError, IndexError, TypeError):
        return None
    return code if isinstance(code, str) else None


def parse_datetime(value: Any, path: str, problems: Problems, *, required: bool = True) -> dt.datetime | None:
    """A FHIR dateTime with a timezone; records a problem when absent, partial or without timezone."""
    if value is None:
        if required:
            problems.add("a date and time is required", path, "required")
        return None
    if not isinstance(value, str):
        problems.add("a date and time is a string", path, "value")
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        problems.add(f"{value!r} is not a FHIR dateTime with time and timezone", path, "value")
        return None
    if parsed.tzinfo is None or "T" not in value:
        problems.add(f"{value!r} needs a time and a timezone (MedCom)", path, "value")
        return None
    return parsed


def read_party(view: MessageView, reference: Any, path: str) -> Party | None:
    """The Party (name, SOR, GLN) of a referenced Organization; None (with a problem) when unusable."""
    found = view.resolve(reference, path, "Organization")
    if found is None:
        return None
    org = found.resource
    sor = gln = None
    for identifier in org.get("identifier") or []:
        if not isinstance(identifier, dict):
            continue
        if identifier.get("system") == ids.SOR_SYSTEM:
            sor = identifier.get("value")
        elif identifier.get("system") in ids.GLN_SYSTEMS:
            gln = identifier.get("value")
    try:
        return Party(name=org.get("name"), sor=sor, gln=gln)
    except ValidationError as exc:
        view.problems.pydantic(exc, found.path)
        return None


def read_citizen(view: MessageView, reference: Any, path: str) -> Citizen | None:
    """The citizen (CPR or X-eCPR, name, deceased) of the referenced Patient."""
    found = view.resolve(reference, path, "Patient")
    if found is None:
        return None
    patient = found.resource
    number = None
    number_path = f"{found.path}.identifier"
    for i, identifier in enumerate(patient.get("identifier") or []):
        if isinstance(identifier, dict) and identifier.get("system") in (ids.CPR_SYSTEM, ids.XECPR_SYSTEM):
            number, number_path = identifier.get("value"), f"{found.path}.identifier[{i}].value"
            break
    if number is None:
        view.problems.add(
            "the patient needs a CPR or X-eCPR identifier", f"{found.path}.identifier", "required"
        )
        return None
    names = [n for n in patient.get("name") or [] if isinstance(n, dict)]
    official = next((n for n in names if n.get("use") == "official"), names[0] if names else None)
    if official is None or not official.get("family"):
        view.problems.add(
            "the patient needs an official name with a family name", f"{found.path}.name", "required"
        )
        return None
    deceased = patient.get("deceasedBoolean") is True or patient.get("deceasedDateTime") is not None
    try:
        return Citizen(
            cpr=number,
            name=PersonName(given=list(official.get("given") or []), family=official["family"]),
            deceased=deceased,
        )
    except ValidationError as exc:
        view.problems.pydantic(exc, number_path)
        return None


def primary_destination(view: MessageView) -> tuple[dict[str, Any], str] | None:
    """The primary destination of the MessageHeader and its path (MedCom destination-use extension)."""
    dests = view.header.resource.get("destination") or []
    for i, dest in enumerate(dests):
        if not isinstance(dest, dict):
            continue
        for ext in dest.get("extension") or []:
            value = ext.get("valueCoding") if isinstance(ext, dict) else None
            if (
                ext.get("url") == DESTINATION_USE_EXTENSION
                and isinstance(value, dict)
                and value.get("code") == "primary"
            ):
                return dest, f"{view.header.path}.destination[{i}]"
    view.problems.add(
        "the MessageHeader needs one destination marked 'primary' (destination-use extension)",
        f"{view.header.path}.destination",
        "required",
    )
    return None


@dataclass(frozen=True, slots=True)
class ProvenanceView:
    """One Provenance of a message, read."""

    located: Located
    target_id: str | None
    activity: str | None
    occurred: dt.datetime | None
    recorded: dt.datetime | None


def target_header_id(prov: dict[str, Any]) -> str | None:
    """The MessageHeader id a Provenance describes (its first target)."""
    for target in prov.get("target") or []:
        reference = target.get("reference") if isinstance(target, dict) else None
        if isinstance(reference, str) and "MessageHeader/" in reference:
            return reference.rsplit("/", 1)[-1]
    return None


def read_provenances(view: MessageView) -> tuple[ProvenanceView | None, list[ProvenanceView]]:
    """The Provenance of this message (target = MessageHeader.id) and the earlier ones, in Bundle order."""
    current: ProvenanceView | None = None
    earlier: list[ProvenanceView] = []
    for located in view.all("Provenance"):
        prov = located.resource
        codings = (prov.get("activity") or {}).get("coding") or [{}]
        activity = codings[0].get("code") if isinstance(codings[0], dict) else None
        if activity is None:
            view.problems.add("Provenance.activity needs a code", f"{located.path}.activity", "required")
        pv = ProvenanceView(
            located=located,
            target_id=target_header_id(prov),
            activity=activity,
            occurred=parse_datetime(
                prov.get("occurredDateTime"), f"{located.path}.occurredDateTime", view.problems
            ),
            recorded=parse_datetime(
                prov.get("recorded"), f"{located.path}.recorded", view.problems, required=False
            ),
        )
        if pv.target_id is None:
            view.problems.add(
                "Provenance.target must reference a MessageHeader", f"{located.path}.target", "required"
            )
        if pv.target_id == view.header_id and current is None:
            current = pv
        else:
            earlier.append(pv)
    if current is None:
        view.problems.add(
            "no Provenance describes this message (Provenance.target = the MessageHeader)",
            "Bundle.entry.resource.ofType(Provenance)",
            "required",
        )
    return current, earlier


def revision_of(prov: dict[str, Any]) -> tuple[str | None, str | None, bool]:
    """(MessageHeader id or identifier, role, by-identifier) of the earlier message a Provenance names."""
    for ent in prov.get("entity") or []:
        if not isinstance(ent, dict) or ent.get("role") not in ("revision", "removal"):
            continue
        what = ent.get("what") or {}
        reference = what.get("reference")
        if isinstance(reference, str):
            return reference.rsplit("/", 1)[-1], ent["role"], False
        value = (what.get("identifier") or {}).get("value")
        if isinstance(value, str):
            return value, ent["role"], True
    return None, None, False


def same_instant(a: dt.datetime | None, b: dt.datetime | None) -> bool:
    return a is not None and b is not None and a == b
