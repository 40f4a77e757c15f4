"""Base FHIR R4 structure check on plain JSON dicts: known elements, list/single shape, primitive formats.

The element tables (names, types, list or single, required, choice groups) are read once, at first
use, from the ``fhir.resources`` R4B models (a runtime dependency), then every message is checked by
walking its dict against those tables. This replaces ``Bundle.model_validate`` (about 1 ms per
HospitalNotification) by a walk that costs a fraction of it and reports every problem at once, with
its location, instead of stopping at pydantic's first error per branch. R4B adds a few data types
and resources to R4 4.0.1 but leaves the resources MedCom messages use unchanged.

It also checks the two base invariants every element carries: ``ele-1`` (an element has a value or
children) and ``ext-1`` (an extension has a value or nested extensions, not both).
"""

from __future__ import annotations

import re
import string
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from bridge.fhir.outcome import Issue, IssueCode

_PRIMITIVE_RE: dict[str, re.Pattern[str]] = {
    "string": re.compile(r"[\s\S]+"),
    "markdown": re.compile(r"[\s\S]+"),
    "code": re.compile(r"[^\s]+( [^\s]+)*"),
    "id": re.compile(r"[A-Za-z0-9\-.]{1,64}"),
    "uri": re.compile(r"\S+"),
    "url": re.compile(r"\S+"),
    "canonical": re.compile(r"\S+"),
    "oid": re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+"),
    "uuid": re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
    "base64Binary": re.compile(r"[A-Za-z0-9+/=\s]+"),
    "date": re.compile(
        r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?"
    ),
    "dateTime": re.compile(
        r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
        r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?"
    ),
    "instant": re.compile(
        r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])"
        r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
    ),
    "time": re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"),
    "xhtml": re.compile(r"\s*<div[\s\S]*"),
}
_INT_MIN = {"integer": -(2**31), "unsignedInt": 0, "positiveInt": 1}
_INT_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Element:
    """One element of a FHIR type as it appears in JSON."""

    name: str
    type: str  # FHIR type ('string', 'Coding', 'Resource') or a backbone model name ('BundleEntry')
    is_list: bool
    primitive: bool
    required: bool
    choice: str | None  # the [x] group, e.g. 'value' for valueCoding
    #: for a primitive: True when check_primitive finds nothing wrong with a value (a quick test)
    valid: Callable[[Any], bool] | None = field(default=None, compare=False)
    data_type: bool = False  # neither primitive nor Resource: a data type or backbone element


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """The elements of one type, by JSON name, plus its required choice groups."""

    name: str
    elements: dict[str, Element]
    required_choices: frozenset[str]
    #: the required elements outside choice groups, in element order
    required: tuple[Element, ...] = ()


def _primitive_name(meta: Any) -> str:
    cls = type(meta).__name__
    return cls[0].lower() + cls[1:]


def _describe(annotation: Any) -> tuple[str, bool, bool]:
    """(type name, is list, is primitive) of a pydantic field annotation in fhir.resources."""
    is_list = False
    ann = annotation
    while True:
        origin = typing.get_origin(ann)
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
            ann = args[0]
            continue
        if origin is list:
            is_list = True
            ann = args[0]
            continue
        break
    if typing.get_origin(ann) is typing.Annotated:
        meta = [m for m in ann.__metadata__ if type(m).__module__.startswith("fhir_core")]
        return (_primitive_name(meta[-1]) if meta else "string"), is_list, True
    if ann is bool:
        return "boolean", is_list, True
    name = getattr(ann, "__name__", str(ann))
    if name.endswith("Type"):
        name = name[: -len("Type")]
    return name, is_list, False


