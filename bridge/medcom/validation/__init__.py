"""MedCom message validation: base FHIR structure, the official MedCom profiles, and MedCom's rules.

``validate_message(bundle)`` recognises a HospitalNotification (advis om sygehusophold),
CareCommunication (korrespondancemeddelelse) or Acknowledgement (kvittering) from its
``meta.profile`` or ``MessageHeader.eventCoding`` and returns an :class:`Outcome` naming every
problem. It never raises on bad content.

Three layers, all on the plain JSON dict:

1. **structure** - every element known to FHIR R4, arrays where arrays belong, primitive formats
   (``structure.py``);
2. **profiles** - the shipped MedCom StructureDefinition snapshots compiled once into check trees:
   cardinality, fixed and pattern values, required bindings, slicing, type and target profiles and
   the declared FHIRPath invariants (``profile.py``, ``fhirpath.py``);
3. **rules** - cross-resource rules keyed by message kind (``rules.py``).

Locations are FHIRPath-style paths from the Bundle, with an index on every repeating element and
choice elements under their JSON name, e.g. ``Bundle.entry[3].resource.identifier[1].value`` or
``Bundle.entry[0].resource.destination[0].extension[0].valueCoding``. Issue codes are FHIR
issue-type codes; where a MedCom acknowledgement error code fits, it is in ``Issue.details``.
"""

from __future__ import annotations

from typing import Any

from bridge.fhir.outcome import Issue, Outcome
from bridge.medcom.validation import structure
from bridge.medcom.validation.rules import (
    BY_BUNDLE_PROFILE,
    BY_EVENT,
    BY_NAME,
    EVENT_SYSTEM,
    PROFILE_BY_TYPE,
    RULES,
    RULES_BY_KIND,
    MessageKind,
    header,
)
from bridge.medcom.validation.run import Run
from bridge.medcom.validation.terminology import canonical, pinned_versions, structure_definition

__all__ = ["is_medcom_message", "recognise", "validate_message"]


def _kind_by_profile(bundle: dict[str, Any]) -> MessageKind | None:
    meta = bundle.get("meta")
    profiles = meta.get("profile") if isinstance(meta, dict) else None
    for p in profiles if isinstance(profiles, list) else []:
        if isinstance(p, str) and canonical(p) in BY_BUNDLE_PROFILE:
            return BY_BUNDLE_PROFILE[canonical(p)]
    return None


def _kind_by_event(bundle: dict[str, Any]) -> MessageKind | None:
    found = header(bundle)
    event = found[1].get("eventCoding") if found else None
    if isinstance(event, dict) and event.get("system") == EVENT_SYSTEM:
        return BY_EVENT.get(str(event.get("code")))
    return None


def recognise(bundle: dict[str, Any]) -> str | None:
    """The MedCom message kind of a Bundle: 'hospital-notification', 'care-communication',
    'acknowledgement', or None.

    The Bundle's ``meta.profile`` decides when it names a MedCom message profile; otherwise the
    MessageHeader's ``eventCoding`` (MedCom event code system) does.
    """
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return None
    kind = _kind_by_profile(bundle) or _kind_by_event(bundle)
    return kind.name if kind else None


def is_medcom_message(bundle: dict[str, Any]) -> bool:
    """True for a Bundle of type ``message`` that :func:`recognise` identifies as a MedCom message."""
    return isinstance(bundle, dict) and bundle.get("type") == "message" and recognise(bundle) is not None


def _profiles_for(resource: dict[str, Any], kind: MessageKind) -> list[str]:
    rtype = resource.get("resourceType")
    wanted: list[str] = []
    if rtype == "MessageHeader":
        wanted.append(kind.header_profile)
    elif rtype == "Provenance":
        wanted.append(kind.provenance_profile)
    elif isinstance(rtype, str) and rtype in PROFILE_BY_TYPE:
        wanted.append(PROFILE_BY_TYPE[rtype])
    meta = resource.get("meta")
    declared = meta.get("profile") if isinstance(meta, dict) else None
    for p in declared if isinstance(declared, list) else []:
        if isinstance(p, str) and canonical(p) not in wanted:
            wanted.append(canonical(p))
    return wanted


def _validate(bundle: Any) -> Outcome:
    issues: list[Issue] = []
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        issues.append(Issue("error", "structure", "a MedCom message is a FHIR Bundle", ("Bundle",)))
        return Outcome(issues)
    structure.check_resource(bundle, "Bundle", issues)
    by_profile, by_event = _kind_by_profile(bundle), _kind_by_event(bundle)
    kind = by_profile or by_event
    if kind is None:
        issues.append(
            Issue(
                "error",
                "not-supported",
                "not a MedCom HospitalNotification, CareCommunication or Acknowledgement: neither "
                "Bundle.meta.profile nor MessageHeader.eventCoding names one",
                ("Bundle.meta.profile",),
            )
        )
        return Outcome(issues)
    run = Run(bundle, pinned_versions((kind.bundle_profile, kind.header_profile, kind.provenance_profile)))
    if by_profile is not None and by_event is not None and by_profile is not by_event:
        found = header(bundle)
        where = f"Bundle.entry[{found[0]}].resource.eventCoding" if found else "Bundle.meta.profile"
        run.add(
            Issue(
                "error",
                "invalid",
                f"Bundle.meta.profile declares a {by_profile.name} "
                f"but the MessageHeader event is a {by_event.name}",
                (where,),
            )
        )
    run.check_profile(bundle, kind.bundle_profile)
    entries = bundle.get("entry")
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        for url in _profiles_for(resource, kind):
            if structure_definition(url) is None:
                run.add(
                    Issue(
                        "warning",
                        "not-supported",
                        f"profile {url} is not shipped with the bridge and was not checked",
                        (f"Bundle.entry[{i}].resource.meta.profile",),
                    )
                )
                continue
            run.check_profile(resource, url)
    for name in RULES_BY_KIND[kind.name]:
        RULES[name](bundle, run, kind)
    issues.extend(run.issues)
    return Outcome(issues)


def validate_message(bundle: dict[str, Any]) -> Outcome:
    """Full validation of a MedCom message given as FHIR JSON (dict).

    Base FHIR structure, the profile recognised from ``meta.profile`` / ``MessageHeader.eventCoding``
    with its invariants, and the MedCom message rules. Never raises on bad content; returns every
    problem as an issue with a FHIRPath-style location.
    """
    try:
        return _validate(bundle)
    except RecursionError:
        return Outcome(
            [Issue("error", "too-costly", "the message is nested too deeply to validate", ("Bundle",))]
        )


def message_kind(name: str) -> MessageKind:
    """The :class:`MessageKind` for a name returned by :func:`recognise`."""
    return BY_NAME[name]
