"""A first look at the bridge: translate each example record to FHIR R4 and back, and say what happened.

    python -m bridge.demo [EXAMPLES_DIR]
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from bridge.errors import InvalidInput
from bridge.translate import fhir_to_record, parse_record, record_to_fhir


def run(directory: Path) -> int:
    records = sorted((directory / "records").glob("*.json"))
    if not records:
        sys.stderr.write(f"fhir-bridge demo: no records under {directory / 'records'}\n")
        return 2
    for path in records:
        try:
            record = parse_record(path.read_bytes())
            bundle = record_to_fhir(record)
            back, outcome = fhir_to_record(bundle)
        except InvalidInput as exc:
            sys.stderr.write(f"{path.name}: {exc.outcome.summary()}\n")
            return 1
        kinds = Counter(e["resource"]["resourceType"] for e in bundle["entry"])
        summary = ", ".join(f"{n} {t}" for t, n in kinds.items())
        same = "the same record" if back == record and not outcome.issues else "a different record"
        sys.stdout.write(f"{path.name}: {len(bundle['entry'])} resources ({summary}); back: {same}\n")
    sys.stdout.write(
        "\nTry it yourself:\n"
        f"  fhir-bridge translate --to fhir {records[0]} | fhir-bridge translate --to municipal\n"
    )
    return 0


def main() -> None:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("examples")
    raise SystemExit(run(directory))


if __name__ == "__main__":
    main()
