"""MedCom message validation throughput on one core; prints JSON.

    python benchmarks/medcom_validate.py [--seconds 3] [--shared ../shared]

For the official HospitalNotification and CareCommunication examples (round robin over all of them),
in the same process and run:

- ``full``: ``bridge.medcom.validation.validate_message`` - base structure, profiles, invariants, rules;
- ``structure_only``: the structure walk alone (the first of the three layers);
- ``fhir_resources``: ``fhir.resources`` R4B ``Bundle.model_validate`` alone (no profiles), the
  yardstick the profile layer is measured against.

Each figure is messages per second (best of three rounds of ``--seconds``); ``us_per_message`` is its
inverse. The messages are parsed once before timing: all three consume the same dicts.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir.resources.R4B.bundle import Bundle

from bridge.medcom.validation import structure, validate_message


def _rate(fn: Callable[[dict[str, Any]], Any], messages: list[dict[str, Any]], seconds: float) -> float:
    best = 0.0
    for _ in range(3):
        done = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for m in messages:
                fn(m)
            done += len(messages)
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, done / (now - start))
    return best


def _structure_only(bundle: dict[str, Any]) -> None:
    structure.check_resource(bundle, "Bundle", [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = parser.parse_args()
    sets = {
        "hospital_notification": sorted(
            (args.shared / "medcom" / "hospitalnotification").glob("Bundle-*.json")
        ),
        "care_communication": sorted((args.shared / "medcom" / "carecommunication").glob("Bundle-*.json")),
    }
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seconds_per_round": args.seconds,
        "results": {},
    }
    for name, files in sets.items():
        messages = [json.loads(f.read_text(encoding="utf-8")) for f in files]
        errors = sum(len(validate_message(m).errors) for m in messages)  # also warms the compiled profiles
        row: dict[str, Any] = {"examples": len(messages), "errors_found": errors}
        for label, fn in (
            ("full", validate_message),
            ("structure_only", _structure_only),
            ("fhir_resources", Bundle.model_validate),
        ):
            rate = _rate(fn, messages, args.seconds)
            row[label] = {"messages_per_second": round(rate), "us_per_message": round(1e6 / rate, 1)}
        row["full_vs_fhir_resources"] = round(
            row["full"]["messages_per_second"] / row["fhir_resources"]["messages_per_second"], 2
        )
        report["results"][name] = row
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
