"""Safe parsing and serialisation of FHIR JSON and FHIR XML at the edges (CLI, HTTP).

Everything that comes in is hostile until parsed: sizes and nesting depth are bounded, XML may carry
no DTD (so no entity expansion, no external entities, no network), and every failure is an
``InvalidInput`` whose Outcome names the problem - never a library traceback.

XML <-> JSON follows the FHIR XML representation, driven by the element definitions of the
fhir.resources R4B models (element order, which elements repeat, which are primitives and of what
type). The conversion works on lexical values, so JSON -> XML -> JSON is exact. fhir.resources' own
``model_validate_xml`` / ``model_dump_xml`` round trip is not: it rewrites ``+00:00`` as ``Z``, pads
fractional seconds to six digits (``.410`` -> ``.410000``), strips the ``urn:uuid:`` prefix of ``uuid``
values, writes non-ASCII narrative text as character references, reports an unknown XML element as a
bare ``KeyError`` and a bad value without its location, and parses narrative with lxml's default
parser. The tests check that both readings agree on every official MedCom example.
"""

from __future__ import annotations

import io
import re
from typing import Any, Literal

import orjson
from lxml import etree

from bridge.errors import InvalidInput
from bridge.fhir.outcome import Issue, error
from bridge.fhir.validate import ElementInfo, element_info, resource_class, validate_structure

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "FHIR_NS",
    "XHTML_NS",
    "parse_fhir",
    "parse_json",
    "parse_xml",
    "sniff_format",
    "to_json",
    "to_xml",
]

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
DEFAULT_MAX_BYTES = 10_000_000
DEFAULT_MAX_DEPTH = 64

Format = Literal["json", "xml"]

_BOM = b"\xef\xbb\xbf"
_XSI = "{http://www.w3.org/2001/XMLSchema-instance}"
_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "text/json"}
_XML_TYPES = {"application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir"}
_INTEGER_RE = re.compile(r"^[-+]?[0-9]+$")
_DECIMAL_RE = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$")


def _fail(diagnostics: str, *path: str, code: Any = "structure") -> InvalidInput:
    return InvalidInput([error(diagnostics, *path, code=code)])


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise _fail(f"The body is {size} bytes; the limit is {max_bytes}", code="too-long")


# --------------------------------------------------------------------------------------------- JSON
def _json_depth_exceeds(value: Any, max_depth: int) -> bool:
    """True when objects/arrays nest deeper than ``max_depth``.

    Recursive, but never deeper than ``max_depth`` frames: it stops at the first container below the
    limit. (orjson itself refuses nesting past 1024 before this runs.)
    """
    if not isinstance(value, dict | list):
        return False
    return max_depth < 1 or not _depth_within(value, max_depth - 1)


def _depth_within(node: dict[str, Any] | list[Any], room: int) -> bool:
    """True when the containers inside ``node`` nest at most ``room`` levels deeper."""
    for child in node.values() if isinstance(node, dict) else node:
        if isinstance(child, dict | list) and (room == 0 or not _depth_within(child, room - 1)):
            return False
    return True


def parse_json(
    body: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH
) -> Any:
    """Parse JSON with orjson, bounded in size and nesting depth.

    Raises ``InvalidInput`` (issue ``too-long`` or ``structure``, with line and column for a syntax
    error) instead of any parser exception.
    """
    if isinstance(body, str):
        # a str is at most 4 bytes a character; encode only when the cheap bound is not enough
        if len(body) * 4 > max_bytes:
            _check_size(len(body.encode("utf-8", "surrogatepass")), max_bytes)
    else:
        _check_size(len(body), max_bytes)
        if body.startswith(_BOM):
            body = body[len(_BOM) :]
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        where = f" at line {exc.lineno}, column {exc.colno}" if exc.lineno else ""
        raise _fail(f"Invalid JSON{where}: {exc.msg}") from exc
    if _json_depth_exceeds(value, max_depth):
        raise _fail(f"JSON nests deeper than {max_depth} levels", code="too-long")
    return value


def to_json(resource: dict[str, Any]) -> bytes:
    """Serialise a FHIR JSON resource (compact UTF-8, keys as given)."""
    return orjson.dumps(resource)


