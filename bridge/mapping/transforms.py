"""Named value transforms that mapping specs refer to by name.

A transform is what cannot be said declaratively. Each states its inverse, so one spec drives both
directions; a transform without an inverse may only be used in a one-way rule (``direction: to-fhir`` or
``direction: to-municipal``), and the spec loader refuses it anywhere else.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from bridge.municipal import fsiii


class TransformError(ValueError):
    """A value the transform cannot convert; the engine reports it with the element path."""


Fn = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Transform:
    name: str
    forward: Fn  # municipal -> FHIR
    inverse: Fn | None  # FHIR -> municipal; None: one-way only
    doc: str


REGISTRY: dict[str, Transform] = {}


def register(name: str, forward: Fn, inverse: Fn | None, doc: str) -> None:
    """Add a transform; specs can then say ``transform: <name>``."""
    if name in REGISTRY:
        raise ValueError(f"transform {name!r} is registered twice")
    REGISTRY[name] = Transform(name, forward, inverse, doc)


def _b64encode(text: Any) -> str:
    return base64.b64encode(str(text).encode("utf-8")).decode("ascii")


def _b64decode(data: Any) -> str:
    try:
        return base64.b64decode(str(data), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise TransformError("not base64-encoded UTF-8 text") from exc


def _int_string(value: Any) -> str:
    return str(value)


def _string_int(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError as exc:
        raise TransformError(f"{value!r} is not an integer") from exc


def _fsiii_display(code: Any) -> str:
    display = fsiii.display(str(code))
    if display is None:
        raise TransformError(f"unknown FSIII code {code!r}")
    return display


def _condition_kind(code: Any) -> str:
    kind = fsiii.condition_kind(str(code))
    if kind is None:
        raise TransformError(f"{code!r} is no FSIII nursing or home care condition code")
    return kind


def _date_part(value: Any) -> str:
    """A dateTime's date; a date stays a date."""
    return str(value)[:10]


register("base64-text", _b64encode, _b64decode, "text <-> base64 of its UTF-8 bytes (Attachment.data)")
register("integer-code", _int_string, _string_int, "integer <-> its decimal string (codes such as severity)")
register(
    "percent-encode", lambda v: quote(str(v), safe=""), lambda v: unquote(str(v)), "text <-> URI-safe text"
)
register("fsiii-display", _fsiii_display, None, "FSIII code -> its Danish display text (one-way)")
register(
    "fsiii-condition-kind", _condition_kind, None, "FSIII condition code -> nursing | home-care (one-way)"
)
register("date-part", _date_part, None, "dateTime -> its date (one-way)")


def get(name: str) -> Transform | None:
    return REGISTRY.get(name)
