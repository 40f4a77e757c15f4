"""The delivery connection pool against a real loopback HTTP server."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from delivery_bed import Receiver, Reply

from bridge.delivery.connections import Connections

TIMEOUT = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}


def post(
    pool: Connections, url: str, body: bytes = b"{}", timeout: dict[str, float] = TIMEOUT
) -> httpx.Response:
    request = httpx.Request(
        "POST",
        url,
        content=body,
        headers={"Content-Type": "application/json"},
        extensions={"timeout": timeout},
    )
    return pool.handle_request(request)


def test_posts_the_body_and_headers_and_reads_the_answer_on_one_kept_connection() -> None:
    receiver = Receiver(lambda _: Reply(201, {"X-Seen": "yes"}, b'{"ok": true}'))
    pool = Connections(httpx.URL(receiver.url), max_connections=2, max_body=1024)
    try:
        answers = [post(pool, receiver.url, b'{"n": %d}' % i) for i in range(3)]
    finally:
        pool.close()
        receiver.close()
    assert [(a.status_code, a.headers["x-seen"], a.content) for a in answers] == [
        (201, "yes", b'{"ok": true}')
    ] * 3
    assert [r.body for r in receiver.requests] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    assert all(r.headers["Content-Type"] == "application/json" for r in receiver.requests)
    assert all(r.concurrent == 1 for r in receiver.requests)


def test_a_connection_the_peer_closed_while_idle_is_not_reused() -> None:
    receiver = Receiver(lambda _: Reply(200, {"Connection": "keep-alive"}))
    pool = Connections(httpx.URL(receiver.url), max_connections=1, max_body=1024)
    try:
        assert post(pool, receiver.url).status_code == 200
        (idle,) = list(pool._idle)
        assert idle.sock is not None
        idle.sock.shutdown(socket.SHUT_RD)  # as if the peer's FIN had arrived: readable at EOF
        assert post(pool, receiver.url).status_code == 200
    finally:
        pool.close()
        receiver.close()
    assert len(receiver.requests) == 2


def test_failures_are_httpx_exceptions() -> None:
    receiver = Receiver(lambda _: Reply(delay=1.0))
    pool = Connections(httpx.URL(receiver.url), max_connections=1, max_body=1024)
    quick = {**TIMEOUT, "read": 0.1}
    try:
        with pytest.raises(httpx.ReadTimeout):
            post(pool, receiver.url, timeout=quick)
    finally:
        pool.close()
        receiver.close()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    closed = f"http://127.0.0.1:{port}/fhir"
    refused = Connections(httpx.URL(closed), max_connections=1, max_body=1024)
    with pytest.raises(httpx.ConnectError):
        post(refused, closed)


def test_a_body_over_the_bound_is_cut_one_byte_past_it() -> None:
    receiver = Receiver(lambda _: Reply(200, body=b"x" * 5000))
    pool = Connections(httpx.URL(receiver.url), max_connections=1, max_body=100)
    try:
        assert len(post(pool, receiver.url).content) == 101
        assert not pool._idle  # not drained, so not reused
    finally:
        pool.close()
        receiver.close()


def test_at_most_max_connections_and_close_fails_a_post_in_flight() -> None:
    receiver = Receiver(lambda _: (receiver.release.wait(5), Reply())[1])
    pool = Connections(httpx.URL(receiver.url), max_connections=2, max_body=1024)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            post(pool, receiver.url, timeout={**TIMEOUT, "read": 10.0, "pool": 10.0})
        except httpx.HTTPError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(receiver.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(receiver.requests) == 2  # the third waits for a connection
    started = time.monotonic()
    pool.close()
    for t in threads:
        t.join(5)
    receiver.close()
    assert time.monotonic() - started < 2
    assert len(errors) == 3