# --------------------------------------------------------------------------------------------- XML input
def _hardened_options() -> dict[str, Any]:
    # No DTD is loaded and no entity is resolved or fetched; comments and processing instructions are
    # dropped because FHIR JSON has no place for them. libxml2's own depth cap stays on (huge_tree=False).
    return {
        "resolve_entities": False,
        "load_dtd": False,
        "dtd_validation": False,
        "no_network": True,
        "huge_tree": False,
        "remove_comments": True,
        "remove_pis": True,
        "collect_ids": False,
    }


def _safe_tree(body: bytes, max_depth: int) -> etree._Element:
    """Parse XML without DTDs or entities, stopping at the first element deeper than ``max_depth``."""
    events = etree.iterparse(io.BytesIO(body), events=("start", "end"), **_hardened_options())
    depth = 0
    root: etree._Element | None = None
    try:
        for event, element in events:
            if event == "start":
                if root is None:
                    root = element
                    docinfo = element.getroottree().docinfo
                    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
                        raise _fail(
                            "XML with a DOCTYPE (DTD or entity declarations) is not accepted", code="security"
                        )
                depth += 1
                if depth > max_depth:
                    raise _fail(f"XML nests deeper than {max_depth} elements", code="too-long")
            else:
                depth -= 1
    except etree.XMLSyntaxError as exc:
        line, column = exc.position if exc.position else (0, 0)
        message = str(exc.msg or exc).split(", line ")[0]
        if "DOCTYPE" in message or "Entity" in message or "entity" in message:
            raise _fail(
                f"XML with entities or a DOCTYPE is not accepted: {message}", code="security"
            ) from exc
        raise _fail(f"Invalid XML at line {line}, column {column}: {message}") from exc
    if root is None:
        raise _fail("The XML document has no root element")
    return root


def _local(element: etree._Element) -> tuple[str, str]:
    qname = etree.QName(element)
    return qname.namespace or "", qname.localname


def _scalar(primitive: str, lexical: str) -> Any:
    """The JSON value of a primitive's XML ``value`` attribute; a bad lexical form stays a string so that
    validation reports it at its path."""
    if primitive == "boolean":
        return {"true": True, "false": False}.get(lexical, lexical)
    if primitive in ("integer", "unsignedInt", "positiveInt", "integer64") and _INTEGER_RE.match(lexical):
        return int(lexical)
    if primitive == "decimal" and _DECIMAL_RE.match(lexical):
        return orjson.loads(lexical)
    return lexical


