"""Translation between the municipal care record and FHIR R4, driven by the mapping specs.

The pure entry points the command line and the service use. Input errors come back as
``InvalidInput`` / ``UnmappableRecord`` carrying an OperationOutcome with the path of each problem.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bridge.errors import InvalidInput, InvalidMessage, UnmappableRecord
from bridge.fhir.outcome import Issue, IssueCode, Outcome
from bridge.mapping.engine import MappingSet, load_mapping_set
from bridge.municipal.model import MunicipalRecord

MAPPINGS_ENV = "BRIDGE_MAPPINGS_DIR"


CANONICAL = "municipal-v1"


def mappings_root() -> Path:
    """The folder holding the mapping sets: ``$BRIDGE_MAPPINGS_DIR``, else the project's ``mappings/``.

    An installed bridge (a wheel, no project folder around it) uses the copy the build put into the
    package, ``bridge/_mappings/``.
    """
    configured = os.environ.get(MAPPINGS_ENV)
    if configured:
        return Path(configured)
    package = Path(__file__).resolve().parent
    project = package.parent / "mappings"
    return project if project.is_dir() else package / "_mappings"


def default_mappings_dir() -> Path:
    """The canonical record's mapping set (``municipal-v1``) under ``mappings_root()``."""
    return mappings_root() / CANONICAL


@cache
def _load(directory: str) -> MappingSet:
    return load_mapping_set(Path(directory))


_default: tuple[str | None, MappingSet] | None = None


def mapping_set(directory: Path | None = None) -> MappingSet:
    """The compiled mappings of ``directory`` (default: the canonical set), compiled once.

    Once the mapping sets are loaded as a whole (``mapping_sets``, as the service does), the default is
    the canonical set of that registry, so a reload changes it too.
    """
    global _default
    if directory is None:
        state = _state
        configured = os.environ.get(MAPPINGS_ENV)
        if state is not None and state[0] == configured:
            return state[2][CANONICAL].mappings  # type: ignore[no-any-return]
        if _default is None or _default[0] != configured:
            _default = (configured, _load(str(default_mappings_dir().resolve())))
        return _default[1]
    return _load(str(directory.resolve()))


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".")


def validation_issues(exc: ValidationError, prefix: str = "") -> list[Issue]:
    """pydantic errors as OperationOutcome issues, one per problem, located by record path."""
    issues = []
    for err in exc.errors(include_url=False, include_input=False):
        path = _loc(tuple(err["loc"]))
        where = f"{prefix}{path}" if path else prefix.rstrip(".") or "(record)"
        code: IssueCode = "required" if err["type"] == "missing" else "value"
        message = str(err["msg"]).removeprefix("Value error, ")
        issues.append(Issue("error", code, message, (where,)))
    return issues


def parse_record(data: bytes | str | dict[str, Any]) -> MunicipalRecord:
    """Validate a municipal record (JSON text or an already parsed object)."""
    try:
        if isinstance(data, dict):
            return MunicipalRecord.model_validate(data)
        return MunicipalRecord.model_validate_json(data)
    except ValidationError as exc:
        raise InvalidInput(validation_issues(exc), "the municipal record is not valid") from exc


def record_to_fhir(record: MunicipalRecord, mappings: MappingSet | None = None) -> dict[str, Any]:
    """A validated record -> a FHIR R4 Bundle (type collection) as a JSON-ready dict."""
    ms = mappings or mapping_set()
    return ms.to_fhir(record.model_dump(mode="json", exclude_none=True))


def fhir_to_record(
    bundle: dict[str, Any], mappings: MappingSet | None = None
) -> tuple[MunicipalRecord, Outcome]:
    """A FHIR Bundle -> the municipal record, with a warning for each element the record cannot hold."""
    ms = mappings or mapping_set()
    reading = ms.read_bundle(bundle)
    outcome = Outcome(reading.warnings)
    try:
        record = MunicipalRecord.model_validate(reading.record)
    except ValidationError as exc:
        issues = validation_issues(exc, prefix="MunicipalRecord.")
        raise UnmappableRecord(
            issues + outcome.issues, "the Bundle does not make a valid municipal record"
        ) from exc
    # the record as read (before the model's defaults): what the Bundle said, so what it could keep
    outcome.extend(ms.left_behind(bundle, reading.record, reading))
    return record, outcome


# ------------------------------------------------------------------------------------------ mapping sets
#: (BRIDGE_MAPPINGS_DIR as set, the resolved root, the loaded sets by name)
_state: tuple[str | None, str, dict[str, Any]] | None = None
_reload_lock = threading.Lock()


