"""Refusals through the service with static tokens: each 401/403 an OperationOutcome with an audit
record, repeated failures throttled with 429 + Retry-After, the auditor role."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from api_bed import (
    HERLEV_TOKEN,
    HOSPITAL,
    HOSPITAL_TOKEN,
    OPERATOR_TOKEN,
    STIN,
    Bed,
    BedFactory,
    auth,
    example_bytes,
)

from bridge.settings import hash_token

AUDITOR_TOKEN = "auditor-token-used-in-the-api-tests"


def limited(data: dict[str, Any]) -> None:
    data["auth"] = {"rate_limit": {"max_failures": 3, "window": "1m"}}
    data["auditors"] = [{"name": "dpo", "sha256": hash_token(AUDITOR_TOKEN)}]


@pytest.fixture
def bed(bed_factory: BedFactory) -> Bed:
    return bed_factory(limited)


def audit_of(bed: Bed) -> list[tuple[str, str, str]]:
    """(action, actor, outcomeDesc) of the authentication refusals in the audit trail."""
    found = []
    for entry in bed.store.read_audit(0, 1000):
        if entry.record.action.startswith("auth."):
            body = orjson.loads(entry.record.body)
            assert body["resourceType"] == "AuditEvent" and body["outcome"] == "4"
            found.append((entry.record.action, entry.record.actor, body["outcomeDesc"]))
    return found


def test_repeated_failures_are_throttled_with_retry_after(bed: Bed) -> None:
    for _ in range(3):
        assert bed.post_message(example_bytes(STIN), token="guessed-token").status_code == 401
    throttled = bed.post_message(example_bytes(STIN), token=HOSPITAL_TOKEN)  # same client address
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "60"
    issue = throttled.json()["issue"][0]
    assert issue["code"] == "throttled" and "retry in 60 s" in issue["diagnostics"]
    bed.clock.advance(45)
    assert bed.client.get("/messages", headers=auth(HOSPITAL_TOKEN)).headers["Retry-After"] == "15"
    bed.clock.advance(15)
    assert bed.post_message(example_bytes(STIN)).status_code == 200
    # Three refusals audited; the throttled requests were not even checked, so they add none.
    refusals = audit_of(bed)
    assert [(a, who) for a, who, _ in refusals] == [("auth.refused", "unauthenticated")] * 3
    assert all("HTTP 401 from 127.0.0.1: The bearer token is not valid" in why for _, _, why in refusals)
    assert all("claimed token:" in why and "guessed-token" not in why for _, _, why in refusals)


def test_forbidden_requests_are_audited_and_not_throttled(bed: Bed) -> None:
    for _ in range(5):
        refused = bed.client.get("/deliveries", headers=auth(HOSPITAL_TOKEN))
        assert refused.status_code == 403
        assert refused.json()["issue"][0]["code"] == "forbidden"
    assert bed.client.post("/deliveries/x/retry", headers=auth(HERLEV_TOKEN)).status_code == 403
    assert bed.post_message(example_bytes(STIN)).status_code == 200
    actions = audit_of(bed)
    assert [(a, who) for a, who, _ in actions] == [("auth.forbidden", HOSPITAL)] * 5 + [
        ("auth.forbidden", "herlev-municipality")
    ]
    assert "This endpoint is for operators" in actions[0][2]


def test_roles(bed: Bed) -> None:
    assert bed.client.get("/deliveries", headers=auth(OPERATOR_TOKEN)).status_code == 200
    # The auditor reads the audit trail, not traces or dead letters; an operator is not an auditor.
    assert bed.client.get("/deliveries", headers=auth(AUDITOR_TOKEN)).status_code == 403
    assert bed.client.get("/messages", headers=auth(AUDITOR_TOKEN)).status_code == 403
    assert bed.post_message(example_bytes(STIN), token=OPERATOR_TOKEN).status_code == 403
    assert bed.post_message(example_bytes(STIN), token=AUDITOR_TOKEN).status_code == 403
    actors = [who for _, who, _ in audit_of(bed)]
    assert actors == ["auditor:dpo", "auditor:dpo", "operator:on-call", "auditor:dpo"]


def test_no_credentials_at_all(bed: Bed) -> None:
    response = bed.client.get("/messages")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="fhir-bridge"'
    assert response.json()["issue"][0]["code"] == "login"
    assert bed.client.get("/messages", headers={"Authorization": "Basic b3A6cGFzcw=="}).status_code == 401
    assert len(audit_of(bed)) == 2


def test_rotating_forwarded_addresses_does_not_escape_the_identity_window(bed: Bed) -> None:
    """uvicorn believes X-Forwarded-For from loopback (its forwarded_allow_ips default), so an attacker
    there can pose as many addresses; the same wrong credential is still counted against itself."""
    for i in range(3):
        spoofed = {"X-Forwarded-For": f"203.0.113.{i}"}
        assert bed.post_message(example_bytes(STIN), token="guessed-token", **spoofed).status_code == 401
    again = bed.post_message(
        example_bytes(STIN), token="guessed-token", **{"X-Forwarded-For": "203.0.113.99"}
    )
    assert again.status_code == 429
    # Each failure was recorded with the address the server believed.
    assert [why.split(":")[0] for _, _, why in audit_of(bed)] == [
        f"HTTP 401 from 203.0.113.{i}" for i in range(3)
    ]
    # Someone else at another address with a good token is not affected.
    assert bed.post_message(example_bytes(STIN), **{"X-Forwarded-For": "198.51.100.7"}).status_code == 200
