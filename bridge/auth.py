"""Who is calling, and may they do this: static tokens, JWT bearer tokens, client certificates, roles.

Callers and their roles:

- ``system`` (a hospital EHR, a municipal care system): sends and receives messages for the
  organisations it owns, and reads the traces of its own messages only;
- ``operator``: message traces, dead letters, retries, mapping reloads, the console;
- ``auditor``: the audit trail.

How a caller proves who it is (``Authenticator.identify``), any one of:

- ``Authorization: Bearer <token>`` with a static token; the configuration holds only its SHA-256
  digest (``bridge.settings.hash_token``);
- ``Authorization: Bearer <jwt>``: an access token from the configured issuer (``auth.jwt``), checked by
  ``bridge.security.jwt``; its ``client_id`` (else ``sub``) must be listed in a caller's
  ``jwt_subjects``, and its SMART system scopes narrow what it may do (``bridge.security.scopes``);
- a client certificate verified by the TLS layer (``bridge.security.mtls``), listed by subject or
  SHA-256 thumbprint in a caller's ``client_certs``. With a certificate and a bearer token both, they
  must name the same caller; a JWT bound to a certificate (RFC 8705 ``cnf.x5t#S256``) is only good
  together with that certificate.

A system may only speak as itself: the sender organisation of what it posts must be one the system
owns (``require_owner``). Every refusal is an error carrying an Outcome - the API answers it as an
OperationOutcome with 401 (and ``WWW-Authenticate``) or 403 - and an audit record; repeated
authentication failures from one address or for one claimed identity are answered 429 with
``Retry-After`` (``bridge.security.ratelimit``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

from bridge import audit
from bridge.clock import Clock
from bridge.errors import InvalidInput
from bridge.fhir.outcome import Issue, Outcome
from bridge.outbox.port import AuditRecord, OutboxStore, StoreError
from bridge.security.jwt import (
    JwtVerifier,
    TokenRefused,
    certificate_thumbprint,
    looks_like_jwt,
    unverified_identity,
)
from bridge.security.mtls import ClientCertificate
from bridge.security.ratelimit import RateLimiter
from bridge.security.scopes import Grant, Need
from bridge.settings import Auditor, ClientCert, Operator, Settings, System

log = logging.getLogger("bridge.auth")

Role = Literal["system", "operator", "auditor"]
Method = Literal["token", "jwt", "mtls"]

#: The challenge sent with every 401 (RFC 6750).
WWW_AUTHENTICATE = 'Bearer realm="fhir-bridge"'


class NotAuthenticated(InvalidInput):
    """No credentials, or credentials the bridge does not know (HTTP 401)."""


class Forbidden(InvalidInput):
    """The caller is known but may not do this (HTTP 403)."""


class Throttled(InvalidInput):
    """Too many failed authentications from this client or for this identity (HTTP 429)."""

    def __init__(self, outcome: Outcome, retry_after: int) -> None:
        super().__init__(outcome)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: a system, or a person or tool with the operator and/or auditor role.

    ``grant`` holds a JWT's scopes; None (static token, client certificate) means everything the
    caller's roles allow.
    """

    system: System | None = None
    operator: Operator | None = None
    auditor: Auditor | None = None
    grant: Grant | None = None
    method: Method = "token"

    @property
    def name(self) -> str:
        """The id used in audit records: the system id, ``operator:<name>`` or ``auditor:<name>``."""
        if self.system is not None:
            return self.system.id
        if self.operator is not None:
            return f"operator:{self.operator.name}"
        assert self.auditor is not None
        return f"auditor:{self.auditor.name}"

    @property
    def roles(self) -> frozenset[Role]:
        """The roles this caller holds."""
        held: set[Role] = set()
        if self.system is not None:
            held.add("system")
        if self.operator is not None:
            held.add("operator")
        if self.auditor is not None:
            held.add("auditor")
        return frozenset(held)

    def allows(self, need: Need) -> bool:
        """True when the caller's scopes (if it has any) cover ``need``."""
        return self.grant is None or self.grant.allows(need)

    def same_principal(self, other: Caller) -> bool:
        """True when both name the same system, operator and auditor entries."""
        return (self.system, self.operator, self.auditor) == (other.system, other.operator, other.auditor)


