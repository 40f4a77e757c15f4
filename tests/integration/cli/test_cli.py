"""The command line through a real subprocess: translation both ways, validation, every kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sample import sample_record
from shared_data import EXAMPLES, MAPPINGS, SHARED

BIN = Path(sys.executable).parent / "fhir-bridge"
COMMAND = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "bridge.cli"]


def run(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        [*COMMAND, *args], input=stdin, capture_output=True, timeout=120, env={**os.environ, **(env or {})}
    )
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    return result


def outcome(result: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["resourceType"] == "OperationOutcome"
    return data


def expressions(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return [e for issue in outcome(result)["issue"] for e in issue.get("expression", [])]


def write(tmp_path: Path, data: Any, name: str = "in.json") -> str:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    return str(path)


def example_records() -> list[Path]:
    return sorted((EXAMPLES / "records").glob("*.json"))


def test_schema_command_prints_the_committed_schema() -> None:
    result = run("schema", "municipal-record")
    assert result.returncode == 0
    printed = json.loads(result.stdout)
    committed = json.loads((EXAMPLES / "municipal-record.schema.json").read_text(encoding="utf-8"))
    assert printed == committed, (
        "examples/municipal-record.schema.json is stale: regenerate it with the command"
    )
    assert "citizen" in printed["properties"]


@pytest.mark.parametrize("path", example_records(), ids=lambda p: p.name)
def test_each_example_round_trips_through_the_pipe(path: Path) -> None:
    fhir = run("translate", "--to", "fhir", str(path))
    assert fhir.returncode == 0, fhir.stderr
    back = run("translate", "--to", "municipal", "-", stdin=fhir.stdout)
    assert back.returncode == 0, back.stderr
    assert back.stderr == b""  # nothing left behind
    original = json.loads(path.read_text(encoding="utf-8"))
    again = json.loads(back.stdout)
    from bridge.municipal.model import MunicipalRecord

    assert MunicipalRecord.model_validate(again) == MunicipalRecord.model_validate(original)


def test_xml_output_translates_back(tmp_path: Path) -> None:
    src = write(tmp_path, sample_record())
    xml = run("translate", "--to", "fhir", "--format", "xml", src)
    assert xml.returncode == 0, xml.stderr
    assert xml.stdout.lstrip().startswith(b"<") and b'xmlns="http://hl7.org/fhir"' in xml.stdout
    back = run("translate", "--to", "municipal", "-", stdin=xml.stdout)
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["conditions"][0]["code"] == "J1.1"


def test_elements_left_behind_are_warned_on_stderr(tmp_path: Path) -> None:
    bundle = json.loads(run("translate", "--to", "fhir", write(tmp_path, sample_record())).stdout)
    bundle["entry"][0]["resource"]["gender"] = "male"
    result = run("translate", "--to", "municipal", write(tmp_path, bundle, "b.json"))
    assert result.returncode == 0
    assert b"1 element(s) not kept" in result.stderr
    assert b"Bundle.entry[0].resource.gender" in result.stderr


def mutate(change: Any) -> dict[str, Any]:
    record = sample_record()
    change(record)
    return record


BAD_RECORDS = {
    "wrong type": (lambda r: r["conditions"][0].update(severity="high"), "conditions[0].severity"),
    "unknown FSIII code": (lambda r: r["conditions"][0].update(code="Z9.9"), "conditions[0]"),
    "bad CPR date": (lambda r: r["citizen"].update(cpr="3102501234"), "citizen"),
    "bad CPR length": (lambda r: r["citizen"].update(cpr="12345"), "citizen.cpr"),
    "bad GLN check digit": (
        lambda r: r["organization"]["municipality"].update(gln="5790000121527"),
        "organization.municipality.gln",
    ),
    "missing citizen": (lambda r: r.pop("citizen"), "citizen"),
    "missing condition code": (lambda r: r["conditions"][1].pop("code"), "conditions[1].code"),
    "unknown field": (lambda r: r["citizen"].update(shoe_size=42), "citizen.shoe_size"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_records_exit_1_with_the_path_of_the_problem(tmp_path: Path, case: str) -> None:
    change, where = BAD_RECORDS[case]
    result = run("translate", "--to", "fhir", write(tmp_path, mutate(change)))
    assert result.returncode == 1
    assert where in expressions(result)
    assert len(result.stderr.decode().strip().splitlines()) == 1
    assert result.stderr.startswith(b"fhir-bridge: invalid input:")


def test_invalid_json_exits_1_with_line_and_column(tmp_path: Path) -> None:
    result = run("translate", "--to", "fhir", write(tmp_path, b'{"metadata": {,}'))
    assert result.returncode == 1
    issue = outcome(result)["issue"][0]
    assert issue["severity"] == "error"
    assert "line 1" in issue["diagnostics"] or "column" in issue["diagnostics"]


def test_a_bundle_with_an_unknown_code_exits_1_with_its_fhir_path(tmp_path: Path) -> None:
    bundle = json.loads(run("translate", "--to", "fhir", write(tmp_path, sample_record())).stdout)
    index = next(i for i, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] == "Condition")
    bundle["entry"][index]["resource"]["severity"]["coding"][0]["code"] = "B77"
    result = run("translate", "--to", "municipal", write(tmp_path, bundle, "b.json"))
    assert result.returncode == 1
    assert f"Bundle.entry[{index}].resource.severity.coding[0].code" in expressions(result)


def test_hostile_xml_is_refused_without_harm(tmp_path: Path) -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE b [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
        b'<Bundle xmlns="http://hl7.org/fhir"><id value="&b;"/></Bundle>'
    )
    result = run("translate", "--to", "municipal", write(tmp_path, bomb, "bomb.xml"))
    assert result.returncode == 1
    assert outcome(result)["issue"][0]["severity"] == "error"


def test_a_missing_file_exits_2() -> None:
    result = run("translate", "--to", "fhir", "no-such-file.json")
    assert result.returncode == 2
    assert b"cannot read no-such-file.json" in result.stderr


def test_a_broken_mapping_spec_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, broken)
    (broken / "goal.yaml").write_text(
        "resource: Goal\nmaps:\n  - name: goal\n    colour: red\n", encoding="utf-8"
    )
    src = write(tmp_path, sample_record())
    result = run("translate", "--to", "fhir", "--mappings", str(broken), src)
    assert result.returncode == 2
    assert b"goal.yaml: line" in result.stderr
    check = run("mappings", "check", str(broken))
    assert check.returncode == 2 and b"goal.yaml" in check.stderr
    assert run("mappings", "check").returncode == 0


def test_validate_accepts_what_translate_produces(tmp_path: Path) -> None:
    fhir = run("translate", "--to", "fhir", write(tmp_path, sample_record()))
    result = run("validate", "-", stdin=fhir.stdout)
    assert result.returncode == 0, result.stdout
    assert all(i["severity"] not in ("error", "fatal") for i in outcome(result)["issue"])


def test_validate_rejects_an_invalid_resource_with_paths(tmp_path: Path) -> None:
    bad = {"resourceType": "Patient", "birthDate": "not a date", "gender": 7}
    result = run("validate", write(tmp_path, bad))
    assert result.returncode == 1
    where = " ".join(expressions(result))
    assert "Patient.birthDate" in where and "Patient.gender" in where


def test_validate_accepts_an_official_medcom_message() -> None:
    path = SHARED / "medcom" / "hospitalnotification" / "Bundle-a5e5b880-c087-4055-b9ec-99108695f81d.json"
    result = run("validate", str(path))
    assert result.returncode == 0, result.stdout


def test_no_arguments_prints_help_without_a_traceback() -> None:
    result = run()
    assert result.returncode in (0, 2)
    assert b"translate" in result.stdout + result.stderr


MEDCOM_MESSAGES = sorted((SHARED / "medcom" / "hospitalnotification").glob("Bundle-*.json")) + sorted(
    (SHARED / "medcom" / "carecommunication").glob("Bundle-*.json")
)


@pytest.mark.parametrize("path", MEDCOM_MESSAGES, ids=lambda p: p.name[7:15])
def test_official_medcom_messages_translate_to_municipal_and_back_to_a_valid_message(path: Path) -> None:
    municipal = run("translate", "--to", "municipal", str(path))
    assert municipal.returncode == 0, municipal.stderr
    kind = json.loads(municipal.stdout)["format"]
    assert kind in ("hospital-stay-event-v1", "correspondence-v1")
    again = run("translate", "--to", "fhir", "-", stdin=municipal.stdout)
    assert again.returncode == 0, again.stderr
    checked = run("validate", "-", stdin=again.stdout)
    assert checked.returncode == 0, checked.stdout
    original = json.loads(path.read_text(encoding="utf-8"))
    rebuilt = json.loads(again.stdout)
    assert (
        rebuilt["entry"][0]["resource"]["id"] == original["entry"][0]["resource"]["id"]
    )  # MessageHeader.id kept


def test_validate_names_the_location_of_a_broken_medcom_message(tmp_path: Path) -> None:
    path = SHARED / "medcom" / "hospitalnotification" / "Bundle-a5e5b880-c087-4055-b9ec-99108695f81d.json"
    message = json.loads(path.read_text(encoding="utf-8"))
    message["entry"] = message["entry"][1:] + message["entry"][:1]  # MessageHeader no longer first
    result = run("validate", write(tmp_path, message))
    assert result.returncode == 1
    assert any(e.startswith("Bundle.entry") for e in expressions(result))
