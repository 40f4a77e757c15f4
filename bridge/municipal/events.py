"""The municipal hospital stay event (``hospital-stay-event-v1``): what a HospitalNotification tells.

A hospital notifies the citizen's municipality (advis om sygehusophold) when the citizen is admitted
(indlagt or akut ambulant), goes on leave (orlov), comes back from leave, is discharged, or dies - and
when an earlier notification is corrected (rettelse, ``RE_``) or cancelled (annullering, ``AN_``).
The municipal care system gets one :class:`HospitalStayEvent` per notification; the MedCom use case
code (STIN, RE_STOR, AN_SLHJ, ...) follows from ``kind``, ``change`` and ``stay``.

The event also carries what is needed to rebuild the exact message (ids, times, the Provenance history
of earlier notifications), so that event -> HospitalNotification -> event is the identity.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from bridge.municipal.model import Citizen, Gln, Sor

FORMAT = "hospital-stay-event-v1"

Kind = Literal["admitted", "on-leave", "back-from-leave", "discharged", "died"]
Change = Literal["new", "correction", "cancellation"]
Stay = Literal["inpatient", "acute-ambulant"]
FhirId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-\.]{1,64}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=10_000)]

#: HospitalNotification Provenance activities (ValueSet medcom-hospitalNotification-messageActivities).
Activity = Literal[
    "admit-emergency",
    "revise-admit-emergency",
    "cancel-admit-emergency",
    "admit-inpatient",
    "revise-admit-inpatient",
    "cancel-admit-inpatient",
    "start-leave-inpatient",
    "revise-start-leave-inpatient",
    "cancel-start-leave-inpatient",
    "end-leave-inpatient",
    "revise-end-leave-inpatient",
    "cancel-end-leave-inpatient",
    "discharge-emergency-home",
    "revise-discharge-emergency-home",
    "cancel-discharge-emergency-home",
    "discharge-inpatient-home",
    "revise-discharge-inpatient-home",
    "cancel-discharge-inpatient-home",
]

_BASE_CODES: dict[tuple[Kind, Stay], str] = {
    ("admitted", "inpatient"): "STIN",
    ("admitted", "acute-ambulant"): "STAA",
    ("on-leave", "inpatient"): "STOR",
    ("back-from-leave", "inpatient"): "SLOR",
    ("discharged", "inpatient"): "SLHJ",
    ("discharged", "acute-ambulant"): "SLHJ",
    ("died", "inpatient"): "MORS",
    ("died", "acute-ambulant"): "MORS",
}
_PREFIX: dict[Change, str] = {"new": "", "correction": "RE_", "cancellation": "AN_"}


def medcom_code(kind: Kind, change: Change, stay: Stay) -> str:
    """The MedCom use case code (e.g. ``STIN``, ``RE_STOR``, ``AN_SLHJ``) of an event, or ValueError."""
    base = _BASE_CODES.get((kind, stay))
    if base is None:
        raise ValueError(f"an {stay} stay has no {kind!r} notification (leave exists only for inpatients)")
    return _PREFIX[change] + base


class _Model(BaseModel):
    # No whitespace stripping: values are carried to and from messages unchanged.
    model_config = ConfigDict(extra="forbid")


class Party(_Model):
    """An organisation in a MedCom message: name, SOR id and GLN/EAN location number."""

    name: Text | None = None
    sor: Sor | None = Field(default=None, description="SOR id (Sundhedsvæsenets Organisationsregister)")
    gln: Gln | None = Field(default=None, description="GLN/EAN location number (lokationsnummer)")

    @model_validator(mode="after")
    def _identified(self) -> Party:
        if self.sor is None and self.gln is None:
            raise ValueError("an organisation needs a SOR id or a GLN")
        return self


class EpisodeOfCareId(_Model):
    """An episode-of-care identifier (forløbs-id): a local UUID (system = SOR endpoint) or an LPR3 id."""

    system: Text
    value: Text


class MessageMeta(_Model):
    """The ids and times of one message: Bundle, MessageHeader and the message's own Provenance."""

    bundle_id: FhirId
    header_id: FhirId
    timestamp: AwareDatetime = Field(description="Bundle.timestamp: when the message was assembled")
    sent: AwareDatetime = Field(description="Provenance.occurredDateTime of this message")
    recorded: AwareDatetime | None = Field(default=None, description="Provenance.recorded when not = sent")
    provenance_id: FhirId
    source_endpoint: Text | None = Field(default=None, description="MessageHeader.source.endpoint if not SOR")
    destination_endpoint: Text | None = Field(default=None, description="destination endpoint if not SOR")

    @model_validator(mode="after")
    def _normalise(self) -> MessageMeta:
        if self.recorded == self.sent:
            self.recorded = None  # written as occurred; None and equal mean the same
        return self


