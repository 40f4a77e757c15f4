"""The municipal correspondence (``correspondence-v1``): what a CareCommunication carries.

A correspondence (korrespondancemeddelelse) is one message in a thread between a municipality, a
hospital or a general practice: a category, an optional topic and priority, and ordered segments -
text paragraphs, each with its author, the author's role and phone and the time it was written, and
attachments. A reply or forward repeats the earlier segments and names the message it answers; the
Provenance of every earlier message in the thread travels along (``earlier``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from bridge.municipal.events import EpisodeOfCareId, FhirId, MessageMeta, Party, Text
from bridge.municipal.model import Citizen, PersonName

FORMAT = "correspondence-v1"

#: MedCom CareCommunication categories (CodeSystem medcom-careCommunication-categoryCodes).
Category = Literal[
    "alcohol-and-drug-treatment",
    "assistive-devices",
    "carecoordination",
    "decease",
    "discharge",
    "examination-results",
    "healthcare",
    "home-care-assessment",
    "medicine",
    "nursing",
    "outpatient",
    "psychiatry-social-disability",
    "regarding-referral",
    "telemedicine",
    "training",
    "acute-ambulant",
    "extended-care-responsibility",
    "other",
]
Kind = Literal["new", "reply", "forward"]
Activity = Literal["new-message", "reply-message", "forward-message"]
KIND_ACTIVITY: dict[Kind, Activity] = {
    "new": "new-message",
    "reply": "reply-message",
    "forward": "forward-message",
}
#: Segment and thread identifiers are UUIDs written as ``urn:uuid:...`` (MedCom constraint medcom-uuidv4).
UrnUuid = Annotated[
    str, StringConstraints(pattern=r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
]
Phone = Annotated[str, StringConstraints(pattern=r"^[+]?[-0-9 ]{1,30}$")]


class _Model(BaseModel):
    # No whitespace stripping: text is carried to and from messages unchanged (line breaks matter).
    model_config = ConfigDict(extra="forbid")


class Author(_Model):
    """The health professional who wrote a segment (PractitionerRole + Practitioner)."""

    name: PersonName
    role: Text = Field(description="role code, e.g. sygeplejerske, or free text when role_system is None")
    role_system: Text | None = Field(
        default="http://medcomfhir.dk/ig/terminology/CodeSystem/medcom-core-PractitionerRolesSKSadministrativ",
        description="code system of the role; None when the role is free text",
    )


class _Segment(_Model):
    id: UrnUuid = Field(description="the segment identifier (payload identifier extension)")
    time: AwareDatetime = Field(description="when the segment was written (datetime extension)")
    organization: Party = Field(description="the organisation that wrote the segment (identifier assigner)")
    author: Author | None = None
    contact: Phone | None = Field(default=None, description="the author's phone number")


class Paragraph(_Segment):
    """A text paragraph (message segment with text). Line breaks are ``\\n``."""

    type: Literal["text"] = "text"
    text: Annotated[str, StringConstraints(min_length=1)]

    @model_validator(mode="after")
    def _author(self) -> Paragraph:
        if self.author is None or self.contact is None:
            raise ValueError("a text paragraph has an author and the author's contact (MedCom)")
        return self


class Attachment(_Segment):
    """An attachment: inline base64 ``data`` or a ``url``; a reply carries no data again."""

    type: Literal["attachment"] = "attachment"
    title: Text
    content_type: Text | None = None
    data: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/=\s]+$")] | None = None
    url: Text | None = None
    creation: AwareDatetime | None = None


Segment = Annotated[Paragraph | Attachment, Field(discriminator="type")]


class HospitalContact(_Model):
    """The hospital stay the correspondence is about (Encounter), named by its episode-of-care ids."""

    status: Literal[
        "planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled", "unknown"
    ]
    stay: Literal["IMP", "EMER", "AMB", "HH", "VR"] = Field(description="v3 ActCode encounter class")
    episode_of_care: list[EpisodeOfCareId] = Field(min_length=1)


class ThreadMessage(_Model):
    """An earlier message of the thread, as its Provenance repeats it."""

    message_id: Text = Field(description="MessageHeader.id of the earlier message")
    activity: Activity
    occurred: AwareDatetime
    recorded: AwareDatetime | None = None
    sender: Party = Field(description="the organisation that sent it (Provenance.agent)")
    previous_message_id: Text | None = Field(default=None, description="the message it replied to/forwarded")
    previous_by_identifier: bool = Field(
        default=False, description="the previous message is named by identifier (an OIOXML letter)"
    )
    segment_ids: list[Text] = Field(default_factory=list, description="segments it added")
    provenance_id: FhirId | None = None

    @model_validator(mode="after")
    def _normalise(self) -> ThreadMessage:
        if self.recorded == self.occurred:
            self.recorded = None
        return self


class Correspondence(_Model):
    """One correspondence message (korrespondancemeddelelse) for or from the municipal care system."""

    format: Literal["correspondence-v1"] = "correspondence-v1"
    kind: Kind
    thread_id: UrnUuid = Field(description="communication identifier: the same for all replies in a thread")
    category: Category
    topic: Text | None = None
    priority: Literal["routine", "asap"] | None = None
    citizen: Citizen
    sender: Party
    receiver: Party
    segments: list[Segment] = Field(min_length=1, description="all segments, earlier ones included, in order")
    previous_message_id: Text | None = Field(
        default=None, description="MessageHeader.id of the message this one replies to or forwards"
    )
    previous_by_identifier: bool = False
    hospital_contact: HospitalContact | None = Field(
        default=None, description="the stay it concerns; its episode-of-care id SHALL be returned in replies"
    )
    earlier: list[ThreadMessage] = Field(default_factory=list)
    new_segment_ids: list[Text] | None = Field(
        default=None, description="segments this message adds; by default those no earlier message added"
    )
    message: MessageMeta | None = None

    @model_validator(mode="after")
    def _check(self) -> Correspondence:
        if self.priority is not None and self.category != "regarding-referral":
            raise ValueError("priority is only allowed for category regarding-referral (MedCom)")
        if self.category == "other" and self.topic is None:
            raise ValueError("category 'other' needs a topic (MedCom)")
        if (self.kind == "new") != (self.previous_message_id is None):
            raise ValueError("a reply or forward names previous_message_id, and a new message does not")
        ids = [s.id for s in self.segments]
        if len(set(ids)) != len(ids):
            raise ValueError("segment ids must be unique")
        if self.new_segment_ids is None:
            claimed = {i for m in self.earlier for i in m.segment_ids}
            self.new_segment_ids = [i for i in ids if i not in claimed]
        if not self.new_segment_ids:
            raise ValueError("a message adds at least one segment")
        return self

    @property
    def paragraphs(self) -> list[Paragraph]:
        """The text paragraphs, in order."""
        return [s for s in self.segments if isinstance(s, Paragraph)]

    @property
    def attachments(self) -> list[Attachment]:
        """The attachments, in order."""
        return [s for s in self.segments if isinstance(s, Attachment)]
