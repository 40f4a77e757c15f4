"""Where the shared reference data (MedCom, DK-core, FSIII) lies: ``../shared`` beside the project."""

from __future__ import annotations

from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SHARED = PROJECT.parent / "shared"
EXAMPLES = PROJECT / "examples"
MAPPINGS = PROJECT / "mappings" / "municipal-v1"
