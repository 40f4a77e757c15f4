"""JWT bearer tokens checked against a JWKS: keys from a file and from a URL on loopback, rotation,
and the tokens an attacker would try (none, HS256 key confusion, foreign keys, wrong claims)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pki import AUDIENCE, ISSUER, JwksServer, SigningKey, claims, hs256_with, jwks, unsigned

from bridge.clock import FakeClock
from bridge.security.jwt import JwtVerifier, KeysUnavailable, TokenRefused, looks_like_jwt, parse_jwks
from bridge.settings import JwtConfig

RSA = SigningKey.rsa("rsa-1")
EC = SigningKey.ec("ec-1")


def config(**changes: Any) -> JwtConfig:
    values: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "leeway": "30s"}
    values.update(changes)
    return JwtConfig.model_validate(values)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(RSA, EC)))
    return path


@pytest.fixture
def verifier(keyfile: Path, clock: FakeClock) -> JwtVerifier:
    return JwtVerifier(config(jwks_file=str(keyfile)), clock)


@pytest.fixture
def server() -> Iterator[JwksServer]:
    served = JwksServer(jwks(RSA))
    yield served
    served.stop()


def refused(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(TokenRefused) as caught:
        verifier.verify(token)
    return str(caught.value)


@pytest.mark.parametrize("key", [RSA, EC], ids=["RS256", "ES256"])
def test_a_valid_token_gives_its_client_and_scopes(
    verifier: JwtVerifier, clock: FakeClock, key: SigningKey
) -> None:
    token = key.sign(claims(clock.now(), "ehr-client", scope="system/Bundle.c system/*.rs"))
    assert looks_like_jwt(token)
    found = verifier.verify(token)
    assert found.identity == "ehr-client" and found.issuer == ISSUER
    assert found.scopes == ("system/Bundle.c", "system/*.rs")
    assert found.expires == clock.now() + timedelta(minutes=5)


def test_client_id_names_the_caller_before_sub(verifier: JwtVerifier, clock: FakeClock) -> None:
    token = RSA.sign({**claims(clock.now(), "ehr-client"), "sub": "service-account-7"})
    assert verifier.verify(token).identity == "ehr-client"
    token = RSA.sign({k: v for k, v in claims(clock.now(), "sub-only").items() if k != "client_id"})
    assert verifier.verify(token).identity == "sub-only"


def test_expiry_with_leeway_for_clock_skew(verifier: JwtVerifier, clock: FakeClock) -> None:
    token = RSA.sign(claims(clock.now(), "ehr-client", lifetime=timedelta(minutes=1)))
    clock.advance(timedelta(minutes=1, seconds=29))  # within the 30 s leeway
    verifier.verify(token)
    clock.advance(timedelta(seconds=2))
    assert "expired" in refused(verifier, token)


def test_not_yet_valid_and_issued_in_the_future(verifier: JwtVerifier, clock: FakeClock) -> None:
    later = clock.now() + timedelta(minutes=2)
    assert "not valid yet" in refused(
        verifier, RSA.sign(claims(clock.now(), "c", nbf=int(later.timestamp())))
    )
    assert "future" in refused(verifier, RSA.sign(claims(later, "c")))
    # Skew within the leeway is tolerated.
    verifier.verify(RSA.sign(claims(clock.now() + timedelta(seconds=20), "c")))


def test_wrong_audience_issuer_and_missing_exp(verifier: JwtVerifier, clock: FakeClock) -> None:
    now = clock.now()
    assert "aud" in refused(verifier, RSA.sign(claims(now, "c", aud="https://other.invalid/fhir")))
    assert "iss" in refused(verifier, RSA.sign(claims(now, "c", iss="https://evil.invalid")))
    no_exp = {k: v for k, v in claims(now, "c").items() if k != "exp"}
    assert "'exp'" in refused(verifier, RSA.sign(no_exp))


def test_alg_none_is_refused(verifier: JwtVerifier, clock: FakeClock) -> None:
    assert "'none' is not accepted" in refused(verifier, unsigned(claims(clock.now(), "c")))


def test_hs256_signed_with_the_public_key_is_refused(verifier: JwtVerifier, clock: FakeClock) -> None:
    """The key-confusion attack: HMAC keyed with the issuer's public RSA key, which anyone can read."""
    forged = hs256_with(RSA.public_pem(), claims(clock.now(), "c"), kid=RSA.kid)
    assert "'HS256' is not accepted" in refused(verifier, forged)


def test_a_key_the_issuer_does_not_publish_is_refused(verifier: JwtVerifier, clock: FakeClock) -> None:
    stranger = SigningKey.rsa("rsa-1")  # same kid, another key
    assert "signature" in refused(verifier, stranger.sign(claims(clock.now(), "c")))
    assert "unknown kid" in refused(verifier, SigningKey.rsa("rsa-9").sign(claims(clock.now(), "c")))


def test_an_rs256_token_naming_an_ec_key_is_refused(verifier: JwtVerifier, clock: FakeClock) -> None:
    mixed = SigningKey("ec-1", "RS256", RSA.key)  # kid of the EC key, signed RS256
    assert "unknown kid" in refused(verifier, mixed.sign(claims(clock.now(), "c")))


def test_tampered_payload_is_refused(verifier: JwtVerifier, clock: FakeClock) -> None:
    header, _payload, signature = RSA.sign(claims(clock.now(), "ehr-client")).split(".")
    other = RSA.sign(claims(clock.now(), "admin")).split(".")[1]
    assert "signature" in refused(verifier, f"{header}.{other}.{signature}")
    assert "well-formed" in refused(verifier, "eyJ.not.base64!")


