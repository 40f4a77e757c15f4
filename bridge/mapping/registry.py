"""Mapping sets: one folder per municipal format under ``mappings/``, loaded, checked and compiled.

A set folder holds ``mapping-set.yaml`` (its name, title, version and how its documents are validated),
the resource specs, ``conceptmaps/`` and ``cases/``. The canonical record (``municipal-v1``) is
validated by the bridge's pydantic model; any other format by the JSON Schema the set ships
(``record.schema.json``), so a new format needs no Python.

Every loaded set has a ``version`` label - ``<name>@<version>+<digest of its files>`` - that changes with
any edit, so a stored message can say which mappings produced it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import yaml

from bridge.errors import InvalidInput, MappingSpecError, UnmappableRecord
from bridge.fhir.outcome import Issue, IssueCode, Outcome
from bridge.mapping.engine import MappingSet, load_mapping_set

MANIFEST = "mapping-set.yaml"
RECORD_SCHEMA = "record.schema.json"
CANONICAL = "municipal-v1"

_MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "version", "record"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z][a-z0-9-]*$"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "version": {"type": "string", "minLength": 1},
        "record": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"model": {"enum": [CANONICAL]}, "schema": {"type": "string"}},
            "oneOf": [{"required": ["model"]}, {"required": ["schema"]}],
        },
        "validate_output": {"type": "boolean", "description": "check produced FHIR on every translation"},
    },
}

Validate = Callable[[Any], dict[str, Any]]  # document -> validated JSON-mode dict, or InvalidInput


@dataclass(slots=True)
class LoadedSet:
    """A compiled mapping set with the validation of its documents."""

    name: str
    title: str
    version: str
    directory: Path
    mappings: MappingSet
    validate: Validate
    validate_output: bool = False
    files: list[str] = field(default_factory=list)

    def to_fhir(self, document: Any) -> dict[str, Any]:
        """A document of this format (parsed JSON) -> FHIR Bundle; InvalidInput/UnmappableRecord if bad."""
        bundle = self.mappings.to_fhir(self.validate(document))
        if self.validate_output:
            problems = check_output(bundle, structure=False)
            if problems.has_errors:
                raise UnmappableRecord(problems, "the translation is not valid FHIR for this document")
        return bundle

    def to_municipal(self, bundle: dict[str, Any]) -> tuple[dict[str, Any], Outcome]:
        """A FHIR Bundle -> a validated document of this format, with warnings for what it cannot hold."""
        reading = self.mappings.read_bundle(bundle)
        outcome = Outcome(reading.warnings)
        try:
            document = self.validate(reading.record)
        except InvalidInput as exc:
            raise UnmappableRecord(
                [*exc.outcome.issues, *outcome.issues],
                f"the Bundle does not make a valid {self.name} document",
            ) from exc
        outcome.extend(self.mappings.left_behind(bundle, reading.record, reading))
        return document, outcome


_IDENTIFIER_CHECKS: dict[str, Callable[[str], str | None]] = {}


def check_output(bundle: dict[str, Any], *, structure: bool = True) -> Outcome:
    """The checks every produced Bundle must pass: FHIR R4 structure, the KL Gateway rules, and the
    Danish identifiers (a CPR with a real date, a replacement number, a GLN with its check digit).

    ``structure=False`` leaves out the FHIR R4 structure check (fhir.resources, milliseconds per Bundle):
    what the specs produce is structurally proven by the set's cases; the rest depends on the data."""
    from bridge.fhir import identifiers as ids
    from bridge.fhir.klgateway import check_bundle
    from bridge.fhir.validate import validate_resource

    if not _IDENTIFIER_CHECKS:
        _IDENTIFIER_CHECKS.update(
            {ids.CPR_SYSTEM: ids.check_cpr, ids.XECPR_SYSTEM: ids.check_replacement_cpr}
        )
        _IDENTIFIER_CHECKS.update({system: ids.check_gln for system in ids.GLN_SYSTEMS})
    outcome = validate_resource(bundle) if structure else Outcome()
    outcome.extend(check_bundle(bundle).issues)
    for i, entry in enumerate(bundle.get("entry") or []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        for j, identifier in enumerate((resource or {}).get("identifier") or []):
            system = identifier.get("system") if isinstance(identifier, dict) else None
            check = _IDENTIFIER_CHECKS.get(system) if isinstance(system, str) else None
            problem = check(str(identifier.get("value", ""))) if check else None
            if problem:
                outcome.add(
                    Issue("error", "value", problem, (f"Bundle.entry[{i}].resource.identifier[{j}].value",))
                )
    return outcome


def _canonical_validator() -> Validate:
    from pydantic import ValidationError

    from bridge.municipal.model import MunicipalRecord
    from bridge.translate import validation_issues

    def validate(document: Any) -> dict[str, Any]:
        try:
            if isinstance(document, (bytes, str)):
                record = MunicipalRecord.model_validate_json(document)
            else:
                record = MunicipalRecord.model_validate(document)
        except ValidationError as exc:
            raise InvalidInput(validation_issues(exc), "the municipal record is not valid") from exc
        return record.model_dump(mode="json", exclude_none=True)

    return validate


def _schema_validator(schema: dict[str, Any], name: str) -> Validate:
    # jsonschema-rs (Rust) on the hot path: about a hundred times faster than the pure-Python validator
    checker = jsonschema_rs.validator_for(schema)

    def validate(document: Any) -> dict[str, Any]:
        if isinstance(document, (bytes, str)):
            try:
                document = json.loads(document)
            except json.JSONDecodeError as exc:
                raise InvalidInput(
                    [Issue("error", "structure", f"invalid JSON: {exc}", ("(document)",))]
                ) from exc
        if checker.is_valid(document):
            if not isinstance(document, dict):
                raise InvalidInput(
                    [Issue("error", "structure", "a document is a JSON object", ("(document)",))]
                )
            return document
        issues = []
        for err in checker.iter_errors(document):
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.instance_path).lstrip(
                "."
            )
            code: IssueCode = "required" if "Required" in type(err.kind).__name__ else "value"
            issues.append(Issue("error", code, err.message, (where or "(document)",)))
        raise InvalidInput(issues, f"the {name} document is not valid")

    return validate


