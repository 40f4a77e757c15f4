"""Deterministic resource ids and the item id each resource carries.

A resource made from a record item gets the id UUID v5(namespace, "<municipality>/<map>/<item id>"), so
translating the same record twice yields the same ids, and ``meta.source`` =
``urn:municipal-item:<item id>`` (percent-encoded where needed), so the way back finds the item id.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any
from urllib.parse import quote, unquote

#: Namespace of the deterministic resource ids (UUID v5).
ID_NAMESPACE = uuid.UUID("5d0c3c3e-2b0c-5f55-9a53-6b0f3c1d2e7a")
ITEM_SOURCE_PREFIX = "urn:municipal-item:"

_NAMESPACE_BYTES = ID_NAMESPACE.bytes
_URI_SAFE = re.compile(r"[A-Za-z0-9_.~-]+")


def resource_id(muni: str, map_name: str, item_id: str) -> str:
    """The id of the resource ``map_name`` makes from ``item_id``: UUID v5 (RFC 4122), as ``uuid.uuid5``."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{muni}/{map_name}/{item_id}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def item_source(item_id: str) -> str:
    """The ``meta.source`` that carries an item id."""
    return ITEM_SOURCE_PREFIX + (item_id if _URI_SAFE.fullmatch(item_id) else quote(item_id, safe=""))


def item_id(resource: dict[str, Any]) -> str | None:
    """The item id a resource carries in ``meta.source``; else its ``id`` (a resource from elsewhere)."""
    meta = resource.get("meta")
    if isinstance(meta, dict):
        source = meta.get("source")
        if isinstance(source, str) and source.startswith(ITEM_SOURCE_PREFIX):
            key = source[len(ITEM_SOURCE_PREFIX) :]
            return unquote(key) if "%" in key else key
    rid = resource.get("id")
    return rid if isinstance(rid, str) else None
