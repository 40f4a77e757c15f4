"""JWT bearer tokens through the real service: keys from a JWKS served on loopback, SMART system scopes
enforced per endpoint, every refusal a 401/403 OperationOutcome with an audit record."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from api_bed import (
    CC_NEW,
    HERLEV,
    HOSPITAL,
    REHAB,
    STIN,
    Bed,
    BedFactory,
    auth,
    example_bytes,
    system_entry,
)
from pki import AUDIENCE, ISSUER, JwksServer, SigningKey, claims, hs256_with, jwks, unsigned

KEY = SigningKey.rsa("issuer-2026-01")


@pytest.fixture
def issuer() -> Iterator[JwksServer]:
    served = JwksServer(jwks(KEY))
    yield served
    served.stop()


def with_jwt(url: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["auth"] = {
            "jwt": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": url, "jwks_min_refresh": "10s"},
            "rate_limit": {"max_failures": 50},
        }
        system_entry(data, HOSPITAL)["inbound"]["jwt_subjects"] = ["herlev-ehr"]
        system_entry(data, HERLEV)["inbound"]["jwt_subjects"] = ["herlev-care"]
        system_entry(data, REHAB)["inbound"]["jwt_subjects"] = ["rehab-care"]
        data["operators"][0]["jwt_subjects"] = ["ops-console"]
        data["auditors"] = [{"name": "dpo", "jwt_subjects": ["audit-tool"]}]

    return change


@pytest.fixture
def bed(bed_factory: BedFactory, issuer: JwksServer) -> Bed:
    return bed_factory(with_jwt(issuer.url))


def token(bed: Bed, client: str, scope: str, key: SigningKey = KEY, **extra: Any) -> str:
    return key.sign(claims(bed.clock.now(), client, scope=scope, **extra))


def refusals(bed: Bed) -> list[dict[str, Any]]:
    """The audit records of refused requests, oldest first."""
    found = []
    for entry in bed.store.read_audit(0, 1000):
        if entry.record.action.startswith("auth."):
            body = orjson.loads(entry.record.body)
            found.append(
                {"action": entry.record.action, "actor": entry.record.actor, "why": body["outcomeDesc"]}
            )
    return found


def assert_outcome(response: Any, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert text in body["issue"][0]["diagnostics"]


def test_a_system_sends_with_a_jwt_and_reads_its_own_messages(bed: Bed) -> None:
    jwt = token(bed, "herlev-ehr", "system/Bundle.c system/Bundle.rs")
    sent = bed.post_message(example_bytes(STIN), token=jwt)
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["id"]
    assert bed.client.get(f"/messages/{message_id}", headers=auth(jwt)).json()["sender"] == HOSPITAL
    listed = bed.client.get("/messages", headers=auth(jwt)).json()
    assert [m["id"] for m in listed["messages"]] == [message_id]
    # Another system, authenticated the same way, does not see it at all.
    rehab = token(bed, "rehab-care", "system/Bundle.rs")
    assert bed.client.get(f"/messages/{message_id}", headers=auth(rehab)).status_code == 404
    assert bed.client.get("/messages", headers=auth(rehab)).json()["messages"] == []


def test_scopes_are_enforced_per_endpoint(bed: Bed) -> None:
    read_only = token(bed, "herlev-ehr", "system/Bundle.rs")
    assert_outcome(bed.post_message(example_bytes(STIN), token=read_only), 403, "system/Bundle.c")
    assert bed.client.get("/messages", headers=auth(read_only)).status_code == 200
    send_only = token(bed, "herlev-ehr", "system/Bundle.c")
    assert bed.post_message(example_bytes(STIN), token=send_only).status_code == 200
    assert_outcome(bed.client.get("/messages", headers=auth(send_only)), 403, "system/Bundle.s")
    search_only = token(bed, "herlev-ehr", "system/Bundle.s")
    assert_outcome(bed.client.get("/messages/anything", headers=auth(search_only)), 403, "system/Bundle.r")
    # SMART v1 wildcards are understood; scopes for patients and users grant nothing to a system.
    assert (
        bed.post_message(example_bytes(CC_NEW), token=token(bed, "herlev-ehr", "system/*.write")).status_code
        == 200
    )
    assert (
        bed.post_message(example_bytes(STIN), token=token(bed, "herlev-ehr", "patient/*.cruds")).status_code
        == 403
    )
    assert [r["action"] for r in refusals(bed)] == ["auth.forbidden"] * 4
    assert refusals(bed)[0]["actor"] == HOSPITAL


def test_operators_and_auditors_by_jwt(bed: Bed) -> None:
    reader = token(bed, "ops-console", "system/Bundle.rs")
    assert bed.client.get("/deliveries", headers=auth(reader)).status_code == 200
    assert_outcome(bed.client.post("/deliveries/x/retry", headers=auth(reader)), 403, "system/Bundle.u")
    operator = token(bed, "ops-console", "system/Bundle.rus")
    assert bed.client.post("/deliveries/none-such/retry", headers=auth(operator)).status_code == 404
    # The auditor role does not include traces; a system's token does not reach operator endpoints.
    auditor = token(bed, "audit-tool", "system/*.rs")
    assert_outcome(bed.client.get("/deliveries", headers=auth(auditor)), 403, "for operators")
    assert_outcome(bed.client.get("/messages", headers=auth(auditor)), 403, "for systems or operators")
    system = token(bed, "herlev-ehr", "system/*.cruds")
    assert_outcome(bed.client.get("/deliveries", headers=auth(system)), 403, "for operators")


@pytest.mark.parametrize(
    ("forge", "why"),
    [
        (
            lambda bed: token(bed, "herlev-ehr", "system/Bundle.c", lifetime=timedelta(seconds=-120)),
            "expired",
        ),
        (lambda bed: token(bed, "herlev-ehr", "system/Bundle.c", aud="https://elsewhere.invalid"), "(aud)"),
        (lambda bed: token(bed, "herlev-ehr", "system/Bundle.c", iss="https://evil.invalid"), "(iss)"),
        (lambda bed: unsigned(claims(bed.clock.now(), "herlev-ehr", scope="system/Bundle.c")), "'none'"),
        (
            lambda bed: hs256_with(KEY.public_pem(), claims(bed.clock.now(), "herlev-ehr"), KEY.kid),
            "'HS256'",
        ),
        (lambda bed: token(bed, "herlev-ehr", "system/Bundle.c", key=SigningKey.rsa("x")), "unknown kid"),
        (lambda bed: token(bed, "someone-else", "system/Bundle.c"), "not registered"),
    ],
    ids=["expired", "audience", "issuer", "alg-none", "hs256-confusion", "foreign-key", "unknown-client"],
)
def test_bad_tokens_are_401_and_audited(bed: Bed, forge: Callable[[Bed], str], why: str) -> None:
    response = bed.post_message(example_bytes(STIN), token=forge(bed))
    assert_outcome(response, 401, why)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert bed.count("messages") == 0
    [refusal] = refusals(bed)
    assert refusal["action"] == "auth.refused" and refusal["actor"] == "unauthenticated"
    assert why in refusal["why"] and "127.0.0.1" in refusal["why"]


def test_key_rotation_through_the_service(bed: Bed, issuer: JwksServer) -> None:
    assert (
        bed.post_message(example_bytes(STIN), token=token(bed, "herlev-ehr", "system/Bundle.c")).status_code
        == 200
    )
    successor = SigningKey.ec("issuer-2026-02")
    issuer.document = jwks(KEY, successor)
    bed.clock.advance(11)  # past jwks_min_refresh: an unknown kid makes the bridge fetch the set
    fresh = token(bed, "herlev-ehr", "system/Bundle.c", key=successor)
    assert bed.post_message(example_bytes(CC_NEW), token=fresh).status_code == 200
    issuer.document = jwks(successor)
    bed.clock.advance(timedelta(hours=1))  # the periodic refresh drops the withdrawn key
    old = token(bed, "herlev-ehr", "system/Bundle.c")
    assert_outcome(bed.post_message(example_bytes(STIN), token=old), 401, "unknown kid")
    assert issuer.fetches == 3


def test_static_tokens_still_work_beside_jwt(bed: Bed) -> None:
    from api_bed import HOSPITAL_TOKEN, OPERATOR_TOKEN

    assert bed.post_message(example_bytes(STIN)).status_code == 200
    assert bed.client.get("/deliveries", headers=auth(OPERATOR_TOKEN)).status_code == 200
    assert_outcome(bed.client.get("/deliveries", headers=auth(HOSPITAL_TOKEN)), 403, "for operators")
