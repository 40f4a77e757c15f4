"""Safe FHIR JSON/XML parsing: official examples round-trip exactly; hostile input is refused clearly."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from bridge.errors import InvalidInput
from bridge.fhir.parse import parse_fhir, parse_json, parse_xml, sniff_format, to_json, to_xml

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
MEDCOM = SHARED / "medcom"
#: Every official MedCom example instance (messages, core resources, test fixtures), not the profiles.
EXAMPLES = sorted(
    p
    for p in MEDCOM.rglob("*.json")
    if p.parent.name not in ("profiles", "terminology")
    and "profiles" not in p.parts
    and "terminology" not in p.parts
)
#: Conformance resources too: StructureDefinitions with snapshots are the biggest, deepest FHIR we have.
CONFORMANCE = sorted(p for p in MEDCOM.rglob("*.json") if "profiles" in p.parts or "terminology" in p.parts)


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _canonical_divs(value: Any) -> Any:
    """Narrative compared as XML (C14N 2.0).

    XML cannot keep a JSON string's quote style or attribute order; everything else must be equal.
    """
    if isinstance(value, dict):
        return {
            k: etree.tostring(etree.fromstring(v.encode()), method="c14n2")
            if k == "div"
            else _canonical_divs(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_canonical_divs(v) for v in value]
    return value


def _error(exc: pytest.ExceptionInfo[InvalidInput]) -> tuple[str, str]:
    issue = exc.value.outcome.issues[0]
    assert issue.severity == "error"
    assert exc.value.outcome.to_fhir()["resourceType"] == "OperationOutcome"
    return issue.code, issue.diagnostics


# --------------------------------------------------------------------------------------------- round trip
def test_the_examples_are_there() -> None:
    assert len(EXAMPLES) >= 60 and len(CONFORMANCE) >= 50


@pytest.mark.parametrize("path", EXAMPLES + CONFORMANCE, ids=lambda p: p.name)
def test_json_to_xml_to_json_is_lossless(path: Path) -> None:
    original = _load(path)
    back = parse_xml(to_xml(original))
    assert _canonical_divs(back) == _canonical_divs(original)
    if "div" not in json.dumps(original):
        assert back == original


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_xml_reading_agrees_with_fhir_resources(path: Path) -> None:
    """fhir.resources' own XML reader and ours give the same model for every example message."""
    original = _load(path)
    xml = to_xml(original)
    cls = get_fhir_model_class(original["resourceType"])
    theirs = orjson.loads(cls.model_validate_xml(xml).model_dump_json())
    ours = orjson.loads(cls.model_validate(parse_xml(xml)).model_dump_json())
    assert _canonical_divs(ours) == _canonical_divs(theirs)


def test_lexical_forms_fhir_resources_would_normalise_survive() -> None:
    resource = {
        "resourceType": "Observation",
        "meta": {"lastUpdated": "2023-05-24T06:29:33.410-04:00"},
        "status": "final",
        "code": {"text": "Vægt"},
        "effectiveDateTime": "2021-02-10T13:00:00+00:00",
        "valueQuantity": {"value": 71.25, "unit": "kg"},
        "note": [{"text": "æøå"}],
    }
    xml = to_xml(resource)
    assert b'value="2021-02-10T13:00:00+00:00"' in xml
    assert b'value="2023-05-24T06:29:33.410-04:00"' in xml
    assert "æøå".encode() in xml
    assert parse_xml(xml) == resource


def test_primitive_extensions_and_repeats_keep_their_alignment() -> None:
    patient = {
        "resourceType": "Patient",
        "name": [
            {
                "family": "Hansen",
                "given": ["Jens", "Peter"],
                "_given": [
                    None,
                    {"extension": [{"url": "http://example.org/x", "valueString": "kaldenavn"}]},
                ],
            }
        ],
        "_birthDate": {"extension": [{"url": "http://example.org/y", "valueBoolean": True}]},
    }
    xml = to_xml(patient)
    assert parse_xml(xml) == patient


def test_xsi_schema_location_is_ignored() -> None:
    xml = (
        b'<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        b' xsi:schemaLocation="http://hl7.org/fhir fhir-single.xsd"><active value="true"/></Patient>'
    )
    assert parse_xml(xml) == {"resourceType": "Patient", "active": True}


