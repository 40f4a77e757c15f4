"""A simulated receiving system: a small real HTTP server the bridge delivers to.

The peer records every message it accepts (MessageHeader.id, kind, MedCom use case, citizen, arrival
order), dedupes on MessageHeader.id as MedCom asks receivers to, validates what it receives with the
bridge's MedCom validator, and answers a FHIR MedCom message with an Acknowledgement - the same receipt
again for a duplicate. Acknowledgements it receives (forwarded by the bridge for messages it sent) are
recorded as receipts and never acknowledged (KR2.R).

Tests steer it over HTTP (``/_sim/...``), so the peer can run as a separate process:

- ``GET /_sim/state``: what arrived, in order, with counts of requests, duplicates and faults;
- ``GET /_sim/messages/{header_id}``: the body of one received message;
- ``POST /_sim/faults``: ``{"script": [fault, ...], "then": fault | null}`` - each delivery request
  consumes one scripted fault, then ``then`` applies to every later one (``null``: answer normally).
  A fault is ``{"status": 503}``, ``{"status": 429, "retry_after": 1}``, ``{"delay": 3}`` (answer late,
  so the bridge times out) or both; ``{"status": 200}`` takes the message silently - no receipt, as if
  the Acknowledgement were lost;
- ``POST /_sim/reset``: forget everything.

Only for loopback use in tests and demos: it has no authentication of its own.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from bridge.errors import InvalidInput
from bridge.fhir.parse import parse_fhir, parse_json, sniff_format
from bridge.medcom.acknowledgement import build_acknowledgement, parse_acknowledgement
from bridge.medcom.hospital_notification import classify
from bridge.medcom.validation import recognise, validate_message

FHIR_JSON = "application/fhir+json"


@dataclass(slots=True)
class Received:
    """One accepted message, as the peer saw it first."""

    header_id: str
    kind: str  # hospital-notification, care-communication, municipal-record, hospital-stay-event-v1, ...
    code: str | None  # MedCom use case (STIN, SLHJ, ...) or the municipal event code
    citizen: str | None
    seq: int
    at: float
    body: bytes
    valid: bool = True
    problems: list[str] = field(default_factory=list)
    copies: int = 1
    receipt: bytes = b""

    def summary(self) -> dict[str, Any]:
        """The message without its body, for ``/_sim/state``."""
        return {
            "header_id": self.header_id,
            "kind": self.kind,
            "code": self.code,
            "citizen": self.citizen,
            "seq": self.seq,
            "at": self.at,
            "valid": self.valid,
            "problems": self.problems,
            "copies": self.copies,
        }


@dataclass(frozen=True, slots=True)
class Fault:
    """How to misbehave on one delivery request."""

    status: int | None = None
    retry_after: float | None = None
    delay: float = 0.0

    @classmethod
    def from_json(cls, data: Any) -> Fault | None:
        """A fault from its JSON form; None for ``null``."""
        if data is None:
            return None
        if not isinstance(data, dict):
            raise ValueError("a fault is an object with status, retry_after and/or delay")
        status = data.get("status")
        retry_after = data.get("retry_after")
        return cls(
            status=None if status is None else int(status),
            retry_after=None if retry_after is None else float(retry_after),
            delay=float(data.get("delay", 0.0)),
        )


class Inbox:
    """The peer's thread-safe memory: messages by MessageHeader.id in arrival order, receipts, faults."""

    def __init__(self, *, validate: bool = True) -> None:
        self.validate = validate
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget every message, receipt, counter and fault."""
        with self._lock:
            self.messages: dict[str, Received] = {}
            self.receipts: list[dict[str, Any]] = []
            self.requests = 0
            self.duplicates = 0
            self.faulted = 0
            self._script: deque[Fault] = deque()
            self._then: Fault | None = None

    def set_faults(self, script: list[Fault], then: Fault | None) -> None:
        """Misbehave as ``script`` says on the next requests, then as ``then`` (None: normally)."""
        with self._lock:
            self._script = deque(script)
            self._then = then

    def next_fault(self) -> Fault | None:
        """Count one delivery request and take the fault that applies to it."""
        with self._lock:
            self.requests += 1
            fault = self._script.popleft() if self._script else self._then
            if fault is not None:
                self.faulted += 1
            return fault

    def add(self, received: Received) -> tuple[Received, bool]:
        """Record a message; for a known MessageHeader.id return the first copy and True."""
        with self._lock:
            first = self.messages.get(received.header_id)
            if first is not None:
                first.copies += 1
                self.duplicates += 1
                return first, True
            received.seq = len(self.messages)
            self.messages[received.header_id] = received
            return received, False

    def add_receipt(self, receipt: dict[str, Any]) -> None:
        """Record a received Acknowledgement (duplicates of one receipt are kept, counted by the test)."""
        with self._lock:
            receipt["seq"] = len(self.receipts)
            self.receipts.append(receipt)

    def state(self) -> dict[str, Any]:
        """Everything the peer knows, as JSON-ready data."""
        with self._lock:
            return {
                "messages": [m.summary() for m in self.messages.values()],
                "receipts": list(self.receipts),
                "requests": self.requests,
                "duplicates": self.duplicates,
                "faulted": self.faulted,
            }

    def counts(self) -> dict[str, int]:
        """How many messages, receipts, requests and duplicates the peer has seen: ``state`` without
        the lists, cheap enough to poll while thousands arrive."""
        with self._lock:
            return {
                "messages": len(self.messages),
                "receipts": len(self.receipts),
                "requests": self.requests,
                "duplicates": self.duplicates,
                "faulted": self.faulted,
            }

    def body(self, header_id: str) -> bytes | None:
        """The body of the first copy of a message, or None."""
        with self._lock:
            found = self.messages.get(header_id)
            return None if found is None else found.body


def _cpr_of_bundle(bundle: dict[str, Any]) -> str | None:
    for item in bundle.get("entry") or []:
        resource = item.get("resource") if isinstance(item, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "Patient":
            for identifier in resource.get("identifier") or []:
                if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
                    return str(identifier["value"])
    return None


class Peer:
    """The receiving logic, apart from HTTP: turn one delivered body into (status, headers, body)."""

    def __init__(self, inbox: Inbox, on_message: Callable[[Received], None] | None = None) -> None:
        self.inbox = inbox
        self.on_message = on_message

    def receive(self, body: bytes, content_type: str | None) -> tuple[int, dict[str, str], bytes]:
        """Accept one delivery (after faults were applied)."""
        try:
            # Municipal JSON has no resourceType, so JSON is read plainly and only XML as FHIR.
            data = parse_fhir(body, "xml") if sniff_format(body, content_type) == "xml" else parse_json(body)
        except InvalidInput as exc:
            return 400, {"Content-Type": FHIR_JSON}, orjson.dumps(exc.outcome.to_fhir())
        if not isinstance(data, dict):
            return 400, {"Content-Type": "application/json"}, b'{"error":"a JSON object was expected"}'
        if data.get("resourceType") == "Bundle":
            return self._bundle(data, body)
        return self._municipal(data, body)

    def _bundle(self, bundle: dict[str, Any], body: bytes) -> tuple[int, dict[str, str], bytes]:
        kind = recognise(bundle)
        if kind == "acknowledgement":
            try:
                receipt = parse_acknowledgement(bundle)
            except InvalidInput as exc:
                return 400, {"Content-Type": FHIR_JSON}, orjson.dumps(exc.outcome.to_fhir())
            self.inbox.add_receipt(
                {
                    "header_id": receipt.header_id,
                    "acknowledged_id": receipt.acknowledged_id,
                    "code": receipt.code,
                    "issues": [i.diagnostics for i in receipt.issues],
                    "at": time.time(),
                }
            )
            return 200, {}, b""
        if kind is None:
            # Not a MedCom message: a care record translated to a FHIR collection Bundle.
            key = str(bundle.get("id") or hashlib.sha256(body).hexdigest())
            received = Received(key, "fhir-record", None, _cpr_of_bundle(bundle), 0, time.time(), body)
            self._record(received)
            return 200, {}, b""
        header = bundle["entry"][0]["resource"]
        problems: list[str] = []
        if self.inbox.validate:
            outcome = validate_message(bundle)
            problems = [f"{i.diagnostics} at {', '.join(i.expression)}" for i in outcome.errors]
        code = None
        if kind == "hospital-notification" and not problems:
            try:
                code = classify(bundle)
            except InvalidInput as exc:
                problems = [exc.outcome.summary()]
        received = Received(
            str(header["id"]),
            kind,
            code,
            _cpr_of_bundle(bundle),
            0,
            time.time(),
            body,
            not problems,
            problems,
        )
        if problems:
            try:
                ack = build_acknowledgement(bundle, "fatal-error", issues=validate_message(bundle).errors)
            except InvalidInput as exc:
                # Too broken to say whom to answer: refuse it at the HTTP level instead.
                return 400, {"Content-Type": FHIR_JSON}, orjson.dumps(exc.outcome.to_fhir())
        else:
            ack = build_acknowledgement(bundle, "ok")
        first, duplicate = self._record(received)
        if not duplicate:
            first.receipt = orjson.dumps(ack)
        return 200, {"Content-Type": FHIR_JSON}, first.receipt

    def _municipal(self, data: dict[str, Any], body: bytes) -> tuple[int, dict[str, str], bytes]:
        kind = str(data.get("format", "municipal-v1"))
        message = data.get("message") if isinstance(data.get("message"), dict) else None
        metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else None
        if message and message.get("header_id"):
            key = str(message["header_id"])
        elif metadata and metadata.get("record_id"):
            key = f"{metadata['record_id']}/{metadata.get('version', '')}"
        else:
            key = hashlib.sha256(body).hexdigest()
        citizen = data.get("citizen") if isinstance(data.get("citizen"), dict) else {}
        cpr = citizen.get("cpr") if isinstance(citizen, dict) else None
        code = data.get("code") if isinstance(data.get("code"), str) else None
        received = Received(key, kind, code, cpr if isinstance(cpr, str) else None, 0, time.time(), body)
        self._record(received)
        return 200, {"Content-Type": "application/json"}, b'{"status":"received"}'

    def _record(self, received: Received) -> tuple[Received, bool]:
        first, duplicate = self.inbox.add(received)
        if not duplicate and self.on_message is not None:
            self.on_message(first)
        return first, duplicate


def _handler(peer: Peer, quiet: bool) -> type[BaseHTTPRequestHandler]:
    inbox = peer.inbox

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fhir-bridge-simulated-peer"
        # Headers and body go out in two writes; with Nagle on, the second waits for the client's
        # delayed ACK (~40 ms) on every keep-alive request.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            if not quiet:
                super().log_message(format, *args)

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: Any) -> None:
            self._send(status, {"Content-Type": "application/json"}, orjson.dumps(data))

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length > 0 else b""

        def do_GET(self) -> None:
            if self.path == "/_sim/state":
                self._json(200, inbox.state())
            elif self.path == "/_sim/counts":
                self._json(200, inbox.counts())
            elif self.path.startswith("/_sim/messages/"):
                found = inbox.body(self.path.removeprefix("/_sim/messages/"))
                if found is None:
                    self._json(404, {"error": "no such message"})
                else:
                    self._send(200, {"Content-Type": "application/json"}, found)
            elif self.path in ("/healthz", "/readyz"):
                self._json(200, {"status": "ok"})
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = self._body()
            if self.path == "/_sim/faults":
                try:
                    spec = orjson.loads(body or b"{}")
                    script = [f for f in (Fault.from_json(x) for x in spec.get("script") or []) if f]
                    inbox.set_faults(script, Fault.from_json(spec.get("then")))
                except (ValueError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
                    self._json(400, {"error": str(exc)})
                    return
                self._json(200, {"script": len(script)})
                return
            if self.path == "/_sim/reset":
                inbox.reset()
                self._json(200, {"status": "reset"})
                return
            fault = inbox.next_fault()
            if fault is not None:
                if fault.delay:
                    time.sleep(fault.delay)
                if fault.status is not None:
                    headers = {"Content-Type": "application/json"}
                    if fault.retry_after is not None:
                        headers["Retry-After"] = f"{fault.retry_after:g}"
                    # A scripted 2xx takes the message without a word: no receipt, nothing recorded.
                    ok = 200 <= fault.status < 300
                    self._send(fault.status, headers, b"" if ok else b'{"error":"simulated failure"}')
                    return
            self._send(*peer.receive(body, self.headers.get("Content-Type")))

    return Handler


class _Server(ThreadingHTTPServer):
    # The standard library listens with a backlog of 5: a dispatcher opening its pool of connections at
    # once overflows it, and a connection the kernel then drops fails its first request.
    request_queue_size = 128


class PeerServer:
    """A threaded HTTP server around a :class:`Peer`; ``start()`` serves in a background thread."""

    def __init__(self, peer: Peer, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True) -> None:
        self.peer = peer
        self.httpd = _Server((host, port), _handler(peer, quiet))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> PeerServer:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="peer-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


__all__ = ["Fault", "Inbox", "Peer", "PeerServer", "Received"]