def mapping_sets() -> dict[str, Any]:
    """Every mapping set under ``mappings_root()`` by name (``LoadedSet``), loaded once."""
    from bridge.mapping.registry import load_all

    global _state
    configured = os.environ.get(MAPPINGS_ENV)
    state = _state
    if state is None or state[0] != configured:
        root = str(mappings_root().resolve())
        state = _state = (configured, root, load_all(Path(root)))
    return state[2]


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What a reload did: ``swapped`` only when every set compiled and every case passed."""

    swapped: bool
    versions: dict[str, str]  # the versions in force after the reload
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"swapped": self.swapped, "versions": self.versions, "problems": list(self.problems)}


def reload_mappings() -> ReloadReport:
    """Load the mapping sets again, test them against their own cases, and put them in force only if
    every set compiles and every case passes; otherwise the sets in force stay, and the report says why."""
    from bridge.errors import MappingSpecError
    from bridge.mapping.cases import discover, run_case
    from bridge.mapping.registry import load_all

    global _state
    with _reload_lock:
        current = mapping_sets()
        in_force = {name: s.version for name, s in current.items()}
        root = str(mappings_root().resolve())
        try:
            candidate = load_all(Path(root))
        except MappingSpecError as exc:
            return ReloadReport(False, in_force, (f"broken mapping spec: {exc}",))
        problems = []
        if CANONICAL not in candidate:
            problems.append(f"the canonical set {CANONICAL} is missing")
        for name, loaded in sorted(candidate.items()):
            for case in discover(loaded):
                result = run_case(loaded, case)
                problems.extend(f"{name} / {case.name}: {p}" for p in result.problems)
        if problems:
            return ReloadReport(False, in_force, tuple(problems))
        _state = (os.environ.get(MAPPINGS_ENV), root, candidate)
        return ReloadReport(True, {name: s.version for name, s in candidate.items()})


def loaded_set(name: str) -> Any:
    """The mapping set ``name``; an unknown name is an input error naming the known ones."""
    sets = mapping_sets()
    if name not in sets:
        known = ", ".join(sorted(sets))
        raise InvalidInput(
            [Issue("error", "not-supported", f"unknown mapping {name!r}; one of {known}", ("mapping",))]
        )
    return sets[name]


# ------------------------------------------------------------------------------------------ any kind
#: The municipal JSON formats the bridge translates, by their ``format`` field.
MUNICIPAL_FORMATS = ("municipal-v1", "hospital-stay-event-v1", "correspondence-v1")


def municipal_to_fhir(
    data: bytes | str | dict[str, Any], mappings: MappingSet | None = None
) -> dict[str, Any]:
    """Any municipal JSON -> FHIR, chosen by its ``format``: a care record (default) becomes a collection
    Bundle through the mapping specs; a hospital stay event a MedCom HospitalNotification; a
    correspondence a MedCom CareCommunication."""
    import orjson

    from bridge.medcom.care_communication import build_care_communication
    from bridge.medcom.hospital_notification import build_hospital_notification
    from bridge.municipal.correspondence import Correspondence
    from bridge.municipal.events import HospitalStayEvent

    try:
        parsed = data if isinstance(data, dict) else orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput([Issue("error", "structure", f"invalid JSON: {exc}", ("(body)",))]) from exc
    kind = parsed.get("format", "municipal-v1") if isinstance(parsed, dict) else None
    try:
        if kind == "hospital-stay-event-v1":
            return build_hospital_notification(HospitalStayEvent.model_validate(parsed))
        if kind == "correspondence-v1":
            return build_care_communication(Correspondence.model_validate(parsed))
    except ValidationError as exc:
        raise InvalidInput(validation_issues(exc), f"the {kind} document is not valid") from exc
    if kind not in MUNICIPAL_FORMATS:
        raise InvalidInput(
            [
                Issue(
                    "error",
                    "value",
                    f"unknown format {kind!r}; one of {', '.join(MUNICIPAL_FORMATS)}",
                    ("format",),
                )
            ]
        )
    return record_to_fhir(parse_record(parsed), mappings)


def fhir_to_municipal(resource: dict[str, Any], mappings: MappingSet | None = None) -> tuple[Any, Outcome]:
    """Any FHIR input -> its municipal form: a MedCom HospitalNotification becomes a hospital stay
    event, a CareCommunication a correspondence; any other Bundle a care record (with warnings for what
    the record cannot hold). Returns a pydantic model and an Outcome."""
    from bridge.medcom.care_communication import to_correspondence
    from bridge.medcom.hospital_notification import to_event
    from bridge.medcom.validation import recognise

    kind = recognise(resource) if resource.get("resourceType") == "Bundle" else None
    if kind in ("hospital-notification", "care-communication"):
        from bridge.medcom.validation import validate_message

        # The readers below trust the message's structure, as they may after the ingress validated it.
        checked = validate_message(resource)
        if checked.has_errors:
            raise InvalidMessage(checked.errors)
    if kind == "hospital-notification":
        return to_event(resource), Outcome()
    if kind == "care-communication":
        return to_correspondence(resource), Outcome()
    if kind == "acknowledgement":
        raise InvalidInput(
            [Issue("error", "not-supported", "an Acknowledgement has no municipal form", ("Bundle",))]
        )
    return fhir_to_record(resource, mappings)
