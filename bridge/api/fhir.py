"""The FHIR endpoints: the CapabilityStatement and ``$process-message`` for MedCom messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

from bridge import __version__
from bridge.api.deps import SystemCaller, ingress_of, read_body, settings_of
from bridge.api.errors import error_responses
from bridge.errors import InvalidInput
from bridge.ingress import FHIR_JSON, FHIR_XML, Ingress, Reply, answer_format, render
from bridge.medcom import acknowledgement, care_communication, hospital_notification
from bridge.settings import Settings, System

router = APIRouter(prefix="/fhir", tags=["FHIR"])

#: The MedCom messages ``$process-message`` takes: (event code, message profile).
SUPPORTED_MESSAGES: tuple[tuple[str, str], ...] = (
    (hospital_notification.EVENT, hospital_notification.PROFILE_MESSAGE),
    (care_communication.EVENT, care_communication.PROFILE_MESSAGE),
    (acknowledgement.EVENT, acknowledgement.PROFILE_MESSAGE),
)
PROCESS_MESSAGE = "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"


def reliable_cache_minutes(settings: Settings) -> int:
    """The period in which a resent message is recognised as a duplicate, in whole minutes.

    The store keeps every message id for as long as it keeps the message, so the cache is at least
    the whole MedCom resend window: the receipt timeout times (resends + 1).
    """
    medcom = settings.medcom
    window = medcom.receipt_timeout * (medcom.max_resends + 1)
    return max(1, int(window.total_seconds() // 60))


def capability_statement(settings: Settings, date: datetime) -> dict[str, Any]:
    """The bridge's CapabilityStatement (FHIR R4 4.0.1, kind instance)."""
    events = ", ".join(event for event, _ in SUPPORTED_MESSAGES)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date.date().isoformat(),
        "publisher": "fhir-bridge",
        "kind": "instance",
        "software": {"name": "fhir-bridge", "version": __version__},
        "implementation": {
            "description": "Cross-sector health data exchange bridge: MedCom FHIR messaging and "
            "municipal care records"
        },
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, FHIR_XML],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [{"system": SECURITY_SERVICE, "code": "OAuth"}],
                            "text": "Bearer token (Authorization: Bearer), one per system",
                        }
                    ],
                    "description": "Every call presents a bearer token issued to the calling system. "
                    "A system may only send as organisations it owns (MessageHeader.sender).",
                },
                "operation": [{"name": "process-message", "definition": PROCESS_MESSAGE}],
            }
        ],
        "messaging": [
            {
                "endpoint": [
                    {
                        "protocol": {
                            "system": "http://terminology.hl7.org/CodeSystem/message-transport",
                            "code": "http",
                        },
                        "address": "$process-message",
                    }
                ],
                "reliableCache": reliable_cache_minutes(settings),
                "documentation": f"MedCom FHIR messaging; supported events: {events}. Duplicates "
                "(same Bundle.id and MessageHeader.id) are answered with the first answer. "
                "Acknowledgements from receivers are forwarded to the original sender.",
                "supportedMessage": [
                    {"mode": "receiver", "definition": profile} for _, profile in SUPPORTED_MESSAGES
                ],
            }
        ],
    }


_MESSAGE_EXAMPLE = {
    "resourceType": "OperationOutcome",
    "id": "5b3a4d0e-8f0e-4c51-9c9e-0b1a2c3d4e5f",
    "issue": [
        {
            "severity": "information",
            "code": "informational",
            "diagnostics": "Accepted message b9b4818e-02de-4cc4-b418-d20cbc7b5404 for delivery to "
            "herlev-municipality",
        }
    ],
}


@router.get(
    "/metadata",
    summary="CapabilityStatement",
    description="FHIR R4 (4.0.1) CapabilityStatement: the MedCom messages accepted, the reliable "
    "cache period and the security scheme. JSON by default, XML with Accept: application/fhir+xml.",
    responses={200: {"content": {FHIR_JSON: {}, FHIR_XML: {}}, "description": "CapabilityStatement"}},
)
async def metadata(request: Request) -> Response:
    statement = capability_statement(settings_of(request), request.app.state.started_at)
    body, media = render(statement, answer_format(request.headers.get("accept"), "json"))
    return Response(body, media_type=media)


@router.post(
    "/$process-message",
    summary="Send a MedCom message",
    description="Accepts a MedCom HospitalNotification, CareCommunication or Acknowledgement (FHIR JSON "
    "or XML). The message is validated against the MedCom profiles, its sender organisation must be "
    "one the calling system owns, and its receivers are resolved from MessageHeader.destination. "
    "200 means the message, its deliveries and its audit record are committed: it will be delivered "
    "with retries until acknowledged. The same message sent again gets the same answer, byte for "
    "byte. The MedCom Acknowledgement of the receiver arrives later, as a message of its own.",
    responses={
        200: {
            "description": "Accepted (or a duplicate of an accepted message): an OperationOutcome "
            "whose id is the bridge's message id",
            "content": {FHIR_JSON: {"example": _MESSAGE_EXAMPLE}, FHIR_XML: {}},
        },
        **error_responses(400, 401, 403, 409, 413, 415, 422, 503),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                FHIR_JSON: {"schema": {"type": "object", "description": "A MedCom message Bundle"}},
                FHIR_XML: {"schema": {"type": "string"}},
            },
        }
    },
)
async def process_message(request: Request, caller: SystemCaller) -> Response:
    ingress = ingress_of(request)
    body = await read_body(request, settings_of(request).limits.max_body_bytes)
    reply = await accept_message(ingress, caller, body, request)
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type)


async def accept_message(ingress: Ingress, caller: System, body: bytes, request: Request) -> Reply:
    """Prepare and commit one posted MedCom message (the endpoint's work, and ``bridge.api.lane``'s).

    A refusal is audited and raised for the error handlers to answer."""
    content_type, accept = request.headers.get("content-type"), request.headers.get("accept")
    try:
        if ingress.prepares_inline(len(body)):
            # Small bodies on the embedded store: prepared here, committed by the committer's thread.
            prepared = ingress.prepare_message(caller, body, content_type, accept)
            reply = prepared if isinstance(prepared, Reply) else await ingress.commit_async(prepared)
        else:
            # In a worker thread: preparing reads the store (duplicates, admission state), and a database
            # server that is away blocks each read for the pool timeout - on the event loop that would
            # stall every other request, /readyz included; and a large body takes long to validate.
            reply = await anyio.to_thread.run_sync(
                ingress.process_message, caller, body, content_type, accept
            )
    except InvalidInput as exc:
        await anyio.to_thread.run_sync(ingress.record_refusal, caller, exc)
        raise
    return reply