class NotificationRecord(_Model):
    """One earlier notification of the same stay, as its Provenance repeats it."""

    message_id: FhirId = Field(description="MessageHeader.id of the earlier notification")
    activity: Activity
    occurred: AwareDatetime
    recorded: AwareDatetime | None = None
    previous_message_id: FhirId | None = Field(default=None, description="the notification it revised")
    previous_role: Literal["revision", "removal"] | None = None
    provenance_id: FhirId | None = None

    @model_validator(mode="after")
    def _normalise(self) -> NotificationRecord:
        if self.recorded == self.occurred:
            self.recorded = None
        if self.previous_message_id is None:
            self.previous_role = None
        return self


class HospitalStayEvent(_Model):
    """One hospital stay event (advis om sygehusophold) for the municipal care system."""

    format: Literal["hospital-stay-event-v1"] = "hospital-stay-event-v1"
    kind: Kind
    change: Change = "new"
    stay: Stay = Field(description="inpatient (IMP, indlagt) or acute-ambulant (EMER, akut ambulant)")
    code: str | None = Field(default=None, description="MedCom use case code; derived when absent")
    citizen: Citizen
    hospital_unit: Party = Field(description="Encounter.serviceProvider: the unit where the citizen stays")
    sender: Party | None = Field(default=None, description="MessageHeader.sender when not the unit")
    receiver: Party = Field(description="the receiving municipality (primary destination)")
    episode_of_care: list[EpisodeOfCareId] = Field(min_length=1)
    stay_start: AwareDatetime
    stay_end: AwareDatetime | None = None
    leave_start: AwareDatetime | None = None
    leave_end: AwareDatetime | None = None
    ongoing_activity: Activity | None = Field(
        default=None, description="for a death (MORS): the activity of the stay when the citizen died"
    )
    status_before_death: Literal["in-progress", "onleave", "finished"] | None = Field(
        default=None, description="for a cancelled death (AN_MORS): the Encounter.status to restore"
    )
    report_of_admission: bool | None = Field(default=None, description="an admission report is requested")
    report_of_admission_recipient: Party | None = None
    previous_message_id: FhirId | None = Field(
        default=None, description="MessageHeader.id of the notification this one follows, revises or cancels"
    )
    earlier: list[NotificationRecord] = Field(
        default_factory=list, description="Provenance of every earlier notification of this stay"
    )
    message: MessageMeta | None = Field(default=None, description="message ids; new ones are made if absent")

    @model_validator(mode="after")
    def _check(self) -> HospitalStayEvent:
        code = medcom_code(self.kind, self.change, self.stay)
        if self.code is not None and self.code != code:
            raise ValueError(f"code is {self.code!r} but kind/change/stay say {code!r}")
        self.code = code
        dying = self.kind == "died"
        if dying != (self.ongoing_activity is not None):
            raise ValueError("ongoing_activity is given exactly for a death (MORS)")
        if dying and self.ongoing_activity is not None and self.ongoing_activity.startswith("cancel-"):
            raise ValueError("ongoing_activity of a death cannot be a cancellation")
        if (dying and self.change == "cancellation") != (self.status_before_death is not None):
            raise ValueError("status_before_death is given exactly for a cancelled death (AN_MORS)")
        if self.kind == "on-leave" and self.change != "cancellation" and self.leave_start is None:
            raise ValueError("a leave needs leave_start (medcom-hospitalNotification-6)")
        if self.status_before_death == "onleave" and self.leave_start is None:
            # the cancelled death restores Encounter.status onleave, which carries the leave period
            raise ValueError("a cancelled death on leave needs leave_start (medcom-hospitalNotification-6)")
        if self.kind == "back-from-leave" and self.change != "cancellation" and self.leave_end is None:
            raise ValueError("the end of a leave needs leave_end")
        if self.leave_end is not None and self.leave_start is None:
            raise ValueError("leave_end needs leave_start")
        if self.kind in ("discharged", "died") and self.change != "cancellation" and self.stay_end is None:
            raise ValueError(f"a {self.kind} event needs stay_end")
        if self.stay_end is not None and self.stay_end < self.stay_start:
            raise ValueError("stay_end is before stay_start")
        if self.sender == self.hospital_unit:
            self.sender = None  # the unit sends itself: one organisation, said once
        # The citizen's deceased flag follows the event, so that a parsed message equals its event.
        self.citizen.deceased = dying and self.change != "cancellation"
        return self

    @property
    def event_time(self) -> AwareDatetime:
        """When the notified thing happened: admission, leave start/end, discharge or death."""
        if self.kind == "on-leave" and self.leave_start is not None:
            return self.leave_start
        if self.kind == "back-from-leave" and self.leave_end is not None:
            return self.leave_end
        if self.kind in ("discharged", "died") and self.stay_end is not None:
            return self.stay_end
        return self.stay_start
