"""What every router needs: the deployment's parts, the authenticated caller, a bounded body."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bridge.auth import Caller, authenticate_operator, authenticate_system, bearer_token
from bridge.clock import Clock
from bridge.ingress import Ingress, check_size
from bridge.outbox.port import OutboxStore
from bridge.settings import Settings, System

#: The security scheme shown in the OpenAPI document; tokens are checked by ``bridge.auth``.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A system's or operator's bearer token (the configuration holds its SHA-256 digest)",
)


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


def _authorization(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    if credentials is None:
        return None
    return f"{credentials.scheme} {credentials.credentials}"


def system_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> System:
    """The calling system (401 without a valid system token)."""
    return authenticate_system(settings_of(request), _authorization(credentials))


def operator_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> Caller:
    """An operator (401 without a valid token, 403 for a system's token)."""
    return Caller(operator=authenticate_operator(settings_of(request), _authorization(credentials)))


def any_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> Caller:
    """An operator, or a system (which then sees only its own messages)."""
    settings = settings_of(request)
    authorization = _authorization(credentials)
    operator = settings.operator_for_token(bearer_token(authorization))
    if operator is not None:
        return Caller(operator=operator)
    return Caller(system=authenticate_system(settings, authorization))


SystemCaller = Annotated[System, Depends(system_caller)]
OperatorCaller = Annotated[Caller, Depends(operator_caller)]
AnyCaller = Annotated[Caller, Depends(any_caller)]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused by Content-Length before reading and cut off once past ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit():
        check_size(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        check_size(size, limit)  # stop reading at once: the rest is never buffered
        chunks.append(chunk)
    return b"".join(chunks)