def _digest(directory: Path) -> tuple[str, list[str]]:
    h = hashlib.sha256()
    files = sorted(
        p for p in directory.rglob("*") if p.is_file() and "cases" not in p.relative_to(directory).parts
    )
    for path in files:
        h.update(str(path.relative_to(directory)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest(), [str(p.relative_to(directory)) for p in files]


def load_set(directory: Path) -> LoadedSet:
    """Load one set folder; a broken manifest, spec, ConceptMap or schema raises MappingSpecError."""
    manifest_path = directory / MANIFEST
    try:
        manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MappingSpecError(
            f"{directory.name}/{MANIFEST}", "file", f"cannot read: {exc.strerror}"
        ) from exc
    except yaml.YAMLError as exc:
        raise MappingSpecError(f"{directory.name}/{MANIFEST}", "file", f"not valid YAML: {exc}") from exc
    errors = list(jsonschema.Draft202012Validator(_MANIFEST_SCHEMA).iter_errors(manifest))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        where = ".".join(map(str, err.absolute_path)) or "(top)"
        raise MappingSpecError(f"{directory.name}/{MANIFEST}", f"key {where}", err.message)
    if manifest["name"] != directory.name:
        raise MappingSpecError(
            f"{directory.name}/{MANIFEST}",
            "key name",
            f"the set is named {manifest['name']!r} but its folder is not",
        )
    record = manifest["record"]
    if "model" in record:
        validate = _canonical_validator()
    else:
        schema_path = directory / record["schema"]
        try:
            schema = json.loads(schema_path.read_text(encoding="utf-8"))
            jsonschema.Draft202012Validator.check_schema(schema)
        except (OSError, json.JSONDecodeError, jsonschema.exceptions.SchemaError) as exc:
            raise MappingSpecError(
                f"{directory.name}/{record['schema']}", "file", f"not a usable JSON Schema: {exc}"
            ) from exc
        validate = _schema_validator(schema, manifest["name"])
    mappings = load_mapping_set(directory)
    digest, files = _digest(directory)
    return LoadedSet(
        name=manifest["name"],
        title=manifest.get("title", manifest["name"]),
        version=f"{manifest['name']}@{manifest['version']}+{digest[:12]}",
        directory=directory,
        mappings=mappings,
        validate=validate,
        validate_output=bool(manifest.get("validate_output", False)),
        files=files,
    )


def discover(root: Path) -> list[Path]:
    """The set folders under ``root`` (each has a mapping-set.yaml)."""
    if not root.is_dir():
        raise MappingSpecError(root.name, "directory", "no such mappings directory")
    return sorted(p for p in root.iterdir() if (p / MANIFEST).is_file())


def load_all(root: Path) -> dict[str, LoadedSet]:
    """Every set under ``root``, by name."""
    return {d.name: load_set(d) for d in discover(root)}
