"""MedCom message kinds and the cross-resource rules the StructureDefinitions express only in part.

Each rule is a named function over the whole message; :data:`RULES_BY_KIND` says which rules apply to
which message kind, and each issue a rule raises starts with the rule's name. The profiles' own
checks (cardinality, patterns, bindings, slicing, invariants) run first; these rules add what needs
the Danish identifier algorithms (``bridge.fhir.identifiers``) or reads across resources:

- ``header-first``: exactly one MessageHeader, and it is the first entry (bdl-12).
- ``references-resolve``: every reference points to an entry of the Bundle; Provenance.target and
  Provenance.entity.what may name earlier messages and are exempt.
- ``organisation-identifiers``: sender and receivers carry a SOR id and a GLN; every GLN in the
  message has a valid check digit (both ``https://`` and ``http://www.gs1.org/gln`` are accepted).
- ``patient-cpr``: the Patient carries a CPR number (HospitalNotification), every CPR is a real date.
- ``acknowledgement-details``: a response code other than ``ok`` comes with an OperationOutcome.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bridge.fhir.identifiers import CPR_SYSTEM, GLN_SYSTEMS, SOR_SYSTEM, check_cpr, check_gln, check_sor
from bridge.fhir.outcome import Issue, IssueCode
from bridge.medcom.validation.profile import ACK_ERRORS
from bridge.medcom.validation.run import Run


def _as_list(value: Any) -> list[Any]:
    """A JSON array as a list; anything else (absent, or wrongly a scalar) as empty."""
    return value if isinstance(value, list) else []


EVENT_SYSTEM = "http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-messaging-eventCodes"
_HN = "http://medcomfhir.dk/ig/hospitalnotification/StructureDefinition/"
_CC = "http://medcomfhir.dk/ig/carecommunication/StructureDefinition/"
_ACK = "http://medcomfhir.dk/ig/acknowledgement/StructureDefinition/"
_MSG = "http://medcomfhir.dk/ig/messaging/StructureDefinition/"
_CORE = "http://medcomfhir.dk/ig/core/StructureDefinition/"


@dataclass(frozen=True, slots=True)
class MessageKind:
    """A MedCom message kind: how it is recognised and which profiles its resources must meet."""

    name: str
    event_code: str
    bundle_profile: str
    header_profile: str
    provenance_profile: str
    requires_cpr: bool


KINDS: tuple[MessageKind, ...] = (
    MessageKind(
        "hospital-notification",
        "hospital-notification-message",
        _HN + "medcom-hospitalNotification-message",
        _HN + "medcom-hospitalNotification-messageHeader",
        _MSG + "medcom-messaging-provenance",
        True,
    ),
    MessageKind(
        "care-communication",
        "care-communication-message",
        _CC + "medcom-careCommunication-message",
        _CC + "medcom-careCommunication-messageHeader",
        _CC + "medcom-careCommunication-provenance",
        False,
    ),
    MessageKind(
        "acknowledgement",
        "acknowledgement-message",
        _ACK + "medcom-messaging-acknowledgement",
        _ACK + "medcom-messaging-acknowledgementHeader",
        _MSG + "medcom-messaging-provenance",
        False,
    ),
)
BY_NAME = {k.name: k for k in KINDS}
BY_BUNDLE_PROFILE = {k.bundle_profile: k for k in KINDS}
BY_EVENT = {k.event_code: k for k in KINDS}
#: Profiles every resource of a type must meet in any MedCom message, whatever it declares.
PROFILE_BY_TYPE = {"Patient": _CORE + "medcom-core-patient"}

Rule = Callable[[dict[str, Any], Run, MessageKind], None]


def _entries(bundle: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            yield i, resource


def header(bundle: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """The (index, resource) of the first MessageHeader entry."""
    for i, resource in _entries(bundle):
        if resource.get("resourceType") == "MessageHeader":
            return i, resource
    return None


def _issue(rule: str, text: str, path: str, code: IssueCode = "invalid", details: str | None = None) -> Issue:
    return Issue(
        "error",
        code,
        f"{rule}: {text}",
        (path,),
        (ACK_ERRORS, details) if details else None,
    )


def header_first(bundle: dict[str, Any], run: Run, kind: MessageKind) -> None:
    headers = [i for i, r in _entries(bundle) if r.get("resourceType") == "MessageHeader"]
    if not headers:
        run.add(_issue("header-first", "the message has no MessageHeader", "Bundle.entry", "required"))
        return
    if headers[0] != 0:
        run.add(
            _issue(
                "header-first",
                f"the MessageHeader must be the first entry (bdl-12); it is entry {headers[0]}",
                "Bundle.entry[0].resource",
                "structure",
            )
        )
    for i in headers[1:]:
        run.add(
            _issue(
                "header-first",
                "a message has exactly one MessageHeader",
                f"Bundle.entry[{i}].resource",
                "structure",
            )
        )


_EXEMPT = {("Provenance", "target"), ("Provenance", "entity")}


def _references(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            yield ref, f"{path}.reference"
        for key, value in node.items():
            if key in ("text", "reference") or key[:1] == "_":
                continue
            if isinstance(value, dict | list):
                yield from _references(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, dict | list):
                yield from _references(item, f"{path}[{i}]")


def _resolves(node: dict[str, Any] | list[Any], run: Run) -> bool:
    """True when every reference :func:`_references` finds under ``node`` is local or resolves.

    The same walk without locations: most messages have no unresolved reference, and only an
    element that has one is walked again for the locations.
    """
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and not ref.startswith("#") and run.resolve(ref) is None:
            return False
        for key, value in node.items():
            if (
                isinstance(value, (dict, list))  # a tuple: quicker than dict | list here
                and key != "text"
                and key != "reference"
                and key[:1] != "_"
                and not _resolves(value, run)
            ):
                return False
        return True
    for item in node:
        if isinstance(item, (dict, list)) and not _resolves(item, run):
            return False
    return True


def references_resolve(bundle: dict[str, Any], run: Run, kind: MessageKind) -> None:
    for i, resource in _entries(bundle):
        rtype = str(resource.get("resourceType"))
        base = f"Bundle.entry[{i}].resource"
        for key, value in resource.items():
            if key == "text" or (rtype, key) in _EXEMPT or not isinstance(value, dict | list):
                continue
            if _resolves(value, run):
                continue
            for ref, path in _references(value, f"{base}.{key}"):
                if ref.startswith("#") or run.resolve(ref) is not None:
                    continue
                run.add(
                    _issue(
                        "references-resolve",
                        f"{ref!r} does not resolve to an entry of the Bundle",
                        path,
                        "not-found",
                    )
                )


def _organisation(run: Run, reference: Any) -> dict[str, Any] | None:
    ref = reference.get("reference") if isinstance(reference, dict) else None
    target = run.resolve(ref) if isinstance(ref, str) else None
    return target if target is not None and target.get("resourceType") == "Organization" else None


def organisation_identifiers(bundle: dict[str, Any], run: Run, kind: MessageKind) -> None:
    found = header(bundle)
    addressed: list[tuple[str, dict[str, Any]]] = []
    if found is not None:
        _, mh = found
        sender = _organisation(run, mh.get("sender"))
        if sender is not None:
            addressed.append(("sender", sender))
        destinations = mh.get("destination")
        for dest in destinations if isinstance(destinations, list) else []:
            receiver = _organisation(run, dest.get("receiver") if isinstance(dest, dict) else None)
            if receiver is not None:
                addressed.append(("receiver", receiver))
    for role, org in addressed:
        path = run.path_of(org)
        ids = [i for i in _as_list(org.get("identifier")) if isinstance(i, dict)]
        systems = {i.get("system") for i in ids if isinstance(i.get("system"), str)}
        missing = "MSG_Receiver_Identifier_MISSING" if role == "receiver" else None
        if SOR_SYSTEM not in systems:
            run.add(
                _issue(
                    "organisation-identifiers",
                    f"the {role} organisation has no SOR identifier ({SOR_SYSTEM})",
                    f"{path}.identifier",
                    "required",
                    missing,
                )
            )
        if not systems & GLN_SYSTEMS:
            run.add(
                _issue(
                    "organisation-identifiers",
                    f"the {role} organisation has no GLN identifier (https://www.gs1.org/gln)",
                    f"{path}.identifier",
                    "required",
                    missing,
                )
            )
    for _i, org in _entries(bundle):
        if org.get("resourceType") != "Organization":
            continue
        path = run.path_of(org)
        for n, ident in enumerate(_as_list(org.get("identifier"))):
            if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
                continue
            system, value = str(ident.get("system")), ident["value"]
            problem = (
                check_gln(value)
                if system in GLN_SYSTEMS
                else check_sor(value)
                if system == SOR_SYSTEM
                else None
            )
            if problem:
                run.add(_issue("organisation-identifiers", problem, f"{path}.identifier[{n}].value", "value"))


def patient_cpr(bundle: dict[str, Any], run: Run, kind: MessageKind) -> None:
    for _i, patient in _entries(bundle):
        if patient.get("resourceType") != "Patient":
            continue
        path = run.path_of(patient)
        cprs = 0
        for n, ident in enumerate(_as_list(patient.get("identifier"))):
            if not isinstance(ident, dict) or ident.get("system") != CPR_SYSTEM:
                continue
            cprs += 1
            value = ident.get("value")
            problem = check_cpr(value) if isinstance(value, str) else "a CPR identifier needs a value"
            if problem:
                run.add(_issue("patient-cpr", problem, f"{path}.identifier[{n}].value", "value"))
        if kind.requires_cpr and cprs == 0:
            run.add(
                _issue(
                    "patient-cpr",
                    f"a {kind.name} names its patient by CPR number ({CPR_SYSTEM})",
                    f"{path}.identifier",
                    "required",
                )
            )


def acknowledgement_details(bundle: dict[str, Any], run: Run, kind: MessageKind) -> None:
    found = header(bundle)
    if found is None:
        return
    i, mh = found
    response = mh.get("response")
    if not isinstance(response, dict) or response.get("code") in (None, "ok"):
        return
    path = f"Bundle.entry[{i}].resource.response.details"
    details = response.get("details")
    ref = details.get("reference") if isinstance(details, dict) else None
    target = run.resolve(ref) if isinstance(ref, str) else None
    if target is None or target.get("resourceType") != "OperationOutcome":
        run.add(
            _issue(
                "acknowledgement-details",
                f"response code {response.get('code')!r} requires details "
                "referencing an OperationOutcome in the Bundle",
                path,
                "required",
            )
        )


RULES: dict[str, Rule] = {
    "header-first": header_first,
    "references-resolve": references_resolve,
    "organisation-identifiers": organisation_identifiers,
    "patient-cpr": patient_cpr,
    "acknowledgement-details": acknowledgement_details,
}
_COMMON = ("header-first", "references-resolve", "organisation-identifiers", "patient-cpr")
RULES_BY_KIND: dict[str, tuple[str, ...]] = {
    "hospital-notification": _COMMON,
    "care-communication": _COMMON,
    "acknowledgement": (*_COMMON, "acknowledgement-details"),
}
