"""The accept path of ``POST /fhir/$process-message`` without the framework's per-request machinery.

Every message a system sends takes this path, and FastAPI's routing, dependency solving and exception
middleware cost about a tenth of an accept's CPU time. ``ProcessMessageLane`` sits in the middleware
stack (inside the request metrics) and takes the common case itself: a registered static token
(``Authenticator.settled_without_io``), a declared body small enough for the event loop
(``Ingress.prepares_inline``). It then does exactly what the endpoint does - the same ``read_body``,
the same ``bridge.api.fhir.accept_message``, errors answered by the app's own exception handlers - so
the answer is the same byte for byte. Everything else (a JWT, a client certificate, a refusal of the
caller, a chunked or large body, PostgreSQL) goes on to the endpoint untouched.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.api import fhir
from bridge.api.deps import bearer_scheme, ingress_of, read_body, settings_of, settled_system
from bridge.api.fhir import accept_message
from bridge.settings import System

PATH = "/fhir/$process-message"


class ProcessMessageLane:
    """ASGI middleware: ``POST /fhir/$process-message`` in its common case, without the router."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        posts = (r for r in fhir.router.routes if "POST" in getattr(r, "methods", ()))
        self._route = next(r for r in posts if getattr(r, "path", None) == PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        caller = await self._caller(request)
        if caller is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self._route  # what the request metrics label the request by
        try:
            body = await read_body(request, settings_of(request).limits.max_body_bytes)
            reply = await accept_message(ingress_of(request), caller, body, request)
            response = Response(reply.body, status_code=reply.status, media_type=reply.content_type)
        except Exception as exc:  # answered as the endpoint's would be: by the app's handlers
            response = await _handled(request, exc)
        await response(scope, receive, send)

    async def _caller(self, request: Request) -> System | None:
        """The calling system when the lane may take the request, else None."""
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit():
            return None
        # Larger bodies go to the endpoint: a worker thread prepares them (and refuses one over the limit).
        size = int(declared)
        if size > settings_of(request).limits.max_body_bytes or not ingress_of(request).prepares_inline(size):
            return None
        credentials = await bearer_scheme(request)  # the header read as the endpoint's dependency reads it
        caller = settled_system(request, credentials)
        return None if caller is None else caller.system


async def _handled(request: Request, exc: Exception) -> Response:
    """The response the app's exception handler for ``exc`` (by its class hierarchy) gives."""
    handlers = request.app.exception_handlers
    for kind in type(exc).__mro__:
        handler = handlers.get(kind)
        if handler is not None:
            response: Response = await handler(request, exc)
            return response
    raise exc
