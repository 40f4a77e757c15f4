"""Fixtures: three loopback receivers and a bed (real SQLite store, fake clock) wired to them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from delivery_bed import Bed, Receiver, receivers, settings_for


@pytest.fixture
def trio() -> Iterator[tuple[Receiver, Receiver, Receiver]]:
    yield from receivers()


@pytest.fixture
def make_bed(tmp_path: Path, trio: tuple[Receiver, Receiver, Receiver]) -> Iterator[Callable[..., Bed]]:
    beds: list[Bed] = []

    def make(**overrides: Any) -> Bed:
        hospital, kommune, rehab = trio
        bed = Bed(tmp_path, settings_for(hospital.url, kommune.url, rehab.url, **overrides))
        beds.append(bed)
        return bed

    yield make
    for bed in beds:
        bed.close()


@pytest.fixture
def bed(make_bed: Callable[..., Bed]) -> Bed:
    return make_bed()
