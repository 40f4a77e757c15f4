"""uvicorn's HTTP/1.1 protocols with a deadline for request headers.

uvicorn waits for ever for a request's headers, so a client that opens connections and trickles header
bytes (a slowloris) would hold them. ``HeaderDeadline`` closes a connection whose first request's
headers have not all arrived ``header_timeout`` seconds after it opened; the body has its own deadline
(``limits.body_timeout``, in ``read_body``), and idle keep-alive connections uvicorn's own.

Plain HTTP is parsed by httptools (llhttp, in C) on uvloop: per request it costs a fraction of the
pure-Python h11 parser, which matters when the bridge answers a thousand senders' posts a second. The
TLS protocol stays on h11 (``bridge.security.mtls``). Both parsers set ``cycle`` once a request's
headers are complete, which is what the deadline watches.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderDeadline:
    """Mixin for a uvicorn HTTP protocol: closes a connection whose request headers are late."""

    header_timeout: float = 10.0
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.header_timeout, self._headers_too_slow
        )

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._header_timer is not None and self.cycle is not None:  # the request line and headers are in
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()


class HeaderDeadlineH11Protocol(HeaderDeadline, H11Protocol):
    """h11 with the header deadline."""


class HeaderDeadlineHttpToolsProtocol(HeaderDeadline, HttpToolsProtocol):
    """httptools with the header deadline."""


def with_header_deadline(base: type[Any], seconds: float) -> type[Any]:
    """A protocol class: ``base`` (uvicorn's h11 or httptools one, or the TLS one) with the header
    deadline of ``seconds``."""
    bases = (base,) if issubclass(base, HeaderDeadline) else (HeaderDeadline, base)
    return type(f"Bridge{base.__name__}", bases, {"header_timeout": seconds})
