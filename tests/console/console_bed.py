"""The console test bed: the real app on loopback (uvicorn), a real SQLite store, a FakeClock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import orjson
from api_bed import HOSPITAL_TOKEN, STIN, auth, example_bytes

from bridge.clock import FakeClock
from bridge.outbox.port import AttemptRecord, AuditEntry, OutboxStore
from bridge.settings import Settings

AUDITOR_TOKEN = "auditor-token-used-in-the-console-tests"


@dataclass
class Console:
    """One bridge app with its store and clock, and a way to open browser-like clients on it."""

    url: str
    store: OutboxStore
    clock: FakeClock
    settings: Settings

    def client(self) -> httpx.Client:
        """A fresh client with its own cookie jar; redirects are not followed, so tests see them."""
        return httpx.Client(base_url=self.url, timeout=30, follow_redirects=False)

    def sign_in(self, token: str) -> httpx.Client:
        client = self.client()
        answer = client.post("/console/login", data={"token": token})
        assert answer.status_code == 303, answer.text
        return client

    def dead_letter(self) -> tuple[str, str]:
        """Accept the official HospitalNotification and dead-letter its delivery, as a worker would
        after a 400: (message id, delivery id)."""
        with httpx.Client(base_url=self.url, timeout=30) as system:
            answer = system.post(
                "/fhir/$process-message",
                content=example_bytes(STIN),
                headers={"Content-Type": "application/fhir+json", **auth(HOSPITAL_TOKEN)},
            )
        assert answer.status_code == 200, answer.text
        now = self.clock.now()
        (claimed,) = self.store.claim_due("test-worker", now, timedelta(minutes=1), 10)
        attempt = AttemptRecord(now, timedelta(milliseconds=12), "permanent", 400, "HTTP 400")
        self.store.dead_letter(claimed.id, "test-worker", attempt, "permanent failure: HTTP 400", now)
        return claimed.message_id, claimed.id

    def audit(self, action: str) -> list[AuditEntry]:
        entries = self.store.read_audit(after_seq=0, limit=100_000)
        return [e for e in entries if e.record.action == action]


def body_of(entry: AuditEntry) -> dict[str, Any]:
    """The AuditEvent JSON of an audit entry."""
    data = orjson.loads(entry.record.body)
    assert isinstance(data, dict)
    return data
