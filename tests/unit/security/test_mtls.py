"""The client certificate as the app sees it (ASGI TLS extension) and the uvicorn options for TLS."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from pki import AUDIENCE, ISSUER, CertificateAuthority, SigningKey, claims

from bridge.clock import FakeClock
from bridge.security.jwt import JwtVerifier, TokenRefused
from bridge.security.mtls import ClientCertificate, TlsH11Protocol, client_certificate, uvicorn_tls_options
from bridge.settings import JwtConfig


def test_the_certificate_in_the_tls_extension(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    issued = ca.client("ehr", "ehr.example", "Region Hovedstaden")
    pem = issued.cert.public_bytes(serialization.Encoding.PEM).decode()
    found = client_certificate({"extensions": {"tls": {"client_cert_chain": [pem]}}})
    assert found == ClientCertificate("O=Region Hovedstaden,CN=ehr.example", issued.sha256)  # RFC 4514 order
    assert found.subject == issued.subject
    der = issued.cert.public_bytes(serialization.Encoding.DER)
    assert ClientCertificate.from_der(der) == found
    for scope in (
        {},
        {"extensions": {}},
        {"extensions": {"tls": {"client_cert_chain": []}}},
        {"extensions": {"tls": {"client_cert_chain": ["not a certificate"]}}},
        {"extensions": {"tls": None}},
    ):
        assert client_certificate(scope) is None


def test_uvicorn_options(tmp_path: Path) -> None:
    cert, key, ca = tmp_path / "s.crt", tmp_path / "s.key", tmp_path / "ca.crt"
    assert uvicorn_tls_options(cert, key) == {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    optional = uvicorn_tls_options(cert, key, ca)
    assert optional["ssl_cert_reqs"] == ssl.CERT_OPTIONAL and optional["http"] is TlsH11Protocol
    assert uvicorn_tls_options(cert, key, ca, True)["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    with pytest.raises(ValueError, match="needs the CA"):
        uvicorn_tls_options(cert, key, None, True)


def test_threads_finding_the_cache_stale_fetch_the_keys_once() -> None:
    fetched: list[str] = []
    gate = threading.Event()

    def slow_fetch(url: str) -> bytes:
        fetched.append(url)
        gate.wait(2)
        return b'{"keys": []}'

    clock = FakeClock()
    config = JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url="http://127.0.0.1:9/jwks")
    verifier = JwtVerifier(config, clock, fetch=slow_fetch)
    token = SigningKey.ec("k").sign(claims(clock.now(), "c"))
    refused: list[str] = []

    def call() -> None:
        try:
            verifier.verify(token)
        except TokenRefused as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(5)
    assert fetched == ["http://127.0.0.1:9/jwks"]
    assert len(refused) == 8 and all("unknown kid" in r for r in refused)