# --------------------------------------------------------------------------------------------- XML errors
def test_unknown_xml_element_is_located() -> None:
    xml = (
        b'<Bundle xmlns="http://hl7.org/fhir"><type value="collection"/><entry/>'
        b'<entry><fullUrl value="urn:uuid:1"/></entry>'
        b'<entry><resource><Observation><statux value="final"/></Observation></resource></entry></Bundle>'
    )
    with pytest.raises(InvalidInput) as exc:
        parse_xml(xml)
    found = [(i.code, i.diagnostics, i.expression) for i in exc.value.outcome]
    assert found == [
        ("structure", "An element must have a value or children; this one is empty", ("Bundle.entry[0]",)),
        ("structure", "Unknown element 'statux'", ("Bundle.entry[2].resource.statux",)),
    ]


def test_unknown_root_and_foreign_namespace_are_refused() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_xml(b'<Nope xmlns="http://hl7.org/fhir"/>')
    assert _error(exc)[0] == "not-supported"
    with pytest.raises(InvalidInput) as exc:
        parse_xml(b'<Patient xmlns="urn:other"/>')
    assert "namespace" in _error(exc)[1]
    with pytest.raises(InvalidInput) as exc:
        parse_xml(b'<Coding xmlns="http://hl7.org/fhir"/>')
    assert _error(exc)[0] == "not-supported"


def test_malformed_xml_names_line_and_column() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_xml(b'<Patient xmlns="http://hl7.org/fhir">\n<active value="true">\n</Patient>')
    code, text = _error(exc)
    assert code == "structure" and "line 3" in text


def test_to_xml_refuses_an_invalid_resource_with_its_issues() -> None:
    with pytest.raises(InvalidInput) as exc:
        to_xml({"resourceType": "Patient", "active": "yes", "foo": 1})
    where = {i.expression for i in exc.value.outcome.issues}
    assert ("Patient.active",) in where and ("Patient.foo",) in where


def test_to_xml_refuses_a_narrative_with_a_doctype() -> None:
    div = '<!DOCTYPE d [<!ENTITY a "aaaa">]><div xmlns="http://www.w3.org/1999/xhtml">&a;</div>'
    with pytest.raises(InvalidInput):
        to_xml({"resourceType": "Patient", "text": {"status": "generated", "div": div}})


