"""MedCom Acknowledgement (kvittering): build receipts for received messages, read received receipts.

Every MedCom message is acknowledged (KR1.R) and an acknowledgement is never acknowledged (KR2.R).
An Acknowledgement is a message of its own (new Bundle.id, new MessageHeader.id) whose
``MessageHeader.response`` quotes the acknowledged MessageHeader.id with a code:

- ``ok``: received and valid (HL7 v2 ``AA``);
- ``transient-error``: could not be processed now, sending again may succeed;
- ``fatal-error``: must not be sent again unchanged.

MedCom's rule texts call technical errors ``AE`` and validation failures ``AR``, while the Acknowledgement
IG and its test fixtures map AE to fatal-error and AR to transient-error; the bridge works on the FHIR
codes and follows the IG where it must translate (:data:`HL7_ACK_CODES`). A receipt that is not ``ok``
carries an OperationOutcome naming each problem, with MedCom's error code when one fits. The receipt
holds two Provenances: the acknowledged message's latest one and its own (activity ``acknowledgement``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast, get_args

from bridge.errors import InvalidInput
from bridge.fhir.outcome import Issue, IssueCode, Outcome, Severity, error
from bridge.medcom.common import (
    DEFAULT_BASE_URL,
    EVENT_CODES,
    MEDCOM,
    PROFILE_PROVENANCE,
    TERMINOLOGY,
    Clock,
    IdSource,
    Organizations,
    coding,
    derived_id,
    destination,
    entry,
    event_code,
    fhir_datetime,
    new_uuid,
    parse_datetime,
    primary_destination,
    provenance_resource,
    read_message,
    read_party,
    read_provenances,
    ref,
    sor_endpoint,
    utc_now,
)
from bridge.municipal.events import Party

EVENT = "acknowledgement-message"
_ACK = f"{MEDCOM}/acknowledgement/StructureDefinition"
PROFILE_MESSAGE = f"{_ACK}/medcom-messaging-acknowledgement"
PROFILE_HEADER = f"{_ACK}/medcom-messaging-acknowledgementHeader"
PROFILE_OUTCOME = f"{_ACK}/medcom-acknowledgement-operationoutcome"
ERROR_CODES = f"{TERMINOLOGY}/medcom-acknowledgement-error-codes"

AckCode = Literal["ok", "transient-error", "fatal-error"]
ACK_CODES: tuple[str, ...] = get_args(AckCode)
#: HL7 v2 acknowledgement codes as the Acknowledgement IG and its test fixtures translate them.
HL7_ACK_CODES: dict[str, AckCode] = {"AA": "ok", "AE": "fatal-error", "AR": "transient-error"}

#: MedCom's acknowledgement error codes with the FHIR issue type the bridge reports them under.
MEDCOM_ERRORS: dict[str, IssueCode] = {
    "MSG_Receiver_Identifier_UNKNOWN": "not-found",
    "MSG_Receiver_Identifier_MISSING": "required",
    "MSG_RECEIVER_UNABLE_TO_RECEIVE_MSG_TYPE": "not-supported",
    "MSG_VALUESET_VALUE_UNKNOWN": "code-invalid",
    "MSG_CodeSystem_VALUE_UNKNOWN": "code-invalid",
    "MSG_Element_To_Long": "too-long",
    "MSG_Datatype_Wrong": "structure",
    "MSG_Mailbox_Out_Of_Operation": "transient",
    "MSG_Damaged_durin_transport": "structure",
}


def medcom_issue(error_code: str, diagnostics: str, *path: str, severity: Severity = "error") -> Issue:
    """An issue carrying one of MedCom's acknowledgement error codes (e.g. MSG_VALUESET_VALUE_UNKNOWN)."""
    if error_code not in MEDCOM_ERRORS:
        raise ValueError(f"{error_code!r} is no MedCom acknowledgement error code")
    return Issue(severity, MEDCOM_ERRORS[error_code], diagnostics, path, (ERROR_CODES, error_code))


