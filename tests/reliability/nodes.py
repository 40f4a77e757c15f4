"""Bridge nodes for the reliability tier: API and worker processes on one store, senders, and checks.

Builds on the acceptance harness (``tests/acceptance/harness.py``: free ports, logs, waiting for
``/readyz``, stopping everything). What this adds: a database per test on the PostgreSQL test server,
bridge processes started with ``--role``, senders that keep each citizen's messages in order, and
the end-of-run checks every reliability test shares (everything acknowledged arrived; nothing stays
claimed; per-citizen order at the receiver).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import psycopg
import pytest
from harness import CITIZEN_KEY_SECRET, HOSPITAL_TOKEN, Bridge, Sim, bridge_config, free_port, header_id

from bridge.municipal.events import Party
from bridge.outbox import open_store
from bridge.outbox.port import OutboxStore
from bridge.simulators import traffic

POSTGRES_ENV = "BRIDGE_TEST_POSTGRES_URL"


def postgres_server_url() -> str:
    """The PostgreSQL test server; skips without one, fails instead under ``CI=true``."""
    url = os.environ.get(POSTGRES_ENV, "")
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                f"{POSTGRES_ENV} is not set; CI runs the reliability tier on PostgreSQL, never skips it"
            )
        pytest.skip(f"{POSTGRES_ENV} is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    return url


def env_int(name: str, default: int) -> int:
    """A size of the run from the environment (the long run raises them), else ``default``."""
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty database on the test server for one test; dropped afterwards (connections too)."""
    server = postgres_server_url()
    name = f"reliability_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server, autocommit=True, connect_timeout=30) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def config(
    directory: Path,
    url: str,
    *,
    hospital: Sim,
    municipality: Sim,
    rehab: Sim | None = None,
    lease: str = "2s",
    timeout: str = "1s",
    **dispatcher: Any,
) -> dict[str, Any]:
    """A bridge configuration on ``url`` with a short lease (so a crashed worker's work returns soon)."""
    settings = bridge_config(
        port=free_port(),
        hospital_port=hospital.port,
        municipality_port=municipality.port,
        rehab_port=rehab.port if rehab else None,
        timeout=timeout,
    )
    settings["store"] = {"url": url, "citizen_key_secret": "${BRIDGE_CITIZEN_KEY_SECRET}"}
    settings["dispatcher"] = {
        "lease": lease,
        "poll_interval": "50ms",
        "batch_size": 32,
        "shutdown_grace": "2s",
        **dispatcher,
    }
    return settings


def node(
    directory: Path, settings: dict[str, Any], role: str, name: str, env: dict[str, str] | None = None
) -> Bridge:
    """``fhir-bridge serve --role ROLE`` on its own port (not yet started)."""
    port = free_port()
    bridge = Bridge(directory, settings, name=name)
    bridge.argv += ["--role", role, "--port", str(port)]
    bridge.port, bridge.url = port, f"http://127.0.0.1:{port}"
    bridge.env.update({"BRIDGE_CITIZEN_KEY_SECRET": CITIZEN_KEY_SECRET, **(env or {})})
    return bridge


def sims(directory: Path, *, rehab: bool = False) -> tuple[Sim, Sim, Sim | None]:
    """A simulated hospital and municipality (FHIR), optionally a municipality speaking municipal-v1.

    Receivers skip validating what they get: the tests count and order messages, and the CPU goes to
    the bridge processes instead.
    """
    hospital = Sim("hospital", free_port(), directory, "--no-validate", name="hospital").start()
    municipality = Sim("municipality", free_port(), directory, "--no-validate", name="municipality").start()
    second = None
    if rehab:
        second = Sim(
            "municipality", free_port(), directory, "--no-validate", "--speaks", "municipal-v1", name="rehab"
        ).start()
    return hospital, municipality, second


