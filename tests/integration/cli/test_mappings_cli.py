"""`fhir-bridge mappings test` and `coverage` in a subprocess: exit codes, diffs, JUnit XML, --update."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from shared_data import PROJECT

ROOT = PROJECT / "mappings"
BIN = Path(sys.executable).parent / "fhir-bridge"
COMMAND = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "bridge.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def sets(tmp_path: Path) -> Path:
    copy = tmp_path / "mappings"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("README.md"))
    return copy


def test_every_shipped_case_passes_and_a_junit_report_is_written(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    result = run("mappings", "test", str(ROOT), "--junit", str(report))
    assert result.returncode == 0, result.stdout
    assert "municipal-v1:" in result.stdout and "borgerjournal-v1:" in result.stdout
    suites = ElementTree.parse(report).getroot()
    names = {s.get("name") for s in suites}
    assert names == {"mappings.municipal-v1", "mappings.borgerjournal-v1"}
    assert all(s.get("failures") == "0" for s in suites)
    assert sum(int(s.get("tests", "0")) for s in suites) >= 4


def test_a_changed_expectation_fails_with_a_fhir_aware_diff(sets: Path, tmp_path: Path) -> None:
    fhir = sets / "borgerjournal-v1" / "cases" / "hjemmepleje-og-sygepleje" / "fhir.json"
    bundle = json.loads(fhir.read_text(encoding="utf-8"))
    entries = bundle["entry"]
    entries.reverse()  # order of entries does not matter
    goal = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "Goal")
    goal["target"][0]["detailCodeableConcept"]["coding"][0]["code"] = "B2"
    fhir.write_text(json.dumps(bundle), encoding="utf-8")
    report = tmp_path / "junit.xml"
    result = run("mappings", "test", str(sets / "borgerjournal-v1"), "--junit", str(report))
    assert result.returncode == 1
    assert (
        'Goal[M-31].target[0].detailCodeableConcept.coding[0].code: expected "B2", got "B3"' in result.stdout
    )
    assert result.stdout.count("FAILED") == 1  # the reversed entry order alone is no difference
    failure = ElementTree.parse(report).getroot().find(".//failure")
    assert failure is not None and "B2" in (failure.text or "")

    updated = run("mappings", "test", str(sets / "borgerjournal-v1"), "--update")
    assert updated.returncode == 0
    assert run("mappings", "test", str(sets / "borgerjournal-v1")).returncode == 0
    assert json.loads(fhir.read_text(encoding="utf-8")) != bundle


def test_a_broken_set_exits_2_naming_the_file(sets: Path) -> None:
    spec = sets / "borgerjournal-v1" / "goal.yaml"
    spec.write_text(spec.read_text(encoding="utf-8").replace("conceptmap: bj-niveau", "conceptmap: bj-nope"))
    result = run("mappings", "test", str(sets))
    assert result.returncode == 2
    assert "goal.yaml" in result.stderr and "bj-nope" in result.stderr


def test_coverage_lists_reads_writes_and_unmapped_case_fields() -> None:
    result = run("mappings", "coverage", "borgerjournal-v1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["unmapped_fields"] == ["sagsbehandler"]
    maps = {m["name"]: m for m in report["maps"]}
    assert "dokumentation.funktionsevnetilstande[].niveau" in maps["funktionsevnetilstand"]["reads"]
    assert "severity.coding[0].code" in maps["funktionsevnetilstand"]["writes"]
    text = run("mappings", "coverage", "municipal-v1")
    assert text.returncode == 0 and "mapped by nothing: 0" in text.stdout
    assert run("mappings", "coverage", "no-such-set").returncode == 2
