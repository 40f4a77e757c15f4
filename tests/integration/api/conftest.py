"""Fixtures of the service API tests (helpers in tests/support/api_bed.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_bed import ENV, Bed, BedFactory, LiveServer, config

from bridge.app import create_app
from bridge.clock import FakeClock
from bridge.ingress import Ingress
from bridge.outbox import open_store
from bridge.outbox.port import OutboxStore
from bridge.settings import parse_settings


@pytest.fixture
def bed_factory(tmp_path: Path) -> Iterator[BedFactory]:
    """Serves apps (role api) on a fresh store on loopback; everything opened is closed afterwards."""
    opened: list[tuple[httpx.Client, LiveServer, OutboxStore]] = []

    def make(
        change: Callable[[dict[str, Any]], None] | None = None,
        *,
        store_wrapper: Callable[[OutboxStore], OutboxStore] | None = None,
    ) -> Bed:
        settings = parse_settings(config(tmp_path, change), ENV)
        store = open_store(settings.store.url)
        clock = FakeClock()
        used = store_wrapper(store) if store_wrapper is not None else store
        app = create_app(settings, used, clock, role="api", ingress=Ingress(settings, used, clock))
        server = LiveServer(app)
        client = httpx.Client(base_url=server.url, timeout=30)
        opened.append((client, server, store))
        return Bed(client, store, clock, settings)

    yield make
    for client, server, store in opened:
        client.close()
        server.stop()
        store.close()


@pytest.fixture
def bed(bed_factory: BedFactory) -> Bed:
    """The example deployment: Herlev speaks FHIR, the rehabilitation municipality municipal-v1."""
    return bed_factory()
