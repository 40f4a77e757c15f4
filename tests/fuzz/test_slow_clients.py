"""Slow and vanishing clients against the running bridge, over raw sockets.

A client that trickles its body is cut off after ``limits.body_timeout`` with a 408 OperationOutcome and
the connection closed; a client that hangs up half-way through its body leaves no traceback in the log;
the service answers others throughout.
"""

from __future__ import annotations

import socket
import time

import httpx
from fuzz_bed import BODY_TIMEOUT, HEADER_TIMEOUT, Target
from harness import wait_until
from test_openapi import is_outcome

PATH = "/fhir/$process-message"


def _head(target: Target, length: int) -> bytes:
    port = target.bridge.port
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {target.tokens['hospital']}\r\n"
        f"Content-Type: application/fhir+json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _read_response(sock: socket.socket, limit: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``limit`` seconds pass)."""
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        pass
    return received


def _response(raw: bytes) -> httpx.Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
    return httpx.Response(status, headers=headers, content=body)


def test_a_body_trickled_byte_by_byte_is_cut_off_with_408(target: Target) -> None:
    with socket.create_connection(("127.0.0.1", target.bridge.port), timeout=5) as sock:
        sock.sendall(_head(target, 1000))
        started = time.monotonic()
        sock.setblocking(False)
        answer = b""
        # one byte every 100 ms: 1,000 bytes would take 100 s
        while time.monotonic() - started < BODY_TIMEOUT + 10:
            try:
                sock.send(b"{")
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                answer += sock.recv(65536)
                if b"\r\n\r\n" in answer:
                    break
            except BlockingIOError:
                pass
            time.sleep(0.1)
        waited = time.monotonic() - started
        sock.setblocking(True)
        answer += _read_response(sock, 5)
    response = _response(answer)
    assert response.status_code == 408, answer[:500]
    assert is_outcome(response)
    assert response.headers.get("connection") == "close"
    assert BODY_TIMEOUT <= waited < BODY_TIMEOUT + 5, waited
    assert httpx.get(f"{target.url}/healthz", timeout=5).status_code == 200


def test_headers_trickled_byte_by_byte_are_cut_off(target: Target) -> None:
    head = _head(target, 10)
    started = time.monotonic()
    closed_after = None
    with socket.create_connection(("127.0.0.1", target.bridge.port), timeout=5) as sock:
        sock.setblocking(False)
        for byte in head:  # one header byte every 100 ms: the whole head would take minutes
            try:
                sock.send(bytes([byte]))
                if sock.recv(65536) == b"":
                    closed_after = time.monotonic() - started
                    break
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
            if time.monotonic() - started > HEADER_TIMEOUT + 10:
                break
            time.sleep(0.1)
    assert closed_after is not None, "the connection was still open"
    assert HEADER_TIMEOUT - 0.5 <= closed_after < HEADER_TIMEOUT + 5, closed_after
    assert httpx.get(f"{target.url}/healthz", timeout=5).status_code == 200


def test_a_client_hanging_up_mid_body_leaves_no_traceback(target: Target) -> None:
    log = target.bridge.log_path
    before = log.stat().st_size
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", target.bridge.port), timeout=5) as sock:
            sock.sendall(_head(target, 5000) + b'{"resourceType":"Bundle","entry":[')
            time.sleep(0.2)  # the request is being read when the client goes
    # The server notices each hang-up; the bridge keeps answering and logs no error for it.
    wait_until(
        lambda: httpx.get(f"{target.url}/healthz", timeout=5).status_code == 200, 10, "the bridge to answer"
    )
    time.sleep(0.5)
    with log.open("rb") as handle:
        handle.seek(before)
        written = handle.read().decode(errors="replace")
    assert "Traceback" not in written and "ClientDisconnect" not in written, written[-3000:]
    assert "Exception in ASGI application" not in written, written[-3000:]
    assert "internal error" not in written.lower(), written[-3000:]
    assert target.bridge.alive


def test_a_body_declared_too_large_is_refused_before_it_is_sent(target: Target) -> None:
    """413 on the Content-Length alone, and the connection closed: the bridge never waits for (or
    buffers) the body."""
    with socket.create_connection(("127.0.0.1", target.bridge.port), timeout=5) as sock:
        sock.sendall(_head(target, 50_000_000))
        started = time.monotonic()
        answer = _read_response(sock, 5)
    response = _response(answer)
    assert response.status_code == 413, answer[:500]
    assert is_outcome(response)
    assert response.headers.get("connection") == "close"
    assert time.monotonic() - started < BODY_TIMEOUT  # closed, not waited out
