"""Named value transforms that mapping specs refer to by name.

A transform is what cannot be said declaratively. Each states its inverse, so one spec drives both
directions; a transform without an inverse may only be used in a one-way rule (``direction: to-fhir`` or
``direction: to-municipal``), and the spec loader refuses it anywhere else.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.fhir import identifiers as ids
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


def _person_identifier_system(value: Any) -> str:
    """The DK-core identifier system of a Danish person number: CPR, or X-eCPR for a replacement number."""
    text = str(value)
    if ids.check_cpr(text) is None:
        return ids.CPR_SYSTEM
    if ids.check_replacement_cpr(text) is None:
        return ids.XECPR_SYSTEM
    raise TransformError(f"{text!r} is neither a CPR number nor a replacement number")


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
register(
    "dk-person-identifier-system",
    _person_identifier_system,
    None,
    "Danish person number -> its identifier system: CPR, or X-eCPR for a replacement number (one-way)",
)


# ------------------------------------------------------------------------------------------ with arguments
#: Transform families that take arguments in the spec: ``transform: "date-text(%d.%m.%Y)"``.
Factory = Callable[[list[str]], Transform]
FACTORIES: dict[str, tuple[Factory, str]] = {}


def register_factory(name: str, factory: Factory, doc: str) -> None:
    """Add a transform family; ``name(arg, ...)`` in a spec builds a Transform from the arguments."""
    if name in FACTORIES or name in REGISTRY:
        raise ValueError(f"transform {name!r} is registered twice")
    FACTORIES[name] = (factory, doc)


_FIELDS = {
    "%d": r"(?P<d>\d{2})",
    "%m": r"(?P<m>\d{2})",
    "%Y": r"(?P<Y>\d{4})",
    "%H": r"(?P<H>\d{2})",
    "%M": r"(?P<M>\d{2})",
    "%S": r"(?P<S>\d{2})",
}


def _text_parser(fmt: str) -> Callable[[str], dt.datetime]:
    """A parser for a strftime format: a compiled regex when it uses only %d %m %Y %H %M %S (strptime is
    slow), else strptime itself."""
    parts = re.split(r"(%.)", fmt)
    if any(p.startswith("%") and p not in _FIELDS for p in parts):
        return lambda text: dt.datetime.strptime(text, fmt)
    pattern = re.compile("".join(_FIELDS.get(p, re.escape(p)) for p in parts))

    def parse(text: str) -> dt.datetime:
        found = pattern.fullmatch(text)
        if found is None:
            raise ValueError(f"{text!r} does not match {fmt}")
        g = found.groupdict()
        return dt.datetime(
            int(g["Y"]),
            int(g.get("m") or 1),
            int(g.get("d") or 1),
            int(g.get("H") or 0),
            int(g.get("M") or 0),
            int(g.get("S") or 0),
        )

    return parse


def _date_text(args: list[str]) -> Transform:
    if len(args) != 1:
        raise ValueError("date-text takes one argument: the strftime format of the text, e.g. %d.%m.%Y")
    fmt = args[0]
    parse = _text_parser(fmt)

    def forward(value: Any) -> str:
        try:
            return parse(str(value)).date().isoformat()
        except ValueError as exc:
            raise TransformError(f"{value!r} is not a date written {fmt}") from exc

    def inverse(value: Any) -> str:
        try:
            return dt.date.fromisoformat(str(value)[:10]).strftime(fmt)
        except ValueError as exc:
            raise TransformError(f"{value!r} is not a FHIR date") from exc

    return Transform(f"date-text({fmt})", forward, inverse, "text date <-> FHIR date")


def _datetime_text(args: list[str]) -> Transform:
    if len(args) != 2:
        raise ValueError(
            "datetime-text takes two arguments: the strftime format and the time zone of the text"
        )
    fmt, zone_name = args
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {zone_name!r}") from exc

    parse = _text_parser(fmt)

    def forward(value: Any) -> str:
        try:
            local = parse(str(value))
        except ValueError as exc:
            raise TransformError(f"{value!r} is not a time written {fmt}") from exc
        return local.replace(tzinfo=zone).isoformat()

    def inverse(value: Any) -> str:
        try:
            moment = dt.datetime.fromisoformat(str(value))
        except ValueError as exc:
            raise TransformError(f"{value!r} is not a FHIR dateTime") from exc
        if moment.tzinfo is None:
            raise TransformError(f"{value!r} has no time zone")
        return moment.astimezone(zone).strftime(fmt)

    return Transform(
        f"datetime-text({fmt}, {zone_name})",
        forward,
        inverse,
        "local text time <-> FHIR dateTime with offset",
    )


def _boolean_text(args: list[str]) -> Transform:
    if len(args) != 2:
        raise ValueError("boolean-text takes two arguments: the text for true and the text for false")
    yes, no = args

    def forward(value: Any) -> bool:
        if value == yes:
            return True
        if value == no:
            return False
        raise TransformError(f"{value!r} is neither {yes!r} nor {no!r}")

    def inverse(value: Any) -> str:
        if not isinstance(value, bool):
            raise TransformError(f"{value!r} is not a boolean")
        return yes if value else no

    return Transform(f"boolean-text({yes}, {no})", forward, inverse, "text <-> boolean")


def _words(args: list[str]) -> Transform:
    if args:
        raise ValueError("words takes no arguments")

    def forward(value: Any) -> list[str]:
        return str(value).split()

    def inverse(value: Any) -> str:
        if not isinstance(value, list):
            raise TransformError(f"{value!r} is not a list of words")
        return " ".join(str(v) for v in value)

    return Transform("words", forward, inverse, "'Inger Marie' <-> ['Inger', 'Marie']")


register_factory(
    "date-text", _date_text, "date-text(FORMAT): a date written as text (strftime FORMAT) <-> FHIR date"
)
register_factory(
    "datetime-text",
    _datetime_text,
    "datetime-text(FORMAT, ZONE): a local time written as text <-> FHIR dateTime with the zone's offset",
)
register_factory("boolean-text", _boolean_text, "boolean-text(YES, NO): two texts <-> true / false")
register_factory("words", _words, "words(): space-separated words <-> a list of words")


def get(name: str) -> Transform | None:
    """A transform by its spec text: a registered name, or ``family(arg, ...)``. Raises ValueError for
    a family with unusable arguments; None when nothing has that name."""
    if name in REGISTRY:
        return REGISTRY[name]
    family, paren, rest = name.partition("(")
    family = family.strip()
    if family in FACTORIES and (not paren or rest.endswith(")")):
        args = [a.strip() for a in rest[:-1].split(",")] if paren and rest[:-1].strip() else []
        return FACTORIES[family][0](args)
    return None
