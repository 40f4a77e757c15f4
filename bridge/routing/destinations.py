"""Resolving receivers named in a message: MessageHeader.destination -> configured systems.

A MedCom message names each receiver as an Organization (SOR id and GLN/EAN) referenced from
``MessageHeader.destination[i].receiver``; when the reference gives nothing usable, the SOR id in
``destination[i].endpoint`` (``https://sor2.sum.dsdn.dk/#id=<SOR>``) is read instead. Each organisation
is owned by exactly one configured system (``Settings.owner_of``). A receiver no system owns makes the
whole message unroutable: delivering to some receivers and silently dropping another would lose a
message the sender believes was sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bridge.errors import InvalidInput
from bridge.fhir import identifiers as ids
from bridge.fhir.outcome import Issue, Outcome
from bridge.medcom.common import SOR_ENDPOINT_PREFIX
from bridge.settings import Settings, System


class Unroutable(InvalidInput):
    """No configured system can receive the message, or one of its receivers is unknown (HTTP 422)."""


@dataclass(frozen=True, slots=True)
class Receiver:
    """A resolved destination: the configured system and where in the message it was named."""

    system: System
    expression: str  # FHIRPath-style location of the destination in the message
    primary: bool = True


def _index(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    by_key: dict[str, dict[str, Any]] = {}
    for e in bundle.get("entry") or []:
        res = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(res, dict):
            continue
        if isinstance(res.get("id"), str):
            by_key[f"{res.get('resourceType')}/{res['id']}"] = res
        if isinstance(e.get("fullUrl"), str):
            by_key.setdefault(e["fullUrl"], res)
    return by_key


def _resolve(by_key: dict[str, dict[str, Any]], reference: Any) -> dict[str, Any] | None:
    target = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(target, str):
        return None
    found = by_key.get(target)
    if found is None and "/" in target:
        found = by_key.get("/".join(target.rstrip("/").split("/")[-2:]))
    return found


def _identifiers(org: dict[str, Any] | None) -> tuple[str | None, str | None]:
    sor = gln = None
    for identifier in (org or {}).get("identifier") or []:
        if not isinstance(identifier, dict):
            continue
        if identifier.get("system") == ids.SOR_SYSTEM:
            sor = identifier.get("value")
        elif identifier.get("system") in ids.GLN_SYSTEMS:
            gln = identifier.get("value")
    return sor, gln


def _is_primary(dest: dict[str, Any]) -> bool:
    for ext in dest.get("extension") or []:
        value = ext.get("valueCoding") if isinstance(ext, dict) else None
        if isinstance(value, dict) and value.get("code") == "cc":
            return False
    return True


def _header(bundle: dict[str, Any]) -> dict[str, Any]:
    try:
        header = bundle["entry"][0]["resource"]
    except (KeyError, IndexError, TypeError):
        header = None
    return header if isinstance(header, dict) else {}


def sender_party(bundle: dict[str, Any]) -> tuple[str | None, str | None]:
    """The SOR id and GLN of the message's sender (MessageHeader.sender), None where absent."""
    return _identifiers(_resolve(_index(bundle), _header(bundle).get("sender")))


def medcom_receivers(settings: Settings, bundle: dict[str, Any]) -> list[Receiver]:
    """The systems that receive a MedCom message, one per distinct system, in destination order.

    Raises ``Unroutable`` naming every destination no configured system owns.
    """
    header_path = "Bundle.entry[0].resource"
    by_key = _index(bundle)
    receivers: dict[str, Receiver] = {}
    issues: list[Issue] = []
    dests = _header(bundle).get("destination") or []
    for i, dest in enumerate(dests if isinstance(dests, list) else []):
        if not isinstance(dest, dict):
            continue
        where = f"{header_path}.destination[{i}]"
        sor, gln = _identifiers(_resolve(by_key, dest.get("receiver")))
        endpoint = dest.get("endpoint")
        if sor is None and isinstance(endpoint, str) and endpoint.startswith(SOR_ENDPOINT_PREFIX):
            sor = endpoint[len(SOR_ENDPOINT_PREFIX) :] or None
        system = settings.owner_of(sor=sor, gln=gln) if sor or gln else None
        if system is None:
            named = ", ".join(f"{k} {v}" for k, v in (("SOR", sor), ("GLN", gln)) if v) or "no SOR id or GLN"
            issues.append(
                Issue(
                    "error",
                    "not-found",
                    f"No system of this bridge receives for the destination ({named})",
                    (f"{where}.receiver",),
                )
            )
            continue
        if system.id not in receivers:
            receivers[system.id] = Receiver(system, where, _is_primary(dest))
    if issues:
        raise Unroutable(Outcome(issues))
    if not receivers:
        raise Unroutable(
            Outcome(
                [
                    Issue(
                        "error",
                        "required",
                        "The message names no destination",
                        (f"{header_path}.destination",),
                    )
                ]
            )
        )
    return list(receivers.values())


def explicit_receivers(
    settings: Settings, system_ids: Iterable[str], where: str = "receiver"
) -> list[Receiver]:
    """Systems named by id (a municipal post's ``receiver``); raises ``Unroutable`` for unknown ids."""
    receivers: dict[str, Receiver] = {}
    issues: list[Issue] = []
    for i, system_id in enumerate(system_ids):
        system = settings.system(system_id)
        if system is None:
            issues.append(Issue("error", "not-found", f"No system has id {system_id!r}", (f"{where}[{i}]",)))
        elif system_id not in receivers:
            receivers[system_id] = Receiver(system, f"{where}[{i}]")
    if issues:
        raise Unroutable(Outcome(issues))
    return list(receivers.values())
