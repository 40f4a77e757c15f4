"""An independent second check of produced FHIR against the published KL Gateway profiles.

The rules are transcribed from KL's FSH profiles (``klgateway-care-condition``, ``-care-goal``,
``-care-planned-intervention``, ``-care-completed-intervention``, ``-care-general-encounter``) into the
table ``PROFILES`` below, one row per constraint: elements that must be absent (``..0``), cardinalities,
fixed values, the FSIII code groups a coding must come from, references that must resolve inside the
Bundle (``aggregation = #bundled``) and the profiles' invariants. It deliberately shares nothing with
the mapping specs, so a mapping mistake cannot hide itself.

``check_bundle`` returns an Outcome whose issues name the profile and the element
(``Bundle.entry[3].resource.severity``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bridge.fhir.outcome import Issue, IssueCode, Outcome, error
from bridge.municipal import fsiii

__all__ = [
    "CONDITION_CATEGORY_SYSTEM",
    "KL_COMMON_CODES",
    "LOCAL_INTERVENTIONS",
    "PROFILES",
    "Profile",
    "check_bundle",
    "check_resource",
]

FSIII = fsiii.SYSTEM
KL_COMMON_CODES = "http://fhir.kl.dk/term/CodeSystem/CareSocialCodes"
LOCAL_INTERVENTIONS = "http://fhir.kl.dk/gateway/CodeSystem/LocallyDefinedInterventions"
CONDITION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-category"
#: KL common code of an Encounter that is a follow-up (opfølgning).
FOLLOW_UP = "9f03dfbb-7a97-45a5-94db-d4c3501714a9"

Located = tuple[str, Any]
#: What a rule reports: (location, message, FHIR issue code).
Found = Iterator[tuple[str, str, IssueCode]]


# --------------------------------------------------------------------------------------------- paths
def _select(node: Any, path: str, where: str) -> list[Located]:
    """Values at a dotted element path, each with its FHIRPath location (repeats get ``[i]``)."""
    current: list[Located] = [(where, node)]
    for step in path.split(".") if path else ():
        found: list[Located] = []
        for at, value in current:
            if not isinstance(value, dict) or step not in value:
                continue
            child = value[step]
            if isinstance(child, list):
                found.extend((f"{at}.{step}[{i}]", item) for i, item in enumerate(child))
            else:
                found.append((f"{at}.{step}", child))
        current = found
    return current


@dataclass(frozen=True)
class _Context:
    """What rules may look up beyond the resource: the Bundle's entries by reference."""

    entries: dict[str, dict[str, Any]]

    def resolve(self, reference: Any) -> dict[str, Any] | None:
        if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
            return None
        return self.entries.get(reference["reference"])


# --------------------------------------------------------------------------------------------- rule kinds
@dataclass(frozen=True)
class Absent:
    """``path ..0``: the element must not be present."""

    path: str

    def check(self, resource: dict[str, Any], where: str, ctx: _Context) -> Found:
        for at, _ in _select(resource, self.path, where):
            yield at, f"{self.path} is not allowed (..0)", "structure"


@dataclass(frozen=True)
class Count:
    """``parent.child min..max``, checked for every ``parent`` that is present."""

    parent: str
    child: str
    min: int
    max: int | None

    def check(self, resource: dict[str, Any], where: str, ctx: _Context) -> Found:
        for at, node in _select(resource, self.parent, where):
            value = node.get(self.child) if isinstance(node, dict) else None
            n = len(value) if isinstance(value, list) else (0 if value is None else 1)
            name = f"{self.parent}.{self.child}" if self.parent else self.child
            card = f"{self.min}..{'*' if self.max is None else self.max}"
            if n < self.min:
                yield f"{at}.{self.child}", f"{name} is required ({card})", "required"
            elif self.max is not None and n > self.max:
                yield f"{at}.{self.child}", f"{name} occurs {n} times ({card})", "structure"


