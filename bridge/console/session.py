"""Console sessions: a signed cookie naming the signed-in person, with an expiry and a CSRF token.

The cookie holds no credential and no personal data: a random session id, the caller's name
(``operator:<name>``/``auditor:<name>``), the console roles granted at sign-in and the expiry, as
base64url JSON followed by an HMAC-SHA256 over it. The key is derived from the deployment's
``store.citizen_key_secret`` (HMAC with a fixed label, so the secret itself cannot be recovered from
the key), which makes a session good on every API process of one deployment and lets it survive a
restart; changing that secret signs everyone out.

The CSRF token of a session is the HMAC of its id under the same key with another label: forms carry
it in a hidden field, and a POST is only acted on when the field matches the session of the cookie.
Signing out revokes the session id in this process (kept until the session would have expired
anyway), so a copied cookie is no good after logout either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

#: How long a console session lasts from sign-in; no sliding renewal, so a forgotten tab ends.
DEFAULT_LIFETIME = timedelta(hours=8)
#: The console roles; a system's role never gets a session.
CONSOLE_ROLES = ("operator", "auditor")
_SESSION_LABEL = b"fhir-bridge console session v1"
_CSRF_LABEL = b"csrf:"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def derive_key(secret: str) -> bytes:
    """The session signing key for a deployment secret (one-way: the key does not reveal the secret)."""
    return hmac.new(secret.encode("utf-8"), _SESSION_LABEL, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in person: who, which console roles, until when, and the session's CSRF token."""

    sid: str
    name: str
    roles: tuple[str, ...]
    expires: datetime
    csrf: str

    def has(self, role: str) -> bool:
        """True when the session holds ``role``."""
        return role in self.roles


class SessionCodec:
    """Issues and checks session cookies; remembers revoked sessions until they would expire."""

    def __init__(self, key: bytes, lifetime: timedelta = DEFAULT_LIFETIME) -> None:
        if len(key) < 32:
            raise ValueError("the session key needs at least 32 bytes")
        self._key = key
        self.lifetime = lifetime
        self._revoked: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def csrf_of(self, sid: str) -> str:
        """The CSRF token bound to session ``sid``."""
        return _b64(self._mac(_CSRF_LABEL + sid.encode("ascii")))

    def issue(self, name: str, roles: Iterable[str], now: datetime) -> tuple[str, Session]:
        """A new session for ``name`` with ``roles``: the cookie value and the session."""
        kept = tuple(r for r in CONSOLE_ROLES if r in set(roles))
        if not kept:
            raise ValueError("a console session needs the operator or the auditor role")
        sid = secrets.token_urlsafe(18)
        expires = now + self.lifetime
        payload = orjson.dumps({"sid": sid, "name": name, "roles": kept, "exp": int(expires.timestamp())})
        value = f"{_b64(payload)}.{_b64(self._mac(payload))}"
        when = datetime.fromtimestamp(int(expires.timestamp()), tz=now.tzinfo)
        return value, Session(sid, name, kept, when, self.csrf_of(sid))

    def read(self, value: str | None, now: datetime) -> Session | None:
        """The session a cookie value carries; None when absent, forged, malformed, expired or revoked."""
        if not value or value.count(".") != 1 or len(value) > 4096:
            return None
        body, mac = value.split(".")
        try:
            payload = _unb64(body)
            given = _unb64(mac)
        except ValueError:
            return None
        if not hmac.compare_digest(given, self._mac(payload)):
            return None
        try:
            data = orjson.loads(payload)
            sid, name, roles, exp = data["sid"], data["name"], data["roles"], data["exp"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if not (isinstance(sid, str) and isinstance(name, str) and isinstance(exp, int)):
            return None
        if not isinstance(roles, list) or not all(r in CONSOLE_ROLES for r in roles):
            return None
        expires = datetime.fromtimestamp(exp, tz=now.tzinfo)
        if expires <= now:
            return None
        with self._lock:
            if sid in self._revoked:
                return None
        return Session(sid, name, tuple(roles), expires, self.csrf_of(sid))

    def revoke(self, session: Session, now: datetime) -> None:
        """Sign ``session`` out in this process; forgotten once it would have expired anyway."""
        with self._lock:
            self._revoked = {s: e for s, e in self._revoked.items() if e > now}
            self._revoked[session.sid] = session.expires

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        """True when ``token`` is the CSRF token of ``session`` (compared in constant time)."""
        return token is not None and hmac.compare_digest(token.encode(), session.csrf.encode())
