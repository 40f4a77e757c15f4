"""Translation benchmark: records per second each way on one core, against the json floor.

Prints one JSON object. The typical record (``examples/records/typical-record.json``): 1 citizen,
8 conditions, 4 goals, 6 interventions, 10 observations, 3 medications, 5 journal notes.

    python benchmarks/translate.py [--seconds 2] [--record FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from bridge.translate import fhir_to_record, loaded_set, mapping_set, parse_record, record_to_fhir

TYPICAL = Path(__file__).resolve().parent.parent / "examples" / "records" / "typical-record.json"


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


def second_format(bundle: dict[str, object], seconds: float) -> dict[str, float]:
    """The same figures for the borgerjournal-v1 export of the same content (made from the Bundle)."""
    chosen = loaded_set("borgerjournal-v1")
    document, _ = chosen.to_municipal(bundle)
    document_bytes = orjson.dumps(document)
    produced = chosen.to_fhir(document)
    produced_bytes = orjson.dumps(produced)

    def to_fhir() -> bytes:
        return orjson.dumps(chosen.to_fhir(orjson.loads(document_bytes)))

    def to_municipal() -> bytes:
        back, _ = chosen.to_municipal(orjson.loads(produced_bytes))
        return orjson.dumps(back)

    def floor_to_fhir() -> str:
        json.loads(document_bytes)
        return json.dumps(produced)

    def floor_to_municipal() -> str:
        json.loads(produced_bytes)
        return json.dumps(document)

    figures = {
        "to_fhir_per_s": rate(to_fhir, seconds),
        "to_fhir_floor_per_s": rate(floor_to_fhir, seconds),
        "to_municipal_per_s": rate(to_municipal, seconds),
        "to_municipal_floor_per_s": rate(floor_to_municipal, seconds),
    }
    return {
        "document_bytes": len(document_bytes),
        **{k: round(v, 1) for k, v in figures.items()},
        "to_fhir_share_of_floor": round(figures["to_fhir_per_s"] / figures["to_fhir_floor_per_s"], 3),
        "to_municipal_share_of_floor": round(
            figures["to_municipal_per_s"] / figures["to_municipal_floor_per_s"], 3
        ),
        "validates_output": chosen.validate_output,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    parser.add_argument(
        "--record", type=Path, help="a municipal record JSON file instead of the typical record"
    )
    args = parser.parse_args()

    record_bytes = (args.record or TYPICAL).read_bytes()
    mapping_set()  # compile the specs once, outside the measurement
    bundle = record_to_fhir(parse_record(record_bytes))
    bundle_bytes = orjson.dumps(bundle)

    def to_fhir() -> bytes:
        return orjson.dumps(record_to_fhir(parse_record(record_bytes)))

    def to_municipal() -> bytes:
        record, _ = fhir_to_record(orjson.loads(bundle_bytes))
        return record.model_dump_json(exclude_none=True).encode()

    record_out = json.loads(to_municipal())

    def floor_to_fhir() -> str:
        json.loads(record_bytes)
        return json.dumps(bundle)

    def floor_to_municipal() -> str:
        json.loads(bundle_bytes)
        return json.dumps(record_out)

    from fhir.resources.R4B.bundle import Bundle

    # as the service does after start-up: long-lived objects (compiled mappings, models) leave the
    # garbage collector's generations, so collections scan only what a request allocates
    gc.freeze()

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
        "formats": {"borgerjournal-v1": second_format(bundle, s)},
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