@dataclass(frozen=True)
class Fixed:
    """Every value at ``path`` equals ``value``."""

    path: str
    value: Any

    def check(self, resource: dict[str, Any], where: str, ctx: _Context) -> Found:
        for at, actual in _select(resource, self.path, where):
            if actual != self.value:
                yield at, f"{self.path} must be {self.value!r}", "value"


@dataclass(frozen=True)
class FixedCoding:
    """Every Coding at ``path`` is ``system#code``."""

    path: str
    system: str
    code: str

    def check(self, resource: dict[str, Any], where: str, ctx: _Context) -> Found:
        for at, coding in _select(resource, self.path, where):
            pair = (coding.get("system"), coding.get("code")) if isinstance(coding, dict) else None
            if pair != (self.system, self.code):
                yield at, f"{self.path} must be {self.system}#{self.code}", "value"


@dataclass(frozen=True)
class Fsiii:
    """Every Coding at ``path`` is an FSIII code of one of ``groups`` (the profile's required binding)."""

    path: str
    groups: frozenset[str]

    def check(self, resource: dict[str, Any], where: str, ctx: _Context) -> Found:
        wanted = " or ".join(sorted(self.groups))
        for at, coding in _select(resource, self.path, where):
            if not isinstance(coding, dict) or coding.get("system") != FSIII:
                yield f"{at}.system", f"{self.path} must use the FSIII code system {FSIII}", "code-invalid"
            elif fsiii.group(str(coding.get("code"))) not in self.groups:
                code = coding.get("code")
                yield f"{at}.code", f"{self.path}: {code!r} is no FSIII {wanted} code", "code-invalid"


@dataclass(frozen=True)
class InterventionCoding:
    """The closed slicing of intervention codes: one FSIII level 2 code, at most one local level 3
    code with code and display, nothing else."""

    path: str

    def check(self, resource: dict[str, Any], where: str, ctx: _Context) -> Found:
        for at, concept in _select(resource, self.path, where):
            codings = _select(concept, "coding", at)
            level2 = [(a, c) for a, c in codings if isinstance(c, dict) and c.get("system") == FSIII]
            level3 = [
                (a, c) for a, c in codings if isinstance(c, dict) and c.get("system") == LOCAL_INTERVENTIONS
            ]
            for a, c in codings:
                if not isinstance(c, dict) or c.get("system") not in (FSIII, LOCAL_INTERVENTIONS):
                    message = "only FSIII (level 2) and local (level 3) codings are allowed"
                    yield f"{a}.system", message, "code-invalid"
            if len(level2) != 1:
                message = f"exactly one FSIII level 2 coding is required, found {len(level2)}"
                yield f"{at}.coding", message, "required"
            for a, c in level2:
                if fsiii.intervention_kind(str(c.get("code"))) is None:
                    yield f"{a}.code", f"{c.get('code')!r} is no FSIII intervention code", "code-invalid"
            if len(level3) > 1:
                yield f"{at}.coding", "at most one local level 3 coding is allowed", "structure"
            for a, c in level3:
                for part in ("code", "display"):
                    if not c.get(part):
                        yield f"{a}.{part}", f"a local level 3 coding requires {part}", "required"


@dataclass(frozen=True)
class Bundled:
    """``aggregation = #bundled``: each Reference at ``path`` resolves to an entry of one of ``types``."""

    path: str
    types: tuple[str, ...]

    def check(self, resource: dict[str, Any], where: str, ctx: _Context) -> Found:
        for at, ref in _select(resource, self.path, where):
            target = ctx.resolve(ref)
            if target is None:
                yield at, f"{self.path} must reference a resource inside the Bundle", "not-found"
            elif target.get("resourceType") not in self.types:
                yield at, f"{self.path} must reference a {' or '.join(self.types)}", "value"


