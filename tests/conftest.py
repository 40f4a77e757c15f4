"""Test-wide set-up: the shared reference data beside the project, and the test support modules."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "support"))