def _denied(diagnostics: str) -> NotAuthenticated:
    return NotAuthenticated(Outcome([Issue("error", "login", diagnostics)]))


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header; raises ``NotAuthenticated`` otherwise."""
    if not authorization:
        raise _denied("Authentication required: send Authorization: Bearer <token>")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _denied("Only bearer tokens are accepted: Authorization: Bearer <token>")
    return token


def authenticate_system(settings: Settings, authorization: str | None) -> System:
    """The system whose inbound token is presented; raises ``NotAuthenticated``."""
    system = settings.system_for_token(bearer_token(authorization))
    if system is None:
        raise _denied("The bearer token is not valid")
    return system


def authenticate_operator(settings: Settings, authorization: str | None) -> Operator:
    """The operator whose token is presented; a system's token is refused here (403)."""
    token = bearer_token(authorization)
    operator = settings.operator_for_token(token)
    if operator is not None:
        return operator
    if settings.system_for_token(token) is not None:
        raise Forbidden(
            Outcome([Issue("error", "forbidden", "This endpoint is for operators; systems may not use it")])
        )
    raise _denied("The bearer token is not valid")


def owns(system: System, *, sor: str | None, gln: str | None) -> bool:
    """True when ``system`` owns an organisation with this SOR code or GLN."""
    for org in system.organisations:
        if (sor is not None and org.sor == sor) or (gln is not None and org.gln == gln):
            return True
    return False


def require_owner(system: System, *, sor: str | None, gln: str | None, where: str) -> None:
    """Raise ``Forbidden`` unless ``system`` owns the sender organisation (SOR or GLN) found at ``where``."""
    if sor is None and gln is None:
        raise Forbidden(
            Outcome([Issue("error", "forbidden", "The sender organisation has no SOR id or GLN", (where,))])
        )
    if not owns(system, sor=sor, gln=gln):
        named = ", ".join(f"{k} {v}" for k, v in (("SOR", sor), ("GLN", gln)) if v)
        raise Forbidden(
            Outcome(
                [
                    Issue(
                        "error",
                        "forbidden",
                        f"System {system.id!r} does not own the sender organisation ({named}); "
                        "a system may only send as its own organisations",
                        (where,),
                    )
                ]
            )
        )


# -- the authenticator: every way in, roles, scopes, refusals audited and throttled --------------------

_ROLE_NAMES: dict[Role, str] = {"system": "systems", "operator": "operators", "auditor": "auditors"}


def _cert_matches(entries: list[ClientCert], cert: ClientCertificate) -> bool:
    return any(
        (e.sha256 is not None and e.sha256 == cert.sha256)
        or (e.subject is not None and e.subject == cert.subject)
        for e in entries
    )


def _forbidden(diagnostics: str) -> Forbidden:
    return Forbidden(Outcome([Issue("error", "forbidden", diagnostics)]))