# --------------------------------------------------------------------------------------------- hostile XML
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Patient xmlns="http://hl7.org/fhir"><id value="x"/><name><family value="&lol9;"/></name></Patient>"""


def test_billion_laughs_is_refused_without_expanding() -> None:
    before = _peak_rss_mb()
    with pytest.raises(InvalidInput) as exc:
        parse_xml(BILLION_LAUGHS)
    assert _error(exc)[0] == "security"
    assert _peak_rss_mb() - before < 100


def test_external_entity_to_a_local_file_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    xml = (
        f'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "{secret.as_uri()}">]>'
        f'<Patient xmlns="http://hl7.org/fhir"><id value="&x;"/></Patient>'
    ).encode()
    with pytest.raises(InvalidInput) as exc:
        parse_xml(xml)
    assert _error(exc)[0] == "security"
    assert "TOP-SECRET" not in str(exc.value.outcome.to_fhir())


def test_external_dtd_is_refused(tmp_path: Path) -> None:
    dtd = tmp_path / "evil.dtd"
    dtd.write_text('<!ENTITY leak "LEAKED">')
    xml = (
        f'<?xml version="1.0"?><!DOCTYPE Patient SYSTEM "{dtd.as_uri()}">'
        f'<Patient xmlns="http://hl7.org/fhir"><id value="a"/></Patient>'
    ).encode()
    with pytest.raises(InvalidInput) as exc:
        parse_xml(xml)
    assert _error(exc)[0] == "security"
    remote = (
        b'<?xml version="1.0"?><!DOCTYPE Patient SYSTEM "http://127.0.0.1:9/evil.dtd">'
        b'<Patient xmlns="http://hl7.org/fhir"/>'
    )
    with pytest.raises(InvalidInput):
        parse_xml(remote)


def test_deep_xml_is_refused() -> None:
    depth = 100_000
    inner = b"<extension>" * depth + b"</extension>" * depth
    xml = b'<Patient xmlns="http://hl7.org/fhir">' + inner + b"</Patient>"
    with pytest.raises(InvalidInput) as exc:
        parse_xml(xml)
    assert _error(exc)[0] in ("too-long", "structure")
    shallow_enough = b'<Patient xmlns="http://hl7.org/fhir">' + b"<a>" * 70 + b"</a>" * 70 + b"</Patient>"
    with pytest.raises(InvalidInput) as exc:
        parse_xml(shallow_enough, max_depth=64)
    assert _error(exc) == ("too-long", "XML nests deeper than 64 elements")


def test_oversized_xml_is_refused_before_parsing() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_xml(b"<Patient>" + b" " * 2_000 + b"</Patient>", max_bytes=1_000)
    assert _error(exc)[0] == "too-long"


# --------------------------------------------------------------------------------------------- JSON
def test_parse_json_reports_line_and_column() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_json(b'{\n  "resourceType": "Patient",\n  "active": tru\n}')
    code, text = _error(exc)
    assert code == "structure" and "line 3" in text and "column" in text


def test_deep_json_is_refused_without_recursion_errors() -> None:
    for depth in (65, 5_000, 1_000_000):
        body = b"[" * depth + b"]" * depth
        with pytest.raises(InvalidInput):
            parse_json(body)
    assert parse_json(b"[" * 64 + b"]" * 64) is not None
    nested_objects = b'{"a":' * 65 + b"1" + b"}" * 65
    with pytest.raises(InvalidInput) as exc:
        parse_json(nested_objects)
    assert _error(exc)[0] == "too-long"


def test_huge_json_is_refused() -> None:
    body = b'{"resourceType":"Binary","data":"' + b"A" * 11_000_000 + b'"}'
    with pytest.raises(InvalidInput) as exc:
        parse_json(body)
    assert _error(exc)[0] == "too-long"
    with pytest.raises(InvalidInput):
        parse_json("x" * 2_000, max_bytes=1_000)


def test_parse_json_accepts_a_byte_order_mark_and_str() -> None:
    assert parse_json(b'\xef\xbb\xbf{"resourceType":"Patient"}') == {"resourceType": "Patient"}
    assert parse_json('{"a": "æøå"}') == {"a": "æøå"}


def test_parse_fhir_requires_a_resource() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_fhir(b"[1, 2]", "json")
    assert "JSON object" in _error(exc)[1]
    with pytest.raises(InvalidInput) as exc:
        parse_fhir(b'{"id": "x"}', "json")
    assert _error(exc)[0] == "required"
    bundle = _load(EXAMPLES[0])
    assert parse_fhir(to_json(bundle), "json") == bundle
    assert _canonical_divs(parse_fhir(to_xml(bundle), "xml")) == _canonical_divs(bundle)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"{}", "application/fhir+json; charset=utf-8", "json"),
        (b"<a/>", "application/fhir+json", "json"),
        (b"{}", "application/fhir+xml", "xml"),
        (b"{}", "application/xml", "xml"),
        (b"{}", "TEXT/XML", "xml"),
        (b"<a/>", "application/json", "json"),
        (b"  \n {}", None, "json"),
        (b"\xef\xbb\xbf<Patient/>", "text/plain", "xml"),
        (b"\t<Patient/>", "application/octet-stream", "xml"),
    ],
)
def test_sniff_format(body: bytes, content_type: str | None, expected: str) -> None:
    assert sniff_format(body, content_type) == expected


def test_sniff_format_refuses_what_it_cannot_tell() -> None:
    with pytest.raises(InvalidInput) as exc:
        sniff_format(b"hello", None)
    assert _error(exc)[0] == "not-supported"


# --------------------------------------------------------------------------------------------- properties
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2_000))
def test_random_bytes_never_escape_as_other_exceptions(body: bytes) -> None:
    formats: tuple[Literal["json", "xml"], ...] = ("json", "xml")
    for fmt in formats:
        try:
            parse_fhir(body, fmt)
        except InvalidInput as exc:
            assert exc.outcome.has_errors
    try:
        sniff_format(body, None)
    except InvalidInput:
        pass


_xml_text = st.text(alphabet=st.sampled_from(list('<>/="&; abcPatientidvalue:xmlns!-?[]')), max_size=300)


@settings(max_examples=300, deadline=None)
@given(_xml_text)
def test_xml_like_noise_never_escapes(text: str) -> None:
    body = ('<Patient xmlns="http://hl7.org/fhir">' + text + "</Patient>").encode()
    try:
        parse_xml(body)
    except InvalidInput as exc:
        assert exc.outcome.has_errors
