"""Municipal endpoints: care records and correspondence in the municipal JSON formats.

Both are translated at ingress, so the municipal care system hears at once when its document cannot be
mapped, and both are routed before anything is stored: a record to the systems named in ``receiver``
or, without one, by the routing rules (by default the hospital where the citizen is admitted now); a
correspondence to the owner of its ``receiver`` organisation.
"""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from bridge.api.deps import SystemCaller, ingress_of, read_body, settings_of
from bridge.api.errors import error_responses
from bridge.errors import InvalidInput
from bridge.ingress import FHIR_JSON, Reply

router = APIRouter(prefix="/municipal", tags=["Municipal"])

Receivers = Annotated[
    list[str] | None,
    Query(
        alias="receiver",
        description="System id of a receiver (repeatable); without it the routing rules decide",
    ),
]

_ACCEPTED = {
    200: {
        "description": "Accepted: an OperationOutcome whose id is the bridge's message id",
        "content": {FHIR_JSON: {}},
    },
    **error_responses(400, 401, 403, 409, 413, 415, 422, 503),
}


def _json_only(content_type: str | None) -> None:
    from bridge.fhir.outcome import Issue, Outcome
    from bridge.ingress import UnsupportedMediaType

    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(
            Outcome([Issue("error", "not-supported", "Send municipal documents as application/json")])
        )


async def _accept(
    request: Request, caller: SystemCaller, method: str, receivers: list[str] | None
) -> Response:
    _json_only(request.headers.get("content-type"))
    ingress = ingress_of(request)
    body = await read_body(request, settings_of(request).limits.max_body_bytes)
    try:
        reply: Reply = await anyio.to_thread.run_sync(getattr(ingress, method), caller, body, receivers or ())
    except InvalidInput as exc:
        await anyio.to_thread.run_sync(ingress.record_refusal, caller, exc)
        raise
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type)


@router.post(
    "/records",
    summary="Send a municipal care record",
    description="A municipal-v1 care record (JSON, see `fhir-bridge schema municipal-record`). It is "
    "validated and translated to a FHIR Bundle for FHIR receivers at once. Receivers: the `receiver` "
    "parameter, else the routing rules (the hospital where the citizen is admitted now, learned from "
    "HospitalNotifications). The same record id and version sent again gets the first answer.",
    responses=_ACCEPTED,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    },
)
async def post_record(request: Request, caller: SystemCaller, receiver: Receivers = None) -> Response:
    return await _accept(request, caller, "municipal_record", receiver)


@router.post(
    "/correspondence",
    summary="Send a correspondence",
    description="A correspondence-v1 document (JSON). It becomes a MedCom CareCommunication for FHIR "
    "receivers; the sender organisation must be the calling system's own. Receiver: the `receiver` "
    "parameter, else the system owning the correspondence's receiver organisation.",
    responses=_ACCEPTED,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    },
)
async def post_correspondence(request: Request, caller: SystemCaller, receiver: Receivers = None) -> Response:
    return await _accept(request, caller, "municipal_correspondence", receiver)
