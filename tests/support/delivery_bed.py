"""A test bed for the dispatcher: real SQLite store, fake clock, settings, and loopback HTTP receivers.

``Receiver`` is a tiny threading HTTP server on 127.0.0.1 that answers from a script (a function of the
request) and records every request with the number of requests it was serving at once.
``Bed`` accepts official MedCom examples into the store the way the ingress does and builds
dispatchers on them.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from shared_data import SHARED

from bridge.clock import FakeClock
from bridge.delivery.dispatcher import Dispatcher
from bridge.outbox.keys import citizen_key
from bridge.outbox.port import AuditRecord, NewDelivery, NewMessage
from bridge.outbox.sqlite import SqliteOutboxStore
from bridge.settings import Settings, parse_settings

HN = SHARED / "medcom" / "hospitalnotification"
ADMISSION = HN / "Bundle-a5e5b880-c087-4055-b9ec-99108695f81d.json"  # STIN, admitted
DISCHARGE = HN / "Bundle-f4aa42a4-86db-4e68-9b38-9dda0dfd5774.json"  # SLHJ, discharged
SECRET = b"delivery-tests-citizen-key-secret"
FHIR_JSON = "application/fhir+json"
OUTBOUND_TOKEN = "outbound-token-for-the-municipality"
HOSPITAL, KOMMUNE, REHAB = "hospital", "kommune", "rehab"


@dataclass(frozen=True)
class Request:
    """One request a receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    concurrent: int  # requests being served at once, this one included

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def header_id(self) -> str:
        return str(self.json()["entry"][0]["resource"]["id"])

    @property
    def bundle_id(self) -> str:
        return str(self.json()["id"])


@dataclass
class Reply:
    """What a receiver answers: status, headers, body, and a delay before answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


Script = Callable[[Request], Reply]


class Receiver:
    """A loopback HTTP server answering POSTs from ``script`` (200 with no body by default)."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or (lambda _: Reply())
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._active = 0
        self.release = threading.Event()  # scripts may wait on it to hold a request open
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver._active += 1
                    request = Request(self.path, dict(self.headers.items()), body, receiver._active)
                    receiver.requests.append(request)
                try:
                    reply = receiver.script(request)
                    if reply.delay:
                        time.sleep(reply.delay)
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout under test)
                finally:
                    with receiver._lock:
                        receiver._active -= 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/fhir/$process-message"

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def settings_for(
    hospital: str,
    kommune: str,
    rehab: str,
    *,
    retry: dict[str, Any] | None = None,
    medcom: dict[str, Any] | None = None,
    dispatcher: dict[str, Any] | None = None,
    kommune_extra: dict[str, Any] | None = None,
) -> Settings:
    """A hospital and a FHIR municipality (both fhir) and a municipal-v1 municipality at these URLs."""
    data: dict[str, Any] = {
        "store": {"url": "sqlite:///unused.db", "citizen_key_secret": "x" * 32},
        "retry": {
            "initial_delay": "2s",
            "multiplier": 2,
            "max_delay": "1m",
            "jitter": "none",
            "max_attempts": 5,
            "max_age": "1h",
            **(retry or {}),
        },
        "medcom": {"receipt_timeout": "30m", "max_resends": 2, **(medcom or {})},
        "dispatcher": {"lease": "2m", "poll_interval": "50ms", "batch_size": 16, **(dispatcher or {})},
        "systems": [
            {
                "id": HOSPITAL,
                "kind": "hospital",
                "organisations": [{"sor": "265161000016000", "gln": "5790000209354"}],
                "endpoint": hospital,
                "format": "fhir",
                "timeout": "5s",
            },
            {
                "id": KOMMUNE,
                "kind": "municipality",
                "organisations": [{"sor": "953741000016009", "gln": "5790001348120"}],
                "endpoint": kommune,
                "format": "fhir",
                "outbound": {"bearer_token": OUTBOUND_TOKEN},
                "timeout": "5s",
                "concurrency": 2,
                **(kommune_extra or {}),
            },
            {
                "id": REHAB,
                "kind": "municipality",
                "organisations": [{"sor": "1144561000016002", "gln": "5790000123117"}],
                "endpoint": rehab,
                "format": "municipal-v1",
                "timeout": "5s",
            },
        ],
    }
    return parse_settings(data, environ={})