@dataclass(frozen=True)
class Invariant:
    """A named invariant of the profile, with its check as a function."""

    key: str
    human: str
    test: Callable[[dict[str, Any], _Context], str | None]  # returns the offending element, or None

    def check(self, resource: dict[str, Any], where: str, ctx: _Context) -> Found:
        element = self.test(resource, ctx)
        if element is not None:
            yield f"{where}.{element}" if element else where, f"{self.key}: {self.human}", "invariant"


Rule = Absent | Count | Fixed | FixedCoding | Fsiii | InterventionCoding | Bundled | Invariant


# --------------------------------------------------------------------------------------------- invariants
def _condition_kind(condition: dict[str, Any]) -> str | None:
    for _, coding in _select(condition, "code.coding", ""):
        if isinstance(coding, dict) and coding.get("system") == FSIII:
            kind = fsiii.condition_kind(str(coding.get("code")))
            if kind is not None:
                return kind
    return None


def _severity_rule(condition: dict[str, Any], ctx: _Context) -> str | None:
    kind = _condition_kind(condition)
    has = "severity" in condition
    if kind == "home-care" and not has:
        return "severity"
    if kind == "nursing" and has:
        return "severity"
    return None


def _goal_addresses_home_care(goal: dict[str, Any], ctx: _Context) -> str | None:
    for at, ref in _select(goal, "addresses", ""):
        target = ctx.resolve(ref)
        if target is None or target.get("resourceType") != "Condition":
            continue  # the Bundled rule reports that
        if _condition_kind(target) != "home-care":
            return at.lstrip(".")
    return None


def _follow_up_has_reason(encounter: dict[str, Any], ctx: _Context) -> str | None:
    follow_up = any(
        isinstance(c, dict) and c.get("code") == FOLLOW_UP for _, c in _select(encounter, "type.coding", "")
    )
    return "reasonReference" if follow_up and not encounter.get("reasonReference") else None


# --------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Profile:
    """A KL Gateway profile: its id and its rules."""

    id: str
    resource_type: str
    rules: tuple[Rule, ...]


def _absent(*paths: str) -> tuple[Absent, ...]:
    return tuple(Absent(p) for p in paths)


def _coding_extras(*parents: str, display: bool = True) -> tuple[Absent, ...]:
    """``X.coding.version ..0``, ``X.coding.userSelected ..0``, ``X.text ..0`` (and display ..0)."""
    out: list[str] = []
    for p in parents:
        out += [f"{p}.coding.version", f"{p}.coding.userSelected", f"{p}.text"]
        if display:
            out.append(f"{p}.coding.display")
    return _absent(*out)


_CONDITION_GROUPS = frozenset({"nursing-condition", "home-care-condition"})
_SEVERITY = frozenset({"severity"})
_CHOICES = {
    "onset": ("DateTime", "Age", "Period", "Range", "String"),
    "abatement": ("DateTime", "Age", "Period", "Range", "String"),
}

CONDITION = Profile(
    "klgateway-care-condition",
    "Condition",
    (
        *_absent("identifier", "bodySite", "encounter", "recorder", "asserter", "stage", "evidence", "note"),
        *_absent(*(f"{e}{t}" for e, types in _CHOICES.items() for t in types)),
        *_coding_extras("clinicalStatus", "verificationStatus", "category"),
        Count("clinicalStatus", "coding", 1, 1),
        Count("verificationStatus", "coding", 1, 1),
        Count("", "category", 0, 1),
        Count("category", "coding", 1, 1),
        Fixed("category.coding.code", "problem-list-item"),
        Count("severity", "coding", 1, 1),
        Fsiii("severity.coding", _SEVERITY),
        Count("", "code", 1, 1),
        Count("code", "coding", 1, 1),
        Fsiii("code.coding", _CONDITION_GROUPS),
        Count("", "recordedDate", 1, 1),
        Count("", "subject", 1, 1),
        Bundled("subject", ("Patient",)),
        Invariant(
            "klgateway-severity-mandatory-in-home-care-not-allowed-in-nursing",
            "the severity is mandatory for home care and not allowed for nursing conditions",
            _severity_rule,
        ),
    ),
)

