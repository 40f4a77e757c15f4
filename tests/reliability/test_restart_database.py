"""The PostgreSQL server stops and comes back while the bridge is under load.

An API node and a worker node run on the test server while senders post admissions. Part-way, the
server is stopped with ``pg_ctlcluster ... stop -m immediate`` - no checkpoint, so its start is a crash
recovery from the WAL - and started again as soon as both nodes report not-ready.

Promised and checked: while the database is down ``/readyz`` answers 503 on both nodes (and the
senders get no 2xx); both reconnect by themselves and report ready again; every message that was
acknowledged - before, during or after the outage - is delivered, in per-citizen order; nothing stays
claimed and nothing is dead.

This restarts the machine's shared PostgreSQL: it is the last test of the tier, the outage lasts a few
seconds, and the server is started again in a ``finally`` whatever happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from harness import Proc, wait_until
from nodes import admissions, config, env_int, node, open_claims, order_violations, send, sims, with_store

pytestmark = pytest.mark.reliability

MESSAGES = env_int("BRIDGE_RELIABILITY_RESTART_MESSAGES", 600)
CITIZENS = 20


def _cluster_of(url: str) -> tuple[str, str]:
    """The (version, name) of the local cluster that listens on ``url``'s port (``pg_lsclusters``)."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("pg_ctlcluster is needed to restart the PostgreSQL test server")
        pytest.skip("no pg_ctlcluster here: the test server cannot be restarted")
    port = str(urlsplit(url).port or 5432)
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True)
    for line in listing.stdout.splitlines():
        version, name, cluster_port, *_ = line.split()
        if cluster_port == port:
            return version, name
    pytest.fail(f"no local PostgreSQL cluster listens on port {port}")


def _pg_ctl(version: str, name: str, *action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, *action],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _server_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@contextmanager
def _server_back_up_afterwards(url: str, version: str, name: str) -> Iterator[None]:
    """Whatever happens in the block, the cluster is started again and answering when it ends."""
    try:
        yield
    finally:
        if not _server_answers(url):
            _pg_ctl(version, name, "start")  # "already running" is fine too
            wait_until(lambda: _server_answers(url), 60, "the PostgreSQL server to answer again")


def _ready(url: str) -> int:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_a_database_restart_under_load_loses_nothing_acknowledged(
    postgres_url: str, tmp_path: Path, started: list[Proc]
) -> None:
    version, name = _cluster_of(postgres_url)
    hospital, municipality, _ = sims(tmp_path)
    started += [hospital, municipality]
    # A pool timeout shorter than the probe's: /readyz answers 503 within it when no connection comes.
    bridge_url = f"{postgres_url}?pool_timeout=2"
    settings = config(tmp_path, bridge_url, hospital=hospital, municipality=municipality, lease="5s")
    api = node(tmp_path, settings, "api", "api").start()
    worker = node(tmp_path, settings, "worker", "worker").start()
    started += [api, worker]

    load = admissions(MESSAGES, CITIZENS)
    stop_sending = threading.Event()
    sender = threading.Thread(target=send, args=(api.url, load), kwargs={"stop": stop_sending}, daemon=True)
    sender.start()
    try:
        wait_until(
            lambda: len(load.acknowledged) >= MESSAGES // 3,
            max(60, MESSAGES / 20),
            "a third of the load accepted",
            api,
        )
        with _server_back_up_afterwards(postgres_url, version, name):
            stopped = _pg_ctl(version, name, "stop", "-m", "immediate")
            assert stopped.returncode == 0, stopped.stderr
            down_at = time.monotonic()
            acknowledged_while_down_from = len(load.acknowledged)
            wait_until(
                lambda: _ready(api.url) == 503 and _ready(worker.url) == 503,
                15,
                "both nodes to report not-ready",
                api,
            )
            # No 2xx while nothing can be stored (a request in flight at the stop may still finish).
            time.sleep(0.5)
            acknowledged_while_down = len(load.acknowledged) - acknowledged_while_down_from
            started_again = _pg_ctl(version, name, "start")
            assert started_again.returncode == 0, started_again.stderr
            outage = time.monotonic() - down_at
        wait_until(lambda: _ready(api.url) == 200 and _ready(worker.url) == 200, 60, "ready again", api)
        sender.join(max(120, MESSAGES / 10))
        assert not sender.is_alive(), "the senders did not finish after the restart"
    finally:
        stop_sending.set()
        sender.join(10)

    acknowledged = load.acknowledged
    assert len(acknowledged) == MESSAGES
    assert acknowledged_while_down <= 8  # at most the requests that were in flight at the stop
    assert load.failures > 0  # the senders did see the outage
    wait_until(
        lambda: acknowledged <= {m["header_id"] for m in municipality.messages()},
        max(120, MESSAGES / 10),
        "every acknowledged message at the receiver",
        worker,
    )
    wait_until(lambda: not any(open_claims(postgres_url).values()), 60, "no open delivery", worker)
    received = municipality.messages()
    assert {m["header_id"] for m in received} == acknowledged
    assert order_violations(load, received) == []
    store = with_store(postgres_url)
    try:
        assert store.list_deliveries("dead") == []
        delivered = store.list_deliveries("delivered", limit=10 * MESSAGES)
        # (A receipt whose handling met the outage is left to the MedCom resend policy, not counted here.)
        assert sum(1 for d in delivered if d.destination == "herlev-municipality") == MESSAGES
    finally:
        store.close()
    assert outage < 30
    assert api.alive and worker.alive  # they rode it out, no restart of the bridge needed
