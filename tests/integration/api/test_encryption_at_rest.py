"""Encryption at rest through the service: with ``store.payload_keys`` configured, what a hospital posts is
stored sealed (no CPR number or name in any database column), and the service reads it back in plain."""

from __future__ import annotations

import base64
import os
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from api_bed import ENV, HERLEV, HOSPITAL_TOKEN, OPERATOR_TOKEN, STIN, LiveServer, auth, config, example_bytes

from bridge.app import create_app
from bridge.clock import FakeClock
from bridge.outbox import open_store
from bridge.outbox.encryption import MAGIC
from bridge.settings import parse_settings

KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, object, Path]]:
    def sealed(data: dict[str, object]) -> None:
        store = data["store"]
        assert isinstance(store, dict)
        store["payload_keys"] = "${BRIDGE_PAYLOAD_KEYS}"

    settings = parse_settings(config(tmp_path, sealed), {**ENV, "BRIDGE_PAYLOAD_KEYS": f"2026-11={KEY}"})
    store = open_store(settings.store.url)
    app = create_app(settings, store, FakeClock(), role="api")
    server = LiveServer(app)
    client = httpx.Client(base_url=server.url, timeout=30)
    try:
        yield client, app.state.store, tmp_path / "bridge.db"
    finally:
        client.close()
        server.stop()
        store.close()


def test_what_is_posted_is_sealed_in_the_database(served: tuple[httpx.Client, object, Path]) -> None:
    client, store, path = served
    body = example_bytes(STIN)
    answer = client.post(
        "/fhir/$process-message",
        content=body,
        headers={"Content-Type": "application/fhir+json", **auth(HOSPITAL_TOKEN)},
    )
    assert answer.status_code == 200, answer.text
    raw = sqlite3.connect(path)
    try:
        sql = "SELECT payload FROM messages UNION ALL SELECT payload FROM delivery_payloads"
        columns = raw.execute(sql).fetchall()
    finally:
        raw.close()
    assert columns and all(bytes(p).startswith(MAGIC) for (p,) in columns)
    for (payload,) in columns:
        assert b"2509479989" not in payload and b"Elmer" not in payload
    # The service itself reads it in plain: the delivery a worker claims carries the message as sent.
    now = FakeClock().now() + timedelta(minutes=1)
    [claimed] = store.claim_due("w1", now, timedelta(minutes=1), 10)  # type: ignore[attr-defined]
    assert claimed.destination == HERLEV and claimed.payload == body
    trace = client.get(f"/messages/{answer.json()['id']}", headers=auth(OPERATOR_TOKEN))
    assert trace.status_code == 200


def test_a_malformed_key_is_a_configuration_error(tmp_path: Path) -> None:
    from bridge.settings import check_settings

    for keys, problem in (
        ("2026-11=not-base64!", "payload key '2026-11' is not base64"),
        (f"2026-11={base64.b64encode(b'short').decode()}", "must be 32 bytes (AES-256), not 5"),
        (f"a={KEY},a={KEY}", "payload key id 'a' is listed twice"),
        (KEY, "write it as id=base64key"),
    ):
        data = config(tmp_path)
        data["store"]["payload_keys"] = keys
        settings, outcome = check_settings(data, ENV)
        assert settings is None
        [issue] = outcome.errors
        assert problem in issue.diagnostics and KEY not in issue.diagnostics
        assert issue.expression == ("store.payload_keys",)