@cache
def type_info(type_name: str) -> TypeInfo | None:
    """The element table of a FHIR resource, data type or backbone element (None when unknown)."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model = get_fhir_model_class(type_name)
    except (KeyError, ValueError):
        return None
    elements: dict[str, Element] = {}
    required_choices: set[str] = set()
    for model_field in model.model_fields.values():
        extra = model_field.json_schema_extra
        if not isinstance(extra, dict) or not extra.get("element_property"):
            continue
        name = model_field.alias or ""
        ftype, is_list, primitive = _describe(model_field.annotation)
        choice = extra.get("one_of_many")
        if isinstance(choice, str) and extra.get("one_of_many_required"):
            required_choices.add(choice)
        required = bool(extra.get("element_required")) or model_field.is_required()
        elements[name] = Element(
            name,
            ftype,
            is_list,
            primitive,
            required,
            choice if isinstance(choice, str) else None,
            primitive_test(ftype) if primitive else None,
            not primitive and ftype != "Resource",
        )
    required_elements = tuple(el for el in elements.values() if el.required and el.choice is None)
    return TypeInfo(type_name, elements, frozenset(required_choices), required_elements)


def _err(code: IssueCode, text: str, path: str) -> Issue:
    return Issue("error", code, text, (path,))


def check_primitive(ftype: str, value: Any, path: str, out: list[Issue]) -> None:
    """Check one primitive JSON value against its FHIR type."""
    if ftype == "boolean":
        if not isinstance(value, bool):
            out.append(_err("structure", f"a boolean is expected, found {type(value).__name__}", path))
        return
    if ftype in _INT_MIN:
        if isinstance(value, bool) or not isinstance(value, int):
            out.append(_err("structure", f"an integer is expected for {ftype}", path))
        elif not _INT_MIN[ftype] <= value <= _INT_MAX:
            out.append(_err("value", f"{value} is out of range for {ftype}", path))
        return
    if ftype == "decimal":
        if isinstance(value, bool) or not isinstance(value, int | float):
            out.append(_err("structure", "a number is expected for decimal", path))
        return
    if not isinstance(value, str):
        out.append(_err("structure", f"a string is expected for {ftype}, found {type(value).__name__}", path))
        return
    pattern = _PRIMITIVE_RE.get(ftype)
    if pattern is not None and pattern.fullmatch(value) is None:
        out.append(_err("value", f"{value[:60]!r} is not a valid {ftype}", path))


@cache
def primitive_test(ftype: str) -> Callable[[Any], bool]:
    """A quick test that is True exactly when :func:`check_primitive` finds nothing wrong."""
    if ftype == "boolean":
        return lambda value: isinstance(value, bool)
    if ftype in _INT_MIN:
        low = _INT_MIN[ftype]
        return lambda value: (
            isinstance(value, int) and not isinstance(value, bool) and low <= value <= _INT_MAX
        )
    if ftype == "decimal":
        return lambda value: isinstance(value, int | float) and not isinstance(value, bool)
    pattern = _PRIMITIVE_RE.get(ftype)
    if pattern is None:
        return lambda value: isinstance(value, str)
    if pattern.pattern == r"[\s\S]+":  # any non-empty string
        return lambda value: isinstance(value, str) and value != ""
    if pattern.pattern.endswith(r"[\s\S]*"):  # (xhtml) the rest may be anything: the start decides
        start = re.compile(pattern.pattern[: -len(r"[\s\S]*")]).match
        return lambda value: isinstance(value, str) and start(value) is not None
    if ftype == "base64Binary":
        return _base64_test(pattern)
    fullmatch = pattern.fullmatch
    return lambda value: isinstance(value, str) and fullmatch(value) is not None


_BASE64_CHARS = (string.ascii_letters + string.digits + "+/=").encode("ascii")


def _base64_test(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    """base64Binary's [A-Za-z0-9+/=\\s]+ without a regex step per character (attachments are long):
    an ASCII value without its base64 characters must be empty or whitespace (str.isspace() is the
    regex's \\s)."""

    def test(value: Any) -> bool:
        if not isinstance(value, str) or value == "":
            return False
        if not value.isascii():
            return pattern.fullmatch(value) is not None
        rest = value.encode("ascii").translate(None, _BASE64_CHARS)
        return rest == b"" or rest.decode("ascii").isspace()

    return test


def _check_primitive_extension(value: Any, path: str, out: list[Issue]) -> None:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if item is not None and not isinstance(item, dict):
            out.append(_err("structure", "a primitive's extension object is expected", path))


def check_resource(resource: Any, path: str, out: list[Issue]) -> None:
    """Check a resource dict (dispatching on ``resourceType``) and append every problem to ``out``."""
    if not isinstance(resource, dict):
        out.append(_err("structure", "a resource object is expected", path))
        return
    rtype = resource.get("resourceType")
    info = type_info(rtype) if isinstance(rtype, str) and rtype[:1].isupper() else None
    if info is None or "resourceType" in info.elements:
        out.append(_err("structure", f"unknown resourceType {rtype!r}", path))
        return
    _check_object(resource, info, path, out, is_resource=True)


def _check_object(
    node: dict[str, Any], info: TypeInfo, path: str, out: list[Issue], is_resource: bool
) -> None:
    elements = info.elements
    if not node or (is_resource and len(node) == 1):
        out.append(_err("invariant", "ele-1: an element must have a value or children", path))
    seen_choices: dict[str, str] = {}
    for key, value in node.items():
        el = elements.get(key)  # no element is named 'resourceType' in a resource, or '_...'
        if el is None:
            _check_other_key(key, value, info, path, out, is_resource)
            continue
        if el.choice is not None:
            other = seen_choices.get(el.choice)
            if other is not None:
                out.append(
                    _err("structure", f"only one of {other} and {key} may be present", f"{path}.{key}")
                )
            seen_choices[el.choice] = key
        if el.valid is not None and not el.is_list:
            # a single primitive: its path is needed only for an issue
            if el.valid(value):
                continue
            if not isinstance(value, list):
                check_primitive(el.type, value, f"{path}.{key}", out)
                continue
        elif el.data_type and not el.is_list and isinstance(value, dict):
            # a single object of a data type or backbone element: straight to its elements
            nested = type_info(el.type)
            if nested is not None:
                _check_object(value, nested, f"{path}.{key}", out, is_resource=False)
            continue
        _check_value(el, value, f"{path}.{key}", out, node.get("_" + key) if el.primitive else None)
    for el in info.required:
        if el.name not in node:
            if el.primitive and ("_" + el.name) in node:
                continue
            out.append(_err("required", f"{info.name}.{el.name} is required", f"{path}.{el.name}"))
    for group in info.required_choices:
        if group not in seen_choices:
            out.append(_err("required", f"{info.name}.{group}[x] is required", f"{path}.{group}[x]"))
    if info.name == "Extension" and ("extension" in node) == any(k.startswith("value") for k in node):
        out.append(
            _err("invariant", "ext-1: an extension must have either extensions or a value, not both", path)
        )


def _check_other_key(
    key: str, value: Any, info: TypeInfo, path: str, out: list[Issue], is_resource: bool
) -> None:
    """A key that names no element: a resource's resourceType, a primitive's extension, or unknown."""
    if key == "resourceType" and is_resource:
        return
    if key[:1] == "_":
        el = info.elements.get(key[1:])
        if el is None or not el.primitive:
            out.append(_err("structure", f"unknown element {key!r} in {info.name}", f"{path}.{key}"))
        else:
            _check_primitive_extension(value, f"{path}.{key}", out)
        return
    out.append(_err("structure", f"unknown element {key!r} in {info.name}", f"{path}.{key}"))


def _check_value(el: Element, value: Any, path: str, out: list[Issue], ext: Any) -> None:
    if el.is_list:
        if not isinstance(value, list):
            out.append(_err("structure", f"{el.name} must be an array", path))
            return
        if not value:
            out.append(_err("invariant", "ele-1: an array must not be empty", path))
            return
        valid = el.valid
        for i, item in enumerate(value):
            if valid is not None and valid(item):
                continue
            item_path = f"{path}[{i}]"
            if item is None:
                if not (isinstance(ext, list) and i < len(ext) and ext[i] is not None):
                    out.append(_err("invariant", "ele-1: null without an extension", item_path))
                continue
            _check_item(el, item, item_path, out)
        return
    if isinstance(value, list):
        out.append(_err("structure", f"{el.name} must be a single value, not an array", path))
        return
    _check_item(el, value, path, out)


def _check_item(el: Element, value: Any, path: str, out: list[Issue]) -> None:
    if el.primitive:
        check_primitive(el.type, value, path, out)
        return
    if el.type == "Resource":
        check_resource(value, path, out)
        return
    if not isinstance(value, dict):
        out.append(_err("structure", f"an object is expected for {el.type}", path))
        return
    info = type_info(el.type)
    if info is None:  # a type the tables do not describe: nothing more to check
        return
    _check_object(value, info, path, out, is_resource=False)
