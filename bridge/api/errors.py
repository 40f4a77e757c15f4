"""Every error the API returns is an OperationOutcome, with the HTTP status that says what went wrong.

======================================= ====== ===============================================
error                                   status meaning
======================================= ====== ===============================================
``NotAuthenticated``                    401    no or unknown bearer token (+ WWW-Authenticate)
``Forbidden``                           403    known caller, not allowed (sender not owned,
                                               role or scope lacking)
``Throttled``                           429    too many failed authentications (+ Retry-After)
``NotFound`` (store), unknown route     404
``Conflict``, ``InvalidTransition``     409    ids clash with another message; replay of a
                                               delivery that is not dead
``PayloadTooLarge``                     413    body over ``limits.max_body_bytes``
``UnsupportedMediaType``                415    neither FHIR JSON nor FHIR XML
``Unroutable``                          422    no system receives the message
``InvalidInput`` (any other)            400    unparseable or invalid; every problem located
``StoreUnavailable``                    503    the database cannot take the message now
anything else                           500    no details: a traceback never reaches a caller
======================================= ====== ===============================================

The body follows the request's format (``Accept``, else ``Content-Type``): FHIR XML when asked for,
FHIR JSON otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bridge.auth import WWW_AUTHENTICATE, Forbidden, NotAuthenticated, Throttled
from bridge.errors import InvalidInput
from bridge.fhir.outcome import Issue, IssueCode, Outcome
from bridge.ingress import (
    FHIR_JSON,
    Conflict,
    Format,
    PayloadTooLarge,
    UnsupportedMediaType,
    answer_format,
    render,
)
from bridge.outbox.port import InvalidTransition, NotFound, StoreError, StoreUnavailable
from bridge.routing import Unroutable

log = logging.getLogger("bridge.api")

#: Seconds a client should wait before retrying after a 503.
RETRY_AFTER_SECONDS = 5

_STATUS: tuple[tuple[type[InvalidInput], int], ...] = (
    (NotAuthenticated, 401),
    (Forbidden, 403),
    (Conflict, 409),
    (PayloadTooLarge, 413),
    (UnsupportedMediaType, 415),
    (Unroutable, 422),
    (Throttled, 429),
)

#: The schema of every error body, for the OpenAPI document.
OPERATION_OUTCOME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "OperationOutcome",
    "description": "FHIR R4 OperationOutcome: one issue per problem, located by a FHIRPath-style expression",
    "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "issue": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["severity", "code"],
                "properties": {
                    "severity": {"type": "string", "enum": ["fatal", "error", "warning", "information"]},
                    "code": {"type": "string", "description": "FHIR issue-type code"},
                    "diagnostics": {"type": "string"},
                    "expression": {"type": "array", "items": {"type": "string"}},
                    "details": {"type": "object"},
                },
            },
        },
    },
    "example": {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "required",
                "diagnostics": "MessageHeader.id is required (it is the letter id)",
                "expression": ["Bundle.entry[0].resource.id"],
            }
        ],
    },
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses, each an OperationOutcome."""
    descriptions = {
        400: "Invalid input: every problem with its location",
        401: "Missing or unknown bearer token",
        403: "The caller may not do this (e.g. the sender organisation is not its own)",
        404: "Not found",
        409: "Conflict with a stored message or delivery",
        413: "Body larger than limits.max_body_bytes",
        415: "Unsupported media type",
        422: "No receiver: the message cannot be routed",
        429: "Too many failed authentications from this client; retry after Retry-After seconds",
        503: "The store is unavailable; retry later",
    }
    content = {
        FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}},
        "application/fhir+xml": {"schema": {"type": "string"}},
    }
    return {s: {"description": descriptions.get(s, "Error"), "content": content} for s in statuses}


def status_of(exc: InvalidInput) -> int:
    """The HTTP status of a refused input."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 400


def outcome_response(
    request: Request, outcome: Outcome, status: int, headers: dict[str, str] | None = None
) -> Response:
    """An OperationOutcome response in the format the request asked for."""
    content_type = request.headers.get("content-type") or ""
    request_fmt: Format = "xml" if "xml" in content_type.lower() else "json"
    fmt = answer_format(request.headers.get("accept"), request_fmt)
    resource = outcome.to_fhir()
    try:
        body, media = render(resource, fmt)
    except InvalidInput:  # a diagnostic that XML cannot carry: JSON never fails
        body, media = orjson.dumps(resource), FHIR_JSON
    return Response(body, status_code=status, media_type=media, headers=headers)


def _single(code: IssueCode, diagnostics: str) -> Outcome:
    return Outcome([Issue("error", code, diagnostics)])


async def _invalid_input(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidInput)
    status = status_of(exc)
    headers = {"WWW-Authenticate": WWW_AUTHENTICATE} if status == 401 else None
    if isinstance(exc, Throttled):
        headers = {"Retry-After": str(exc.retry_after)}
    if status == 413:
        # The unread rest of the body would otherwise keep the connection (and a slow sender) alive.
        headers = {"Connection": "close"}
    return outcome_response(request, exc.outcome, status, headers)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("store unavailable: %s", type(exc).__name__)
    outcome = _single(
        "transient", "The bridge cannot store messages right now; nothing was stored. Retry later"
    )
    return outcome_response(request, outcome, 503, {"Retry-After": str(RETRY_AFTER_SECONDS)})


async def _not_found(request: Request, exc: Exception) -> Response:
    return outcome_response(request, _single("not-found", "Not found"), 404)


async def _invalid_transition(request: Request, exc: Exception) -> Response:
    return outcome_response(request, _single("conflict", str(exc) or "Not allowed in this state"), 409)


async def _store_error(request: Request, exc: Exception) -> Response:
    log.error("store error: %s", type(exc).__name__)
    return outcome_response(request, _single("exception", "The store refused the operation"), 500)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code: IssueCode = "not-found" if exc.status_code == 404 else "not-supported"
    detail = exc.detail if isinstance(exc.detail, str) else "Request refused"
    return outcome_response(request, _single(code, detail), exc.status_code, dict(exc.headers or {}))


async def _request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    issues = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        issues.append(Issue("error", "value", str(err.get("msg", "invalid")), (loc,) if loc else ()))
    return outcome_response(request, Outcome(issues), 400)


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("internal error while handling %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return outcome_response(request, _single("exception", "Internal error"), 500)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into an OperationOutcome."""
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(InvalidTransition, _invalid_transition)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(Exception, _internal)