@dataclass(frozen=True, slots=True)
class Receipt:
    """A received Acknowledgement, read: which message it acknowledges and how."""

    bundle_id: str
    header_id: str
    acknowledged_id: str
    code: AckCode
    issues: tuple[Issue, ...]
    sender: Party | None
    receiver: Party | None
    timestamp: dt.datetime

    @property
    def ok(self) -> bool:
        return self.code == "ok"

    def acknowledges(self, message: Mapping[str, Any]) -> bool:
        """True when this receipt acknowledges ``message`` (its MessageHeader.id)."""
        try:
            return bool(message["entry"][0]["resource"]["id"] == self.acknowledged_id)
        except (KeyError, IndexError, TypeError):
            return False


T = TypeVar("T")


def correlate(receipt: Receipt, outstanding: Mapping[str, T]) -> T | None:
    """The outstanding item (keyed by MessageHeader.id) that ``receipt`` acknowledges, or None."""
    return outstanding.get(receipt.acknowledged_id)


def build_acknowledgement(
    message: Any,
    code: AckCode,
    *,
    issues: Iterable[Issue] | Outcome = (),
    sender: Party | None = None,
    bundle_id: str | None = None,
    header_id: str | None = None,
    provenance_id: str | None = None,
    now: Clock | None = None,
    new_id: IdSource = new_uuid,
    base_url: str = DEFAULT_BASE_URL,
) -> dict[str, Any]:
    """Build the Acknowledgement of a received MedCom message (FHIR JSON).

    The receipt goes back to the message's sender (its source endpoint) from ``sender`` - by default the
    message's primary receiver. ``issues`` (required unless ``code`` is ``ok``) become the
    OperationOutcome. Ids and the time are new unless given; for a duplicate, resend the receipt first
    built, as MedCom requires the same content (:mod:`bridge.medcom.duplicates`).
    """
    if code not in ACK_CODES:
        raise InvalidInput([error(f"{code!r} is no acknowledgement code ({', '.join(ACK_CODES)})", "code")])
    problems_list = list(issues)
    if code != "ok" and not problems_list:
        raise InvalidInput(
            [error("a negative acknowledgement describes its errors (medcom-acknowledgement-1)", "issues")]
        )
    if event_code(message) == EVENT:
        raise InvalidInput(
            [
                error(
                    "an acknowledgement is never acknowledged (KR2.R)", "Bundle.entry[0].resource.eventCoding"
                )
            ]
        )
    view = read_message(message)
    original = view.header.resource
    original_sender = read_party(view, original.get("sender"), f"{view.header.path}.sender")
    dest = primary_destination(view)
    original_receiver = read_party(view, dest[0].get("receiver"), f"{dest[1]}.receiver") if dest else None
    latest, _ = read_provenances(view)
    view.problems.raise_if_any()
    assert original_sender is not None and original_receiver is not None and latest is not None
    ack_sender = sender or original_receiver
    stamp = (now or utc_now)()
    hid = header_id or new_id()
    orgs = Organizations(hid)
    sender_org = orgs.add(ack_sender)
    receiver_org = orgs.add(original_sender)
    copied = {k: v for k, v in latest.located.resource.items() if k != "text"}
    copied["meta"] = {"profile": [PROFILE_PROVENANCE]}
    agent_party = read_party(
        view, (copied.get("agent") or [{}])[0].get("who"), f"{latest.located.path}.agent"
    )
    copied["agent"] = [{"who": ref(orgs.add(agent_party or original_sender))}]
    own = provenance_resource(
        provenance_id or new_id(),
        header_id=hid,
        activity="acknowledgement",
        occurred=stamp,
        recorded=stamp,
        agent_org=sender_org,
        entities=[{"role": "revision", "what": {"reference": f"MessageHeader/{view.header_id}"}}],
    )
    response: dict[str, Any] = {"identifier": view.header_id, "code": code}
    outcome = None
    if problems_list:
        outcome = {
            "resourceType": "OperationOutcome",
            "id": derived_id(hid, "OperationOutcome"),
            "meta": {"profile": [PROFILE_OUTCOME]},
            "issue": [i.to_fhir() for i in problems_list],
        }
        response["details"] = ref(outcome)
    header = {
        "resourceType": "MessageHeader",
        "id": hid,
        "meta": {"profile": [PROFILE_HEADER]},
        "eventCoding": coding(EVENT_CODES, EVENT),
        "destination": [
            destination(
                receiver_org,
                (original.get("source") or {}).get("endpoint") or sor_endpoint(original_sender.sor),
            )
        ],
        "sender": ref(sender_org),
        "source": {"endpoint": sor_endpoint(ack_sender.sor) or "urn:unknown"},
        "response": response,
    }
    resources = [header, *orgs.resources(), copied, own]
    if outcome is not None:
        resources.append(outcome)
    return {
        "resourceType": "Bundle",
        "id": bundle_id or new_id(),
        "meta": {"profile": [PROFILE_MESSAGE]},
        "type": "message",
        "timestamp": fhir_datetime(stamp),
        "entry": [entry(r, base_url) for r in resources],
    }


