"""Mapping sets in the service: a municipality that speaks its own export format, dry runs with a mapping,
the mapping version on each message, and reloading mappings on a running bridge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from api_bed import (
    HERLEV,
    HOSPITAL,
    OPERATOR_TOKEN,
    PROJECT,
    REHAB,
    REHAB_TOKEN,
    Bed,
    BedFactory,
    auth,
    system_entry,
)

from bridge.translate import MAPPINGS_ENV, loaded_set

CASE = PROJECT / "mappings" / "borgerjournal-v1" / "cases" / "hjemmepleje-og-sygepleje" / "municipal.json"


def document() -> dict[str, Any]:
    data = json.loads(CASE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def rehab_speaks_borgerjournal(data: dict[str, Any]) -> None:
    system_entry(data, REHAB)["format"] = "borgerjournal-v1"
    system_entry(data, HERLEV)["format"] = "municipal-v1"


def post(bed: Bed, path: str, body: Any, token: str = REHAB_TOKEN, **params: Any) -> Any:
    return bed.client.post(
        path,
        content=orjson.dumps(body),
        params=params,
        headers={"Content-Type": "application/json", **auth(token)},
    )


def test_a_record_in_the_senders_own_format_reaches_each_receiver_in_its_format(
    bed_factory: BedFactory,
) -> None:
    bed = bed_factory(rehab_speaks_borgerjournal)
    response = post(bed, "/municipal/records", document(), receiver=[HOSPITAL, HERLEV])
    assert response.status_code == 200, response.text
    by_destination = {d.destination: d for d in bed.claim()}
    hospital = orjson.loads(by_destination[HOSPITAL].payload)
    assert hospital == loaded_set("borgerjournal-v1").to_fhir(document())  # the same FHIR as the CLI makes
    herlev = orjson.loads(by_destination[HERLEV].payload)
    assert herlev["format"] == "municipal-v1" and herlev["metadata"]["record_id"] == "BJ-2024-0042"
    assert {c["id"] for c in herlev["conditions"]} == {"FT-11", "FT-12", "HT-21", "HT-22"}
    trace = bed.client.get(f"/messages/{response.json()['id']}", headers=auth(OPERATOR_TOKEN)).json()
    version = trace["mapping_version"]
    assert version.startswith("borgerjournal-v1@1.0.0+") and "municipal-v1@" not in version


def test_a_bad_export_is_refused_with_paths(bed_factory: BedFactory) -> None:
    bed = bed_factory(rehab_speaks_borgerjournal)
    bad = document()
    bad["borger"]["personnummer"] = "1204-39"
    response = post(bed, "/municipal/records", bad, receiver=[HOSPITAL])
    assert response.status_code == 400
    assert ["borger.personnummer"] in [i.get("expression") for i in response.json()["issue"]]
    assert bed.count("messages") == 0


def test_dry_runs_with_a_mapping(bed_factory: BedFactory) -> None:
    bed = bed_factory(rehab_speaks_borgerjournal)
    fhir = post(bed, "/translate", document(), to="fhir")  # the caller's format by default
    assert fhir.status_code == 200, fhir.text
    assert fhir.json()["resourceType"] == "Bundle"
    back = bed.client.post(
        "/translate",
        content=fhir.content,
        params={"to": "municipal", "mapping": "borgerjournal-v1"},
        headers={"Content-Type": "application/fhir+json", **auth(REHAB_TOKEN)},
    )
    assert back.status_code == 200 and back.json()["eksport"]["journalId"] == "BJ-2024-0042"
    bad = document()
    bad["dokumentation"]["helbredstilstande"][0]["fsiiiKode"] = "J1.1"  # home care code, no severity
    checked = post(bed, "/validate", bad, mapping="borgerjournal-v1")
    assert checked.status_code == 200
    assert any("severity" in i["diagnostics"] for i in checked.json()["issue"] if i["severity"] == "error")
    unknown = post(bed, "/translate", document(), to="fhir", mapping="no-such-format")
    assert unknown.status_code == 400


def _delivered(bed: Bed) -> Any:
    from datetime import timedelta

    from bridge.outbox.port import AttemptRecord

    return AttemptRecord(
        started_at=bed.clock.now(), latency=timedelta(milliseconds=5), outcome="delivered", status_code=200
    )


@pytest.fixture
def own_mappings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "mappings"
    shutil.copytree(PROJECT / "mappings", root)
    monkeypatch.setenv(MAPPINGS_ENV, str(root))
    return root


def test_a_broken_mapping_is_refused_at_reload_and_a_good_one_takes_effect(
    own_mappings: Path, bed_factory: BedFactory
) -> None:
    bed = bed_factory(rehab_speaks_borgerjournal)
    operator = auth(OPERATOR_TOKEN)
    before = bed.client.get("/admin/mappings", headers=operator).json()["borgerjournal-v1"]

    goal = own_mappings / "borgerjournal-v1" / "goal.yaml"
    original = goal.read_text(encoding="utf-8")
    goal.write_text(
        original.replace("conceptmap: bj-maal-status", "conceptmap: bj-no-such-map"), encoding="utf-8"
    )
    refused = bed.client.post("/admin/mappings/reload", headers=operator)
    assert refused.status_code == 422
    assert "bj-no-such-map" in refused.text and before in refused.text
    # a spec that compiles but breaks its cases is refused too
    goal.write_text(original.replace("startdato", "slutdato", 1), encoding="utf-8")
    refused = bed.client.post("/admin/mappings/reload", headers=operator)
    assert refused.status_code == 422 and "hjemmepleje-og-sygepleje" in refused.text
    assert bed.client.get("/admin/mappings", headers=operator).json()["borgerjournal-v1"] == before
    assert post(bed, "/municipal/records", document(), receiver=[HOSPITAL]).status_code == 200  # old mappings
    [first] = bed.claim()
    bed.store.complete(first.id, "test-worker", _delivered(bed), bed.clock.now())

    # a good change: observations say how they were measured; the case is updated with it
    goal.write_text(original, encoding="utf-8")
    observation = own_mappings / "borgerjournal-v1" / "observation.yaml"
    observation.write_text(
        observation.read_text(encoding="utf-8").replace(
            "      - {fhir: status, const: final}",
            "      - {fhir: status, const: final}\n      - {fhir: method.text, const: Målt i hjemmet}",
        ),
        encoding="utf-8",
    )
    case_fhir = own_mappings / "borgerjournal-v1" / "cases" / "hjemmepleje-og-sygepleje" / "fhir.json"
    bundle = json.loads(case_fhir.read_text(encoding="utf-8"))
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Observation":
            entry["resource"]["method"] = {"text": "Målt i hjemmet"}
    case_fhir.write_text(json.dumps(bundle), encoding="utf-8")
    swapped = bed.client.post("/admin/mappings/reload", headers=operator)
    assert swapped.status_code == 200, swapped.text
    after = swapped.json()["versions"]["borgerjournal-v1"]
    assert after != before

    changed = document()
    changed["eksport"]["version"] = "18"
    accepted = post(bed, "/municipal/records", changed, receiver=[HOSPITAL])
    assert accepted.status_code == 200
    payloads = [orjson.loads(first.payload), *(orjson.loads(d.payload) for d in bed.claim())]
    methods = [
        [e["resource"].get("method") for e in p["entry"] if e["resource"]["resourceType"] == "Observation"]
        for p in payloads
    ]
    assert methods[0] == [None] * 3 and methods[1] == [{"text": "Målt i hjemmet"}] * 3  # before and after
    trace = bed.client.get(f"/messages/{accepted.json()['id']}", headers=operator).json()
    assert trace["mapping_version"] == after
