"""Fixtures for the reliability tier: real bridge processes on one store, crashed and restarted.

Every test here is marked ``reliability`` and bounded in count and time; ``make test`` runs the bounded
sizes, ``make reliability`` the long ones (sizes from ``BRIDGE_RELIABILITY_*`` variables).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "acceptance"))

from harness import Proc  # noqa: E402
from nodes import postgres_database  # noqa: E402


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A database of its own on the PostgreSQL test server."""
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The store URL of each engine in turn: a SQLite file in ``tmp_path``, or a PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{(tmp_path / 'bridge.db').resolve()}"
        return
    with postgres_database() as url:
        yield url


@pytest.fixture
def started() -> Iterator[list[Proc]]:
    """Processes to stop (SIGTERM, then SIGKILL) when the test ends, however it ends; last first."""
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=10)
