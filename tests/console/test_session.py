"""Session cookies: what a signed value carries, and every way a value is not a session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bridge.console.session import SessionCodec, derive_key

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def test_a_session_round_trips_with_its_roles_expiry_and_csrf_token() -> None:
    codec = SessionCodec(derive_key("a-deployment-secret-of-enough-length"))
    value, session = codec.issue("operator:on-call", ["auditor", "operator", "system"], NOW)
    read = codec.read(value, NOW + timedelta(hours=1))
    assert read == session
    assert read.roles == ("operator", "auditor")  # a system role is never carried
    assert read.expires == NOW + timedelta(hours=8)
    assert codec.csrf_ok(read, session.csrf) and not codec.csrf_ok(read, None)
    assert codec.read(value, NOW + timedelta(hours=8)) is None


@pytest.mark.parametrize("value", ["", "x", "a.b.c", "!!!.???", "e30.AAAA", "." * 5000, "eyJzaWQiOjF9.AAAA"])
def test_malformed_values_are_no_session(value: str) -> None:
    assert SessionCodec(derive_key("a-deployment-secret-of-enough-length")).read(value, NOW) is None


def test_another_deployments_key_does_not_read_the_cookie() -> None:
    value, _ = SessionCodec(derive_key("one-deployment-secret-000000")).issue("operator:a", ["operator"], NOW)
    assert SessionCodec(derive_key("other-deployment-secret-0000")).read(value, NOW) is None


def test_a_session_needs_a_console_role() -> None:
    with pytest.raises(ValueError):
        SessionCodec(derive_key("a-deployment-secret-of-enough-length")).issue("x", ["system"], NOW)
