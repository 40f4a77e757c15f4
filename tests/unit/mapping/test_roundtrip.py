"""Round trips through the shipped mappings, property-based over generated valid records."""

from __future__ import annotations

import copy
from typing import Any

import orjson
from fhir.resources.R4B.bundle import Bundle
from hypothesis import HealthCheck, given, settings
from record_strategies import records

from bridge.fhir.klgateway import check_bundle
from bridge.fhir.validate import validate_resource
from bridge.translate import fhir_to_record, parse_record, record_to_fhir

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(records())
def test_record_to_fhir_and_back_is_the_same_record(data: dict[str, Any]) -> None:
    record = parse_record(orjson.dumps(data))
    bundle = record_to_fhir(record)
    back, outcome = fhir_to_record(orjson.loads(orjson.dumps(bundle)))
    assert back == record
    assert outcome.issues == []


@SETTINGS
@given(records())
def test_bundle_to_record_and_back_is_the_same_bundle(data: dict[str, Any]) -> None:
    bundle = record_to_fhir(parse_record(orjson.dumps(data)))
    original = copy.deepcopy(bundle)
    record, _ = fhir_to_record(bundle)
    assert bundle == original, "the reverse mapping must not change its input"
    assert record_to_fhir(record) == original


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_every_produced_bundle_is_valid_fhir_r4(data: dict[str, Any]) -> None:
    bundle = record_to_fhir(parse_record(orjson.dumps(data)))
    Bundle.model_validate(bundle)  # raises on any structural error
    structure = validate_resource(bundle)  # stricter: no empty values, JSON types, references resolve
    assert not structure.has_errors, structure.to_fhir()
    kl = check_bundle(bundle)  # the second, independent check: the published KL Gateway constraints
    assert not kl.has_errors, kl.to_fhir()
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(urls) == len(set(urls))
    assert all(u.startswith("urn:uuid:") for u in urls)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_the_same_record_twice_yields_the_same_ids(data: dict[str, Any]) -> None:
    a = record_to_fhir(parse_record(orjson.dumps(data)))
    b = record_to_fhir(parse_record(orjson.dumps(data)))
    assert [e["fullUrl"] for e in a["entry"]] == [e["fullUrl"] for e in b["entry"]]
    data["organization"]["municipality"]["code"] = "9" + data["organization"]["municipality"]["code"][1:]
    c = record_to_fhir(parse_record(orjson.dumps(data)))
    assert not {e["fullUrl"] for e in a["entry"]} & {e["fullUrl"] for e in c["entry"]}