class _XmlReader:
    """FHIR XML element tree -> FHIR JSON, collecting every structural problem with its path."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def problem(self, diagnostics: str, where: str) -> None:
        self.issues.append(error(diagnostics, where, code="structure"))

    def resource(self, element: etree._Element, where: str | None) -> dict[str, Any] | None:
        ns, name = _local(element)
        at = where or name
        if ns != FHIR_NS:
            self.problem(f"Element '{name}' is not in the FHIR namespace {FHIR_NS}", at)
            return None
        if resource_class(name) is None:
            self.issues.append(error(f"Unknown resource type '{name[:64]}'", at, code="not-supported"))
            return None
        out: dict[str, Any] = {"resourceType": name}
        self.fill(element, name, out, at, is_resource=True)
        return out

    def fill(
        self,
        element: etree._Element,
        type_name: str,
        out: dict[str, Any],
        where: str,
        *,
        is_resource: bool = False,
        primitive: bool = False,
    ) -> None:
        elements = element_info(type_name)
        for attr_name, value in element.attrib.items():
            attr = str(attr_name)
            if attr == "id" and not is_resource:
                out["id"] = value
            elif attr == "url" and type_name == "Extension":
                out["url"] = value
            elif (attr == "value" and primitive) or attr.startswith(_XSI):
                continue  # xsi:schemaLocation and the like say nothing about the content
            else:
                self.problem(f"Unexpected attribute '{etree.QName(attr).localname}'", where)
        extensions: dict[str, list[Any]] = {}
        for child in element:
            ns, name = _local(child)
            info = elements.get(name)
            if info is None and ns == XHTML_NS and name == "div" and "div" in elements:
                info = elements["div"]
            as_attribute = (name == "id" and not is_resource) or (name == "url" and type_name == "Extension")
            if info is None or as_attribute:
                self.problem(f"Unknown element '{name}'", f"{where}.{name}")
                continue
            if ns != (XHTML_NS if info.primitive == "xhtml" else FHIR_NS):
                self.problem(f"Element '{name}' is in the wrong namespace '{ns}'", f"{where}.{name}")
                continue
            self.child(child, info, out, extensions, where)
        for name, exts in extensions.items():
            if elements[name].is_list and all(v is None for v in out.get(name, ())):
                out.pop(name, None)  # a repeating primitive with extensions only: no value array
            if any(e is not None for e in exts):
                out["_" + name] = exts if elements[name].is_list else exts[0]

    def child(
        self,
        child: etree._Element,
        info: ElementInfo,
        out: dict[str, Any],
        extensions: dict[str, list[Any]],
        where: str,
    ) -> None:
        name = info.name
        if info.is_list:
            index = len(out.setdefault(name, []))
            at = f"{where}.{name}[{index}]"
        elif name in out or name in extensions:
            self.problem(f"Element '{name}' may occur only once", f"{where}.{name}")
            return
        else:
            at = f"{where}.{name}"
        value: Any
        if info.primitive == "xhtml":
            value = etree.tostring(child, encoding="unicode", with_tail=False)
        elif info.primitive is not None:
            lexical = child.get("value")
            value = None if lexical is None else _scalar(info.primitive, lexical)
            ext: dict[str, Any] = {}
            self.fill(child, "Element", ext, at, primitive=True)
            if value is None and not ext:
                self.problem("A primitive element needs a value attribute or extensions", at)
            # one extension slot per value keeps ``_name`` aligned with ``name`` (null where none)
            extensions.setdefault(name, []).append(ext or None)
            if value is None and not info.is_list:
                return
        elif info.complex == "Resource":
            inner = [c for c in child]
            if len(inner) != 1:
                self.problem(f"'{name}' must hold exactly one resource", at)
                return
            value = self.resource(inner[0], at)
            if value is None:
                return
        else:
            value = {}
            self.fill(child, info.complex or "Element", value, at)
            if not value:
                self.problem("An element must have a value or children; this one is empty", at)
        if info.is_list:
            out[name].append(value)
        else:
            out[name] = value


def parse_xml(
    body: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH
) -> dict[str, Any]:
    """FHIR XML -> the FHIR JSON dict of the same resource.

    Refuses any DOCTYPE (billion laughs, external entities and DTDs), bodies over ``max_bytes`` and
    elements nested deeper than ``max_depth``; the resource type comes from the root element. Raises
    ``InvalidInput`` naming every element it cannot map.
    """
    if not isinstance(body, bytes | bytearray):
        raise _fail("An XML body must be bytes")
    _check_size(len(body), max_bytes)
    root = _safe_tree(bytes(body), max_depth)
    reader = _XmlReader()
    resource = reader.resource(root, None)
    if reader.issues or resource is None:
        raise InvalidInput(reader.issues or [error("Not a FHIR resource", code="structure")])
    return resource


# --------------------------------------------------------------------------------------------- XML output
def _lexical(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # repr is the shortest text that reads back as the same float
        return repr(value)
    return str(value)


def _narrative(value: str, where: str) -> etree._Element:
    """Parse a narrative ``div`` with the hardened parser (it is caller-supplied XML too)."""
    try:
        parser = etree.XMLParser(**_hardened_options())
        div = etree.fromstring(value.encode("utf-8"), parser)
    except etree.XMLSyntaxError as exc:
        raise _fail(f"Narrative is not well-formed XHTML: {exc.msg}", where) from exc
    docinfo: Any = div.getroottree().docinfo
    if docinfo.doctype or etree.QName(div).text != f"{{{XHTML_NS}}}div":
        raise _fail("Narrative must be one XHTML div without a DOCTYPE", where)
    return div


class _XmlWriter:
    """FHIR JSON -> FHIR XML elements, in the element order of the FHIR definition."""

    def resource(self, resource: dict[str, Any], parent: etree._Element | None, where: str) -> etree._Element:
        kind = resource["resourceType"]
        tag = f"{{{FHIR_NS}}}{kind}"
        if parent is None:
            element = etree.Element(tag, nsmap={None: FHIR_NS})  # type: ignore[dict-item]
        else:
            element = etree.SubElement(parent, tag)
        self.fill(resource, kind, element, where, is_resource=True)
        return element

    def fill(
        self,
        obj: dict[str, Any],
        type_name: str,
        element: etree._Element,
        where: str,
        *,
        is_resource: bool = False,
    ) -> None:
        if not is_resource and "id" in obj:
            element.set("id", str(obj["id"]))
        if type_name == "Extension" and "url" in obj:
            element.set("url", str(obj["url"]))
        for name, info in element_info(type_name).items():
            if (name == "id" and not is_resource) or (name == "url" and type_name == "Extension"):
                continue
            value, ext = obj.get(name), obj.get("_" + name)
            if value is None and ext is None:
                continue
            values = value if info.is_list else [value]
            exts = ext if info.is_list and isinstance(ext, list) else [ext]
            if values is None:
                values = [None] * len(exts)
            for i, item in enumerate(values):
                at = f"{where}.{name}[{i}]" if info.is_list else f"{where}.{name}"
                item_ext = exts[i] if i < len(exts) else None
                self.child(element, info, item, item_ext, at)

    def child(self, parent: etree._Element, info: ElementInfo, value: Any, ext: Any, where: str) -> None:
        tag = f"{{{FHIR_NS}}}{info.name}"
        if info.primitive == "xhtml":
            parent.append(_narrative(str(value), where))
        elif info.primitive is not None:
            element = etree.SubElement(parent, tag)
            if value is not None:
                element.set("value", _lexical(value))
            if isinstance(ext, dict):
                self.fill(ext, "Element", element, where)
        elif info.complex == "Resource":
            self.resource(value, etree.SubElement(parent, tag), where)
        else:
            self.fill(value, info.complex or "Element", etree.SubElement(parent, tag), where)


def to_xml(resource: dict[str, Any]) -> bytes:
    """FHIR JSON -> FHIR XML (UTF-8 with an XML declaration).

    The resource is validated structurally first (fhir.resources R4B); an invalid one raises
    ``InvalidInput`` with its issues. Primitive values keep their exact lexical form.
    """
    outcome = validate_structure(resource)
    if outcome.has_errors:
        raise InvalidInput(outcome)
    root = _XmlWriter().resource(resource, None, resource["resourceType"])
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


# --------------------------------------------------------------------------------------------- either
def sniff_format(body: bytes, content_type: str | None) -> Format:
    """``json`` or ``xml`` from the Content-Type (FHIR and plain JSON/XML media types), else from the
    first non-blank byte of the body. Raises ``InvalidInput`` (``not-supported``) when neither tells."""
    if content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        if media in _JSON_TYPES:
            return "json"
        if media in _XML_TYPES:
            return "xml"
    head = body[len(_BOM) :] if body.startswith(_BOM) else body
    head = head.lstrip(b" \t\r\n")[:1]
    if head in (b"{", b"["):
        return "json"
    if head == b"<":
        return "xml"
    raise _fail(
        "Cannot tell the format: send application/fhir+json or application/fhir+xml", code="not-supported"
    )


def parse_fhir(
    body: bytes, fmt: Format, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH
) -> dict[str, Any]:
    """Parse a FHIR resource in JSON or XML; checks that it is an object with a ``resourceType``.

    Structural validation of the content is ``bridge.fhir.validate.validate_resource``'s job.
    """
    if fmt == "xml":
        return parse_xml(body, max_bytes=max_bytes, max_depth=max_depth)
    if fmt != "json":
        raise _fail(f"Unknown format {fmt!r}", code="not-supported")
    value = parse_json(body, max_bytes=max_bytes, max_depth=max_depth)
    if not isinstance(value, dict):
        raise _fail("A FHIR resource is a JSON object")
    kind = value.get("resourceType")
    if not isinstance(kind, str) or not kind:
        raise InvalidInput([error("A FHIR resource needs a resourceType", "resourceType", code="required")])
    return value
