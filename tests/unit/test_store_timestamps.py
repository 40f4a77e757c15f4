"""The store's text form of a timestamp: fixed width, UTC, microseconds always written, sorts like time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from bridge.outbox.port import format_timestamp


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC),
        datetime(2026, 3, 1, 9, 30, 15, tzinfo=UTC),  # no fraction: still six digits
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 1, 10, 30, 15, 7, tzinfo=timezone(timedelta(hours=1))),  # another offset
    ],
)
def test_the_text_is_the_utc_time_with_microseconds(when: datetime) -> None:
    assert format_timestamp(when) == when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert len(format_timestamp(when)) == len("2026-03-01T09:30:15.123456Z")


def test_texts_sort_like_the_times_they_stand_for() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    times = [
        start + timedelta(seconds=s, microseconds=u) for s in (0, 1, 3600, 86400 * 40) for u in (0, 9, 10)
    ]
    cet = timezone(timedelta(hours=1))
    texts = [format_timestamp(t.astimezone(cet) if i % 2 else t) for i, t in enumerate(times)]
    assert texts == sorted(texts)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_timestamp(datetime(2026, 3, 1, 9, 30))
