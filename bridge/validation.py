"""One entry point for ``fhir-bridge validate`` and the service's dry-run validation.

A MedCom message (recognised by its profile and event code) gets the full MedCom validation; any other
resource gets FHIR R4 structural validation, and a Bundle that carries KL Gateway profiles also the KL
Gateway constraints.
"""

from __future__ import annotations

from typing import Any

from bridge.fhir.outcome import Outcome


def validate_parsed(resource: dict[str, Any]) -> Outcome:
    """Validate a parsed FHIR resource (JSON dict); never raises on bad content."""
    from bridge.fhir.klgateway import check_bundle
    from bridge.fhir.validate import validate_resource
    from bridge.medcom.validation import is_medcom_message, validate_message

    if is_medcom_message(resource):
        return validate_message(resource)
    outcome = validate_resource(resource)
    if resource.get("resourceType") == "Bundle":
        outcome.extend(check_bundle(resource).issues)
    return outcome


def validate_fhir(body: bytes, fmt: str | None = None) -> Outcome:
    """Parse (JSON or XML, safely) and validate. Unparseable input raises InvalidInput."""
    from bridge.fhir.parse import parse_fhir, sniff_format

    chosen = fmt if fmt in ("json", "xml") else sniff_format(body, None)
    return validate_parsed(parse_fhir(body, chosen))  # type: ignore[arg-type]
