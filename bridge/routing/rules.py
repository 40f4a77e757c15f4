"""Routing rules for messages that name no receiver, and the admissions that feed them.

Rules are tried in configuration order; the first whose ``when`` matches (sender system, message kind)
decides. Its ``to`` is a list of system ids, or ``admitted-hospital``: the hospital where the citizen
is admitted (or on leave) right now, falling back to ``otherwise``. The caller looks the admission up
in the store and passes it in, so this module stays pure.

Admissions are learned from HospitalNotifications (advis om sygehusophold): each accepted notification
moves the citizen's state at the sending hospital. A cancellation restores the state before the
cancelled event (AN_SLHJ: admitted again; AN_STIN: no stay). The state's ``since`` is the time the
notification was sent (its own Provenance), not the event time: a cancellation carries the time of
the stay it cancels, and "older never overwrites newer" must follow the order of the notifications.
"""

from __future__ import annotations

from datetime import datetime

from bridge.errors import InvalidInput
from bridge.fhir.outcome import Issue, Outcome
from bridge.municipal.events import HospitalStayEvent
from bridge.outbox.port import Admission, AdmissionStatus
from bridge.routing.destinations import Receiver, Unroutable
from bridge.settings import ADMITTED_HOSPITAL, Settings

_BY_CODE: dict[str, AdmissionStatus] = {
    "STIN": "admitted",
    "STAA": "admitted",
    "STOR": "on-leave",
    "SLOR": "admitted",
    "SLHJ": "discharged",
    "MORS": "deceased",
}
_CANCELLED: dict[str, AdmissionStatus] = {
    "STIN": "cancelled",
    "STAA": "cancelled",
    "STOR": "admitted",
    "SLOR": "on-leave",
    "SLHJ": "admitted",
}
_BEFORE_DEATH: dict[str, AdmissionStatus] = {
    "in-progress": "admitted",
    "onleave": "on-leave",
    "finished": "discharged",
}


def stay_status(code: str, status_before_death: str | None = None) -> AdmissionStatus:
    """The citizen's state at the hospital after a notification with ``code`` (``AN_MORS``: the
    encounter status the cancelled death restores)."""
    base = code.removeprefix("RE_").removeprefix("AN_")
    if code.startswith("AN_"):
        if base == "MORS":
            return _BEFORE_DEATH.get(status_before_death or "", "admitted")
        return _CANCELLED[base]
    return _BY_CODE[base]


def admission_status(event: HospitalStayEvent) -> AdmissionStatus:
    """The citizen's state at the hospital after the notified event."""
    return stay_status(event.code or "", event.status_before_death)


def admission_from_event(event: HospitalStayEvent, *, hospital: str, citizen_key: str) -> Admission:
    """The admission state a HospitalNotification from ``hospital`` (a system id) tells."""
    since = event.message.sent if event.message is not None else event.event_time
    return Admission(citizen_key=citizen_key, hospital=hospital, status=admission_status(event), since=since)


def admission_from_change(
    code: str, status_before_death: str | None, sent: datetime, *, hospital: str, citizen_key: str
) -> Admission:
    """``admission_from_event`` from the few facts it uses (``bridge.medcom.hospital_notification.
    stay_change``), for a message whose receivers need no municipal event."""
    return Admission(
        citizen_key=citizen_key, hospital=hospital, status=stay_status(code, status_before_death), since=sent
    )


def _unroutable(diagnostics: str, where: str) -> InvalidInput:
    return Unroutable(Outcome([Issue("error", "not-found", diagnostics, (where,))]))


def rule_receivers(
    settings: Settings, *, sender: str, kind: str, admission: Admission | None
) -> list[Receiver]:
    """The receivers the first matching routing rule names; raises ``Unroutable`` when there are none.

    ``admission`` is the citizen's current admission (``OutboxStore.current_admission``), consulted by
    ``admitted-hospital`` rules.
    """
    for i, rule in enumerate(settings.routing):
        if rule.when.sender not in (None, sender) or rule.when.kind not in (None, kind):
            continue
        where = f"routing[{i}]"
        targets: list[str]
        if rule.to == ADMITTED_HOSPITAL:
            known = admission is not None and admission.is_admitted and settings.system(admission.hospital)
            if known and admission is not None:
                targets = [admission.hospital]
            elif rule.otherwise:
                targets = list(rule.otherwise)
            else:
                raise _unroutable(
                    "The citizen is not admitted at any hospital this bridge knows of, and the record "
                    f"names no receiver (routing rule {rule.name!r})",
                    "receiver",
                )
        else:
            targets = list(rule.to)
        receivers = []
        for target in dict.fromkeys(targets):
            system = settings.system(target)
            if system is not None and system.id != sender:
                receivers.append(Receiver(system, where))
        if receivers:
            return receivers
        raise _unroutable(f"Routing rule {rule.name!r} leaves no receiver besides the sender", "receiver")
    raise _unroutable(f"No routing rule applies to a {kind} from {sender!r}; name a receiver", "receiver")