GOAL = Profile(
    "klgateway-care-goal",
    "Goal",
    (
        *_absent(
            "identifier",
            "achievementStatus",
            "priority",
            "statusDate",
            "statusReason",
            "expressedBy",
            "note",
            "outcomeCode",
            "outcomeReference",
            "startCodeableConcept",
        ),
        *_absent(
            *(f"target.detail{t}" for t in ("Quantity", "Range", "String", "Boolean", "Integer", "Ratio"))
        ),
        *_coding_extras("category", "target.measure", display=False),
        Count("", "category", 1, 1),
        Count("category", "coding", 1, 1),
        FixedCoding("category.coding", KL_COMMON_CODES, "ca552020-6ed1-4cdc-b0d4-32697f1f27ad"),
        Count("description", "coding", 1, 1),
        FixedCoding("description.coding", FSIII, "e182c5dc-9f91-474a-92e8-f62be3d498f4"),
        Count("", "startDate", 1, 1),
        Count("", "target", 1, 1),
        Count("target", "measure", 1, 1),
        Count("target.measure", "coding", 1, 1),
        FixedCoding("target.measure.coding", KL_COMMON_CODES, "66959f77-6e2a-4574-8423-3ff097f8b9fa"),
        Fsiii("target.detailCodeableConcept.coding", _SEVERITY),
        Bundled("subject", ("Patient",)),
        Count("", "addresses", 1, 1),
        Bundled("addresses", ("Condition",)),
        Invariant(
            "klgateway-adresses-must-be-home-care-condition",
            "the goal is only allowed to address home care conditions",
            _goal_addresses_home_care,
        ),
    ),
)

PLANNED_INTERVENTION = Profile(
    "klgateway-care-planned-intervention",
    "CarePlan",
    (
        *_absent(
            "identifier",
            "instantiatesCanonical",
            "instantiatesUri",
            "basedOn",
            "replaces",
            "partOf",
            "category",
            "title",
            "description",
            "encounter",
            "created",
            "author",
            "contributor",
            "careTeam",
            "addresses",
            "supportingInfo",
            "goal",
            "note",
        ),
        *_absent(
            *(
                f"activity.{e}"
                for e in ("outcomeCodeableConcept", "outcomeReference", "progress", "reference")
            )
        ),
        *_absent(
            *(
                f"activity.detail.{e}"
                for e in (
                    "kind",
                    "instantiatesCanonical",
                    "instantiatesUri",
                    "reasonCode",
                    "goal",
                    "statusReason",
                    "doNotPerform",
                    "scheduledTiming",
                    "scheduledPeriod",
                    "scheduledString",
                    "location",
                    "performer",
                    "productCodeableConcept",
                    "productReference",
                    "dailyAmount",
                    "quantity",
                    "description",
                )
            )
        ),
        Fixed("intent", "plan"),
        Count("", "period", 1, 1),
        Count("period", "start", 1, 1),
        Count("", "activity", 1, 1),
        Count("activity", "detail", 1, 1),
        Count("activity.detail", "code", 1, 1),
        InterventionCoding("activity.detail.code"),
        Bundled("subject", ("Patient",)),
        Bundled("activity.detail.reasonReference", ("Condition",)),
    ),
)

