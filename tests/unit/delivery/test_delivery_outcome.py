"""Outcome classification against a real HTTP server and real sockets on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bridge.delivery.outcome import (
    Delivered,
    Permanent,
    Transient,
    classify,
    classify_status,
    parse_retry_after,
)
from bridge.errors import PermanentDeliveryError, TransientDeliveryError

NOW = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)


class _Receiver(BaseHTTPRequestHandler):
    """Answers POST /status/<code>?retry_after=<value> with that status (and header)."""

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        code = int(url.path.rsplit("/", 1)[-1])
        self.send_response(code)
        for value in parse_qs(url.query).get("retry_after", []):
            self.send_header("Retry-After", value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        return


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _post(url: str, timeout: float = 5.0) -> httpx.Response | BaseException:
    try:
        with httpx.Client(timeout=timeout) as client:
            return client.post(url, content=b'{"resourceType":"Bundle"}')
    except httpx.HTTPError as exc:
        return exc


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_delivered(receiver: str, status: int) -> None:
    assert classify(_post(f"{receiver}/status/{status}"), NOW) == Delivered(status)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_408_429_and_5xx_are_transient(receiver: str, status: int) -> None:
    outcome = classify(_post(f"{receiver}/status/{status}"), NOW)
    assert outcome == Transient(f"HTTP {status}", status, None)


@pytest.mark.parametrize("status", [300, 301, 400, 401, 403, 404, 405, 409, 410, 413, 415, 422])
def test_other_statuses_are_permanent(receiver: str, status: int) -> None:
    assert classify(_post(f"{receiver}/status/{status}"), NOW) == Permanent(f"HTTP {status}", status)


def test_retry_after_seconds_is_honoured(receiver: str) -> None:
    outcome = classify(_post(f"{receiver}/status/429?retry_after=120"), NOW)
    assert isinstance(outcome, Transient) and outcome.retry_after == timedelta(seconds=120)


def test_retry_after_http_date_is_a_delay_from_now(receiver: str) -> None:
    when = format_datetime(NOW + timedelta(minutes=5), usegmt=True)
    outcome = classify(_post(f"{receiver}/status/503?retry_after={when.replace(' ', '%20')}"), NOW)
    assert isinstance(outcome, Transient) and outcome.retry_after == timedelta(minutes=5)


def test_connection_refused_is_transient() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome = classify(_post(f"http://127.0.0.1:{port}/status/200"), NOW)
    assert outcome == Transient("ConnectError")


def test_read_timeout_is_transient() -> None:
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        outcome = classify(_post(f"http://127.0.0.1:{port}/", timeout=0.2), NOW)
    assert outcome == Transient("ReadTimeout")


def test_peer_hanging_up_is_transient() -> None:
    with socket.socket() as rude:
        rude.bind(("127.0.0.1", 0))
        rude.listen(1)
        port = rude.getsockname()[1]

        def hang_up() -> None:
            conn, _ = rude.accept()
            conn.recv(65536)
            conn.close()

        thread = threading.Thread(target=hang_up)
        thread.start()
        outcome = classify(_post(f"http://127.0.0.1:{port}/"), NOW)
        thread.join()
    # Depending on timing the client sees an empty reply or a reset; both mean "try again".
    assert isinstance(outcome, Transient)
    assert outcome.reason in ("RemoteProtocolError", "ReadError")


def test_a_broken_endpoint_url_is_permanent() -> None:
    assert classify(_post("ftp://127.0.0.1/"), NOW) == Permanent("UnsupportedProtocol")


def test_bridge_errors_and_unknown_exceptions() -> None:
    assert classify(TransientDeliveryError("ack said transient-error"), NOW) == Transient(
        "TransientDeliveryError"
    )
    assert classify(PermanentDeliveryError("ack said fatal-error"), NOW) == Permanent(
        "PermanentDeliveryError"
    )
    # A surprise is retried (and dead-lettered by the policy in the end) rather than dropped at once.
    assert classify(RuntimeError("boom"), NOW) == Transient("unexpected RuntimeError")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("0", timedelta(0)),
        (" 30 ", timedelta(seconds=30)),
        ("Mon, 02 Mar 2026 08:31:00 GMT", timedelta(seconds=60)),
        ("Mon, 02 Mar 2026 08:00:00 GMT", timedelta(0)),  # in the past: at once
        ("soon", None),
        ("-5", None),
        ("1.5", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: timedelta | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_retry_after_on_a_success_is_ignored() -> None:
    assert classify_status(200, "60", NOW) == Delivered(200)
