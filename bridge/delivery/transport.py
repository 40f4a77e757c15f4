"""The outbound HTTP edge: one pooled httpx client per destination system.

Each system gets its own ``httpx.Client`` so its timeout, its connection pool (sized to its
concurrency limit) and its credentials stay apart from every other system's. A post never raises:
it returns the response or the exception raised instead of one, with the time it took, and
``bridge.delivery.outcome.classify`` decides what that means.

Headers: ``Content-Type`` of the stored delivery, ``Accept: application/fhir+json`` for systems that
speak FHIR (so a synchronous Acknowledgement comes back as JSON), ``Authorization: Bearer <token>``
when the system's outbound credentials name one (taken from the environment by the settings loader).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import httpx

from bridge.settings import Settings, System

FHIR_JSON = "application/fhir+json"
#: Bodies larger than this are not read for a synchronous receipt (an Acknowledgement is a few kB).
MAX_RESPONSE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PostResult:
    """What one POST came to: the response (body read, up to a bound) or the exception raised."""

    result: httpx.Response | BaseException
    latency: timedelta
    body: bytes = b""


def request_headers(system: System, content_type: str) -> dict[str, str]:
    """The headers of a delivery to ``system``: content type, what we accept back, credentials."""
    headers = {"Content-Type": content_type}
    if system.format == "fhir":
        headers["Accept"] = FHIR_JSON
    else:
        headers["Accept"] = "application/json"
    token = system.outbound.bearer_token
    if token is not None and token.get_secret_value():
        headers["Authorization"] = f"Bearer {token.get_secret_value()}"
    return headers


class Transport:
    """Posts deliveries to the configured systems; thread-safe, one client per system, built lazily."""

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self._settings = settings
        self._transport = transport
        self._clients: dict[str, httpx.Client] = {}
        self._lock = threading.Lock()
        self._closed = False

    def client(self, system: System) -> httpx.Client:
        """The pooled client for ``system`` (created on first use)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the transport is closed")
            client = self._clients.get(system.id)
            if client is None:
                seconds = system.timeout.total_seconds()
                client = httpx.Client(
                    transport=self._transport,
                    timeout=httpx.Timeout(seconds),
                    limits=httpx.Limits(
                        max_connections=system.concurrency, max_keepalive_connections=system.concurrency
                    ),
                    # Redirects are not followed: a POST of health data goes where it is configured
                    # to go, and a 3xx is reported (as a permanent failure) instead.
                    follow_redirects=False,
                    trust_env=False,  # no proxy from the environment between the bridge and a peer
                )
                self._clients[system.id] = client
            return client

    def post(self, system: System, payload: bytes, content_type: str) -> PostResult:
        """POST ``payload`` to the system's endpoint; never raises for network or HTTP trouble."""
        client = self.client(system)
        started = time.perf_counter()
        try:
            with client.stream(
                "POST", system.endpoint, content=payload, headers=request_headers(system, content_type)
            ) as response:
                body = _read_bounded(response)
        except Exception as exc:  # every failure is an outcome to classify, not a crash
            return PostResult(exc, _since(started))
        return PostResult(response, _since(started), body)

    def close(self) -> None:
        """Close every client and its connections; later posts raise ``RuntimeError``."""
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def _read_bounded(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            return b""  # too large to be a receipt; the status code still tells the outcome
        chunks.append(chunk)
    return b"".join(chunks)


def _since(started: float) -> timedelta:
    return timedelta(seconds=time.perf_counter() - started)