COMPLETED_INTERVENTION = Profile(
    "klgateway-care-completed-intervention",
    "Procedure",
    (
        *_absent(
            "identifier",
            "instantiatesCanonical",
            "instantiatesUri",
            "basedOn",
            "partOf",
            "statusReason",
            "category",
            "encounter",
            "recorder",
            "asserter",
            "performer",
            "location",
            "reasonCode",
            "bodySite",
            "outcome",
            "report",
            "complication",
            "complicationDetail",
            "followUp",
            "note",
            "focalDevice",
            "usedReference",
            "usedCode",
        ),
        *_absent(*(f"performed{t}" for t in ("Period", "String", "Age", "Range"))),
        Count("", "code", 1, 1),
        InterventionCoding("code"),
        Count("", "performedDateTime", 1, 1),
        Bundled("subject", ("Patient",)),
        Bundled("reasonReference", ("Condition",)),
    ),
)

GENERAL_ENCOUNTER = Profile(
    "klgateway-care-general-encounter",
    "Encounter",
    (
        *_absent(
            "identifier",
            "statusHistory",
            "class.version",
            "class.userSelected",
            "classHistory",
            "serviceType",
            "priority",
            "episodeOfCare",
            "basedOn",
            "participant",
            "appointment",
            "length",
            "reasonCode",
            "diagnosis",
            "account",
            "hospitalization",
            "location",
            "serviceProvider",
            "partOf",
        ),
        *_coding_extras("type", display=False),
        Count("", "type", 1, None),
        Count("type", "coding", 1, 1),
        Count("", "subject", 1, 1),
        Bundled("subject", ("Patient",)),
        Count("", "period", 1, 1),
        Count("period", "start", 1, 1),
        Bundled("reasonReference", ("Condition",)),
        Invariant(
            "klgateway-follow-up-references-condition",
            "a follow-up encounter must reference the conditions it follows up",
            _follow_up_has_reason,
        ),
    ),
)

#: The checked profiles by resource type.
PROFILES: dict[str, Profile] = {
    p.resource_type: p
    for p in (CONDITION, GOAL, PLANNED_INTERVENTION, COMPLETED_INTERVENTION, GENERAL_ENCOUNTER)
}


# --------------------------------------------------------------------------------------------- entry points
def _index(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Entries by every string a reference may use for them: fullUrl, ``Type/id`` and (for absolute
    RESTful fullUrls) the relative ``Type/id`` tail."""
    out: dict[str, dict[str, Any]] = {}
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str):
            out[full_url] = resource
            parts = full_url.rstrip("/").split("/")
            if len(parts) >= 2 and not full_url.startswith("urn:"):
                out.setdefault(f"{parts[-2]}/{parts[-1]}", resource)
        if isinstance(resource.get("id"), str):
            out.setdefault(f"{resource.get('resourceType')}/{resource['id']}", resource)
    return out


def _run(profile: Profile, resource: dict[str, Any], where: str, ctx: _Context) -> Iterator[Issue]:
    for rule in profile.rules:
        for at, message, code in rule.check(resource, where, ctx):
            yield error(f"{profile.id}: {message}", at, code=code)


def check_resource(
    resource: dict[str, Any], bundle: dict[str, Any] | None = None, where: str | None = None
) -> Outcome:
    """Check one resource against its KL Gateway profile; references resolve inside ``bundle``."""
    outcome = Outcome()
    profile = PROFILES.get(str(resource.get("resourceType")))
    if profile is not None:
        ctx = _Context(_index(bundle) if bundle else {})
        outcome.extend(_run(profile, resource, where or profile.resource_type, ctx))
    return outcome


def check_bundle(bundle: dict[str, Any]) -> Outcome:
    """Check every Condition, Goal, CarePlan, Procedure and Encounter of a KL Gateway Bundle.

    Returns an Outcome with one error per violated constraint, located at the offending element.
    """
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return Outcome([error("KL Gateway data is delivered as a Bundle", "resourceType", code="structure")])
    ctx = _Context(_index(bundle))
    outcome = Outcome()
    for i, entry in enumerate(bundle.get("entry") or ()):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        profile = PROFILES.get(str(resource.get("resourceType")))
        if profile is not None:
            outcome.extend(_run(profile, resource, f"Bundle.entry[{i}].resource", ctx))
    return outcome
