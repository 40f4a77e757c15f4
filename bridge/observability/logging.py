"""Structured JSON logs (structlog) that never carry PHI.

One JSON object a line on stderr, for the bridge's own loggers and for every library that logs through
the standard ``logging`` module (uvicorn, httpx): both pass the same processor chain.

What is logged: ids (message, delivery, MessageHeader), system ids, states, HTTP statuses, counts,
durations and the class name of an error. What never is: CPR numbers, names, addresses, free text from
a message, the text of an exception (it may quote the input) or a request body. The code logs only the
former, and ``refuse_phi`` stands guard behind it:

- any value that contains something shaped like a CPR number (ddmmyy-nnnn or ten digits in a row) is
  replaced by ``[refused]``;
- fields named like personal data (``name``, ``address``, ``text``, ``cpr``, ``note`` ...) are replaced
  whatever they hold;
- exceptions are written as their class and the code locations of the traceback, never their message
  or local values.

A refused value sets ``phi_refused`` on the line, so a test (and an operator) can see the guard acted;
the line itself is kept, because dropping it would hide that something happened.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import MutableMapping
from types import TracebackType
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

#: Something shaped like a CPR number: ddmmyy, optional hyphen, four digits - not inside a longer number
#: or a hex id (SOR codes, GLNs, epoch seconds and UUIDs are longer or shaped differently).
CPR_PATTERN = re.compile(r"(?<![0-9A-Za-z-])[0-3]\d[01]\d\d\d-?\d{4}(?![0-9A-Za-z-]|\.\d)")
#: Field names whose values are personal data whatever they look like.
PHI_FIELDS = frozenset(
    {
        "name",
        "given",
        "family",
        "patient",
        "citizen",
        "cpr",
        "address",
        "line",
        "city",
        "postal_code",
        "text",
        "note",
        "body",
        "payload",
        "content",
        "description",
        "telecom",
        "phone",
        "email",
        "birth_date",
    }
)
REFUSED = "[refused]"
# Keys structlog itself puts on a line; their values are ours, not the caller's.
_OWN_KEYS = frozenset({"timestamp", "level", "logger", "exception", "exc_type", "phi_refused"})


def _exc_info(value: Any) -> tuple[type[BaseException], BaseException, TracebackType | None] | None:
    if value is True:
        info = sys.exc_info()
        return None if info[0] is None else info
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and value[0] is not None:
        return value
    return None


def safe_exception(event_dict: EventDict) -> EventDict:
    """Replace ``exc_info`` by the exception's class and the traceback's code locations (no message)."""
    info = _exc_info(event_dict.pop("exc_info", None))
    if info is None:
        return event_dict
    exc_type, _exc, tb = info
    event_dict["exc_type"] = exc_type.__name__
    frames = traceback.extract_tb(tb) if tb is not None else []
    event_dict["exception"] = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in frames]
    return event_dict


def _refuse(value: Any) -> tuple[Any, bool]:
    if isinstance(value, str):
        return (REFUSED, True) if CPR_PATTERN.search(value) else (value, False)
    if isinstance(value, (bytes, bytearray)):
        return REFUSED, True  # raw bytes are message content
    if isinstance(value, (int, float, bool)) or value is None:
        return (REFUSED, True) if CPR_PATTERN.search(str(value)) else (value, False)
    if isinstance(value, (list, tuple)):
        items = [_refuse(v) for v in value]
        return [v for v, _ in items], any(r for _, r in items)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        refused = False
        for k, v in value.items():
            if str(k).lower() in PHI_FIELDS:
                out[str(k)], refused = REFUSED, True
            else:
                out[str(k)], r = _refuse(v)
                refused = refused or r
        return out, refused
    text = str(value)
    return (REFUSED, True) if CPR_PATTERN.search(text) else (text, False)


def refuse_phi(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """The structlog processor that keeps PHI out of every log line (see the module docstring)."""
    safe_exception(event_dict)
    refused = False
    for key in list(event_dict):
        if key in _OWN_KEYS:
            continue
        if key.lower() in PHI_FIELDS:
            event_dict[key] = REFUSED
            refused = True
            continue
        event_dict[key], r = _refuse(event_dict[key])
        refused = refused or r
    if refused:
        event_dict["phi_refused"] = True
    return event_dict


def _drop_stdlib_extras(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("_record", None)
    event_dict.pop("_from_structlog", None)
    event_dict.pop("positional_args", None)
    return event_dict


def _processors() -> list[Processor]:
    return [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.PositionalArgumentsFormatter(),
        refuse_phi,
    ]


def configure_logging(level: str | int = "INFO", stream: IO[str] | None = None) -> None:
    """Send every log record of the process, as one PHI-free JSON line each, to ``stream`` (stderr).

    Replaces the root logger's handlers, and routes uvicorn's loggers to the root so that its lines
    pass the same guard.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_processors(),
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _drop_stdlib_extras,
                refuse_phi,  # once more: a structlog-side value could have been rendered by the formatter
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    # httpx and httpcore log every request at INFO; the dispatcher logs each delivery itself (with its
    # ids and outcome), so theirs would only double the lines - and the cost - of every delivery.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[*_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    """A structlog logger for ``name`` (key-value events; values pass ``refuse_phi``)."""
    return structlog.get_logger(name)


def uvicorn_log_config() -> dict[str, Any]:
    """A uvicorn ``log_config`` that leaves logging to ``configure_logging`` (no handlers of its own)."""
    return {"version": 1, "disable_existing_loggers": False}


def scrub(mapping: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``refuse_phi`` on a plain mapping (for callers that build log fields by hand)."""
    return refuse_phi(None, "info", mapping)
