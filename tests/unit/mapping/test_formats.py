"""A second municipal format (borgerjournal-v1), made of mapping files only, gives the same FHIR as the
canonical record, both ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import PROJECT

from bridge.errors import InvalidInput
from bridge.mapping.cases import diff_bundles
from bridge.mapping.registry import load_all

ROOT = PROJECT / "mappings"
CASE = ROOT / "borgerjournal-v1" / "cases" / "hjemmepleje-og-sygepleje" / "municipal.json"
TWIN = Path(__file__).resolve().parents[2] / "fixtures" / "borgerjournal-twin.municipal-v1.json"


@pytest.fixture(scope="module")
def sets():  # type: ignore[no-untyped-def]
    return load_all(ROOT)


def test_both_formats_make_the_same_fhir(sets) -> None:  # type: ignore[no-untyped-def]
    export = sets["borgerjournal-v1"].to_fhir(json.loads(CASE.read_text(encoding="utf-8")))
    canonical = sets["municipal-v1"].to_fhir(json.loads(TWIN.read_text(encoding="utf-8")))
    # the same content; resource ids differ only because the id spaces are named differently
    assert diff_bundles(canonical, export, frozenset({"ids", "Bundle.id"})) == []


def test_fhir_from_one_format_reads_into_the_other(sets) -> None:  # type: ignore[no-untyped-def]
    export_fhir = sets["borgerjournal-v1"].to_fhir(json.loads(CASE.read_text(encoding="utf-8")))
    record, outcome = sets["municipal-v1"].to_municipal(export_fhir)
    assert outcome.issues == []
    twin = sets["municipal-v1"].validate(json.loads(TWIN.read_text(encoding="utf-8")))
    assert record == twin

    canonical_fhir = sets["municipal-v1"].to_fhir(twin)
    document, outcome = sets["borgerjournal-v1"].to_municipal(canonical_fhir)
    assert outcome.issues == []
    original = json.loads(CASE.read_text(encoding="utf-8"))
    del original["sagsbehandler"]  # not part of the care record
    assert document == original


def test_the_export_schema_names_each_problem(sets) -> None:  # type: ignore[no-untyped-def]
    document = json.loads(CASE.read_text(encoding="utf-8"))
    document["borger"]["personnummer"] = "12-04-39"
    document["dokumentation"]["maalinger"][1].pop("systolisk")
    document["dokumentation"]["funktionsevnetilstande"][0]["oprettet"] = "2024-04-01"
    with pytest.raises(InvalidInput) as err:
        sets["borgerjournal-v1"].to_fhir(document)
    where = {i.expression[0] for i in err.value.outcome}
    assert {
        "borger.personnummer",
        "dokumentation.maalinger[1]",
        "dokumentation.funktionsevnetilstande[0].oprettet",
    } <= where


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["borger"].update(personnummer="3102391234"), "neither a CPR number"),  # 31 February
        (lambda d: d["myndighed"]["kommune"].update(lokationsnummer="5790000121527"), "check digit"),
        (lambda d: d["dokumentation"]["helbredstilstande"][0].update(fsiiiKode="J1.1"), "severity"),
    ],
)
def test_produced_fhir_is_checked_for_what_the_schema_cannot_see(sets, change, message) -> None:  # type: ignore[no-untyped-def]
    document = json.loads(CASE.read_text(encoding="utf-8"))
    change(document)
    with pytest.raises(InvalidInput) as err:
        sets["borgerjournal-v1"].to_fhir(document)
    assert message in " | ".join(i.diagnostics for i in err.value.outcome)
