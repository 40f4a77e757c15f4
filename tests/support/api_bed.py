"""Helpers for the service API tests: the real app served by uvicorn on a loopback port and called with
httpx, a real SQLite store in tmp_path, a FakeClock.

Settings come from ``examples/bridge.yaml`` with a test secret, the store in ``tmp_path`` and an
operator; ``bed(...)`` takes changes to that configuration (e.g. a municipality speaking municipal-v1).
The apps run with ``role="api"``: these tests look at what the ingress stores, and read each delivery's
wire payload by claiming it from the store as a worker would.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml
from fastapi import FastAPI

from bridge.clock import FakeClock
from bridge.outbox.port import ClaimedDelivery, OutboxStore
from bridge.settings import Settings, hash_token

PROJECT = Path(__file__).resolve().parents[2]
SHARED = PROJECT.parent / "shared"
MEDCOM = SHARED / "medcom"
EXAMPLE_CONFIG = PROJECT / "examples" / "bridge.yaml"
ENV = {"BRIDGE_CITIZEN_KEY_SECRET": "api-tests-citizen-key-secret-0123", "HERLEV_OUTBOUND_TOKEN": "out"}

HOSPITAL_TOKEN = "example-hospital-token-not-for-production"
HERLEV_TOKEN = "example-herlev-token-not-for-production"
REHAB_TOKEN = "example-rehab-token-not-for-production"
OPERATOR_TOKEN = "operator-token-used-in-the-api-tests"

HOSPITAL = "herlev-gentofte-hospital"
HERLEV = "herlev-municipality"
REHAB = "rehab-municipality"

#: MedCom's examples, by the first characters of their Bundle id.
STIN = "hospitalnotification/Bundle-a5e5b880-c087-4055-b9ec-99108695f81d.json"
SLHJ = "hospitalnotification/Bundle-f4aa42a4-86db-4e68-9b38-9dda0dfd5774.json"
CC_NEW = "carecommunication/Bundle-add5e7e2-0c0f-4a4a-bfff-f6f984fa7e3c.json"
CC_REPLY = "carecommunication/Bundle-b56549f7-ed10-422d-8088-f7222b686e46.json"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def example_bytes(name: str) -> bytes:
    return (MEDCOM / name).read_bytes()


def example(name: str) -> dict[str, Any]:
    data = json.loads(example_bytes(name))
    assert isinstance(data, dict)
    return data


def to_unknown_receiver(name: str = STIN) -> dict[str, Any]:
    """The example message with its receiving organisation (the Herlev municipality) replaced by one no
    configured system owns."""
    message = example(name)
    for e in message["entry"]:
        res = e["resource"]
        if res["resourceType"] == "Organization" and any(
            i["value"] == "953741000016009" for i in res["identifier"]
        ):
            res["identifier"] = [
                {"system": "https://www.gs1.org/gln", "value": "5790000000005"},
                {"system": "urn:oid:1.2.208.176.1.1", "value": "123456789012345"},
            ]
    return message


def config(tmp_path: Path, change: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The example configuration with the store in ``tmp_path`` and an operator, then ``change`` applied."""
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    data["store"]["url"] = f"sqlite:///{tmp_path / 'bridge.db'}"
    data["operators"] = [{"name": "on-call", "sha256": hash_token(OPERATOR_TOKEN)}]
    if change is not None:
        change(data)
    return copy.deepcopy(data)


def system_entry(data: dict[str, Any], system_id: str) -> dict[str, Any]:
    entry = next(s for s in data["systems"] if s["id"] == system_id)
    assert isinstance(entry, dict)
    return entry


def herlev_speaks_municipal(data: dict[str, Any]) -> None:
    """Herlev's care system takes municipal JSON instead of FHIR."""
    system_entry(data, HERLEV)["format"] = "municipal-v1"


class LiveServer:
    """An ASGI app served by uvicorn in a thread on a free loopback port; ``stop`` shuts it down."""

    def __init__(self, app: FastAPI) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@dataclass
class Bed:
    """One app on one store: the client, the store, the clock and the settings."""

    client: httpx.Client
    store: OutboxStore
    clock: FakeClock
    settings: Settings
    claimed: list[ClaimedDelivery] = field(default_factory=list)

    def post_message(
        self,
        body: bytes,
        token: str = HOSPITAL_TOKEN,
        content_type: str = "application/fhir+json",
        **headers: str,
    ) -> Any:
        return self.client.post(
            "/fhir/$process-message",
            content=body,
            headers={"Content-Type": content_type, **auth(token), **headers},
        )

    def claim(self, limit: int = 100) -> list[ClaimedDelivery]:
        """Every due delivery, leased as a worker would (ordered heads only)."""
        found = self.store.claim_due("test-worker", self.clock.now(), timedelta(minutes=1), limit)
        self.claimed.extend(found)
        return found

    def count(self, table: str) -> int:
        import sqlite3

        url = self.settings.store.url
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            row = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        return int(row[0])


BedFactory = Callable[..., Bed]
