"""JWT bearer tokens: signature, issuer, audience and lifetime checked against a JSON Web Key Set.

The way SMART Backend Services clients call a FHIR server: the client gets an access token (a JWT
signed by the authorisation server) and presents it as ``Authorization: Bearer <jwt>``. The bridge
checks it against the configured issuer and audience and the issuer's keys (JWKS, from a file or a
URL); the token's ``client_id`` (else ``sub``) names the caller and its ``scope`` says what it may do
(``bridge.security.scopes``).

Refused: any algorithm but RS256 and ES256 (``none`` and HS256 above all: an HS256 token "signed"
with the RSA public key is the classic key-confusion attack), a key id the set does not hold, a key
whose type or ``alg`` does not fit the token's algorithm, a wrong issuer or audience, a token
expired or not yet valid beyond ``leeway`` (clock skew between the issuer and the bridge), a token
without ``exp``.

Keys are cached. The set is read again every ``jwks_refresh`` (rotation: the issuer adds a key, later
removes the old one) and at once when a token names an unknown key id - at most once per
``jwks_min_refresh``, so tokens with made-up key ids cannot make the bridge hammer the issuer. When a
refresh fails the keys already held stay in use. Time comes from the injected ``Clock``.

PyJWT does the signature and claim checks (well kept, small, and its ``decode`` insists on an explicit
list of algorithms); this module picks the key and owns the cache.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from jwt.exceptions import InvalidTokenError, PyJWTError

from bridge.clock import Clock
from bridge.settings import JwtConfig

log = logging.getLogger("bridge.security.jwt")

#: A JWKS larger than this is refused (a key set is a few kilobytes).
MAX_JWKS_BYTES = 1024 * 1024
_KTY = {"RS256": "RSA", "ES256": "EC"}
#: How many verified tokens are remembered (least recently used first out).
VERIFIED_CACHE_SIZE = 10_000


class TokenRefused(Exception):
    """The token is not acceptable; the message says why in words safe to return to the caller."""


class KeysUnavailable(TokenRefused):
    """No key set could be loaded, so no token can be checked."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What the bridge uses of a verified token."""

    subject: str
    client_id: str
    scopes: tuple[str, ...]
    issuer: str
    expires: datetime
    token_id: str | None
    #: RFC 8705 certificate binding: base64url SHA-256 thumbprint (``cnf.x5t#S256``) of the client
    #: certificate the token was issued to; the token is only good on a connection presenting it.
    certificate_thumbprint: str | None = None

    @property
    def identity(self) -> str:
        """The id the configuration lists in ``jwt_subjects``: ``client_id`` when present, else ``sub``."""
        return self.client_id


def unverified_identity(token: str) -> str | None:
    """The ``client_id``/``sub`` a token claims, read without checking anything (for rate limiting
    only: never trust it)."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 16384:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(claims, dict):
        return None
    value = claims.get("client_id") or claims.get("sub")
    return value[:200] if isinstance(value, str) else None


def certificate_thumbprint(sha256_hex: str) -> str:
    """The ``x5t#S256`` form (base64url, unpadded) of a certificate's SHA-256 hex digest."""
    import base64

    return base64.urlsafe_b64encode(bytes.fromhex(sha256_hex)).rstrip(b"=").decode("ascii")


def looks_like_jwt(token: str) -> bool:
    """True for three dot-separated base64url parts starting with a JSON header (``eyJ``)."""
    return token.startswith("eyJ") and token.count(".") == 2


def fetch_url(url: str, timeout: float = 5.0) -> bytes:
    """The body of ``url`` (a JWKS endpoint), refused past ``MAX_JWKS_BYTES``."""
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
            response.raise_for_status()
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_JWKS_BYTES:
                    raise ValueError("the key set is larger than 1 MB")
                chunks.append(chunk)
    return b"".join(chunks)


