"""uvicorn's HTTP/1.1 protocol with a deadline for request headers.

uvicorn (h11) waits for ever for a request's headers, so a client that opens connections and trickles
header bytes (a slowloris) would hold them. This protocol closes a connection whose first request's
headers have not all arrived ``header_timeout`` seconds after it opened; the body has its own deadline
(``limits.body_timeout``, in ``read_body``), and idle keep-alive connections uvicorn's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineH11Protocol(H11Protocol):
    """Closes a connection that has not sent its request headers within ``header_timeout`` seconds."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.header_timeout, self._headers_too_slow
        )

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is not None and self.cycle is not None:  # the request line and headers are in
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()


def with_header_deadline(base: type[H11Protocol], seconds: float) -> type[Any]:
    """A protocol class: ``base`` (uvicorn's, or the TLS one) with the header deadline of ``seconds``."""
    bases = (base,) if issubclass(base, HeaderDeadlineH11Protocol) else (HeaderDeadlineH11Protocol, base)
    return type("BridgeH11Protocol", bases, {"header_timeout": seconds})
