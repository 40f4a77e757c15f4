"""Classify one delivery attempt's HTTP result into delivered, transient or permanent.

The rule (DESIGN.md, "Dispatcher"): 2xx delivered; connection errors, timeouts, 408, 429 and 5xx are
transient (the receiver may accept later, and a ``Retry-After`` header says when); every other status
is permanent (the receiver refused the message itself, so sending it again cannot help). Reasons are
short and free of PHI: a status code or an exception class name, never a body.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx

from bridge.errors import PermanentDeliveryError, TransientDeliveryError


@dataclass(frozen=True, slots=True)
class Delivered:
    """The receiver took the message (2xx)."""

    status_code: int


@dataclass(frozen=True, slots=True)
class Transient:
    """Worth retrying; ``retry_after`` is the receiver's own wish, when it stated one."""

    reason: str
    status_code: int | None = None
    retry_after: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Permanent:
    """Not worth retrying: dead-letter and tell an operator."""

    reason: str
    status_code: int | None = None


DeliveryOutcome = Delivered | Transient | Permanent

#: Failures on the way that say nothing about the message: the next try may well succeed.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,  # connect, read, write and pool timeouts
    httpx.NetworkError,  # connect, read, write and close errors
    httpx.RemoteProtocolError,  # the peer hung up or spoke broken HTTP mid-response
    httpx.ProxyError,
    TransientDeliveryError,
    ConnectionError,
    TimeoutError,
)
#: Failures that repeat identically on every try: a broken endpoint URL or our own malformed request.
_PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.UnsupportedProtocol,
    httpx.InvalidURL,
    httpx.LocalProtocolError,
    httpx.TooManyRedirects,
    PermanentDeliveryError,
)


def classify(result: httpx.Response | BaseException, now: datetime) -> DeliveryOutcome:
    """The outcome class of a response or of the exception raised instead of one.

    ``now`` turns an HTTP-date ``Retry-After`` into a delay. An exception this module does not know
    counts as transient: the retry policy still dead-letters it in the end, whereas calling it
    permanent would drop a message on the first surprise.
    """
    if isinstance(result, httpx.Response):
        return classify_status(result.status_code, result.headers.get("retry-after"), now)
    if isinstance(result, _PERMANENT_ERRORS):
        return Permanent(_name(result))
    if isinstance(result, _TRANSIENT_ERRORS):
        return Transient(_name(result))
    return Transient(f"unexpected {_name(result)}")


def classify_status(status: int, retry_after: str | None, now: datetime) -> DeliveryOutcome:
    """The outcome class of an HTTP status (and its ``Retry-After`` header, if any)."""
    if 200 <= status < 300:
        return Delivered(status)
    if status in (408, 429) or 500 <= status < 600:
        return Transient(f"HTTP {status}", status, parse_retry_after(retry_after, now))
    # 1xx never ends an exchange, 3xx means the endpoint is configured wrong (a POST is not
    # redirected blindly), and the remaining 4xx refuse the message itself.
    return Permanent(f"HTTP {status}", status)


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """A ``Retry-After`` value (delay-seconds or HTTP-date, RFC 9110 10.2.3) as a delay from ``now``.

    A date in the past means "now" (zero); an unreadable value is ignored (None) rather than trusted.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as such
        when = when.replace(tzinfo=UTC)
    return max(when - now, timedelta(0))


def _name(exc: BaseException) -> str:
    return type(exc).__name__