class Authenticator:
    """Identifies callers by every configured means, checks roles and scopes, and records refusals.

    One per app (``bridge.api.deps.authenticator_of``); thread-safe. ``store`` receives an audit record
    for every refusal; ``verifier`` replaces the JWT verifier built from ``settings.auth.jwt`` (tests
    inject one with their own fetch); ``base_dir`` anchors a relative ``auth.jwt.jwks_file``.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        store: OutboxStore | None = None,
        *,
        verifier: JwtVerifier | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store
        jwt_config = settings.auth.jwt
        if verifier is None and jwt_config is not None:
            verifier = JwtVerifier(jwt_config, clock, base_dir=base_dir)
        self.verifier = verifier
        limits = settings.auth.rate_limit
        self.limiter = RateLimiter(limits.max_failures, limits.window, limits.max_clients)

    # -- identification ------------------------------------------------------------------------------

    def identify(
        self,
        authorization: str | None,
        certificate: ClientCertificate | None = None,
        address: str = "unknown",
    ) -> Caller:
        """The caller presenting ``authorization`` and/or ``certificate`` from ``address``.

        Raises ``Throttled`` (429) while the address or the claimed identity is blocked, else
        ``NotAuthenticated`` (401, audited and counted against both) when nothing identifies a caller.
        """
        try:
            token = self._token(authorization)
        except NotAuthenticated as exc:  # not a bearer token at all
            bad_scheme: NotAuthenticated | None = exc
            token = None
        else:
            bad_scheme = None
        claimed = self._claimed(token, certificate)
        keys = [f"ip:{address}"] + ([f"id:{claimed}"] if claimed else [])
        now = self.clock.now()
        wait = self.limiter.retry_after(keys, now)
        if wait is not None:
            raise Throttled(
                Outcome([Issue("error", "throttled", f"Too many failed authentications; retry in {wait} s")]),
                wait,
            )
        try:
            if bad_scheme is not None:
                raise bad_scheme
            return self._identify(token, certificate)
        except NotAuthenticated as exc:
            if self.limiter.failure(keys, now):
                log.warning("authentication failures throttled for a client")
            self.audit_refusal(exc, actor="unauthenticated", address=address, claimed=claimed)
            raise

    @staticmethod
    def _token(authorization: str | None) -> str | None:
        if authorization is None or not authorization.strip():
            return None
        return bearer_token(authorization)

    def _claimed(self, token: str | None, certificate: ClientCertificate | None) -> str | None:
        """The identity a request claims, unchecked: the key its failures are counted under."""
        if token is not None:
            if self.verifier is not None and looks_like_jwt(token):
                identity = unverified_identity(token)
                if identity is not None:
                    return f"jwt:{identity}"
            return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
        if certificate is not None:
            return f"cert:{certificate.sha256}"
        return None

    def _identify(self, token: str | None, certificate: ClientCertificate | None) -> Caller:
        by_cert = self.by_certificate(certificate) if certificate is not None else None
        if token is None:
            if by_cert is not None:
                return by_cert
            if certificate is not None:
                raise _denied("The client certificate is not registered for any system, operator or auditor")
            raise _denied(
                "Authentication required: send Authorization: Bearer <token> or a client certificate"
            )
        by_token = self.by_token(token, certificate)
        if by_cert is not None and not by_cert.same_principal(by_token):
            raise _denied("The client certificate and the bearer token belong to different callers")
        return by_token

    def by_token(self, token: str, certificate: ClientCertificate | None = None) -> Caller:
        """The caller a bearer token (static or JWT) belongs to; raises ``NotAuthenticated``.

        A JWT bound to a client certificate (RFC 8705 ``cnf.x5t#S256``) is only accepted with that
        certificate presented on the connection: a stolen token alone is useless.
        """
        if self.verifier is not None and looks_like_jwt(token):
            try:
                claims = self.verifier.verify(token)
            except TokenRefused as exc:
                raise _denied(str(exc)) from None
            bound = claims.certificate_thumbprint
            if bound is not None and (
                certificate is None or certificate_thumbprint(certificate.sha256) != bound
            ):
                raise _denied(
                    "The JWT is bound to a client certificate (cnf) that this connection did not present"
                )
            caller = self._by_jwt_subject(claims.identity, Grant.parse(claims.scopes))
            if caller is None:
                raise _denied("The JWT's client is not registered with this bridge")
            return caller
        system = self.settings.system_for_token(token)
        if system is not None:
            return Caller(system=system)
        operator = self.settings.operator_for_token(token)
        auditor = self.settings.auditor_for_token(token)
        if operator is None and auditor is None:
            raise _denied("The bearer token is not valid")
        return Caller(operator=operator, auditor=auditor)

    def _by_jwt_subject(self, identity: str, grant: Grant) -> Caller | None:
        for system in self.settings.systems:
            if identity in system.inbound.jwt_subjects:
                return Caller(system=system, grant=grant, method="jwt")
        operator = next((o for o in self.settings.operators if identity in o.jwt_subjects), None)
        auditor = next((a for a in self.settings.auditors if identity in a.jwt_subjects), None)
        if operator is None and auditor is None:
            return None
        return Caller(operator=operator, auditor=auditor, grant=grant, method="jwt")

    def by_certificate(self, cert: ClientCertificate) -> Caller | None:
        """The caller a verified client certificate is registered for (None: not registered)."""
        for system in self.settings.systems:
            if _cert_matches(system.inbound.client_certs, cert):
                return Caller(system=system, method="mtls")
        operator = next((o for o in self.settings.operators if _cert_matches(o.client_certs, cert)), None)
        auditor = next((a for a in self.settings.auditors if _cert_matches(a.client_certs, cert)), None)
        if operator is None and auditor is None:
            return None
        return Caller(operator=operator, auditor=auditor, method="mtls")

    def settled_without_io(
        self,
        authorization: str | None,
        certificate: ClientCertificate | None,
        address: str,
        roles: tuple[Role, ...],
        need: Need,
    ) -> Caller | None:
        """The caller, when ``identify`` and ``authorize`` would both let this request through without
        any I/O: a static bearer token (not a JWT) of a caller that holds one of ``roles`` and ``need``,
        no client certificate, and no throttling in force. None otherwise - then ``identify`` and
        ``authorize`` decide, which may fetch a JWKS or append a refusal to the audit trail.

        The service answers the common case on its event loop with this; it counts and records
        nothing, so the slow path sees the request exactly as if this had not been asked.
        """
        if certificate is not None or authorization is None:
            return None
        try:
            token = self._token(authorization)
        except NotAuthenticated:
            return None
        if token is None or (self.verifier is not None and looks_like_jwt(token)):
            return None
        keys = [f"ip:{address}", f"id:{self._claimed(token, None)}"]
        if self.limiter.retry_after(keys, self.clock.now()) is not None:
            return None
        try:
            caller = self.by_token(token)
        except NotAuthenticated:
            return None
        if not caller.roles & set(roles) or not caller.allows(need):
            return None
        return caller

    # -- authorisation -------------------------------------------------------------------------------

    def authorize(
        self, caller: Caller, roles: tuple[Role, ...], need: Need, address: str = "unknown"
    ) -> Caller:
        """``caller`` when it holds one of ``roles`` and its scopes cover ``need``; else ``Forbidden``
        (403, audited)."""
        try:
            if not caller.roles & set(roles):
                names = " or ".join(_ROLE_NAMES[r] for r in roles)
                raise _forbidden(f"This endpoint is for {names}; {caller.name} may not use it")
            if not caller.allows(need):
                raise _forbidden(f"The token's scopes do not include {need}")
        except Forbidden as exc:
            self.audit_refusal(exc, actor=caller.name, address=address, claimed=None, caller=caller)
            raise
        return caller

    # -- the audit trail -----------------------------------------------------------------------------

    def audit_refusal(
        self,
        exc: InvalidInput,
        *,
        actor: str,
        address: str,
        claimed: str | None,
        caller: Caller | None = None,
    ) -> None:
        """Append the audit record of a refused request (best effort: a store outage is logged)."""
        if self.store is None:
            return
        first = exc.outcome.errors[0] if exc.outcome.errors else None
        status = 401 if isinstance(exc, NotAuthenticated) else 403
        reason = f"HTTP {status} from {address}: {first.diagnostics if first else type(exc).__name__}"
        if claimed:
            reason += f" (claimed {claimed})"
        now = self.clock.now()
        human = caller is not None and caller.system is None
        body = audit.audit_event(
            recorded=now,
            event="application",
            action="E",
            outcome="4",
            actor=actor,
            actor_kind="operator" if human else "system",
            subtype="auth:refused" if status == 401 else "auth:forbidden",
            description=reason,
        )
        record = AuditRecord(
            now, "auth.refused" if status == 401 else "auth.forbidden", actor, orjson.dumps(body)
        )
        try:
            self.store.append_audit(record)
        except StoreError as store_exc:
            log.warning("cannot audit a refused request: %s", type(store_exc).__name__)
