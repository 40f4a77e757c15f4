"""What authenticating one request costs, per way in; prints one JSON document.

    python benchmarks/auth.py [--seconds 2]

In this process, without HTTP: ``Authenticator.identify`` + ``authorize`` (the work of the API's caller
dependencies) for a static token; a JWT signed RS256 (2048-bit) and ES256 (P-256) against a cached
JWKS, each token's first use and its use again (verified tokens are remembered); a client certificate
(the TLS handshake itself is not included); an unknown token (the failure path, counted by the rate
limiter, no store); and a request from a throttled address. Keys, tokens and certificates are made
here.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bridge.auth import Authenticator, NotAuthenticated, Throttled
from bridge.clock import FakeClock
from bridge.security.mtls import ClientCertificate
from bridge.security.scopes import SEND
from bridge.settings import hash_token, parse_settings

ISSUER = "https://auth.bench.invalid"
AUDIENCE = "https://bridge.bench.invalid/fhir"


def _settings(jwks_file: Path) -> Any:
    systems = []
    for i in range(20):  # a deployment of some size: lookups scan every system
        systems.append(
            {
                "id": f"system-{i}",
                "kind": "hospital",
                "organisations": [{"sor": f"{100000000 + i}"}],
                "endpoint": f"http://127.0.0.1:9/{i}",
                "inbound": {
                    "tokens": [{"name": "t", "sha256": hash_token(f"token-{i}")}],
                    "jwt_subjects": [f"client-{i}"],
                    "client_certs": [{"sha256": f"{i:02x}" * 32}],
                },
            }
        )
    return parse_settings(
        {
            "store": {"url": "sqlite:///bench.db", "citizen_key_secret": "b" * 32},
            "systems": systems,
            "auth": {
                "jwt": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(jwks_file)},
                "rate_limit": {"max_failures": 5, "window": "1h"},
            },
        },
        {},
    )


def _rate(call: Callable[[], object], seconds: float) -> dict[str, float]:
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            call()
        done += 50
    elapsed = time.perf_counter() - start
    return {"per_second": round(done / elapsed), "microseconds_each": round(elapsed / done * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = [
        {
            **jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True),
            "kid": "r",
            "alg": "RS256",
        },
        {**jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "e", "alg": "ES256"},
    ]
    with tempfile.TemporaryDirectory() as folder:
        jwks_file = Path(folder) / "jwks.json"
        jwks_file.write_text(json.dumps({"keys": keys}))
        clock = FakeClock()
        auth = Authenticator(_settings(jwks_file), clock)
        now = int(clock.now().timestamp())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "client-19",
            "scope": "system/Bundle.c",
            "iat": now,
            "exp": now + 300,
        }
        rs256 = "Bearer " + jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "r"})
        es256 = "Bearer " + jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "e"})
        cert = ClientCertificate("CN=system-19", "13" * 32)

        def identify(authorization: str | None, certificate: ClientCertificate | None = None) -> None:
            auth.authorize(auth.identify(authorization, certificate, "10.0.0.1"), ("system",), SEND)

        def unknown() -> None:
            try:
                auth.identify("Bearer not-a-token", None, "10.0.0.2")
            except (NotAuthenticated, Throttled):
                pass

        def throttled() -> None:
            try:
                auth.identify("Bearer token-1", None, "10.0.0.2")
            except Throttled:
                pass

        def first_use(key: Any, alg: str, kid: str) -> dict[str, float]:
            # Each token once: parsing and the signature check, before the verified-token cache helps.
            tokens = [
                "Bearer " + jwt.encode({**claims, "jti": str(i)}, key, algorithm=alg, headers={"kid": kid})
                for i in range(400)
            ]
            start = time.perf_counter()
            for token in tokens:
                identify(token)
            elapsed = time.perf_counter() - start
            return {
                "per_second": round(len(tokens) / elapsed),
                "microseconds_each": round(elapsed / 400 * 1e6, 1),
            }

        results = {
            "static_token": _rate(lambda: identify("Bearer token-19"), args.seconds),
            "jwt_rs256_first_use": first_use(rsa_key, "RS256", "r"),
            "jwt_es256_first_use": first_use(ec_key, "ES256", "e"),
            "jwt_rs256_again": _rate(lambda: identify(rs256), args.seconds),
            "jwt_es256_again": _rate(lambda: identify(es256), args.seconds),
            "client_certificate": _rate(lambda: identify(None, cert), args.seconds),
            "unknown_token_then_throttled": _rate(unknown, args.seconds),
            "throttled_address": _rate(throttled, args.seconds),
        }
        clock.advance(timedelta(seconds=1))
    json.dump(
        {
            "benchmark": "auth",
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "systems_configured": 20,
            "results": results,
        },
        sys.stdout,
        indent=2,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
