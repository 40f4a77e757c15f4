"""Dry runs for integrators: translate or validate a document and see the result; nothing is stored
or routed."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import anyio.to_thread
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from bridge.api.deps import SystemCaller, read_body, settings_of
from bridge.api.errors import error_responses
from bridge.errors import InvalidInput
from bridge.fhir.outcome import Outcome
from bridge.ingress import FHIR_JSON, FHIR_XML, answer_format, render, request_format
from bridge.settings import Settings, System

router = APIRouter(tags=["Dry runs"])

#: Response header with the number of elements the municipal form could not keep.
WARNINGS_HEADER = "X-Translation-Warnings"


class Target(StrEnum):
    fhir = "fhir"
    municipal = "municipal"


def _caller_format(caller: System) -> str | None:
    """A caller that speaks a mapping set other than the canonical one gets it by default."""
    return caller.format if caller.format not in ("fhir", "municipal-v1") else None


def translate(
    settings: Settings,
    body: bytes,
    content_type: str | None,
    accept: str | None,
    to: Target,
    mapping: str | None = None,
) -> tuple[bytes, str, Outcome]:
    """Translate municipal JSON to FHIR (``to=fhir``) or FHIR JSON/XML to municipal JSON; with ``mapping``,
    through that mapping set (a municipal format such as borgerjournal-v1)."""
    from bridge.fhir.parse import parse_fhir, parse_json
    from bridge.translate import CANONICAL, fhir_to_municipal, loaded_set, municipal_to_fhir

    limits = settings.limits
    if mapping is not None and mapping != CANONICAL:
        chosen = loaded_set(mapping)
        if to is Target.fhir:
            document = parse_json(body, max_bytes=limits.max_body_bytes, max_depth=limits.max_depth)
            out, media = render(chosen.to_fhir(document), answer_format(accept, "json"))
            return out, media, Outcome()
        resource = parse_fhir(
            body,
            request_format(content_type, body),
            max_bytes=limits.max_body_bytes,
            max_depth=limits.max_depth,
        )
        document, outcome = chosen.to_municipal(resource)
        return orjson.dumps(document), "application/json", outcome
    if to is Target.fhir:
        data = parse_json(body, max_bytes=limits.max_body_bytes, max_depth=limits.max_depth)
        if not isinstance(data, dict):
            from bridge.fhir.outcome import Issue

            raise InvalidInput(Outcome([Issue("error", "structure", "The body must be a JSON object")]))
        resource = municipal_to_fhir(data)
        out, media = render(resource, answer_format(accept, "json"))
        return out, media, Outcome()
    fmt = request_format(content_type, body)
    resource = parse_fhir(body, fmt, max_bytes=limits.max_body_bytes, max_depth=limits.max_depth)
    result, outcome = fhir_to_municipal(resource)
    return result.model_dump_json(exclude_none=True).encode("utf-8"), "application/json", outcome


def validate(
    settings: Settings, body: bytes, content_type: str | None, accept: str | None, mapping: str | None = None
) -> tuple[bytes, str]:
    """Validate FHIR JSON/XML (a MedCom message gets the full MedCom validation); with ``mapping``, a
    municipal document of that format: its schema, its translation and the FHIR that comes out."""
    from bridge.fhir.parse import parse_fhir, parse_json
    from bridge.validation import validate_parsed

    limits = settings.limits
    if mapping is not None:
        from bridge.mapping.registry import check_output
        from bridge.translate import loaded_set

        chosen = loaded_set(mapping)
        document = parse_json(body, max_bytes=limits.max_body_bytes, max_depth=limits.max_depth)
        try:
            checked = check_output(chosen.to_fhir(document))
        except InvalidInput as exc:
            checked = exc.outcome
        return render(checked.to_fhir(), answer_format(accept, "json"))
    fmt = request_format(content_type, body)
    resource = parse_fhir(body, fmt, max_bytes=limits.max_body_bytes, max_depth=limits.max_depth)
    outcome: dict[str, Any] = validate_parsed(resource).to_fhir()
    return render(outcome, answer_format(accept, fmt))


@router.post(
    "/translate",
    summary="Translate without sending",
    description="`to=fhir`: municipal JSON (care record, hospital stay event or correspondence; with "
    "`mapping`, a document of that mapping set) to FHIR; "
    "`to=municipal`: FHIR (JSON or XML) to its municipal form. Elements the municipal form cannot keep "
    f"are counted in the `{WARNINGS_HEADER}` header (list them with `POST /validate` or the CLI).",
    responses={
        200: {
            "description": "The translation",
            "content": {FHIR_JSON: {}, FHIR_XML: {}, "application/json": {}},
        },
        **error_responses(400, 401, 403, 413, 415),
    },
)
async def post_translate(
    request: Request,
    caller: SystemCaller,
    to: Annotated[Target, Query(description="Translate to fhir or to municipal")] = Target.fhir,
    mapping: Annotated[
        str | None,
        Query(description="The municipal format (mapping set), e.g. borgerjournal-v1; default: the caller's"),
    ] = None,
) -> Response:
    settings = settings_of(request)
    body = await read_body(request, settings.limits.max_body_bytes)
    chosen = mapping or _caller_format(caller)
    out, media, outcome = await anyio.to_thread.run_sync(
        translate,
        settings,
        body,
        request.headers.get("content-type"),
        request.headers.get("accept"),
        to,
        chosen,
    )
    headers = {WARNINGS_HEADER: str(len(outcome.issues))} if outcome.issues else None
    return Response(out, media_type=media, headers=headers)


@router.post(
    "/validate",
    summary="Validate without sending",
    description="Validates FHIR JSON or XML: a MedCom message against the MedCom profiles and rules, any "
    "other resource structurally (and KL Gateway Bundles against their constraints). 200 with an "
    "OperationOutcome listing every problem; 400 only when the body cannot be parsed.",
    responses={
        200: {
            "description": "OperationOutcome",
            "content": {
                FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}},
                FHIR_XML: {},
            },
        },
        **error_responses(400, 401, 403, 413, 415),
    },
)
async def post_validate(
    request: Request,
    caller: SystemCaller,
    mapping: Annotated[
        str | None,
        Query(description="Validate a municipal document of this format (mapping set) instead of FHIR"),
    ] = None,
) -> Response:
    settings = settings_of(request)
    body = await read_body(request, settings.limits.max_body_bytes)
    out, media = await anyio.to_thread.run_sync(
        validate, settings, body, request.headers.get("content-type"), request.headers.get("accept"), mapping
    )
    return Response(out, media_type=media)
