"""The canonical municipal care record, version 1 (``municipal-v1``).

What a Danish municipal home care and nursing system documents about one citizen, following FSIII
(Fælles Sprog III) and the KL Gateway profiles: the citizen, the responsible municipality and unit,
conditions (tilstande), goals (mål), planned and completed interventions (indsatser), observations,
medications, journal notes and contacts.

JSON keys equal the attribute names (snake_case); ``fhir-bridge schema municipal-record`` prints the
JSON Schema. Every list item carries an ``id`` that is unique within its list: the record item id of the
source system, from which the FHIR resource ids are derived.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from bridge.fhir import identifiers as ids
from bridge.municipal import fsiii

FORMAT: Literal["municipal-v1"] = "municipal-v1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, str_strip_whitespace=True)


def _checked(check: Any) -> AfterValidator:
    def run(value: str) -> str:
        problem = check(value)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(run)


NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=10_000)]
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^\S(.*\S)?$")]
Gln = Annotated[str, _checked(ids.check_gln)]
Sor = Annotated[str, _checked(ids.check_sor)]
Ydernummer = Annotated[str, _checked(ids.check_ydernummer)]
MunicipalityCode = Annotated[str, _checked(ids.check_municipality_code)]
Phone = Annotated[str, StringConstraints(pattern=r"^\+?[0-9 ]{4,20}$")]
FsiiiCode = Annotated[str, StringConstraints(min_length=1, max_length=100)]
#: FSIII severity scale (funktionsevne): 0 none .. 4 total limitation, 9 not relevant.
Severity = Literal[0, 1, 2, 3, 4, 9]


# --------------------------------------------------------------------------------------------- metadata
class RecordMetadata(_Model):
    """Where the record comes from and which version it is."""

    source_system: NonEmpty = Field(description="The municipal care system that produced the record")
    record_id: ItemId = Field(description="The record's id in the source system")
    version: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-.]{1,64}$")] = Field(
        description="Version of the record in the source system (letters, digits, '-' and '.')"
    )
    last_changed: AwareDatetime = Field(description="When the record last changed")


# --------------------------------------------------------------------------------------------- citizen
class PersonName(_Model):
    given: list[NonEmpty] = Field(default_factory=list, description="Given names, in order")
    family: NonEmpty


class Address(_Model):
    lines: list[NonEmpty] = Field(min_length=1)
    postal_code: Annotated[str, StringConstraints(pattern=r"^\d{4}$")]
    city: NonEmpty | None = None
    municipality_code: MunicipalityCode | None = Field(
        default=None, description="Kommunekode of the address (DK-core municipality codes)"
    )


class Citizen(_Model):
    """The citizen (borger). ``cpr`` is a CPR number or a replacement number (X-eCPR)."""

    cpr: Annotated[str, StringConstraints(min_length=10, max_length=10)]
    cpr_kind: Literal["cpr", "replacement"] | None = Field(
        default=None,
        description="'cpr' for a CPR number, 'replacement' for an X-eCPR number; derived if absent",
    )
    name: PersonName
    address: Address | None = None
    deceased: bool = False
    phone: Phone | None = None

    @model_validator(mode="after")
    def _check_cpr(self) -> Citizen:
        kind: Literal["cpr", "replacement"] = "replacement" if ids.is_replacement_cpr(self.cpr) else "cpr"
        if self.cpr_kind is not None and self.cpr_kind != kind:
            raise ValueError(f"cpr_kind is {self.cpr_kind!r} but the number is a {kind} number")
        problem = ids.check_replacement_cpr(self.cpr) if kind == "replacement" else ids.check_cpr(self.cpr)
        if problem:
            raise ValueError(problem)
        self.cpr_kind = kind
        return self


# --------------------------------------------------------------------------------------------- organisation
class OrganizationRef(_Model):
    name: NonEmpty
    sor: Sor | None = Field(default=None, description="SOR id (Sundhedsvæsenets Organisationsregister)")
    gln: Gln | None = Field(
        default=None, description="GLN/EAN location number, 13 digits with GS1 check digit"
    )


class Municipality(OrganizationRef):
    code: MunicipalityCode = Field(description="Kommunekode, e.g. 0101 for Copenhagen")


class CareUnit(OrganizationRef):
    kind: Literal["home-care-group", "nursing-home", "home-nursing", "rehabilitation", "other"]


class ResponsibleOrganization(_Model):
    """The responsible municipality and the unit (home care group, nursing home) that documents."""

    municipality: Municipality
    unit: CareUnit


# --------------------------------------------------------------------------------------------- FSIII content
class Condition(_Model):
    """A condition (tilstand): nursing (helbredstilstand) or home care (funktionsevnetilstand)."""

    id: ItemId
    code: FsiiiCode = Field(description="FSIII condition code, UUID or legacy (e.g. J1.1, I1.1)")
    kind: Literal["nursing", "home-care"] | None = Field(
        default=None, description="nursing or home-care; derived from the FSIII code if absent"
    )
    clinical_status: Literal["active", "inactive", "resolved", "recurrence", "relapse", "remission"]
    verification_status: Literal["confirmed", "unconfirmed", "provisional", "refuted", "entered-in-error"] = (
        "confirmed"
    )
    severity: Severity | None = Field(
        default=None, description="FSIII severity 0-4 or 9; required for home care, forbidden for nursing"
    )
    recorded: dt.date
    follow_up: dt.date | None = Field(
        default=None, description="Planned follow-up date (planlagt opfølgning)"
    )

    @model_validator(mode="after")
    def _check_code(self) -> Condition:
        group = fsiii.condition_kind(self.code)
        if group is None:
            raise ValueError(f"unknown FSIII condition code {self.code!r}")
        if self.kind is not None and self.kind != group:
            raise ValueError(f"FSIII code {self.code!r} is a {group} condition, not {self.kind}")
        self.kind = group
        if group == "home-care" and self.severity is None:
            raise ValueError("a home care condition requires a severity (KL Gateway)")
        if group == "nursing" and self.severity is not None:
            raise ValueError("a nursing condition must not have a severity (KL Gateway)")
        return self


class Goal(_Model):
    """A goal (mål): the expected severity for a home care condition."""

    id: ItemId
    condition_id: ItemId = Field(description="The condition this goal addresses")
    expected_severity: Severity
    lifecycle_status: Literal["proposed", "planned", "accepted", "active", "completed", "cancelled"] = (
        "planned"
    )
    start: dt.date


class Intervention(_Model):
    """An intervention (indsats): planned (CarePlan) or completed (Procedure)."""

    id: ItemId
    kind: Literal["planned", "completed"]
    code: FsiiiCode = Field(description="FSIII intervention code (level 2), UUID or legacy (e.g. H1.1)")
    local_code: NonEmpty | None = Field(default=None, description="Locally defined level-3 code")
    local_text: NonEmpty | None = Field(default=None, description="Display text of the local level-3 code")
    status: Literal["draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"]
    start: AwareDatetime | dt.date = Field(description="Start (planned) or time performed (completed)")
    end: AwareDatetime | dt.date | None = Field(default=None, description="End of a planned intervention")
    condition_ids: list[ItemId] = Field(default_factory=list, description="Conditions this addresses")

    @model_validator(mode="after")
    def _check(self) -> Intervention:
        if fsiii.intervention_kind(self.code) is None:
            raise ValueError(f"unknown FSIII intervention code {self.code!r}")
        if (self.local_code is None) != (self.local_text is None):
            raise ValueError("local_code and local_text go together")
        if self.kind == "completed":
            if self.status not in ("completed", "entered-in-error"):
                raise ValueError("a completed intervention has status completed or entered-in-error")
            if self.end is not None:
                raise ValueError("a completed intervention has a time performed (start), no end")
            if not isinstance(self.start, dt.datetime):
                raise ValueError("a completed intervention's start is a date and time")
        return self


#: The measurements the record knows, with the codes and UCUM units allowed for each.
OBSERVATION_CODES: dict[str, dict[tuple[str, str], str]] = {
    "weight": {("loinc", "29463-7"): "kg", ("npu", "NPU03804"): "kg"},
    "blood-pressure": {("loinc", "85354-9"): "mm[Hg]"},
    "pulse": {("loinc", "8867-4"): "/min", ("npu", "NPU21692"): "/min"},
    "temperature": {("loinc", "8310-5"): "Cel", ("npu", "NPU08676"): "Cel"},
    "spo2": {("loinc", "59408-5"): "%", ("loinc", "2708-6"): "%", ("npu", "NPU03011"): "%"},
    "blood-glucose": {("loinc", "15074-8"): "mmol/L", ("npu", "NPU22089"): "mmol/L"},
}


class ObservationCode(_Model):
    system: Literal["loinc", "npu"]
    code: NonEmpty


class Observation(_Model):
    """A vital sign or measurement. Blood pressure carries systolic and diastolic, the rest a value."""

    id: ItemId
    kind: Literal["weight", "blood-pressure", "pulse", "temperature", "spo2", "blood-glucose"]
    code: ObservationCode
    value: float | None = None
    systolic: float | None = None
    diastolic: float | None = None
    unit: NonEmpty = Field(description="UCUM unit, e.g. kg, mm[Hg], /min, Cel, %, mmol/L")
    effective: AwareDatetime
    performer: NonEmpty | None = Field(default=None, description="Name of who measured")
    status: Literal["final", "amended", "entered-in-error", "preliminary"] = "final"

    @model_validator(mode="after")
    def _check(self) -> Observation:
        allowed = OBSERVATION_CODES[self.kind]
        unit = allowed.get((self.code.system, self.code.code))
        if unit is None:
            codes = ", ".join(f"{s}:{c}" for s, c in allowed)
            raise ValueError(f"{self.code.system}:{self.code.code} is no {self.kind} code (one of {codes})")
        if self.unit != unit:
            raise ValueError(f"the UCUM unit of {self.kind} is {unit!r}, not {self.unit!r}")
        if self.kind == "blood-pressure":
            if self.systolic is None or self.diastolic is None or self.value is not None:
                raise ValueError("blood pressure has systolic and diastolic, and no value")
        elif self.value is None or self.systolic is not None or self.diastolic is not None:
            raise ValueError(f"{self.kind} has a value, and no systolic or diastolic")
        return self


class Medication(_Model):
    id: ItemId
    name: NonEmpty
    atc: Annotated[str, StringConstraints(pattern=r"^[A-Z]\d{2}[A-Z]{2}\d{2}$")] | None = Field(
        default=None, description="ATC code, e.g. N02BE01"
    )
    dose: NonEmpty | None = Field(default=None, description="Dose as text")
    route: NonEmpty | None = Field(default=None, description="Route of administration as text")
    status: Literal["active", "completed", "entered-in-error", "intended", "stopped", "on-hold", "unknown"]
    start: dt.date | None = None
    end: dt.date | None = None


class Author(_Model):
    name: NonEmpty
    role: NonEmpty = Field(description="e.g. sygeplejerske, social- og sundhedsassistent")


class JournalNote(_Model):
    id: ItemId
    time: AwareDatetime
    author: Author
    category: Literal["nursing", "home-care", "therapy", "medication", "general"]
    text: NonEmpty


class Relative(_Model):
    id: ItemId
    name: NonEmpty
    relationship: Literal[
        "spouse", "partner", "child", "parent", "sibling", "friend", "guardian", "neighbour"
    ]
    phone: Phone | None = None


class GeneralPractitioner(_Model):
    name: NonEmpty
    ydernummer: Ydernummer = Field(description="The practice's provider number (ydernummer)")
    sor: Sor | None = None
    phone: Phone | None = None


class Contacts(_Model):
    relatives: list[Relative] = Field(default_factory=list)
    general_practitioner: GeneralPractitioner | None = None


# --------------------------------------------------------------------------------------------- the record
class MunicipalRecord(_Model):
    """One citizen's municipal care record (``municipal-v1``)."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={"$id": "urn:fhir-bridge:schema:municipal-v1"},
    )

    format: Literal["municipal-v1"] = FORMAT
    metadata: RecordMetadata
    citizen: Citizen
    organization: ResponsibleOrganization
    conditions: list[Condition] = Field(default_factory=list)
    goals: list[Goal] = Field(default_factory=list)
    interventions: list[Intervention] = Field(default_factory=list)
    observations: list[Observation] = Field(default_factory=list)
    medications: list[Medication] = Field(default_factory=list)
    journal_notes: list[JournalNote] = Field(default_factory=list)
    contacts: Contacts = Field(default_factory=Contacts)

    @model_validator(mode="after")
    def _check_references(self) -> MunicipalRecord:
        for name in ("conditions", "goals", "interventions", "observations", "medications", "journal_notes"):
            seen: set[str] = set()
            for item in getattr(self, name):
                if item.id in seen:
                    raise ValueError(f"{name}: id {item.id!r} is used twice")
                seen.add(item.id)
        condition_ids = {c.id: c for c in self.conditions}
        for goal in self.goals:
            target = condition_ids.get(goal.condition_id)
            if target is None:
                raise ValueError(f"goal {goal.id!r} addresses unknown condition {goal.condition_id!r}")
            if target.kind != "home-care":
                raise ValueError(f"goal {goal.id!r} must address a home care condition (KL Gateway)")
        for iv in self.interventions:
            for cid in iv.condition_ids:
                if cid not in condition_ids:
                    raise ValueError(f"intervention {iv.id!r} addresses unknown condition {cid!r}")
        return self


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of the canonical record."""
    schema = MunicipalRecord.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Municipal care record (municipal-v1)"
    return schema