@dataclass
class Traffic:
    """Messages per citizen, in the order they must be delivered; what the bridge acknowledged."""

    by_citizen: dict[str, list[tuple[str, bytes]]]  # CPR -> [(MessageHeader.id, body)]
    accepted: dict[str, list[str]] = field(default_factory=dict)  # CPR -> acknowledged ids, in order
    failures: int = 0

    @property
    def acknowledged(self) -> set[str]:
        """Every MessageHeader.id that got a 2xx."""
        return {hid for ids in self.accepted.values() for hid in ids}


def admissions(total: int, citizens: int, *, first: int = 0, to: Sequence[Party] = ()) -> Traffic:
    """``total`` HospitalNotifications (admissions) for ``citizens`` synthetic citizens, round robin;
    citizen i goes to ``to[i % len(to)]`` (default: the FHIR municipality)."""
    receivers = list(to) or [traffic.HERLEV_MUNICIPALITY]
    by_citizen: dict[str, list[tuple[str, bytes]]] = {}
    for i in range(total):
        c = i % citizens
        message = traffic.notification(
            traffic.admission(first + c, municipality=receivers[c % len(receivers)])
        )
        by_citizen.setdefault(traffic.synthetic_cpr(first + c), []).append(
            (header_id(message), orjson.dumps(message))
        )
    return Traffic(by_citizen)


def send(bridge_url: str, load: Traffic, senders: int = 8, stop: threading.Event | None = None) -> None:
    """Post every message; each citizen's messages one after another (the next only after a 2xx for the
    previous, so acceptance order is known), citizens spread over ``senders`` threads.

    A message without a 2xx (an error answer or no answer) is posted again, as a real sender would,
    until ``stop`` is set; only 2xx answers count as acknowledged.
    """
    stop = stop or threading.Event()
    citizens = sorted(load.by_citizen)
    lock = threading.Lock()
    for cpr in citizens:
        load.accepted.setdefault(cpr, [])

    def sender(mine: list[str]) -> None:
        headers = {"Authorization": f"Bearer {HOSPITAL_TOKEN}", "Content-Type": "application/fhir+json"}
        queues = {cpr: list(load.by_citizen[cpr]) for cpr in mine}
        with httpx.Client(base_url=bridge_url, headers=headers, timeout=10) as client:
            while any(queues.values()) and not stop.is_set():
                for cpr in mine:
                    if not queues[cpr] or stop.is_set():
                        continue
                    hid, body = queues[cpr][0]
                    try:
                        status = client.post("/fhir/$process-message", content=body).status_code
                    except httpx.HTTPError:
                        status = 0
                    if 200 <= status < 300:
                        queues[cpr].pop(0)
                        with lock:
                            load.accepted[cpr].append(hid)
                    else:
                        with lock:
                            load.failures += 1
                        stop.wait(0.05)

    threads = [
        threading.Thread(target=sender, args=(citizens[i::senders],), daemon=True) for i in range(senders)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def open_claims(url: str) -> dict[str, int]:
    """Deliveries still leased or pending in the store at ``url``, by state."""
    store = open_store(url, migrate=False)
    try:
        return {
            state: len(store.list_deliveries(state, limit=100_000))  # type: ignore[arg-type]
            for state in ("leased", "pending")
        }
    finally:
        store.close()


def with_store(url: str) -> OutboxStore:
    """The store at ``url`` for queries from the test (the caller closes it)."""
    return open_store(url, migrate=False)


def order_violations(load: Traffic, received: list[dict[str, Any]]) -> list[str]:
    """Citizens whose acknowledged messages reached the receiver (first copies, by the receiver's
    arrival ``seq``) in another order than the bridge accepted them."""
    arrival = {m["header_id"]: m["seq"] for m in received}
    bad = []
    for cpr, ids in load.accepted.items():
        arrived = [hid for hid in ids if hid in arrival]
        if sorted(arrived, key=arrival.__getitem__) != arrived:
            bad.append(cpr)
    return bad
