"""The bridge service: the FastAPI app and, in the same process, the dispatcher.

``create_app(settings, store, clock, role=...)``:

- ``all`` (default): the API and the dispatcher;
- ``api``: the API alone (run dispatchers elsewhere on the same store);
- ``worker``: the dispatcher alone; the app then serves only ``/healthz`` and ``/readyz``, so an
  orchestrator can probe a worker like any other process.

The dispatcher starts in the app's lifespan and stops there (gracefully: in-flight deliveries finish
or are released). After start-up ``gc.freeze()`` moves everything loaded so far (models, profiles,
compiled mappings) out of the garbage collector's generations: those objects live for the whole
process, and scanning them on every collection costs accept latency for nothing.

The store is the caller's: the app never opens or closes it.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import random
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from bridge import __version__, console
from bridge.api import audit as audit_api
from bridge.api import dryrun, errors, fhir, health, municipal, ops
from bridge.api import metrics as metrics_api
from bridge.api.lane import ProcessMessageLane
from bridge.clock import Clock
from bridge.delivery.dispatcher import Dispatcher
from bridge.ingress import Ingress
from bridge.observability.metrics import RequestMetrics, timed_store
from bridge.outbox.encryption import encrypting_store
from bridge.outbox.port import OutboxStore
from bridge.retention import RetentionWorker
from bridge.settings import Settings

Role = Literal["all", "api", "worker"]
ROLES: tuple[Role, ...] = ("all", "api", "worker")

log = logging.getLogger("bridge.app")

DESCRIPTION = """\
Cross-sector health data exchange bridge for Denmark. Hospital EHRs send MedCom FHIR messages to
`POST /fhir/$process-message`; municipal care systems send care records and correspondence to
`/municipal/...`. A 2xx means the message is durably stored with one delivery per receiver; the bridge
delivers each with retries until it is acknowledged, or parks it as a dead letter for an operator.

Every error is a FHIR OperationOutcome naming each problem with its location.
"""


def _new_dispatcher(
    settings: Settings,
    store: OutboxStore,
    clock: Clock,
    transport: httpx.BaseTransport | None,
    rng: random.Random | None,
) -> Dispatcher:
    """The dispatcher of this process."""
    # Leases name their holder by this id, so it must differ between any two processes: host name and
    # process id, plus a random part for containers that share a host name and both run as pid 1.
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    return Dispatcher(settings, store, clock, worker_id=worker_id, transport=transport, rng=rng)


#: The bridge exports its own Prometheus metrics (``/metrics``) and does not configure OpenTelemetry;
#: FastAPI versions with native telemetry would otherwise look for an OpenTelemetry provider on every
#: request. Older versions take no such argument.
_NO_OPENTELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(
    settings: Settings,
    store: OutboxStore,
    clock: Clock,
    *,
    role: Role = "all",
    transport: httpx.BaseTransport | None = None,
    rng: random.Random | None = None,
    ingress: Ingress | None = None,
) -> FastAPI:
    """The bridge's ASGI app for ``role``; ``transport``/``rng`` go to the dispatcher (tests inject them),
    ``ingress`` replaces the accept pipeline (tests wrap the store)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    keys = settings.store.payload_keys
    store = encrypting_store(store, keys.get_secret_value() if keys is not None else None)
    store = timed_store(store)  # bridge_store_duration_seconds for every store call of the process

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dispatcher = None
        if role in ("all", "worker"):
            dispatcher = _new_dispatcher(settings, store, clock, transport, rng)
            dispatcher.start()
            app.state.ingress.on_queued = dispatcher.notify
        app.state.dispatcher = dispatcher
        retention = None
        if role in ("all", "worker") and settings.retention.payloads is not None:
            actor = dispatcher.worker_id if dispatcher is not None else "retention"
            retention = RetentionWorker(
                store, clock, settings.retention.payloads, settings.retention.interval, actor
            )
            retention.start()
        gc.freeze()
        try:
            yield
        finally:
            if retention is not None:
                retention.stop()
            if dispatcher is not None:
                app.state.ingress.on_queued = None
                dispatcher.stop(timeout=settings.dispatcher.shutdown_grace.total_seconds())
            app.state.ingress.close()

    app = FastAPI(
        **_NO_OPENTELEMETRY,
        title="fhir-bridge",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if role != "worker" else None,
        redoc_url=None,
        openapi_url="/openapi.json" if role != "worker" else None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.clock = clock
    app.state.role = role
    app.state.started_at = clock.now()
    app.state.ingress = ingress or Ingress(settings, store, clock)
    errors.install(app)
    if role != "worker":
        # Added before the metrics middleware, so it runs inside it: its requests are counted too.
        app.add_middleware(ProcessMessageLane)
    app.add_middleware(RequestMetrics)
    app.include_router(health.router)
    app.include_router(metrics_api.router)
    if role != "worker":
        _warm_up()

        for router in (fhir.router, municipal.router, ops.router, dryrun.router, audit_api.router):
            app.include_router(router)
        console.install(app, settings)
        _publish_outcome_schema(app)
    return app


def _warm_up() -> None:
    """Validate a HospitalNotification once at start-up: the MedCom profiles, terminology and the
    validator's tables load at first use, so they load now - before ``gc.freeze()`` and the first
    request - and no sender waits for them."""
    from bridge.medcom.validation import validate_message
    from bridge.simulators import traffic

    admitted = traffic.admission(0)
    admission = traffic.notification(admitted)
    validate_message(admission)
    validate_message(traffic.notification(traffic.discharge(admitted, traffic.header_id(admission))))


def _publish_outcome_schema(app: FastAPI) -> None:
    """Add the OperationOutcome schema every error response refers to."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema.setdefault("components", {}).setdefault("schemas", {})["OperationOutcome"] = (
                errors.OPERATION_OUTCOME_SCHEMA
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
