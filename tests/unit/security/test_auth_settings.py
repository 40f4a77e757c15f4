"""The ``auth:`` settings, credentials on systems, operators and auditors, and the Authenticator on
them without HTTP (static tokens, certificates, roles, scopes)."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from pki import AUDIENCE, ISSUER, SigningKey, claims, jwks

from bridge.auth import Authenticator, Forbidden, NotAuthenticated, Throttled
from bridge.clock import FakeClock
from bridge.security.jwt import JwtVerifier, certificate_thumbprint
from bridge.security.mtls import ClientCertificate
from bridge.security.scopes import OPERATE, READ_AUDIT, SEND, Grant
from bridge.settings import JwtConfig, check_settings, hash_token

THUMB = "AB:" * 31 + "CD"
BASE: dict[str, Any] = {
    "store": {"url": "sqlite:///bridge.db", "citizen_key_secret": "x" * 32},
    "systems": [
        {
            "id": "ehr",
            "kind": "hospital",
            "organisations": [{"sor": "265161000016000"}],
            "endpoint": "http://127.0.0.1:9/fhir",
            "inbound": {
                "tokens": [{"name": "t", "sha256": hash_token("ehr-token")}],
                "jwt_subjects": ["ehr-client"],
                "client_certs": [{"sha256": THUMB}, {"subject": "CN=ehr.example,O=Region"}],
            },
        }
    ],
    "operators": [
        {"name": "on-call", "sha256": hash_token("op-token"), "client_certs": [{"subject": "CN=ops"}]}
    ],
    "auditors": [{"name": "dpo", "sha256": hash_token("audit-token")}],
    "auth": {
        "jwt": {
            "issuer": "https://auth.invalid",
            "audience": "bridge",
            "jwks_url": "http://127.0.0.1:9/jwks",
        },
        "rate_limit": {"max_failures": 3, "window": "1m"},
    },
}


def checked(change: Any = None) -> tuple[Any, list[tuple[str, str, str | None]]]:
    data = deepcopy(BASE)
    if change is not None:
        change(data)
    settings, outcome = check_settings(data, {})
    return settings, [(i.severity, i.diagnostics, i.expression[0] if i.expression else None) for i in outcome]


def test_the_auth_settings_load() -> None:
    settings, issues = checked()
    assert settings is not None and issues == []
    assert settings.systems[0].inbound.client_certs[0].sha256 == "ab" * 31 + "cd"  # normalised
    assert settings.auth.rate_limit.max_failures == 3
    assert settings.auth.jwt.algorithms == ["RS256", "ES256"]


def test_exactly_one_key_source() -> None:
    def both(data: dict[str, Any]) -> None:
        data["auth"]["jwt"]["jwks_file"] = "keys.json"

    def neither(data: dict[str, Any]) -> None:
        del data["auth"]["jwt"]["jwks_url"]

    for change in (both, neither):
        settings, issues = checked(change)
        assert settings is None
        assert ("error", "set exactly one of jwks_file and jwks_url", "auth.jwt") in issues


def test_only_rs256_and_es256() -> None:
    def hs(data: dict[str, Any]) -> None:
        data["auth"]["jwt"]["algorithms"] = ["HS256"]

    settings, issues = checked(hs)
    assert settings is None and issues[0][2] == "auth.jwt.algorithms[0]"


def test_plain_http_keys_elsewhere_than_loopback_are_warned_about() -> None:
    def remote(data: dict[str, Any]) -> None:
        data["auth"]["jwt"]["jwks_url"] = "http://keys.invalid/jwks"

    settings, issues = checked(remote)
    assert settings is not None and issues[0][0] == "warning" and issues[0][2] == "auth.jwt.jwks_url"


def test_a_system_cannot_share_a_credential_with_an_operator() -> None:
    def shared(data: dict[str, Any]) -> None:
        data["operators"][0]["client_certs"] = [{"sha256": THUMB}]
        data["operators"][0]["jwt_subjects"] = ["ehr-client"]

    settings, issues = checked(shared)
    assert settings is None
    where = {i[2] for i in issues}
    assert {"operators[0].client_certs[0].sha256", "operators[0].jwt_subjects[0]"} <= where


def test_an_operator_may_also_be_the_auditor() -> None:
    def both_roles(data: dict[str, Any]) -> None:
        data["auditors"][0]["client_certs"] = [{"subject": "CN=ops"}]

    settings, issues = checked(both_roles)
    assert settings is not None and issues == []


def test_bad_certificate_entries() -> None:
    def bad_thumbprint(data: dict[str, Any]) -> None:
        data["systems"][0]["inbound"]["client_certs"] = [{"sha256": "12ab"}]

    def empty(data: dict[str, Any]) -> None:
        data["systems"][0]["inbound"]["client_certs"] = [{}]

    settings, issues = checked(bad_thumbprint)
    assert settings is None
    assert issues == [
        (
            "error",
            "a SHA-256 thumbprint is 64 hex digits (colons allowed)",
            "systems[0].inbound.client_certs[0].sha256",
        )
    ]
    settings, issues = checked(empty)
    assert settings is None
    assert issues == [
        ("error", "a client certificate needs a subject or a sha256", "systems[0].inbound.client_certs[0]")
    ]


def test_jwt_subjects_without_jwt_are_warned_about() -> None:
    def no_jwt(data: dict[str, Any]) -> None:
        del data["auth"]["jwt"]

    settings, issues = checked(no_jwt)
    assert settings is not None
    assert (
        "warning",
        "jwt_subjects have no effect without auth.jwt",
        "systems[0].inbound.jwt_subjects",
    ) in issues


def authenticator() -> tuple[Authenticator, FakeClock]:
    settings, _ = checked()
    clock = FakeClock()
    return Authenticator(settings, clock), clock


def test_static_tokens_and_roles() -> None:
    auth, _ = authenticator()
    system = auth.identify("Bearer ehr-token")
    assert system.name == "ehr" and system.roles == {"system"} and system.method == "token"
    assert auth.authorize(system, ("system",), SEND) is system
    with pytest.raises(Forbidden, match="for operators; ehr may not"):
        auth.authorize(system, ("operator",), OPERATE)
    operator = auth.identify("Bearer op-token")
    assert operator.name == "operator:on-call" and operator.roles == {"operator"}
    with pytest.raises(Forbidden, match="for auditors"):
        auth.authorize(operator, ("auditor",), READ_AUDIT)
    auditor = auth.identify("Bearer audit-token")
    assert auditor.name == "auditor:dpo" and auth.authorize(auditor, ("auditor",), READ_AUDIT) is auditor
    with pytest.raises(NotAuthenticated, match="not valid"):
        auth.identify("Bearer nobody")
    with pytest.raises(NotAuthenticated, match="Authentication required"):
        auth.identify(None)
    with pytest.raises(NotAuthenticated, match="Only bearer"):
        auth.identify("Basic b3A6cGFzcw==")


def test_certificates_by_thumbprint_and_subject() -> None:
    auth, _ = authenticator()
    by_thumb = ClientCertificate("CN=renewed", "ab" * 31 + "cd")
    assert auth.identify(None, by_thumb).name == "ehr"
    assert auth.identify(None, ClientCertificate("CN=ehr.example,O=Region", "00" * 32)).method == "mtls"
    assert auth.identify(None, ClientCertificate("CN=ops", "11" * 32)).name == "operator:on-call"
    with pytest.raises(NotAuthenticated, match="not registered"):
        auth.identify(None, ClientCertificate("CN=ehr.example,O=Other", "22" * 32))
    # A certificate and a token must agree on who is calling.
    assert auth.identify("Bearer ehr-token", by_thumb).name == "ehr"
    with pytest.raises(NotAuthenticated, match="different callers"):
        auth.identify("Bearer op-token", by_thumb)


def test_scopes_narrow_a_role() -> None:
    auth, _ = authenticator()
    system = auth.identify("Bearer ehr-token")
    from dataclasses import replace

    narrowed = replace(system, grant=Grant.parse(["system/Bundle.rs"]))
    with pytest.raises(Forbidden, match=r"do not include system/Bundle\.c"):
        auth.authorize(narrowed, ("system",), SEND)


def test_failures_are_throttled_per_address_and_identity() -> None:
    auth, clock = authenticator()
    for _ in range(3):
        with pytest.raises(NotAuthenticated):
            auth.identify("Bearer guess", address="10.0.0.1")
    with pytest.raises(Throttled) as throttled:
        auth.identify("Bearer ehr-token", address="10.0.0.1")  # even a good token from that address
    assert throttled.value.retry_after == 60
    assert auth.identify("Bearer ehr-token", address="10.0.0.2").name == "ehr"
    # The same wrong token from other addresses: blocked by the identity it presents.
    with pytest.raises(Throttled):
        auth.identify("Bearer guess", address="10.0.0.3")
    clock.advance(60)
    assert auth.identify("Bearer ehr-token", address="10.0.0.1").name == "ehr"


def test_the_event_loop_settles_only_what_needs_no_io_and_counts_nothing() -> None:
    auth, _ = authenticator()
    quick = auth.settled_without_io
    caller = quick("Bearer ehr-token", None, "10.0.0.1", ("system",), SEND)
    assert caller is not None and caller.name == "ehr" and caller == auth.identify("Bearer ehr-token")
    # What identify/authorize would refuse, audit, or verify over the network is left to them.
    assert quick("Bearer guess", None, "10.0.0.1", ("system",), SEND) is None
    assert quick("Bearer op-token", None, "10.0.0.1", ("system",), SEND) is None  # another role
    assert quick(None, None, "10.0.0.1", ("system",), SEND) is None
    assert quick("Basic b3A6cGFzcw==", None, "10.0.0.1", ("system",), SEND) is None
    jwt_like = "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJlaHItY2xpZW50In0.c2ln"
    assert quick(jwt_like, None, "10.0.0.1", ("system",), SEND) is None
    cert = ClientCertificate("CN=ehr.example,O=Region", "00" * 32)
    assert quick("Bearer ehr-token", cert, "10.0.0.1", ("system",), SEND) is None
    # Asking counted no failure: three real failures still throttle, and then the quick path steps aside.
    for _ in range(3):
        with pytest.raises(NotAuthenticated):
            auth.identify("Bearer guess", address="10.0.0.1")
    assert quick("Bearer ehr-token", None, "10.0.0.1", ("system",), SEND) is None
    with pytest.raises(Throttled):
        auth.identify("Bearer ehr-token", address="10.0.0.1")


def test_jwt_callers_and_certificate_bound_tokens(tmp_path: Path) -> None:
    key = SigningKey.ec("k1")
    keyfile = tmp_path / "jwks.json"
    keyfile.write_text(json.dumps(jwks(key)))
    settings, _ = checked()
    clock = FakeClock()
    config = JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=str(keyfile))
    auth = Authenticator(settings, clock, verifier=JwtVerifier(config, clock))
    caller = auth.identify("Bearer " + key.sign(claims(clock.now(), "ehr-client", scope="system/Bundle.c")))
    assert (
        caller.name == "ehr"
        and caller.method == "jwt"
        and caller.allows(SEND)
        and not caller.allows(READ_AUDIT)
    )

    mine = ClientCertificate("CN=ehr.example,O=Region", "ab" * 32)
    bound = key.sign(claims(clock.now(), "ehr-client", cnf={"x5t#S256": certificate_thumbprint(mine.sha256)}))
    assert auth.identify(f"Bearer {bound}", mine).name == "ehr"
    with pytest.raises(NotAuthenticated, match="bound to a client certificate"):
        auth.identify(f"Bearer {bound}")  # a stolen token alone
    with pytest.raises(NotAuthenticated, match="bound to a client certificate"):
        auth.identify(f"Bearer {bound}", ClientCertificate("CN=thief", "cd" * 32))
    dpop = key.sign(
        claims(clock.now(), "ehr-client", cnf={"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"})
    )
    with pytest.raises(NotAuthenticated, match="only x5t#S256"):
        auth.identify(f"Bearer {dpop}")


@hyp_settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=200), st.text(max_size=100).map(lambda t: "Bearer " + t)))
def test_any_authorization_header_is_refused_cleanly(header: str | None) -> None:
    auth, _ = authenticator()
    try:
        caller = auth.identify(header, address="192.0.2.1")
    except (NotAuthenticated, Throttled) as exc:
        assert exc.outcome.errors  # an OperationOutcome saying why
    else:
        assert header is not None and header.split()[-1] in ("ehr-token", "op-token", "audit-token")
        assert caller.roles


def test_a_missing_jwks_file_is_warned_about(tmp_path: Path) -> None:
    def from_file(path: Path) -> Any:
        def change(data: dict[str, Any]) -> None:
            del data["auth"]["jwt"]["jwks_url"]
            data["auth"]["jwt"]["jwks_file"] = str(path)

        return change

    settings, issues = checked(from_file(tmp_path / "absent.json"))
    assert settings is not None and [(i[0], i[2]) for i in issues] == [("warning", "auth.jwt.jwks_file")]
    (tmp_path / "present.json").write_text('{"keys": []}')
    settings, issues = checked(from_file(tmp_path / "present.json"))
    assert settings is not None and issues == []


def test_every_refusal_is_audited_even_of_other_schemes(tmp_path: Path) -> None:
    from bridge.outbox import open_store

    settings, _ = checked()
    store = open_store(f"sqlite:///{tmp_path / 'audit.db'}")
    try:
        auth = Authenticator(settings, FakeClock(), store)
        for header in ("Basic b3A6cGFzcw==", "Digest x", None):
            with pytest.raises(NotAuthenticated):
                auth.identify(header, address="192.0.2.7")
        with pytest.raises(Throttled):
            auth.identify("Bearer ehr-token", address="192.0.2.7")
        system = auth.identify("Bearer ehr-token", address="192.0.2.8")
        with pytest.raises(Forbidden):
            auth.authorize(system, ("auditor",), READ_AUDIT, "192.0.2.8")
        entries = store.read_audit(0, 100)
    finally:
        store.close()
    assert [(e.record.action, e.record.actor) for e in entries] == [
        ("auth.refused", "unauthenticated"),
        ("auth.refused", "unauthenticated"),
        ("auth.refused", "unauthenticated"),
        ("auth.forbidden", "ehr"),
    ]
    descriptions = [json.loads(e.record.body)["outcomeDesc"] for e in entries]
    assert (
        descriptions[0]
        == "HTTP 401 from 192.0.2.7: Only bearer tokens are accepted: Authorization: Bearer <token>"
    )
    assert descriptions[3].startswith("HTTP 403 from 192.0.2.8: This endpoint is for auditors")
