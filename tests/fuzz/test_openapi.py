"""schemathesis against the OpenAPI document the running bridge publishes.

A real ``fhir-bridge serve`` process on a loopback port; its ``/openapi.json`` is loaded as any client
would load it, and schemathesis generates requests for every operation - data that fits the document
(positive) and data that breaks it (negative) - sent with the credentials of each role that may call the
operation, and with those of a role that may not. Each answer is checked: no 5xx, the status is one the
document declares, the body conforms to the declared schema and media type, and every 4xx is an
OperationOutcome with issues.

Why a pytest test with schemathesis' Python API rather than ``schemathesis run`` in the Makefile: the
service must run while the fuzzer does, with credentials of every role and a failure rate limit raised so
that refusals stay 401/403; the acceptance harness already starts and always stops such a bridge, and a
test fails (and is reported) like every other. The run is bounded by ``BRIDGE_FUZZ_EXAMPLES`` examples per
operation, mode and role, and by ``BRIDGE_FUZZ_SECONDS`` in all (``make fuzz`` raises both).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from fuzz_bed import Target, examples, seconds
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bridge.errors import InvalidInput
from bridge.fhir.parse import parse_fhir

PUBLIC = ()
SYSTEMS = ("hospital", "municipality")
#: Who may call each operation of the published document. A new operation fails the test until it is
#: listed here, so nothing published escapes the fuzzer.
ROLES: dict[str, tuple[str, ...]] = {
    "GET /healthz": PUBLIC,
    "GET /readyz": PUBLIC,
    "GET /metrics": PUBLIC,
    "GET /fhir/metadata": PUBLIC,
    "POST /fhir/$process-message": SYSTEMS,
    "POST /municipal/records": SYSTEMS,
    "POST /municipal/correspondence": SYSTEMS,
    "GET /messages/{message_id}": (*SYSTEMS, "operator"),
    "GET /messages": (*SYSTEMS, "operator"),
    "GET /deliveries": ("operator",),
    "POST /deliveries/{delivery_id}/retry": ("operator",),
    "GET /admin/mappings": ("operator",),
    "POST /admin/mappings/reload": ("operator",),
    "POST /translate": SYSTEMS,
    "POST /validate": SYSTEMS,
    "GET /fhir/AuditEvent": ("auditor",),
    "GET /fhir/AuditEvent/{seq}": ("auditor",),
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def is_outcome(response: httpx.Response | Any) -> bool:
    """An OperationOutcome with issues, in FHIR JSON or FHIR XML as its content type says."""
    content_type = response.headers.get("content-type", "")
    if isinstance(content_type, list):  # schemathesis' responses keep every value of a header
        content_type = content_type[0] if content_type else ""
    fmt = "xml" if "xml" in content_type else "json"
    try:
        body = parse_fhir(response.content, fmt)
    except InvalidInput:
        return False
    return bool(body.get("resourceType") == "OperationOutcome" and body.get("issue"))


def _callers(label: str, tokens: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """The roles an operation is fuzzed with: each that may call it, and one that may not."""
    allowed = ROLES[label]
    if not allowed:
        return [("anonymous", {})]
    refused = "auditor" if "auditor" not in allowed else "operator"
    names = [*allowed, refused]
    return [(name, {"Authorization": f"Bearer {tokens[name]}"}) for name in names]


def _fuzz(
    case_strategy: Any, url: str, headers: dict[str, str], deadline: float, seen: dict[int, int]
) -> None:
    """Send ``max_examples`` generated cases (fewer once the deadline has passed) and check each."""

    @settings(
        max_examples=examples(),
        deadline=None,  # a network call: the run is bounded by examples and the wall-clock budget
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=case_strategy)
    def run(case: Case) -> None:
        if time.monotonic() > deadline:
            return  # the budget is spent: the remaining examples are generated, not sent
        response = case.call(base_url=url, headers=headers, timeout=30)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS, headers=headers)
        if 400 <= response.status_code < 500:
            assert is_outcome(response), (response.status_code, response.text[:300])

    run()


@pytest.mark.slow
def test_every_published_operation_survives_schemathesis(target: Target) -> None:
    schema = schemathesis.openapi.from_url(f"{target.url}/openapi.json", timeout=10)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {f"{op.method.upper()} {op.path}" for op in operations}
    assert labels == set(ROLES), f"operations to classify: {labels ^ set(ROLES)}"

    started = time.monotonic()
    deadline = started + seconds()
    by_operation: dict[str, dict[int, int]] = {}
    failures: list[str] = []
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for name, headers in _callers(label, target.tokens):
                seen = by_operation.setdefault(label, {})
                try:
                    _fuzz(operation.as_strategy(generation_mode=mode), target.url, headers, deadline, seen)
                except Unsatisfiable:
                    # nothing to break in an operation without parameters or body (GET /healthz)
                    assert mode is GenerationMode.NEGATIVE, label
                except (Exception, BaseExceptionGroup) as exc:  # every operation is fuzzed before the verdict
                    failures.append(f"{label} ({mode.value}, {name}): {str(exc)[:1500]}")

    assert not failures, "\n\n".join(failures)
    # Every operation was reached (the budget was not spent before the last one), and a caller with the
    # right role got past authentication on each one that needs it.
    assert all(by_operation.get(label) for label in ROLES), by_operation
    for label, allowed in ROLES.items():
        if allowed:
            assert set(by_operation[label]) - {401, 403}, (label, by_operation[label])
    # The service is unharmed: it answers, its log holds no traceback.
    assert httpx.get(f"{target.url}/readyz", timeout=10).status_code == 200
    assert target.bridge.alive
    log = target.bridge.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    report = {"seconds": round(time.monotonic() - started, 1), "statuses": by_operation}
    print(orjson.dumps(report, option=orjson.OPT_NON_STR_KEYS).decode())