def test_only_configured_algorithms(keyfile: Path, clock: FakeClock) -> None:
    only_es = JwtVerifier(config(jwks_file=str(keyfile), algorithms=["ES256"]), clock)
    only_es.verify(EC.sign(claims(clock.now(), "c")))
    assert "'RS256' is not accepted" in refused(only_es, RSA.sign(claims(clock.now(), "c")))


def test_jwks_parsing_skips_keys_it_cannot_use() -> None:
    document = jwks(RSA, EC)
    document["keys"] += [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},  # a shared secret: never a verification key here
        {**RSA.jwk(), "kid": "enc", "use": "enc"},
        {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
        "not a key",
    ]
    keys = parse_jwks(json.dumps(document).encode(), ("RS256", "ES256"))
    assert [k.key_id for k in keys] == ["rsa-1", "ec-1"]
    with pytest.raises(ValueError):
        parse_jwks(b'{"no": "keys"}', ("RS256",))


def test_url_keys_are_cached(server: JwksServer, clock: FakeClock) -> None:
    verifier = JwtVerifier(config(jwks_url=server.url), clock)
    for _ in range(5):
        verifier.verify(RSA.sign(claims(clock.now(), "c")))
    assert server.fetches == 1


def test_rotation_new_key_picked_up_and_removed_key_refused(server: JwksServer, clock: FakeClock) -> None:
    verifier = JwtVerifier(config(jwks_url=server.url, jwks_refresh="10m", jwks_min_refresh="30s"), clock)
    verifier.verify(RSA.sign(claims(clock.now(), "c")))
    new = SigningKey.ec("ec-2026-02")
    server.document = jwks(RSA, new)  # the issuer publishes the next key ...
    clock.advance(timedelta(seconds=31))
    verifier.verify(new.sign(claims(clock.now(), "c")))  # ... and the unknown kid makes the bridge look
    assert server.fetches == 2
    server.document = jwks(new)  # ... then withdraws the old one
    old_token = RSA.sign(claims(clock.now(), "c"))
    verifier.verify(old_token)  # still cached: the periodic refresh has not come yet
    clock.advance(timedelta(minutes=3))
    verifier.verify(old_token)  # verified before: remembered while its key is published
    clock.advance(timedelta(minutes=7))
    assert "unknown kid" in refused(verifier, old_token)  # the refresh forgot it with its key
    assert "unknown kid" in refused(verifier, RSA.sign(claims(clock.now(), "c")))
    assert verifier.key_ids() == ["ec-2026-02"]


def test_unknown_kids_do_not_hammer_the_issuer(server: JwksServer, clock: FakeClock) -> None:
    verifier = JwtVerifier(config(jwks_url=server.url, jwks_min_refresh="30s"), clock)
    verifier.verify(RSA.sign(claims(clock.now(), "c")))
    for i in range(20):
        refused(verifier, SigningKey.rsa(f"made-up-{i}").sign(claims(clock.now(), "c")))
    assert server.fetches == 1  # loaded just now: no refetch within jwks_min_refresh
    clock.advance(timedelta(seconds=31))
    refused(verifier, SigningKey.rsa("made-up-x").sign(claims(clock.now(), "c")))
    assert server.fetches == 2


def test_an_unreachable_issuer_keeps_the_keys_held(server: JwksServer, clock: FakeClock) -> None:
    verifier = JwtVerifier(config(jwks_url=server.url, jwks_refresh="1m"), clock)
    verifier.verify(RSA.sign(claims(clock.now(), "c")))
    server.failing = True
    clock.advance(timedelta(minutes=2))
    verifier.verify(RSA.sign(claims(clock.now(), "c")))  # refresh failed: old keys still used
    assert server.fetches == 2


def test_no_keys_at_all_is_reported(tmp_path: Path, clock: FakeClock) -> None:
    verifier = JwtVerifier(config(jwks_file=str(tmp_path / "missing.json")), clock)
    with pytest.raises(KeysUnavailable):
        verifier.verify(RSA.sign(claims(clock.now(), "c")))


def test_a_relative_jwks_file_is_found_from_the_base_dir(keyfile: Path, clock: FakeClock) -> None:
    verifier = JwtVerifier(config(jwks_file=keyfile.name), clock, base_dir=keyfile.parent)
    assert verifier.verify(RSA.sign(claims(clock.now(), "c"))).identity == "c"


def _segment(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.text(max_size=300),
        st.builds(
            lambda header, payload, signature: f"{_segment(header)}.{_segment(payload)}.{signature}",
            st.one_of(
                st.binary(max_size=80),
                st.dictionaries(
                    st.sampled_from(["alg", "kid", "typ", "crit", "jku", "x5u"]),
                    st.one_of(
                        st.text(max_size=20), st.integers(), st.none(), st.sampled_from(["RS256", "ES256"])
                    ),
                ).map(lambda d: json.dumps(d).encode()),
            ),
            st.one_of(st.binary(max_size=80), st.just(json.dumps({"iss": ISSUER, "aud": AUDIENCE}).encode())),
            st.text(alphabet="abcXYZ019-_=.", max_size=40),
        ),
    )
)
def test_any_garbage_is_refused_with_a_reason(verifier: JwtVerifier, garbage: str) -> None:
    """Whatever arrives as a bearer token, the verifier answers TokenRefused and nothing else."""
    with pytest.raises(TokenRefused):
        verifier.verify(garbage)
