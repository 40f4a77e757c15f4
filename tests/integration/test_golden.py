"""Golden files: each example record in examples/records/ against its expected FHIR in examples/fhir/.

After a reviewed change to the mappings, rewrite the expected files with
``BRIDGE_UPDATE_GOLDEN=1 pytest tests/integration/test_golden.py`` and review the diff.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from shared_data import EXAMPLES

from bridge.fhir.klgateway import check_bundle
from bridge.fhir.validate import validate_resource
from bridge.translate import fhir_to_record, parse_record, record_to_fhir

RECORDS = sorted((EXAMPLES / "records").glob("*.json"))
UPDATE = os.environ.get("BRIDGE_UPDATE_GOLDEN") == "1"


def pretty(value: Any) -> list[str]:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True).splitlines()


def test_there_are_at_least_three_examples() -> None:
    assert len(RECORDS) >= 3


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_example_matches_its_expected_fhir(path: Path) -> None:
    bundle = record_to_fhir(parse_record(path.read_bytes()))
    expected_path = EXAMPLES / "fhir" / path.name
    if UPDATE:
        expected_path.parent.mkdir(exist_ok=True)
        expected_path.write_text(json.dumps(bundle, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    expected = json.loads(expected_path.read_text(encoding="utf-8"))
    if bundle != expected:
        diff = "\n".join(
            difflib.unified_diff(pretty(expected), pretty(bundle), "expected", "produced", lineterm="", n=2)
        )
        pytest.fail(f"{path.name} no longer translates to {expected_path.name}:\n{diff}")


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_example_fhir_is_valid_and_translates_back(path: Path) -> None:
    record = parse_record(path.read_bytes())
    bundle = record_to_fhir(record)
    structure = validate_resource(bundle)
    assert not structure.has_errors, structure.to_fhir()
    kl = check_bundle(bundle)
    assert not kl.has_errors, kl.to_fhir()
    back, outcome = fhir_to_record(bundle)
    assert back == record
    assert outcome.issues == []