def message_variant(path: Path, *, header_id: str | None = None, bundle_id: str | None = None) -> bytes:
    """An official example with new ids (the store holds each MessageHeader.id once)."""
    bundle = json.loads(path.read_bytes())
    old_header = bundle["entry"][0]["resource"]["id"]
    new_header = header_id or str(uuid.uuid4())
    bundle["id"] = bundle_id or str(uuid.uuid4())
    bundle["entry"][0]["resource"]["id"] = new_header
    # The message's own Provenance targets its MessageHeader; keep it pointing at the new id.
    text = json.dumps(bundle).replace(f"MessageHeader/{old_header}", f"MessageHeader/{new_header}")
    return text.encode()


class Bed:
    """Store, clock and settings for one test; ``accept`` stores a message as the ingress would."""

    def __init__(self, tmp_path: Path, settings: Settings) -> None:
        self.settings = settings
        self.clock = FakeClock()
        self.store = SqliteOutboxStore(tmp_path / "outbox.db")
        self.store.migrate()
        self._dispatchers: list[Dispatcher] = []

    def dispatcher(
        self, worker_id: str = "w1", transport: httpx.BaseTransport | None = None, **kwargs: Any
    ) -> Dispatcher:
        d = Dispatcher(
            self.settings, self.store, self.clock, worker_id=worker_id, transport=transport, **kwargs
        )
        self._dispatchers.append(d)
        return d

    def accept(
        self,
        payload: bytes,
        *,
        to: tuple[str, ...] = (KOMMUNE,),
        sender: str = HOSPITAL,
        cpr: str | None = "2509479989",
        expect_receipt: bool = True,
        kind: str = "hospital-notification",
        delivery_payload: dict[str, bytes] | None = None,
    ) -> NewMessage:
        bundle = json.loads(payload)
        now = self.clock.now()
        message = NewMessage(
            bundle_id=bundle.get("id") or str(uuid.uuid4()),
            header_id=(bundle.get("entry") or [{}])[0].get("resource", {}).get("id") or str(uuid.uuid4()),
            sender=sender,
            kind=kind,
            citizen_key=None if cpr is None else citizen_key(cpr, SECRET),
            payload=payload,
            content_type=FHIR_JSON,
            received_at=now,
        )
        deliveries = []
        for destination in to:
            fmt = self.settings.system(destination).format  # type: ignore[union-attr]
            body = (delivery_payload or {}).get(destination, payload)
            deliveries.append(
                NewDelivery(
                    destination=destination,
                    payload=body,
                    content_type=FHIR_JSON if fmt == "fhir" else "application/json",
                    expect_receipt=expect_receipt and fmt == "fhir",
                )
            )
        audit = AuditRecord(now, "message.accepted", sender, b'{"resourceType":"AuditEvent"}', message.id)
        result = self.store.accept(message, deliveries, audit)
        assert result.accepted
        return message

    def delivery(self, message: NewMessage, destination: str = KOMMUNE) -> Any:
        trace = self.store.message_trace(message.id)
        assert trace is not None
        return next(d for d in trace.deliveries if d.delivery.destination == destination)

    def messages_to(self, destination: str) -> list[Any]:
        return [d for d in self.store.list_deliveries() if d.destination == destination]

    def close(self) -> None:
        for d in self._dispatchers:
            d.stop(timeout=1)
        self.store.close()


def receivers() -> Iterator[tuple[Receiver, Receiver, Receiver]]:
    """Three loopback receivers (hospital, FHIR municipality, municipal-v1 municipality), closed after."""
    trio = (Receiver(), Receiver(), Receiver())
    try:
        yield trio
    finally:
        for r in trio:
            r.close()


__all__ = [
    "ADMISSION",
    "DISCHARGE",
    "HOSPITAL",
    "KOMMUNE",
    "OUTBOUND_TOKEN",
    "REHAB",
    "Bed",
    "Receiver",
    "Reply",
    "Request",
    "message_variant",
    "receivers",
    "settings_for",
]
