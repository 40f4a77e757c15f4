"""SMART system scopes and the authentication-failure rate limiter."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.security.ratelimit import RateLimiter
from bridge.security.scopes import (
    OPERATE,
    READ_AUDIT,
    SEARCH_MESSAGES,
    SEND,
    Grant,
    Need,
    Scope,
    parse_scope,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "resource", "letters"),
    [
        ("system/Bundle.c", "Bundle", "c"),
        ("system/*.rs", "*", "rs"),
        ("system/AuditEvent.rs", "AuditEvent", "rs"),
        ("system/Bundle.cruds", "Bundle", "cruds"),
        ("system/*.read", "*", "rs"),  # SMART v1
        ("system/Bundle.write", "Bundle", "cud"),
        ("system/*.*", "*", "cruds"),
    ],
)
def test_system_scopes_are_understood(text: str, resource: str, letters: str) -> None:
    assert parse_scope(text) == Scope(resource, frozenset(letters))


@pytest.mark.parametrize(
    "text",
    [
        "patient/Bundle.c",  # not a backend system's scope
        "user/*.rs",
        "system/Bundle.rc",  # v2 letters must come in the order cruds
        "system/Bundle.cc",
        "system/Observation.rs?category=laboratory",  # a filter the bridge cannot apply
        "system/bundle.c",
        "openid",
        "system/Bundle.x",
        "",
    ],
)
def test_scopes_that_grant_nothing(text: str) -> None:
    assert parse_scope(text) is None


@given(st.sets(st.sampled_from("cruds"), min_size=1), st.sampled_from(["Bundle", "AuditEvent", "*"]))
def test_a_v2_scope_allows_exactly_its_letters(letters: set[str], resource: str) -> None:
    text = "system/" + resource + "." + "".join(c for c in "cruds" if c in letters)
    grant = Grant.parse([text])
    for letter in "cruds":
        assert grant.allows(Need("Bundle", letter)) == (letter in letters and resource in ("Bundle", "*"))
        assert grant.allows(Need("AuditEvent", letter)) == (
            letter in letters and resource in ("AuditEvent", "*")
        )


def test_what_each_endpoint_needs() -> None:
    sender = Grant.parse("system/Bundle.c".split())
    assert sender.allows(SEND) and not sender.allows(SEARCH_MESSAGES) and not sender.allows(READ_AUDIT)
    reader = Grant.parse("system/*.rs".split())
    assert reader.allows(SEARCH_MESSAGES) and reader.allows(READ_AUDIT) and not reader.allows(SEND)
    assert not reader.allows(OPERATE)
    assert str(SEND) == "system/Bundle.c"
    with pytest.raises(ValueError):
        Need("Bundle", "rs")


def test_failures_block_after_the_limit_until_the_window_passes() -> None:
    limiter = RateLimiter(3, timedelta(seconds=60))
    keys = ["ip:127.0.0.1"]
    assert not limiter.failure(keys, T0)
    assert not limiter.failure(keys, T0 + timedelta(seconds=10))
    assert limiter.retry_after(keys, T0 + timedelta(seconds=10)) is None
    assert limiter.failure(keys, T0 + timedelta(seconds=20))  # the third blocks
    assert limiter.retry_after(keys, T0 + timedelta(seconds=20)) == 40  # until the first leaves the window
    assert limiter.retry_after(keys, T0 + timedelta(seconds=59.5)) == 1
    assert limiter.retry_after(keys, T0 + timedelta(seconds=60)) is None  # sliding: one fell out
    assert limiter.failure(keys, T0 + timedelta(seconds=61))  # three in the window again
    assert limiter.retry_after(keys, T0 + timedelta(seconds=61)) == 9


def test_each_key_counts_on_its_own_and_the_worst_decides() -> None:
    limiter = RateLimiter(2, timedelta(seconds=30))
    limiter.failure(["ip:a", "id:jwt:ehr"], T0)
    limiter.failure(["ip:b", "id:jwt:ehr"], T0 + timedelta(seconds=5))
    assert limiter.retry_after(["ip:c", "id:jwt:ehr"], T0 + timedelta(seconds=6)) == 24
    assert limiter.retry_after(["ip:a"], T0 + timedelta(seconds=6)) is None
    assert limiter.retry_after(["ip:c", "id:jwt:other"], T0 + timedelta(seconds=6)) is None


def test_memory_stays_bounded_under_address_spraying() -> None:
    limiter = RateLimiter(5, timedelta(minutes=1), max_clients=100)
    for i, second in zip(range(10_000), itertools.count(), strict=False):
        limiter.failure([f"ip:10.0.{i // 256}.{i % 256}"], T0 + timedelta(milliseconds=second))
    assert len(limiter) == 100
    # One key's timestamps are capped at max_failures too.
    for i in range(1000):
        limiter.failure(["ip:x"], T0 + timedelta(milliseconds=i))
    assert limiter.retry_after(["ip:x"], T0 + timedelta(seconds=1)) is not None


def test_entries_expire() -> None:
    limiter = RateLimiter(2, timedelta(seconds=10))
    limiter.failure(["ip:a"], T0)
    assert limiter.retry_after(["ip:a"], T0 + timedelta(seconds=11)) is None
    assert len(limiter) == 0
