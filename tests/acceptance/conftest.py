"""Fixtures for the acceptance tier: a bridge and its simulated peers as real processes on loopback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Bridge, Proc, Sim, bridge_config, free_port


@dataclass
class Stack:
    """One bridge with a simulated hospital and municipality (and optionally a second municipality)."""

    bridge: Bridge
    hospital: Sim
    municipality: Sim
    rehab: Sim | None
    directory: Path


StackFactory = Callable[..., Stack]


@pytest.fixture
def start_stack(tmp_path: Path) -> Iterator[StackFactory]:
    """Start stacks on free ports in ``tmp_path``; everything started is stopped after the test."""
    started: list[Proc] = []

    def start(municipality_format: str = "fhir", *, with_rehab: bool = False, **config: Any) -> Stack:
        directory = tmp_path / f"stack{len(started)}"
        directory.mkdir()
        hospital = Sim("hospital", free_port(), directory, name="hospital")
        municipality = Sim("municipality", free_port(), directory, name="municipality")
        rehab = Sim("municipality", free_port(), directory, name="rehab") if with_rehab else None
        for sim in (hospital, municipality, rehab):
            if sim is not None:
                started.append(sim.start())
        settings = bridge_config(
            port=free_port(),
            hospital_port=hospital.port,
            municipality_port=municipality.port,
            municipality_format=municipality_format,
            rehab_port=rehab.port if rehab else None,
            **config,
        )
        bridge = Bridge(directory, settings)
        started.append(bridge)
        bridge.start()
        return Stack(bridge, hospital, municipality, rehab, directory)

    try:
        yield start
    finally:
        for proc in reversed(started):
            proc.stop()
