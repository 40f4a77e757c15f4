"""The service's pure parts: media types, authentication, audit events, error statuses, capability."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from bridge import audit
from bridge.api.errors import status_of
from bridge.api.fhir import capability_statement, reliable_cache_minutes
from bridge.auth import (
    Forbidden,
    NotAuthenticated,
    authenticate_operator,
    authenticate_system,
    bearer_token,
    require_owner,
)
from bridge.errors import InvalidInput, InvalidMessage
from bridge.fhir.outcome import Outcome
from bridge.ingress import (
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    answer_format,
    check_size,
    request_format,
)
from bridge.routing import Unroutable
from bridge.settings import Settings, hash_token, parse_settings

PROJECT = Path(__file__).resolve().parents[3]
ENV = {"BRIDGE_CITIZEN_KEY_SECRET": "unit-tests-secret-0123456789abc", "HERLEV_OUTBOUND_TOKEN": "x"}
NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def settings(**top: Any) -> Settings:
    data = yaml.safe_load((PROJECT / "examples" / "bridge.yaml").read_text(encoding="utf-8"))
    data["operators"] = [{"name": "on-call", "sha256": hash_token("operator-secret-token")}]
    data.update(top)
    return parse_settings(data, ENV)


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("application/fhir+json", b"<", "json"),
        ("application/fhir+json; charset=utf-8", b"{}", "json"),
        ("application/json", b"{}", "json"),
        ("application/fhir+xml", b"{", "xml"),
        ("text/xml", b"<x/>", "xml"),
        (None, b"  <Bundle/>", "xml"),
        (None, b'{"resourceType": "Bundle"}', "json"),
    ],
)
def test_request_format(content_type: str | None, body: bytes, expected: str) -> None:
    assert request_format(content_type, body) == expected


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x", "application/pdf"])
def test_other_media_types_are_415(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as raised:
        request_format(content_type, b"{}")
    assert status_of(raised.value) == 415


def test_answer_format_follows_accept_then_the_request() -> None:
    assert answer_format(None, "xml") == "xml"
    assert answer_format("*/*", "json") == "json"
    assert answer_format("text/html, application/fhir+xml;q=0.9", "json") == "xml"
    assert answer_format("application/fhir+json", "xml") == "json"


def test_size_limit() -> None:
    check_size(1024, 1024)
    check_size(None, 1024)
    with pytest.raises(PayloadTooLarge) as raised:
        check_size(1025, 1024)
    assert status_of(raised.value) == 413
    assert raised.value.outcome.issues[0].code == "too-long"


def test_status_of_each_refusal() -> None:
    empty = Outcome()
    assert status_of(NotAuthenticated(empty)) == 401
    assert status_of(Forbidden(empty)) == 403
    assert status_of(Conflict(empty)) == 409
    assert status_of(Unroutable(empty)) == 422
    assert status_of(InvalidMessage(empty)) == 400
    assert status_of(InvalidInput(empty)) == 400


@pytest.mark.parametrize("header", [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer   "])
def test_bearer_token_is_required(header: str | None) -> None:
    with pytest.raises(NotAuthenticated) as raised:
        bearer_token(header)
    assert raised.value.outcome.issues[0].code == "login"


def test_system_and_operator_tokens() -> None:
    s = settings()
    system = authenticate_system(s, "Bearer example-hospital-token-not-for-production")
    assert system.id == "herlev-gentofte-hospital"
    assert authenticate_system(s, "bearer example-rehab-token-not-for-production").id == "rehab-municipality"
    with pytest.raises(NotAuthenticated):
        authenticate_system(s, "Bearer operator-secret-token")
    assert authenticate_operator(s, "Bearer operator-secret-token").name == "on-call"
    with pytest.raises(Forbidden):
        authenticate_operator(s, "Bearer example-hospital-token-not-for-production")
    with pytest.raises(NotAuthenticated):
        authenticate_operator(s, "Bearer nobody")


def test_a_system_speaks_only_for_its_own_organisations() -> None:
    hospital = settings().system("herlev-gentofte-hospital")
    assert hospital is not None
    require_owner(hospital, sor="399841000016000", gln=None, where="sender")
    require_owner(hospital, sor=None, gln="5790000209354", where="sender")
    with pytest.raises(Forbidden) as raised:
        require_owner(hospital, sor="953741000016009", gln="5790001348120", where="sender")
    assert raised.value.outcome.issues[0].expression == ("sender",)
    with pytest.raises(Forbidden):
        require_owner(hospital, sor=None, gln=None, where="sender")


def test_audit_events_are_valid_fhir_and_name_the_citizen_by_key_only() -> None:
    key = "a" * 64
    record = audit.accepted(
        recorded=NOW,
        actor="herlev-gentofte-hospital",
        kind="hospital-notification",
        message_id="m-1",
        header_id="h-1",
        citizen_key=key,
        destinations=["herlev-municipality"],
    )
    assert (record.action, record.actor, record.message_id, record.recorded_at) == (
        "message.accepted",
        "herlev-gentofte-hospital",
        "m-1",
        NOW,
    )
    body = orjson.loads(record.body)
    AuditEvent.model_validate(body)
    assert body["outcome"] == "0" and body["type"]["code"] == "110107"
    assert [e["what"]["identifier"]["value"] for e in body["entity"]] == ["h-1", key]
    refused = orjson.loads(audit.rejected(recorded=NOW, actor="x", reason="Forbidden: forbidden").body)
    AuditEvent.model_validate(refused)
    assert refused["outcome"] == "4" and "entity" not in refused
    dead = audit.delivery_outcome(
        recorded=NOW,
        actor="worker-1",
        destination="herlev-municipality",
        message_id="m-1",
        header_id="h-1",
        outcome="dead-lettered",
        reason="HTTP 400",
    )
    dead_body = orjson.loads(dead.body)
    AuditEvent.model_validate(dead_body)
    assert (dead.action, dead_body["outcome"], dead_body["type"]["code"]) == (
        "delivery.dead-lettered",
        "8",
        "110106",
    )


def test_capability_statement_is_valid_and_follows_the_resend_window() -> None:
    s = settings(medcom={"receipt_timeout": "20m", "max_resends": 3})
    assert reliable_cache_minutes(s) == 80
    statement = capability_statement(s, NOW)
    CapabilityStatement.model_validate(statement)
    assert statement["messaging"][0]["reliableCache"] == 80
    assert statement["date"] == "2026-03-01"
    assert reliable_cache_minutes(settings(medcom={"receipt_timeout": "10s", "max_resends": 0})) == 1
