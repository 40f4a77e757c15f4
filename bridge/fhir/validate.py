"""Structural FHIR R4 validation with the fhir.resources R4B models, reported as an Outcome.

``validate_resource`` is what a FHIR server checks before it looks at profiles: the resource type is
known, every element is one the type defines, values have the right JSON type and lexical form,
required elements are present, no element is empty, and - for a Bundle - every ``fullUrl`` is unique and
every ``urn:uuid:`` reference resolves to an entry of the same Bundle.

Nested resources (``Bundle.entry.resource``, ``Bundle.entry.response.outcome``, ``contained``,
``Parameters.parameter.resource``) are validated one by one, so each problem is located from the root
(``Bundle.entry[2].resource.code.coding[0].system``) and an unknown nested type is one issue rather than
a library exception.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.utils import get_fhir_type_name, is_list_type
from pydantic import ValidationError

from bridge.fhir.outcome import Issue, IssueCode, Outcome, error

__all__ = [
    "ElementInfo",
    "element_info",
    "fhirpath",
    "issues_from_validation_error",
    "resource_class",
    "validate_resource",
    "validate_structure",
]

_VERSION_PREFIX = "R4B."
#: Abstract types that name no concrete resource.
_ABSTRACT = frozenset({"Resource", "DomainResource"})
_NUMBER_TYPES = frozenset({"integer", "unsignedInt", "positiveInt", "integer64"})


# --------------------------------------------------------------------------------------------- metadata
@dataclass(frozen=True, slots=True)
class ElementInfo:
    """One element of a FHIR type, as the fhir.resources R4B model defines it."""

    name: str  #: the JSON and XML name, e.g. ``effectiveDateTime``
    is_list: bool
    primitive: str | None  #: FHIR primitive type (``dateTime``, ``boolean``, ``xhtml``...) or None
    complex: str | None  #: model class name (``CodeableConcept``, ``Resource`` for a nested resource)


def resource_class(resource_type: str) -> Any | None:
    """The fhir.resources R4B model class of a concrete resource type, or None when there is none."""
    if resource_type in _ABSTRACT or not re.fullmatch(r"[A-Z][A-Za-z]{1,63}", resource_type):
        return None
    try:
        cls = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, AttributeError):
        return None
    return cls if cls.has_resource_base() else None


def _complex_name(annotation: Any) -> str | None:
    """The model name behind a field annotation such as ``Optional[List[abc.CodingType]]``."""
    name = getattr(annotation, "__name__", "")
    if name.endswith("Type") and getattr(annotation, "__module__", "") == "abc":
        return name[: -len("Type")]
    for arg in typing.get_args(annotation):
        found = _complex_name(arg)
        if found is not None:
            return found
    return None


@cache
def element_info(type_name: str) -> dict[str, ElementInfo]:
    """The elements of a FHIR type in document order (fhir.resources' ``elements_sequence``)."""
    cls = get_fhir_model_class(type_name)
    aliases = cls.get_alias_mapping()
    out: dict[str, ElementInfo] = {}
    for seq_name in cls.elements_sequence():
        field_name = aliases.get(seq_name, seq_name)
        info = cls.model_fields[field_name]
        name = info.alias or seq_name
        try:
            primitive: str | None = get_fhir_type_name(info, prefix=_VERSION_PREFIX)
        except (ValueError, KeyError):
            primitive = None
        complex_ = None if primitive is not None else _complex_name(info.annotation)
        if primitive is not None and primitive[:1].isupper():
            # get_fhir_type_name also names complex types; those are no primitives
            primitive, complex_ = None, primitive
        out[name] = ElementInfo(name, is_list_type(info), primitive, complex_)
    return out


# --------------------------------------------------------------------------------------------- paths
def fhirpath(root: str, loc: typing.Iterable[str | int]) -> str:
    """A FHIRPath-style location.

    ``fhirpath("Bundle", ("entry", 2, "resource"))`` is ``Bundle.entry[2].resource``.
    """
    out = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part:
            # ``_birthDate`` carries the extensions of ``birthDate``: FHIRPath names both ``birthDate``
            out += "." + (part[1:] if part.startswith("_") else part)
    return out


_TYPE_ERRORS = frozenset(
    {
        "string_type",
        "int_type",
        "float_type",
        "bool_type",
        "list_type",
        "dict_type",
        "model_type",
        "model_attributes_type",
        "decimal_type",
        "date_type",
        "datetime_type",
        "time_type",
        "bytes_type",
        "int_from_float",
        "int_parsing",
        "bool_parsing",
        "float_parsing",
        "decimal_parsing",
    }
)


def _issue_for(err: Any, root: str) -> Issue:
    kind = str(err.get("type", ""))
    loc = [p for p in err.get("loc", ()) if p not in ("root", "resource_type")]
    where = fhirpath(root, loc)
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    code: IssueCode
    if kind == "extra_forbidden":
        code, msg = "structure", f"Unknown element '{loc[-1] if loc else '?'}'"
    elif kind.endswith("missing") or kind == "missing":
        code, msg = "required", "Required element is missing"
    elif kind in _TYPE_ERRORS:
        code = "structure"
    elif kind == "fhir-validation-wrong-resource-type":
        code, msg = "structure", "resourceType does not match the expected resource type"
    else:
        code = "value"
    return error(msg.strip(), where, code=code)


def issues_from_validation_error(exc: ValidationError, root: str) -> list[Issue]:
    """One Issue per pydantic error, located from ``root`` (a type name or a FHIRPath prefix)."""
    return [_issue_for(err, root) for err in exc.errors(include_url=False, include_input=False)]


# --------------------------------------------------------------------------------------------- structure
def _nested(resource: dict[str, Any]) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Where resources sit inside this one: ``(loc, value)`` pairs (not descending further)."""
    contained = resource.get("contained")
    if isinstance(contained, list):
        for i, item in enumerate(contained):
            yield ("contained", i), item
    kind = resource.get("resourceType")
    if kind == "Bundle" and isinstance(resource.get("entry"), list):
        for i, entry in enumerate(resource["entry"]):
            if not isinstance(entry, dict):
                continue
            if "resource" in entry:
                yield ("entry", i, "resource"), entry["resource"]
            response = entry.get("response")
            if isinstance(response, dict) and "outcome" in response:
                yield ("entry", i, "response", "outcome"), response["outcome"]
    if kind == "Parameters" and isinstance(resource.get("parameter"), list):
        stack: list[tuple[tuple[str | int, ...], Any]] = [(("parameter",), resource["parameter"])]
        while stack:
            loc, params = stack.pop()
            for i, param in enumerate(params):
                if not isinstance(param, dict):
                    continue
                if "resource" in param:
                    yield (*loc, i, "resource"), param["resource"]
                if isinstance(param.get("part"), list):
                    stack.append(((*loc, i, "part"), param["part"]))


def _without_nested(resource: dict[str, Any], locs: list[tuple[str | int, ...]]) -> dict[str, Any]:
    """A copy of ``resource`` with the nested resources at ``locs`` removed (copying only the spine)."""
    shell = dict(resource)
    for loc in locs:
        node: Any = shell
        for part in loc[:-1]:
            child = node[part]
            child = list(child) if isinstance(child, list) else dict(child)
            node[part] = child
            node = child
        last = loc[-1]
        if isinstance(node, dict):
            node.pop(last, None)
    if "contained" in shell:
        shell.pop("contained")
    return shell


def _empty_and_type_issues(value: Any, type_name: str, path: str, out: list[Issue]) -> None:
    """FHIR JSON rules pydantic's lax mode lets through: no empty element, JSON types of primitives."""
    stack: list[tuple[Any, str | None, str]] = [(value, type_name, path)]
    while stack:
        node, tname, where = stack.pop()
        if not isinstance(node, dict):
            continue
        if not node:
            out.append(
                error("An element must have a value or children; this one is empty", where, code="structure")
            )
            continue
        elements = element_info(tname) if tname else {}
        for key, child in node.items():
            name = key[1:] if key.startswith("_") else key
            info = elements.get(name)
            items = child if isinstance(child, list) else [child]
            if isinstance(child, list) and not child:
                out.append(error("An array must not be empty", f"{where}.{name}", code="structure"))
            for i, item in enumerate(items):
                at = f"{where}.{name}[{i}]" if isinstance(child, list) else f"{where}.{name}"
                if isinstance(item, str) and item == "" and key != "resourceType":
                    out.append(error("A string must not be empty", at, code="value"))
                if info is None or key.startswith("_"):
                    if isinstance(item, dict) and key.startswith("_"):
                        stack.append((item, "Element", at))
                    continue
                if info.primitive is not None and item is not None:
                    problem = _json_type_problem(info.primitive, item)
                    if problem:
                        out.append(error(problem, at, code="structure"))
                elif info.complex is not None and info.complex != "Resource":
                    if not isinstance(item, dict):
                        out.append(error(f"A {info.complex} must be a JSON object", at, code="structure"))
                    else:
                        stack.append((item, info.complex, at))


def _json_type_problem(primitive: str, value: Any) -> str | None:
    if primitive == "boolean":
        return None if isinstance(value, bool) else "A boolean must be JSON true or false"
    if primitive in _NUMBER_TYPES:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"An {primitive} must be a JSON number without fraction"
    if primitive == "decimal":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "A decimal must be a JSON number"
    if not isinstance(value, str):
        return f"A {primitive} must be a JSON string"
    return None


def _validate_one(resource: Any, path: str | None, out: list[Issue]) -> None:
    where = path or "Resource"
    if not isinstance(resource, dict):
        out.append(error("A resource must be a JSON object", where, code="structure"))
        return
    kind = resource.get("resourceType")
    if not isinstance(kind, str):
        out.append(error("A resource must have a resourceType", where, code="required"))
        return
    cls = resource_class(kind)
    if cls is None:
        out.append(
            error(f"Unknown resource type '{kind[:64]}'", f"{where}" if path else kind, code="not-supported")
        )
        return
    root = path or kind
    nested = list(_nested(resource))
    shell = _without_nested(resource, [loc for loc, _ in nested]) if nested else resource
    json_issues: list[Issue] = []
    _empty_and_type_issues(resource, kind, root, json_issues)
    out.extend(json_issues)
    reported = {i.expression for i in json_issues}
    try:
        cls.model_validate(shell)
    except ValidationError as exc:
        # the JSON-level message is the clearer one where both see the same element
        out.extend(i for i in issues_from_validation_error(exc, root) if i.expression not in reported)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # fhir.resources raises plain errors on some malformed input instead of a ValidationError
        out.append(error(f"Malformed resource ({type(exc).__name__})", root, code="structure"))
    for loc, child in nested:
        _validate_one(child, fhirpath(root, loc), out)


def validate_structure(resource: Any) -> Outcome:
    """Structural validation against the FHIR R4 (R4B models) definition of the resource's type."""
    issues: list[Issue] = []
    _validate_one(resource, None, issues)
    return Outcome(issues)


# --------------------------------------------------------------------------------------------- Bundle rules
def _references(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every ``Reference.reference`` string inside ``value`` with its location (not into nested Bundles)."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            if node.get("resourceType") == "Bundle" and where != path:
                continue
            ref = node.get("reference")
            if isinstance(ref, str):
                yield ref, f"{where}.reference"
            for key, child in node.items():
                if isinstance(child, dict | list):
                    stack.append((child, f"{where}.{key}"))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                stack.append((item, f"{where}[{i}]"))


def bundle_issues(bundle: dict[str, Any]) -> list[Issue]:
    """Unique ``fullUrl`` values (except in a history Bundle) and resolvable ``urn:uuid:`` references."""
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return []
    issues: list[Issue] = []
    first_seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        full_url = entry.get("fullUrl") if isinstance(entry, dict) else None
        if not isinstance(full_url, str):
            continue
        if full_url in first_seen and bundle.get("type") != "history":
            issues.append(
                error(
                    f"fullUrl is also used by entry[{first_seen[full_url]}]",
                    f"Bundle.entry[{i}].fullUrl",
                    code="duplicate",
                )
            )
        first_seen.setdefault(full_url, i)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        for ref, where in _references(entry["resource"], f"Bundle.entry[{i}].resource"):
            if ref.startswith("urn:uuid:") and ref not in first_seen:
                issues.append(
                    error(f"Reference {ref} resolves to no entry of this Bundle", where, code="not-found")
                )
    return issues


def validate_resource(resource: Any) -> Outcome:
    """Validate a FHIR R4 resource as a FHIR server would before it looks at profiles.

    Returns an Outcome with an error per problem (empty when the resource is valid); never raises.
    """
    outcome = validate_structure(resource)
    if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
        outcome.extend(bundle_issues(resource))
    return outcome
