"""SMART on FHIR system scopes: what a token allows, and what each endpoint needs.

SMART App Launch v2 writes a scope as ``system/<ResourceType or *>.<permissions>`` with the
permissions a subset of ``cruds`` in that order (create, read, update, delete, search); v1's
``.read`` / ``.write`` / ``.*`` are understood too (read = ``rs``, write = ``cud``). A scope with
query parameters (``system/Observation.rs?category=...``) narrows to data the bridge cannot filter
on, so it grants nothing here; ``patient/`` and ``user/`` scopes are not for backend systems and
grant nothing either.

What the endpoints need (``Need``):

============================================== ==========================
endpoint                                       scope that allows it
============================================== ==========================
POST /fhir/$process-message, /municipal/...    ``system/Bundle.c``
POST /translate, /validate (dry runs)          ``system/Bundle.c``
GET /messages (search), /deliveries            ``system/Bundle.s``
GET /messages/{id}                             ``system/Bundle.r``
POST /deliveries/{id}/retry, mappings reload   ``system/Bundle.u``
GET /fhir/AuditEvent                           ``system/AuditEvent.s`` (one: ``.r``)
============================================== ==========================

Scopes only narrow: a token must also belong to a caller whose role allows the endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

PERMISSIONS = "cruds"
_V2 = re.compile(r"^system/(\*|[A-Z][A-Za-z]{0,63})\.([cruds]{1,5})$")
_V1 = re.compile(r"^system/(\*|[A-Z][A-Za-z]{0,63})\.(read|write|\*)$")
_V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": PERMISSIONS}


@dataclass(frozen=True, slots=True)
class Scope:
    """One granted system scope: a resource type (or ``*``) and its permission letters."""

    resource: str
    permissions: frozenset[str]

    def allows(self, resource: str, permission: str) -> bool:
        """True when this scope grants ``permission`` (one of ``cruds``) on ``resource``."""
        return self.resource in ("*", resource) and permission in self.permissions


@dataclass(frozen=True, slots=True)
class Need:
    """What an endpoint needs: one permission on one resource type, e.g. ``system/Bundle.c``."""

    resource: str
    permission: str

    def __post_init__(self) -> None:
        if len(self.permission) != 1 or self.permission not in PERMISSIONS:
            raise ValueError(f"a permission is one of {PERMISSIONS!r}")

    def __str__(self) -> str:
        return f"system/{self.resource}.{self.permission}"


def parse_scope(text: str) -> Scope | None:
    """The system scope ``text`` grants, or None when it grants nothing the bridge can honour.

    v2 permissions must appear in the order ``cruds`` (SMART requires it); a scope that breaks the
    order is not understood rather than guessed at.
    """
    v2 = _V2.match(text)
    if v2:
        letters = v2.group(2)
        if "".join(sorted(letters, key=PERMISSIONS.index)) != letters or len(set(letters)) != len(letters):
            return None
        return Scope(v2.group(1), frozenset(letters))
    v1 = _V1.match(text)
    if v1:
        return Scope(v1.group(1), frozenset(_V1_PERMISSIONS[v1.group(2)]))
    return None


@dataclass(frozen=True, slots=True)
class Grant:
    """The scopes of one token: the ones the bridge understood, in the order given."""

    scopes: tuple[Scope, ...]

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Grant:
        """The grant of scope strings (a space-separated ``scope`` claim, split)."""
        return cls(tuple(s for s in (parse_scope(t) for t in texts) if s is not None))

    def allows(self, need: Need) -> bool:
        """True when any granted scope covers ``need``."""
        return any(s.allows(need.resource, need.permission) for s in self.scopes)


SEND = Need("Bundle", "c")
READ_MESSAGE = Need("Bundle", "r")
SEARCH_MESSAGES = Need("Bundle", "s")
OPERATE = Need("Bundle", "u")
READ_AUDIT = Need("AuditEvent", "r")
SEARCH_AUDIT = Need("AuditEvent", "s")
