"""Liveness and readiness probes for orchestrators (no authentication, no PHI)."""

from __future__ import annotations

import anyio.to_thread
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from bridge.api.deps import store_of
from bridge.api.errors import error_responses

router = APIRouter(tags=["Health"])


@router.get(
    "/healthz",
    summary="Liveness",
    description="200 while the process serves requests; says nothing about the store.",
    responses={200: {"description": "alive", "content": {"application/json": {"example": {"status": "ok"}}}}},
)
async def healthz(request: Request) -> Response:
    return Response(
        orjson.dumps({"status": "ok", "role": request.app.state.role}), media_type="application/json"
    )


@router.get(
    "/readyz",
    summary="Readiness",
    description="200 when the store answers a query (messages can be accepted), else 503.",
    responses={
        200: {"description": "ready", "content": {"application/json": {"example": {"status": "ready"}}}},
        **error_responses(503),
    },
)
async def readyz(request: Request) -> Response:
    await anyio.to_thread.run_sync(store_of(request).ping)  # StoreUnavailable -> 503
    return Response(orjson.dumps({"status": "ready"}), media_type="application/json")
