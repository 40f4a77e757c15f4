"""The outbound HTTP edge: one connection pool per destination system.

Each system gets its own pool (``bridge.delivery.connections``, sized to its concurrency limit), so
its timeout, its connections and its credentials stay apart from every other system's. A post never raises:
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
from typing import Any

import httpx

from bridge.delivery.connections import Connections
from bridge.settings import Settings, System

FHIR_JSON = "application/fhir+json"
#: Bodies larger than this are not read for a synchronous receipt (an Acknowledgement is a few kB).
MAX_RESPONSE_BYTES = 1024 * 1024
#: Who is calling, for a receiver's access log.
USER_AGENT = "fhir-bridge"


@dataclass(frozen=True, slots=True)
class PostResult:
    """What one POST came to: the response (body read, up to a bound) or the exception raised."""

    result: httpx.Response | BaseException
    latency: timedelta
    body: bytes = b""


def request_headers(system: System, content_type: str) -> dict[str, str]:
    """The headers of a delivery to ``system``: content type, what we accept back, credentials."""
    headers = {"Content-Type": content_type, "User-Agent": USER_AGENT}
    if system.format == "fhir":
        headers["Accept"] = FHIR_JSON
    else:
        headers["Accept"] = "application/json"
    token = system.outbound.bearer_token
    if token is not None and token.get_secret_value():
        headers["Authorization"] = f"Bearer {token.get_secret_value()}"
    return headers


class Transport:
    """Posts deliveries to the configured systems; thread-safe, one connection pool per system.

    Requests go straight to an ``httpx.BaseTransport`` (``handle_request``): an ``httpx.Client`` on top
    would add cookies, auth flows, redirect handling and URL merging that a delivery never uses, and
    cost more CPU per post than the connection itself. Tests inject one transport (e.g.
    ``httpx.MockTransport``) for every system.
    """

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self._settings = settings
        self._injected = transport
        self._pools: dict[str, httpx.BaseTransport] = {}
        self._targets: dict[str, _Target] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _target(self, system: System) -> tuple[httpx.BaseTransport, _Target]:
        """The pool and the fixed parts of a request for ``system`` (created on first use)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the transport is closed")
            target = self._targets.get(system.id)
            if target is None:
                url = httpx.URL(system.endpoint)
                # Sized to the system's concurrency limit; no proxy from the environment between the
                # bridge and a peer.
                self._pools[system.id] = self._injected or Connections(
                    url, max_connections=system.concurrency, max_body=MAX_RESPONSE_BYTES
                )
                seconds = system.timeout.total_seconds()
                target = self._targets[system.id] = _Target(
                    url,
                    {"timeout": {"connect": seconds, "read": seconds, "write": seconds, "pool": seconds}},
                )
            return self._pools[system.id], target

    def post(self, system: System, payload: bytes, content_type: str) -> PostResult:
        """POST ``payload`` to the system's endpoint; never raises for network or HTTP trouble.

        Redirects are not followed: a POST of health data goes where it is configured to go, and a
        3xx is reported (as a permanent failure) instead.
        """
        pool, target = self._target(system)
        started = time.perf_counter()
        try:
            request = httpx.Request(
                "POST",
                target.url,
                content=payload,
                headers=request_headers(system, content_type),
                extensions=target.extensions,
            )
            response = pool.handle_request(request)
            try:
                response.request = request
                body = _read_bounded(response)
            finally:
                response.close()
        except Exception as exc:  # every failure is an outcome to classify, not a crash
            return PostResult(exc, _since(started))
        return PostResult(response, _since(started), body)

    def close(self) -> None:
        """Close every pool and its connections; later posts raise ``RuntimeError``."""
        with self._lock:
            self._closed = True
            pools, self._pools, self._targets = list(self._pools.values()), {}, {}
        for pool in {id(p): p for p in pools}.values():
            pool.close()


@dataclass(frozen=True, slots=True)
class _Target:
    url: httpx.URL
    extensions: dict[str, Any]


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