def _issue(raw: Any) -> Issue:
    raw = raw if isinstance(raw, dict) else {}
    details = None
    codings = (raw.get("details") or {}).get("coding") or []
    if codings and isinstance(codings[0], dict):
        details = (str(codings[0].get("system", "")), str(codings[0].get("code", "")))
    diagnostics = (
        raw.get("diagnostics") or (raw.get("details") or {}).get("text") or (details[1] if details else "")
    )
    return Issue(
        cast(Severity, raw.get("severity", "error")),
        cast(IssueCode, raw.get("code", "processing")),
        str(diagnostics),
        tuple(str(e) for e in raw.get("expression") or ()),
        details,
    )


def parse_acknowledgement(bundle: Any) -> Receipt:
    """Read a received Acknowledgement (raises InvalidMessage naming each problem)."""
    view = read_message(bundle, EVENT)
    problems = view.problems
    header = view.header.resource
    response = header.get("response")
    rpath = f"{view.header.path}.response"
    if not isinstance(response, dict):
        problems.fail("an acknowledgement has MessageHeader.response", rpath, "required")
    acknowledged = response.get("identifier")
    if not isinstance(acknowledged, str) or not acknowledged:
        problems.add(
            "response.identifier names the acknowledged MessageHeader.id", f"{rpath}.identifier", "required"
        )
    code = response.get("code")
    if code not in ACK_CODES:
        problems.add(f"response.code must be one of {', '.join(ACK_CODES)}", f"{rpath}.code", "code-invalid")
    issues: tuple[Issue, ...] = ()
    if response.get("details") is not None:
        found = view.resolve(response["details"], f"{rpath}.details", "OperationOutcome")
        if found is not None:
            issues = tuple(_issue(i) for i in found.resource.get("issue") or [])
    elif code in ("transient-error", "fatal-error"):
        problems.add(
            "a negative acknowledgement references an OperationOutcome (medcom-acknowledgement-1)",
            f"{rpath}.details",
            "required",
        )
    sender = read_party(view, header.get("sender"), f"{view.header.path}.sender")
    dest = primary_destination(view)
    receiver = read_party(view, dest[0].get("receiver"), f"{dest[1]}.receiver") if dest else None
    timestamp = parse_datetime(view.bundle.get("timestamp"), "Bundle.timestamp", problems)
    problems.raise_if_any()
    assert timestamp is not None
    return Receipt(
        bundle_id=view.bundle_id,
        header_id=view.header_id,
        acknowledged_id=str(acknowledged),
        code=cast(AckCode, code),
        issues=issues,
        sender=sender,
        receiver=receiver,
        timestamp=timestamp,
    )


__all__ = [
    "ACK_CODES",
    "EVENT",
    "HL7_ACK_CODES",
    "MEDCOM_ERRORS",
    "AckCode",
    "Receipt",
    "build_acknowledgement",
    "correlate",
    "medcom_issue",
    "parse_acknowledgement",
]
