"""Prometheus metrics (prometheus-client), served at ``GET /metrics``.

Labels carry only the bridge's own vocabulary: system ids from the configuration, message kinds,
outcome classes, refusal reasons (an error class and a FHIR issue code), HTTP methods, route templates
(``/messages/{message_id}``, never the concrete path) and status codes. No citizen, no message id, no
text from a message ever becomes a label (``check_label`` refuses anything else shaped like PHI).

- ``bridge_messages_accepted_total{kind,sender}``, ``bridge_messages_rejected_total{reason}``
- ``bridge_deliveries_total{destination,outcome}`` (outcome: delivered, transient, permanent),
  ``bridge_delivery_retries_total{destination}``, ``bridge_dead_letters_total{destination}``
- ``bridge_queue_depth{destination,state}`` and ``bridge_queue_oldest_age_seconds{destination}``,
  read from the store at scrape time
- ``bridge_receipt_latency_seconds{destination}``: delivery to MedCom Acknowledgement
- ``bridge_request_duration_seconds{method,route,status}``, ``bridge_store_duration_seconds{operation}``
- ``bridge_payloads_purged_total{kind}`` (retention), ``bridge_store_up``

The counters live in one registry per process (``REGISTRY``); the queue gauges are collected per app
from its store, so ``render`` takes the store.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.observability.logging import CPR_PATTERN
from bridge.outbox.port import StoreError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_RECEIPT_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)

MESSAGES_ACCEPTED = Counter(
    "bridge_messages_accepted", "Messages accepted for delivery", ["kind", "sender"], registry=REGISTRY
)
MESSAGES_REJECTED = Counter(
    "bridge_messages_rejected", "Messages refused, by reason", ["reason"], registry=REGISTRY
)
DELIVERIES = Counter(
    "bridge_deliveries", "Delivery attempts by outcome", ["destination", "outcome"], registry=REGISTRY
)
RETRIES = Counter(
    "bridge_delivery_retries", "Deliveries scheduled for a retry", ["destination"], registry=REGISTRY
)
DEAD_LETTERS = Counter(
    "bridge_dead_letters", "Deliveries given up (dead letters)", ["destination"], registry=REGISTRY
)
RECEIPT_LATENCY = Histogram(
    "bridge_receipt_latency_seconds",
    "Time from a delivery to its MedCom Acknowledgement",
    ["destination"],
    buckets=_RECEIPT_BUCKETS,
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "bridge_request_duration_seconds",
    "HTTP request latency",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
STORE_DURATION = Histogram(
    "bridge_store_duration_seconds",
    "Outbox store call latency",
    ["operation"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

PAYLOADS_PURGED = Counter(
    "bridge_payloads_purged", "Payloads dropped by retention", ["kind"], registry=REGISTRY
)

_LABEL = re.compile(r"^[A-Za-z0-9_.:/{}@+$ -]{0,120}$")


def check_label(value: str) -> str:
    """``value`` when it is fit for a label; ``other`` when it could carry PHI or is unbounded."""
    if not _LABEL.match(value) or CPR_PATTERN.search(value):
        return "other"
    return value


def accepted(kind: str, sender: str) -> None:
    """Count a message accepted."""
    MESSAGES_ACCEPTED.labels(check_label(kind), check_label(sender)).inc()


def rejected(reason: str) -> None:
    """Count a refusal; ``reason`` is an error class and an issue code, e.g. ``InvalidMessage: invalid``."""
    MESSAGES_REJECTED.labels(check_label(reason)).inc()


def delivery(destination: str, outcome: str) -> None:
    """Count a delivery attempt's outcome (delivered, transient, permanent)."""
    DELIVERIES.labels(check_label(destination), check_label(outcome)).inc()


def retry(destination: str) -> None:
    """Count a delivery scheduled again."""
    RETRIES.labels(check_label(destination)).inc()


def dead_letter(destination: str) -> None:
    """Count a delivery given up."""
    DEAD_LETTERS.labels(check_label(destination)).inc()


def receipt_latency(destination: str, seconds: float) -> None:
    """Observe the time from delivery to receipt."""
    RECEIPT_LATENCY.labels(check_label(destination)).observe(max(seconds, 0.0))


def payloads_purged(deliveries: int, messages: int) -> None:
    """Count payloads dropped by retention."""
    PAYLOADS_PURGED.labels("delivery").inc(deliveries)
    PAYLOADS_PURGED.labels("message").inc(messages)


def request_done(method: str, route: str, status: int, seconds: float) -> None:
    """Observe one HTTP request (``route`` is the route template)."""
    REQUEST_DURATION.labels(check_label(method), check_label(route), str(status)).observe(seconds)


# -- the store, timed --------------------------------------------------------------------------------------
T = TypeVar("T")


class TimedStore:
    """An ``OutboxStore`` that times every call into ``bridge_store_duration_seconds{operation}``.

    It forwards attribute access, so it stands wherever the store it wraps stands (the port is a
    protocol); ``inner`` is the wrapped store.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name.startswith("_") or not callable(attr):
            return attr
        observe = STORE_DURATION.labels(name).observe

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                observe(time.perf_counter() - started)

        timed.__name__ = name
        setattr(self, name, timed)  # found directly from now on: __getattr__ runs once per method
        return timed


def timed_store(store: T) -> T:
    """``store`` timed (see ``TimedStore``); a store already timed is returned as it is."""
    if isinstance(store, TimedStore):
        return store
    return TimedStore(store)  # type: ignore[return-value]


# -- queue gauges, read at scrape time -------------------------------------------------------------------
class QueueCollector(Collector):
    """Queue depth per destination and state, and the age of the oldest open delivery, from the store."""

    def __init__(self, store: Any, now: Callable[[], datetime]) -> None:
        self._store = store
        self._now = now

    def collect(self) -> Iterator[Metric]:
        now = self._now()
        depth = GaugeMetricFamily(
            "bridge_queue_depth", "Deliveries per destination and state", labels=["destination", "state"]
        )
        oldest = GaugeMetricFamily(
            "bridge_queue_oldest_age_seconds",
            "Age of the oldest open (pending or leased) delivery per destination",
            labels=["destination"],
        )
        up = GaugeMetricFamily("bridge_store_up", "1 when the store answered the last scrape, else 0")
        try:
            queues = self._store.destination_queues()
        except StoreError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for queue in queues:
            dest = check_label(queue.destination)
            for state, count in (("pending", queue.pending), ("leased", queue.leased), ("dead", queue.dead)):
                depth.add_metric([dest, state], count)
            age = 0.0 if queue.oldest_open_at is None else (now - queue.oldest_open_at).total_seconds()
            oldest.add_metric([dest], max(age, 0.0))
        yield depth
        yield oldest


class _Shared(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def render(store: Any | None, now: Callable[[], datetime]) -> bytes:
    """The Prometheus text exposition: the process's counters, and the queue gauges of ``store``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Shared())
    if store is not None:
        registry.register(QueueCollector(store, now))
    return generate_latest(registry)


# -- HTTP request latency --------------------------------------------------------------------------------
class RequestMetrics:
    """ASGI middleware observing each HTTP request by method, route template and status."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            request_done(scope.get("method", "GET"), template, status, time.perf_counter() - started)
