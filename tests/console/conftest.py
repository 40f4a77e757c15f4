"""Fixtures of the console tests (helpers in console_bed.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_bed import ENV, LiveServer, config
from console_bed import AUDITOR_TOKEN, Console

from bridge.app import create_app
from bridge.clock import FakeClock
from bridge.outbox import open_store
from bridge.settings import hash_token, parse_settings


def _with_people(data: dict[str, Any]) -> None:
    data["auditors"] = [{"name": "inspector", "sha256": hash_token(AUDITOR_TOKEN)}]


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    """The example deployment with an operator (``on-call``) and an auditor (``inspector``)."""
    settings = parse_settings(config(tmp_path, _with_people), ENV)
    store = open_store(settings.store.url)
    clock = FakeClock()
    app = create_app(settings, store, clock, role="api")
    server = LiveServer(app)
    try:
        yield Console(server.url, store, clock, settings)
    finally:
        server.stop()
        store.close()
