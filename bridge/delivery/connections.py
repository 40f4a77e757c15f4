"""Keep-alive HTTP/1.1 connections to one receiver, as an ``httpx.BaseTransport``.

The dispatcher posts a few kB and reads a few kB back, thousands of times a second, to a handful of
fixed endpoints. httpcore's pool (h11 underneath) spends several times the CPU of the exchange itself
on such a request; the standard library's ``http.client`` does the same exchange for a fraction of
it. This transport is only what a delivery needs:

- one origin (the system's endpoint), HTTP/1.1, TLS verified with httpx's default context for https;
- at most ``max_connections`` open at once (the system's concurrency limit), idle ones reused last in,
  first out; one that the peer closed while idle (readable before a request was written) is dropped;
- ``extensions["timeout"]`` (``connect``, ``read``, ``write``, ``pool``) as httpx defines it;
- failures raised as httpx's exceptions (``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError``
  ...), so ``bridge.delivery.outcome.classify`` reads them the same whichever transport ran;
- the response body read at once, at most ``max_body`` bytes plus one (more tells the caller it was
  too large; the connection is then closed rather than drained).

No proxies, redirects, cookies or compression: a delivery uses none of them.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
from collections import deque
from typing import Any

import httpx


class Connections(httpx.BaseTransport):
    """A bounded pool of HTTP/1.1 connections to the origin of ``url``; thread-safe."""

    def __init__(self, url: httpx.URL, *, max_connections: int, max_body: int) -> None:
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}")
        self._https = url.scheme == "https"
        self._host = url.host
        self._port = url.port or (443 if self._https else 80)
        self._max = max_connections
        self._max_body = max_body
        self._ssl: ssl.SSLContext | None = httpx.create_ssl_context() if self._https else None
        self._idle: deque[http.client.HTTPConnection] = deque()
        self._open: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a pooled connection and read the whole response."""
        timeouts = request.extensions.get("timeout", {})
        conn = self._acquire(request, timeouts.get("pool"))
        reusable = False
        try:
            if conn.sock is None:
                _connect(conn, request, timeouts)
            response, body, reusable = self._exchange(conn, request, timeouts)
        finally:
            self._give_back(conn, reusable)
        return httpx.Response(
            response.status,
            headers=response.getheaders(),
            content=body,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason.encode("latin-1")},
            request=request,
        )

    def close(self) -> None:
        """Close every connection, also those in use: a post still waiting on one fails at once."""
        with self._lock:
            self._closed = True
            conns, self._open = list(self._open), set()
            self._idle.clear()
            self._freed.notify_all()
        for conn in conns:
            _shut(conn)

    # -- the pool ------------------------------------------------------------------------------------

    def _acquire(self, request: httpx.Request, pool_timeout: float | None) -> http.client.HTTPConnection:
        deadline = None if pool_timeout is None else time.monotonic() + pool_timeout
        stale: list[http.client.HTTPConnection] = []
        try:
            with self._lock:
                while True:
                    if self._closed:
                        raise httpx.ConnectError("the connection pool is closed", request=request)
                    while self._idle:
                        conn = self._idle.pop()
                        if _usable(conn):
                            return conn
                        self._open.discard(conn)
                        stale.append(conn)
                    if len(self._open) < self._max:
                        conn = self._new()
                        self._open.add(conn)
                        return conn
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise httpx.PoolTimeout("no free connection in time", request=request)
                    self._freed.wait(left)
        finally:
            for conn in stale:
                conn.close()

    def _new(self) -> http.client.HTTPConnection:
        if self._ssl is not None:
            return http.client.HTTPSConnection(self._host, self._port, context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port)

    def _give_back(self, conn: http.client.HTTPConnection, reusable: bool) -> None:
        with self._lock:
            if reusable and not self._closed and conn in self._open:
                self._idle.append(conn)
            else:
                self._open.discard(conn)
                reusable = False
            self._freed.notify()
        if not reusable:
            conn.close()

    # -- one exchange --------------------------------------------------------------------------------

    def _exchange(
        self, conn: http.client.HTTPConnection, request: httpx.Request, timeouts: dict[str, Any]
    ) -> tuple[http.client.HTTPResponse, bytes, bool]:
        sock = conn.sock
        assert sock is not None
        target = request.url.raw_path.decode("ascii")
        try:
            sock.settimeout(timeouts.get("write"))
            conn.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in request.headers.raw:
                conn.putheader(name, value)
            conn.endheaders(request.content)
        except TimeoutError as exc:
            raise httpx.WriteTimeout(str(exc) or "write timed out", request=request) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise httpx.WriteError(type(exc).__name__, request=request) from exc
        try:
            sock.settimeout(timeouts.get("read"))
            response = conn.getresponse()
            body = response.read(self._max_body + 1)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
        except (http.client.HTTPException, ConnectionError) as exc:
            raise httpx.RemoteProtocolError(type(exc).__name__, request=request) from exc
        except OSError as exc:
            raise httpx.ReadError(type(exc).__name__, request=request) from exc
        reusable = not response.will_close and response.isclosed()
        return response, body, reusable


def _connect(conn: http.client.HTTPConnection, request: httpx.Request, timeouts: dict[str, Any]) -> None:
    conn.timeout = timeouts.get("connect")
    try:
        conn.connect()
    except TimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
    except OSError as exc:  # refused, unreachable, name not found, TLS handshake failed
        raise httpx.ConnectError(type(exc).__name__, request=request) from exc
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _usable(conn: http.client.HTTPConnection) -> bool:
    """An idle connection is usable unless the peer closed it (or sent something unasked) meanwhile."""
    sock = conn.sock
    if sock is None:
        return True  # never connected: connects on use
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    try:
        return not poller.poll(0)
    except OSError:
        return False


def _shut(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading from it
        except OSError:
            pass
    conn.close()
