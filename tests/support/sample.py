"""A small valid municipal record for tests that need one at hand."""

from __future__ import annotations

import copy
from typing import Any

_RECORD: dict[str, Any] = {
    "metadata": {
        "source_system": "Demo",
        "record_id": "r1",
        "version": "1",
        "last_changed": "2024-05-01T10:00:00Z",
    },
    "citizen": {"cpr": "2509479989", "name": {"given": ["Bruno"], "family": "Elmer"}},
    "organization": {
        "municipality": {"name": "Hillerød Kommune", "code": "0219", "gln": "5790000121526"},
        "unit": {"name": "Hjemmeplejen", "kind": "home-care-group", "sor": "123456789012345"},
    },
    "conditions": [
        {"id": "c1", "code": "J1.1", "clinical_status": "active", "severity": 2, "recorded": "2024-04-01"},
        {"id": "c2", "code": "I1.1", "clinical_status": "active", "recorded": "2024-04-01"},
    ],
    "goals": [{"id": "g1", "condition_id": "c1", "expected_severity": 1, "start": "2024-04-01"}],
}


def sample_record() -> dict[str, Any]:
    """A fresh copy, safe to change."""
    return copy.deepcopy(_RECORD)
