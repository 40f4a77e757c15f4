"""``GET /metrics``: the Prometheus exposition (no authentication, no PHI; bridge.observability.metrics)."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

from bridge.api.deps import clock_of, store_of
from bridge.observability import metrics

router = APIRouter(tags=["Health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Counters of accepted and refused messages, deliveries by outcome, retries and dead "
    "letters; queue depth and oldest age per destination; receipt, request and store latency. Labels "
    "hold system ids, kinds, outcome classes and route templates only.",
    response_class=Response,
    responses={200: {"description": "Prometheus text format", "content": {metrics.CONTENT_TYPE: {}}}},
)
async def get_metrics(request: Request) -> Response:
    store = store_of(request)
    body = await anyio.to_thread.run_sync(metrics.render, store, clock_of(request).now)
    return Response(body, media_type=metrics.CONTENT_TYPE)
