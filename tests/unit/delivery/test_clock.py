"""The clock port: the real clock is UTC-aware, the fake one moves only when told."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bridge.clock import Clock, FakeClock, SystemClock


def test_system_clock_tells_aware_utc_time() -> None:
    clock = SystemClock()
    before = datetime.now(UTC)
    now = clock.now()
    assert isinstance(clock, Clock)
    assert now.tzinfo is UTC and before <= now <= datetime.now(UTC)


def test_fake_clock_moves_only_when_told() -> None:
    start = datetime(2026, 5, 1, 9, 0, tzinfo=timezone(timedelta(hours=2)))
    clock = FakeClock(start)
    assert isinstance(clock, Clock)
    assert clock.now() == start and clock.now().tzinfo is UTC
    assert clock.now() == clock.now()
    assert clock.advance(1.5) == start + timedelta(seconds=1.5)
    assert clock.advance(timedelta(minutes=1)) == start + timedelta(minutes=1, seconds=1.5)
    clock.set(start - timedelta(hours=1))  # another node's clock may be behind
    assert clock.now() == start - timedelta(hours=1)


def test_fake_clock_refuses_naive_times_and_running_backwards() -> None:
    with pytest.raises(ValueError, match="naive"):
        FakeClock(datetime(2026, 5, 1, 9, 0))
    clock = FakeClock()
    with pytest.raises(ValueError, match="naive"):
        clock.set(datetime(2026, 5, 1, 9, 0))
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


def test_fake_clock_is_safe_to_share_between_threads() -> None:
    clock = FakeClock()
    start = clock.now()

    def tick() -> None:
        for _ in range(1000):
            clock.advance(timedelta(microseconds=1))

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.now() - start == timedelta(microseconds=4000)
