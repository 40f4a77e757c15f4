"""The canonical municipal record: every example validates; each rule rejects bad data at its place."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.municipal import fsiii
from bridge.municipal.model import MunicipalRecord

PROJECT = Path(__file__).resolve().parents[3]
RECORDS = sorted((PROJECT / "examples" / "records").glob("*.json"))
SHARED_FSH = PROJECT.parent / "shared" / "fsiii" / "kl-gateway-examples-fsh"


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PROJECT / "examples" / "records" / f"{name}.json").read_text("utf-8"))
    return data


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_every_example_record_validates(path: Path) -> None:
    record = MunicipalRecord.model_validate_json(path.read_bytes())
    again = MunicipalRecord.model_validate(json.loads(record.model_dump_json()))
    assert again == record


def test_the_examples_cover_what_they_promise() -> None:
    assert {p.stem for p in RECORDS} >= {
        "home-care-citizen",
        "nursing-citizen",
        "typical-record",
        "kl-jens-hansen",
        "kl-peter-olsen",
    }
    home = MunicipalRecord.model_validate(_load("home-care-citizen"))
    assert {c.kind for c in home.conditions} == {"home-care"}
    assert all(c.severity is not None for c in home.conditions)
    assert home.goals and home.observations
    assert {i.kind for i in home.interventions} == {"planned", "completed"}
    nursing = MunicipalRecord.model_validate(_load("nursing-citizen"))
    assert {c.kind for c in nursing.conditions} == {"nursing"}
    assert nursing.medications and nursing.journal_notes
    assert {o.kind for o in nursing.observations} >= {"blood-pressure", "blood-glucose"}


def test_typical_record_has_the_benchmark_size() -> None:
    typical = MunicipalRecord.model_validate(_load("typical-record"))
    sizes = (
        len(typical.conditions),
        len(typical.goals),
        len(typical.interventions),
        len(typical.observations),
        len(typical.medications),
        len(typical.journal_notes),
    )
    assert sizes == (8, 4, 6, 10, 3, 5)


@pytest.mark.parametrize(
    ("name", "fsh"), [("kl-jens-hansen", "JensHansenNew.fsh"), ("kl-peter-olsen", "PeterOlsenNew.fsh")]
)
def test_kl_citizens_carry_the_fsh_examples_fsiii_content(name: str, fsh: str) -> None:
    record = MunicipalRecord.model_validate(_load(name))
    text = (SHARED_FSH / fsh).read_text("utf-8")
    for code in [c.code for c in record.conditions] + [i.code for i in record.interventions]:
        assert f"$FSIII#{code}" in text or f"#{code}" in text, code
    ids = [c.id for c in record.conditions] + [g.id for g in record.goals]
    ids += [i.id for i in record.interventions]
    for item_id in ids:
        assert f"Instance: {item_id}" in text, item_id
    severities = {c.id: c.severity for c in record.conditions}
    for condition in record.conditions:
        if condition.severity is not None:
            block = text.split(f"Instance: {condition.id}")[1].split("Instance:")[0]
            assert f'"{condition.severity}"' in block and fsiii.display(condition.code) is not None
    assert all(v is None for v in severities.values()) == (name == "kl-peter-olsen")


# --------------------------------------------------------------------------------------------- rules
def _rejected(change: Callable[[dict[str, Any]], None], base: str = "typical-record") -> list[Any]:
    record = copy.deepcopy(_load(base))
    change(record)
    with pytest.raises(ValidationError) as exc:
        MunicipalRecord.model_validate(record)
    return exc.value.errors()


def _one(errors: list[Any]) -> tuple[tuple[Any, ...], str]:
    assert len(errors) == 1, errors
    return tuple(errors[0]["loc"]), str(errors[0]["msg"])


def test_cpr_must_hold_a_real_date() -> None:
    loc, msg = _one(_rejected(lambda r: r["citizen"].update(cpr="3102489992")))
    assert loc == ("citizen",) and "real date" in msg
    loc, msg = _one(_rejected(lambda r: r["citizen"].update(cpr="07084899")))
    assert loc == ("citizen", "cpr")


def test_replacement_cpr_must_be_marked_consistently() -> None:
    loc, msg = _one(_rejected(lambda r: r["citizen"].update(cpr="070848AB12", cpr_kind="cpr")))
    assert loc == ("citizen",) and "replacement" in msg
    loc, msg = _one(_rejected(lambda r: r["citizen"].update(cpr_kind="replacement")))
    assert loc == ("citizen",) and "'replacement' but the number is a cpr number" in msg
    ok = copy.deepcopy(_load("typical-record"))
    ok["citizen"]["cpr"] = "070848AB12"
    assert MunicipalRecord.model_validate(ok).citizen.cpr_kind == "replacement"


def test_gln_check_digit() -> None:
    def wrong_digit(r: dict[str, Any]) -> None:
        gln = r["organization"]["unit"]["gln"]
        r["organization"]["unit"]["gln"] = gln[:12] + str((int(gln[12]) + 1) % 10)

    loc, msg = _one(_rejected(wrong_digit))
    assert loc == ("organization", "unit", "gln") and "check digit" in msg


def test_unknown_fsiii_codes() -> None:
    loc, msg = _one(_rejected(lambda r: r["conditions"][2].update(code="X9.9")))
    assert loc == ("conditions", 2) and "unknown FSIII condition code 'X9.9'" in msg
    loc, msg = _one(_rejected(lambda r: r["interventions"][1].update(code="J1.1")))
    assert loc == ("interventions", 1) and "unknown FSIII intervention code" in msg


def test_severity_required_for_home_care_and_forbidden_for_nursing() -> None:
    loc, msg = _one(_rejected(lambda r: r["conditions"][0].pop("severity")))
    assert loc == ("conditions", 0) and "requires a severity" in msg
    loc, msg = _one(_rejected(lambda r: r["conditions"][5].update(severity=2)))
    assert loc == ("conditions", 5) and "must not have a severity" in msg
    loc, msg = _one(_rejected(lambda r: r["conditions"][5].update(kind="home-care")))
    assert loc == ("conditions", 5) and "is a nursing condition" in msg


def test_goal_must_address_a_home_care_condition() -> None:
    loc, msg = _one(_rejected(lambda r: r["goals"][1].update(condition_id="c6")))
    assert loc == () and "goal 'g2' must address a home care condition" in msg
    loc, msg = _one(_rejected(lambda r: r["goals"][1].update(condition_id="nope")))
    assert loc == () and "unknown condition 'nope'" in msg


def test_blood_pressure_components() -> None:
    def bp(r: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = next(o for o in r["observations"] if o["kind"] == "blood-pressure")
        return found

    observations = _load("typical-record")["observations"]
    index = next(i for i, o in enumerate(observations) if o["kind"] == "blood-pressure")
    loc, msg = _one(_rejected(lambda r: bp(r).pop("diastolic")))
    assert loc == ("observations", index) and "systolic and diastolic" in msg
    loc, msg = _one(_rejected(lambda r: bp(r).update(value=120)))
    assert loc == ("observations", index)
    loc, msg = _one(_rejected(lambda r: r["observations"][0].update(systolic=120)))
    assert loc == ("observations", 0) and "has a value, and no systolic" in msg


def test_unit_and_code_per_kind() -> None:
    loc, msg = _one(_rejected(lambda r: r["observations"][0].update(unit="g")))
    assert loc == ("observations", 0) and "UCUM unit of weight is 'kg'" in msg
    pulse_code = {"system": "loinc", "code": "8867-4"}
    loc, msg = _one(_rejected(lambda r: r["observations"][0].update(code=pulse_code)))
    assert loc == ("observations", 0) and "is no weight code" in msg


def test_duplicate_item_ids() -> None:
    loc, msg = _one(_rejected(lambda r: r["medications"][2].update(id="m1")))
    assert loc == () and "medications: id 'm1' is used twice" in msg
    loc, msg = _one(_rejected(lambda r: r["journal_notes"][4].update(id="n1")))
    assert loc == () and "journal_notes" in msg


def test_unknown_referenced_condition() -> None:
    loc, msg = _one(_rejected(lambda r: r["interventions"][0]["condition_ids"].append("c99")))
    assert loc == () and "intervention 'i1' addresses unknown condition 'c99'" in msg


def test_completed_intervention_shape_and_unknown_fields() -> None:
    loc, msg = _one(_rejected(lambda r: r["interventions"][4].update(end="2024-03-02")))
    assert loc == ("interventions", 4) and "no end" in msg
    loc, _ = _one(_rejected(lambda r: r["citizen"].update(nickname="x")))
    assert loc == ("citizen", "nickname")
