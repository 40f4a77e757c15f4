"""Mutual TLS: the client certificate the TLS layer verified, as the application sees it.

The ASGI TLS extension (``scope["extensions"]["tls"]``, ``client_cert_chain``: PEM certificates,
the client's first) is how a server hands the verified client certificate to the app. uvicorn does
not fill it in yet, so ``TlsH11Protocol`` does: uvicorn's h11 protocol, one instance per connection,
reading the peer certificate from the connection's ``ssl_object`` once and adding the extension to
every request's scope. ``uvicorn_tls_options`` gives ``uvicorn.Config`` what it needs (certificate,
key, client CA, whether a client certificate is required, and this protocol).

A certificate reaches the app only after the TLS handshake verified it against the client CA
(``ssl_cert_reqs`` optional or required: a certificate that fails verification ends the handshake),
so the app trusts what it finds here. The caller is then identified by the certificate's SHA-256
thumbprint (exact, changes on renewal) or its subject DN (survives renewal; as strong as the CA's
care about what it signs).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """The parts of a client certificate that identify a caller."""

    subject: str  # RFC 4514, e.g. "CN=ehr.example,O=Region Hovedstaden"
    sha256: str  # hex digest of the DER certificate, lower case, no colons

    @classmethod
    def from_der(cls, der: bytes) -> ClientCertificate:
        """The identity of a DER-encoded certificate."""
        cert = x509.load_der_x509_certificate(der)
        return cls(cert.subject.rfc4514_string(), hashlib.sha256(der).hexdigest())

    @classmethod
    def from_pem(cls, pem: str | bytes) -> ClientCertificate:
        """The identity of a PEM-encoded certificate."""
        data = pem.encode() if isinstance(pem, str) else pem
        cert = x509.load_pem_x509_certificate(data)
        from cryptography.hazmat.primitives.serialization import Encoding

        return cls.from_der(cert.public_bytes(Encoding.DER))


@functools.lru_cache(maxsize=1024)
def _identity_of(pem: str) -> ClientCertificate | None:
    # Parsed once per certificate, not per request: a connection sends many requests with one.
    try:
        return ClientCertificate.from_pem(pem)
    except ValueError:
        return None


def client_certificate(scope: Mapping[str, Any]) -> ClientCertificate | None:
    """The verified client certificate of a request, from the ASGI TLS extension (None without one)."""
    tls = (scope.get("extensions") or {}).get("tls")
    if not isinstance(tls, Mapping):
        return None
    chain = tls.get("client_cert_chain") or ()
    if not chain or not isinstance(chain[0], str | bytes):
        return None
    pem = chain[0] if isinstance(chain[0], str) else chain[0].decode("ascii", "replace")
    return _identity_of(pem)


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, Any] | None:
    """The ASGI TLS extension of one connection (None when it is not TLS)."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": ClientCertificate.from_der(der).subject if der else None,
        "client_cert_error": None,  # a certificate that fails verification never gets this far
        "tls_version": ssl_object.version(),
        "cipher_suite": cipher[0] if cipher else None,
    }


class _WithTls:
    """The app, called with the connection's TLS extension added to each scope."""

    def __init__(self, app: ASGI3Application, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        found: Any = scope.get("extensions")
        extensions: dict[str, Any] = dict(found) if isinstance(found, dict) else {}
        extensions["tls"] = self.tls
        await self.app({**scope, "extensions": extensions}, receive, send)  # type: ignore[arg-type]


class TlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that fills in the ASGI TLS extension (client certificate included)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Read the peer certificate once per connection and wrap the app to pass it on."""
        super().connection_made(transport)
        tls = tls_extension(transport.get_extra_info("ssl_object"))
        if tls is not None:
            self.app = _WithTls(self.app, tls)


def uvicorn_tls_options(
    certfile: Path,
    keyfile: Path,
    client_ca: Path | None = None,
    require_client_cert: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: serve HTTPS with ``certfile``/``keyfile``; with
    ``client_ca``, ask for a client certificate signed by it (``require_client_cert``: refuse the
    handshake without one) and hand it to the app."""
    if require_client_cert and client_ca is None:
        raise ValueError("requiring a client certificate needs the CA that signs them (--tls-client-ca)")
    options: dict[str, Any] = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
    if client_ca is not None:
        options["ssl_ca_certs"] = str(client_ca)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        options["http"] = TlsH11Protocol
    return options
