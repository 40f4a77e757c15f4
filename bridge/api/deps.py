"""What every router needs: the deployment's parts, the authenticated caller, a bounded body.

The caller dependencies (``SystemCaller``, ``OperatorCaller``, ``AuditorCaller``, ``AnyCaller``) identify
the caller by static token, JWT or client certificate and check its role and SMART scopes
(``bridge.auth.Authenticator``); each refusal is a 401/403/429 OperationOutcome, and 401/403 are audited.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import ClientDisconnect

from bridge.auth import Authenticator, Caller, Role
from bridge.clock import Clock
from bridge.ingress import Ingress, check_size
from bridge.outbox.port import OutboxStore
from bridge.security import scopes
from bridge.security.mtls import client_certificate
from bridge.settings import Settings, System

#: The security scheme shown in the OpenAPI document; tokens are checked by ``bridge.auth``.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A static bearer token (the configuration holds its SHA-256 digest) or a JWT access token "
    "from the configured issuer with SMART system scopes (system/Bundle.c, system/Bundle.rs, "
    "system/AuditEvent.rs ...). Under mutual TLS a registered client certificate identifies the caller "
    "without a token.",
)
_AUTHENTICATOR_LOCK = threading.Lock()


def settings_of(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


def store_of(request: Request) -> OutboxStore:
    """The outbox store the app was created with."""
    store: OutboxStore = request.app.state.store
    return store


def clock_of(request: Request) -> Clock:
    """The clock the app was created with."""
    clock: Clock = request.app.state.clock
    return clock


def ingress_of(request: Request) -> Ingress:
    """The accept pipeline of the app."""
    ingress: Ingress = request.app.state.ingress
    return ingress


def authenticator_of(request: Request) -> Authenticator:
    """The app's authenticator, made on first use (it holds the JWKS cache and the failure counters)."""
    state = request.app.state
    found: Authenticator | None = getattr(state, "authenticator", None)
    if found is None:
        with _AUTHENTICATOR_LOCK:
            found = getattr(state, "authenticator", None)
            if found is None:
                found = Authenticator(settings_of(request), clock_of(request), store_of(request))
                state.authenticator = found
    return found


def authorization(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """The Authorization header as ``bearer_scheme`` read it (None: no bearer credentials)."""
    if credentials is None:
        return None
    return f"{credentials.scheme} {credentials.credentials}"


def client_address(request: Request) -> str:
    """The client's address as the server saw it (for throttling and the audit trail)."""
    return request.client.host if request.client is not None else "unknown"


def _caller(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None,
    roles: tuple[Role, ...],
    need: scopes.Need,
) -> Caller:
    authenticator = authenticator_of(request)
    address = client_address(request)
    caller = authenticator.identify(authorization(credentials), client_certificate(request.scope), address)
    return authenticator.authorize(caller, roles, need, address)


def _read_need(request: Request, resource: str) -> scopes.Need:
    """Reading one item (a path parameter names it) needs ``r``; a list needs ``s``."""
    return scopes.Need(resource, "r" if request.path_params else "s")


def settled_system(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller | None:
    """The calling system, when a registered static token settles it without I/O
    (``Authenticator.settled_without_io``); None: ``_caller`` decides, in a worker thread."""
    return authenticator_of(request).settled_without_io(
        authorization(credentials),
        client_certificate(request.scope),
        client_address(request),
        ("system",),
        scopes.SEND,
    )


async def system_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> System:
    """The calling system (401 unauthenticated, 403 for another role or without ``system/Bundle.c``).

    A registered static token is settled on the event loop: every message a system sends passes here,
    and a thread hop would cost more than the check. Anything else - a JWT (its JWKS may have to be
    fetched), a client certificate, a refusal (it is audited) - is decided in a worker thread.
    """
    settled = settled_system(request, credentials)
    caller: Caller = (
        settled
        if settled is not None
        else await anyio.to_thread.run_sync(_caller, request, credentials, ("system",), scopes.SEND)
    )
    assert caller.system is not None
    return caller.system


def operator_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> Caller:
    """An operator (401 unauthenticated, 403 for another role); reads need ``system/Bundle.r``/``.s``,
    actions ``system/Bundle.u``."""
    need = _read_need(request, "Bundle") if request.method in ("GET", "HEAD") else scopes.OPERATE
    return _caller(request, credentials, ("operator",), need)


def auditor_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> Caller:
    """An auditor (401 unauthenticated, 403 for another role or without ``system/AuditEvent.r``/``.s``)."""
    return _caller(request, credentials, ("auditor",), _read_need(request, "AuditEvent"))


def any_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> Caller:
    """An operator, or a system (which then sees only its own messages)."""
    return _caller(request, credentials, ("system", "operator"), _read_need(request, "Bundle"))


SystemCaller = Annotated[System, Depends(system_caller)]
OperatorCaller = Annotated[Caller, Depends(operator_caller)]
AnyCaller = Annotated[Caller, Depends(any_caller)]
AuditorCaller = Annotated[Caller, Depends(auditor_caller)]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused by Content-Length before reading and cut off once past ``limit``.

    The whole body must arrive within ``limits.body_timeout`` (408 otherwise), so a client that trickles
    bytes cannot hold a connection and a worker slot for ever; a client that hangs up mid-body gets a
    400 it will never read instead of an internal error.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit():
        check_size(int(declared), limit)
    timeout = settings_of(request).limits.body_timeout.total_seconds()
    chunks: list[bytes] = []
    size = 0
    try:
        # asyncio's own timeout: the server runs on asyncio, and anyio's cancel scope costs several
        # times more on a path every message takes.
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                check_size(size, limit)  # stop reading at once: the rest is never buffered
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPException(
            408, f"The request body did not arrive within {timeout:g} s", {"Connection": "close"}
        ) from None
    except ClientDisconnect:
        # Starlette re-raises any other exception to the server, which logs it with a traceback.
        raise HTTPException(400, "The client closed the connection before the body was complete") from None
    return b"".join(chunks)
