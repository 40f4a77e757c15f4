"""Fixtures of the hostile-input tier (the bridge it attacks is in fuzz_bed.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "acceptance"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_bed import Target, start_target
from harness import Proc


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One running bridge for the module, stopped afterwards."""
    procs: list[Proc] = []
    try:
        yield start_target(tmp_path_factory.mktemp("fuzz"), procs)
    finally:
        for proc in reversed(procs):
            proc.stop()
