"""Translation benchmark: records per second each way on one core, against the json floor.

Prints one JSON object. The typical record: 1 citizen, 8 conditions, 4 goals, 6 interventions,
10 observations, 3 medications, 5 journal notes (``typical_record()``).

    python benchmarks/translate.py [--seconds 2] [--record FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bridge.translate import fhir_to_record, mapping_set, parse_record, record_to_fhir

HOME_CARE = ["J1.1", "J1.2", "J1.3", "J2.1", "J2.2"]
NURSING = ["I1.1", "I2.1", "I3.1"]


def typical_record() -> dict[str, Any]:
    """A record of the size the issue names, with realistic content."""
    conditions = [
        {
            "id": f"c{i}",
            "code": code,
            "clinical_status": "active",
            "severity": i % 5,
            "recorded": "2024-03-01",
            "follow_up": "2024-09-01",
        }
        for i, code in enumerate(HOME_CARE)
    ] + [
        {"id": f"n{i}", "code": code, "clinical_status": "active", "recorded": "2024-03-02"}
        for i, code in enumerate(NURSING)
    ]
    goals = [
        {"id": f"g{i}", "condition_id": f"c{i}", "expected_severity": 1, "start": "2024-03-01"}
        for i in range(4)
    ]
    interventions = [
        {
            "id": f"p{i}",
            "kind": "planned",
            "code": code,
            "status": "active",
            "start": "2024-03-01",
            "condition_ids": [f"c{i}"],
        }
        for i, code in enumerate(["H1.1", "H1.2", "H2.1", "H2.2"])
    ] + [
        {
            "id": f"d{i}",
            "kind": "completed",
            "code": "G1.10",
            "status": "completed",
            "start": f"2024-03-0{i + 3}T09:00:00+01:00",
            "condition_ids": ["n0"],
        }
        for i in range(2)
    ]
    kinds = [
        ("weight", "loinc", "29463-7", "kg", {"value": 72.4}),
        ("blood-pressure", "loinc", "85354-9", "mm[Hg]", {"systolic": 135.0, "diastolic": 85.0}),
        ("pulse", "loinc", "8867-4", "/min", {"value": 72.0}),
        ("temperature", "npu", "NPU08676", "Cel", {"value": 37.1}),
        ("spo2", "loinc", "59408-5", "%", {"value": 96.0}),
        ("blood-glucose", "npu", "NPU22089", "mmol/L", {"value": 6.2}),
    ]
    observations = []
    for i in range(10):
        kind, system, code, unit, values = kinds[i % len(kinds)]
        observations.append(
            {
                "id": f"o{i}",
                "kind": kind,
                "code": {"system": system, "code": code},
                "unit": unit,
                "effective": f"2024-03-{10 + i}T08:30:00+01:00",
                "performer": "Karen Hjemmesygeplejerske",
                **values,
            }
        )
    medications = [
        {
            "id": "m1",
            "name": "Panodil",
            "atc": "N02BE01",
            "dose": "1 g 3 gange dagligt",
            "route": "oral",
            "status": "active",
            "start": "2024-01-01",
        },
        {
            "id": "m2",
            "name": "Furix",
            "atc": "C03CA01",
            "dose": "40 mg morgen",
            "route": "oral",
            "status": "active",
        },
        {
            "id": "m3",
            "name": "Insulatard",
            "atc": "A10AC01",
            "dose": "12 IE aften",
            "route": "subkutan",
            "status": "active",
            "start": "2023-06-01",
        },
    ]
    notes = [
        {
            "id": f"j{i}",
            "time": f"2024-03-1{i}T14:00:00+01:00",
            "author": {"name": "Karen Hjemmesygeplejerske", "role": "sygeplejerske"},
            "category": "nursing",
            "text": "Borgeren er i god trivsel. Blodsukker målt og insulin givet som ordineret. " * 2,
        }
        for i in range(5)
    ]
    return {
        "metadata": {
            "source_system": "Demo Omsorg",
            "record_id": "bench-1",
            "version": "7",
            "last_changed": "2024-03-20T12:00:00+01:00",
        },
        "citizen": {
            "cpr": "0101701234",
            "name": {"given": ["Inger"], "family": "Testesen"},
            "address": {
                "lines": ["Fiktivvej 1"],
                "postal_code": "8000",
                "city": "Aarhus",
                "municipality_code": "0751",
            },
            "phone": "+45 11223344",
        },
        "organization": {
            "municipality": {
                "name": "Aarhus Kommune",
                "code": "0751",
                "sor": "123456789012345",
                "gln": "5790000121526",
            },
            "unit": {
                "name": "Hjemmeplejen Syd",
                "kind": "home-care-group",
                "sor": "123456789012346",
                "gln": "5790001382445",
            },
        },
        "conditions": conditions,
        "goals": goals,
        "interventions": interventions,
        "observations": observations,
        "medications": medications,
        "journal_notes": notes,
        "contacts": {
            "relatives": [
                {"id": "r1", "name": "Ole Testesen", "relationship": "child", "phone": "+45 55667788"}
            ],
            "general_practitioner": {"name": "Lægehuset Fiktiv", "ydernummer": "12345"},
        },
    }


def rate(fn: Callable[[], object], seconds: float) -> float:
    fn()
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(20):
            fn()
        n += 20
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    parser.add_argument(
        "--record", type=Path, help="a municipal record JSON file instead of the typical record"
    )
    args = parser.parse_args()

    record_bytes = args.record.read_bytes() if args.record else orjson.dumps(typical_record())
    mapping_set()  # compile the specs once, outside the measurement
    bundle = record_to_fhir(parse_record(record_bytes))
    bundle_bytes = orjson.dumps(bundle)

    def to_fhir() -> bytes:
        return orjson.dumps(record_to_fhir(parse_record(record_bytes)))

    def to_municipal() -> bytes:
        record, _ = fhir_to_record(orjson.loads(bundle_bytes))
        return record.model_dump_json(exclude_none=True).encode()

    record_out = to_municipal()

    def floor_to_fhir() -> str:
        json.loads(record_bytes)
        return json.dumps(bundle)

    def floor_to_municipal() -> str:
        json.loads(bundle_bytes)
        return json.dumps(json.loads(record_out))

    from fhir.resources.R4B.bundle import Bundle

    def fhir_resources_validation() -> object:
        return Bundle.model_validate(bundle)

    s = args.seconds
    figures = {
        "to_fhir_per_s": rate(to_fhir, s),
        "to_fhir_floor_per_s": rate(floor_to_fhir, s),
        "to_municipal_per_s": rate(to_municipal, s),
        "to_municipal_floor_per_s": rate(floor_to_municipal, s),
        "fhir_resources_validation_per_s": rate(fhir_resources_validation, s),
    }
    result = {
        "benchmark": "translate",
        "python": platform.python_version(),
        "record_bytes": len(record_bytes),
        "bundle_bytes": len(bundle_bytes),
        "bundle_resources": len(bundle["entry"]),
        **{k: round(v, 1) for k, v in figures.items()},
        "to_fhir_share_of_floor": round(figures["to_fhir_per_s"] / figures["to_fhir_floor_per_s"], 3),
        "to_municipal_share_of_floor": round(
            figures["to_municipal_per_s"] / figures["to_municipal_floor_per_s"], 3
        ),
        "fhir_resources_validation_ms": round(1000 / figures["fhir_resources_validation_per_s"], 3),
        "target_share_of_floor": 0.25,
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
