"""Who is calling: bearer tokens checked against the configuration.

Systems (hospital EHRs, municipal care systems) and operators present ``Authorization: Bearer <token>``;
the configuration holds only SHA-256 digests of the tokens (``bridge.settings.hash_token``). A system
may only speak as itself: the sender organisation of what it posts must be one the system owns
(``require_owner``). Failures are errors carrying an Outcome, so the API answers them like every other
problem - as an OperationOutcome - with 401 (and ``WWW-Authenticate``) or 403.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import InvalidInput
from bridge.fhir.outcome import Issue, Outcome
from bridge.settings import Operator, Settings, System

#: The challenge sent with every 401 (RFC 6750).
WWW_AUTHENTICATE = 'Bearer realm="fhir-bridge"'


class NotAuthenticated(InvalidInput):
    """No credentials, or credentials the bridge does not know (HTTP 401)."""


class Forbidden(InvalidInput):
    """The caller is known but may not do this (HTTP 403)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: a system or an operator (exactly one is set)."""

    system: System | None = None
    operator: Operator | None = None

    @property
    def name(self) -> str:
        """The id used in audit records: the system id, or ``operator:<name>``."""
        if self.system is not None:
            return self.system.id
        assert self.operator is not None
        return f"operator:{self.operator.name}"


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