def parse_jwks(body: bytes, algorithms: tuple[str, ...]) -> list[jwt.PyJWK]:
    """The signing keys in a JWKS document usable with ``algorithms``; unusable keys are skipped."""
    data = orjson.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("a JWKS is an object with a keys array")
    keys: list[jwt.PyJWK] = []
    for entry in data["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except PyJWTError:  # an unknown kty or curve, or coordinates that do not fit it
            continue
        if key.algorithm_name in algorithms and entry.get("kty") == _KTY[key.algorithm_name]:
            keys.append(key)
    return keys


class JwtVerifier:
    """Checks JWT bearer tokens against one issuer's keys; safe to share between threads."""

    def __init__(
        self,
        config: JwtConfig,
        clock: Clock,
        *,
        fetch: Callable[[str], bytes] = fetch_url,
        base_dir: Path | None = None,
    ) -> None:
        """``fetch`` reads the JWKS URL; ``base_dir`` anchors a relative ``jwks_file``."""
        self.config = config
        self._clock = clock
        self._fetch = fetch
        self._algorithms = tuple(dict.fromkeys(config.algorithms))
        self._file = None
        if config.jwks_file is not None:
            path = Path(config.jwks_file)
            self._file = path if path.is_absolute() or base_dir is None else base_dir / path
        self._lock = threading.Lock()
        self._keys: list[jwt.PyJWK] = []
        self._loaded_at: datetime | None = None
        self._tried_at: datetime | None = None
        # Tokens already verified, by digest, with the key that verified them: a client presents the
        # same access token for minutes, and parsing plus a signature check cost ~0.4 ms each time.
        self._verified: OrderedDict[bytes, tuple[dict[str, Any], jwt.PyJWK]] = OrderedDict()
        self._verified_lock = threading.Lock()

    # -- keys ----------------------------------------------------------------------------------------

    def _read(self) -> bytes:
        if self._file is not None:
            return self._file.read_bytes()
        assert self.config.jwks_url is not None
        return self._fetch(self.config.jwks_url)

    def refresh(self) -> bool:
        """Read the key set again now; True when it was read (else the old keys stay)."""
        now = self._clock.now()
        with self._lock:
            return self._load(now)

    def _load(self, now: datetime) -> bool:
        self._tried_at = now
        try:
            keys = parse_jwks(self._read(), self._algorithms)
        except (OSError, ValueError, httpx.HTTPError) as exc:
            log.warning("cannot read the JWKS: %s", type(exc).__name__)
            return False
        self._keys = keys  # one reference swap: readers see the old list or the new one
        self._loaded_at = now
        with self._verified_lock:
            self._verified.clear()  # every token is checked again against the keys now published
        return True

    def _refresh_if_due(self, now: datetime, unknown_kid: bool) -> bool:
        """Refresh when due; True when this call read the set. Decided under the lock, so threads that
        find the cache stale at the same moment fetch it once."""
        if self._loaded_at is not None and not self._due(now, unknown_kid):
            return False
        # Nothing loaded yet: wait for a fetch another thread may have begun rather than refuse.
        with self._lock:
            if not self._due(now, unknown_kid):
                return False
            return self._load(now)

    def _due(self, now: datetime, unknown_kid: bool) -> bool:
        if self._loaded_at is None or now - self._loaded_at >= self.config.jwks_refresh:
            # Also retried after a failure, but not more often than jwks_min_refresh.
            return self._tried_at is None or now - self._tried_at >= self.config.jwks_min_refresh
        if unknown_kid:
            return self._tried_at is None or now - self._tried_at >= self.config.jwks_min_refresh
        return False

    def _candidates(self, kid: str | None, alg: str) -> list[jwt.PyJWK]:
        keys = [k for k in self._keys if k.algorithm_name == alg]
        if kid is not None:
            return [k for k in keys if k.key_id == kid]
        # No key id: acceptable only when the set leaves no choice.
        return keys if len(keys) == 1 else []

    def key_ids(self) -> list[str | None]:
        """The key ids held now (for diagnostics and tests)."""
        return [k.key_id for k in self._keys]

    # -- tokens --------------------------------------------------------------------------------------

    def verify(self, token: str) -> Claims:
        """The claims of a valid token; raises ``TokenRefused`` saying why it is not.

        A token verified before is not parsed or checked for its signature again while the key that
        verified it is still published (a key set refresh forgets them all); its times are checked
        against the clock on every use.
        """
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock.now()
        self._refresh_if_due(now, unknown_kid=False)
        with self._verified_lock:
            hit = self._verified.get(digest)
        if hit is not None and any(k is hit[1] for k in self._keys):
            return self._check_times(hit[0], now)
        claims, key = self._verify_signed(token, now)
        checked = self._check_times(claims, now)
        with self._verified_lock:
            self._verified[digest] = (claims, key)
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        return checked

    def _verify_signed(self, token: str, now: datetime) -> tuple[dict[str, Any], jwt.PyJWK]:
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError:
            raise TokenRefused("The bearer token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise TokenRefused(f"JWT algorithm {str(alg)[:20]!r} is not accepted; use RS256 or ES256")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRefused("The JWT key id (kid) must be a string")
        keys = self._candidates(kid, alg)
        if not keys and self._refresh_if_due(now, unknown_kid=True):
            keys = self._candidates(kid, alg)  # a new key id: the issuer may have rotated its keys
        if not keys:
            if self._loaded_at is None:
                raise KeysUnavailable("The issuer's keys cannot be loaded; no JWT can be checked now")
            raise TokenRefused("The JWT is signed with a key the issuer does not publish (unknown kid)")
        return self._decode(token, keys[0], alg), keys[0]

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.config.audience,
                issuer=self.config.issuer,
                # Times are checked below against the bridge's clock, with the configured leeway.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "iss", "aud", "sub"],
                },
            )
        except jwt.InvalidAudienceError:
            raise TokenRefused("The JWT is not meant for this bridge (aud)") from None
        except jwt.InvalidIssuerError:
            raise TokenRefused("The JWT comes from an issuer this bridge does not trust (iss)") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("The JWT signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefused(f"The JWT lacks the {exc.claim!r} claim") from None
        except InvalidTokenError as exc:
            raise TokenRefused(f"The JWT is not valid ({type(exc).__name__})") from None
        return claims

    def _check_times(self, claims: dict[str, Any], now: datetime) -> Claims:
        leeway = self.config.leeway.total_seconds()
        stamp = now.timestamp()
        times: dict[str, float] = {}
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TokenRefused(f"The JWT {name!r} claim must be a number of seconds")
            times[name] = float(value)
        if stamp > times["exp"] + leeway:
            raise TokenRefused("The JWT has expired")
        if "nbf" in times and stamp < times["nbf"] - leeway:
            raise TokenRefused("The JWT is not valid yet (nbf)")
        if "iat" in times and stamp < times["iat"] - leeway:
            raise TokenRefused("The JWT was issued in the future (iat)")
        subject = claims["sub"]
        client_id = claims.get("client_id", subject)
        if not isinstance(subject, str) or not isinstance(client_id, str) or not client_id:
            raise TokenRefused("The JWT 'sub' and 'client_id' claims must be text")
        return Claims(
            subject=subject,
            client_id=client_id,
            scopes=_scopes(claims),
            issuer=str(claims["iss"]),
            expires=datetime.fromtimestamp(times["exp"], tz=now.tzinfo),
            token_id=claims["jti"] if isinstance(claims.get("jti"), str) else None,
            certificate_thumbprint=_bound_certificate(claims),
        )


def _bound_certificate(claims: dict[str, Any]) -> str | None:
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    thumbprint = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    if not isinstance(thumbprint, str):
        # A confirmation method the bridge cannot check (DPoP's jkt, ...): refuse rather than ignore it.
        raise TokenRefused("The JWT is bound (cnf) in a way this bridge cannot check; only x5t#S256 is")
    return thumbprint


def _scopes(claims: dict[str, Any]) -> tuple[str, ...]:
    """``scope`` (RFC 8693: space-separated text) or ``scp`` (a list, as some issuers write it)."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return tuple(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        return tuple(s for s in scp if isinstance(s, str))
    if isinstance(scp, str):
        return tuple(scp.split())
    return ()
