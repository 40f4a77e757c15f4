"""The retry decision: properties over many policies, attempts and times (hypothesis)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.delivery.outcome import Delivered, Permanent, Transient
from bridge.delivery.policy import DeadLetter, RetryAt, RetryPolicy, backoff, decide

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    initial = draw(st.integers(min_value=1, max_value=60_000))  # milliseconds
    return RetryPolicy(
        initial_delay=timedelta(milliseconds=initial),
        multiplier=draw(st.floats(min_value=1.0, max_value=10.0)),
        max_delay=timedelta(milliseconds=initial * draw(st.integers(min_value=1, max_value=10_000))),
        jitter=draw(st.sampled_from(["full", "none"])),
        max_attempts=draw(st.integers(min_value=1, max_value=50)),
        max_age=timedelta(seconds=draw(st.integers(min_value=1, max_value=7 * 24 * 3600))),
    )


attempts = st.integers(min_value=1, max_value=80)
elapsed = st.integers(min_value=0, max_value=8 * 24 * 3600 * 1000).map(lambda ms: timedelta(milliseconds=ms))
seeds = st.integers(min_value=0, max_value=2**32)
transient = Transient("HTTP 503", 503)


def expected_ceiling(policy: RetryPolicy, attempt: int) -> float:
    raw = policy.initial_delay.total_seconds() * policy.multiplier ** min(attempt - 1, 500)
    return min(raw, policy.max_delay.total_seconds())


@given(policies(), attempts, seeds)
def test_backoff_stays_within_zero_and_the_capped_exponential(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    delay = backoff(policy, attempt, random.Random(seed)).total_seconds()
    ceiling = expected_ceiling(policy, attempt)
    micro = 1e-6  # timedelta's resolution
    assert 0 <= delay <= ceiling * (1 + 1e-9) + micro
    assert delay <= policy.max_delay.total_seconds()
    if policy.jitter == "none":
        assert delay == pytest.approx(ceiling, rel=1e-6, abs=micro)


@given(policies(), attempts, elapsed, seeds)
def test_transient_retry_is_never_in_the_past_nor_after_the_deadline(
    policy: RetryPolicy, attempt: int, age: timedelta, seed: int
) -> None:
    now = START + age
    decision = decide(policy, attempt, transient, START, now, random.Random(seed))
    if isinstance(decision, RetryAt):
        assert now <= decision.at <= START + policy.max_age
        assert decision.at - now <= policy.max_delay
    else:
        assert isinstance(decision, DeadLetter)


@given(policies(), attempts, elapsed, seeds)
def test_attempt_limit_and_max_age_decide_when_to_give_up(
    policy: RetryPolicy, attempt: int, age: timedelta, seed: int
) -> None:
    decision = decide(policy, attempt, transient, START, START + age, random.Random(seed))
    exhausted = attempt >= policy.max_attempts or age >= policy.max_age
    assert isinstance(decision, DeadLetter) == exhausted
    if attempt >= policy.max_attempts:
        assert isinstance(decision, DeadLetter) and f"after {attempt} attempts" in decision.reason
    elif age >= policy.max_age:
        assert isinstance(decision, DeadLetter) and "max age" in decision.reason


@given(policies(), attempts, elapsed, seeds)
def test_delivered_and_permanent_never_retry(
    policy: RetryPolicy, attempt: int, age: timedelta, seed: int
) -> None:
    rng = random.Random(seed)
    assert decide(policy, attempt, Delivered(202), START, START + age, rng) == Delivered(202)
    refused = decide(policy, attempt, Permanent("HTTP 422", 422), START, START + age, rng)
    assert refused == DeadLetter("refused: HTTP 422")


@given(policies(), st.integers(min_value=1, max_value=5), st.integers(min_value=0, max_value=86_400), seeds)
def test_retry_after_is_honoured_or_the_delivery_gives_up(
    policy: RetryPolicy, attempt: int, wait_s: int, seed: int
) -> None:
    wait = timedelta(seconds=wait_s)
    outcome = Transient("HTTP 429", 429, wait)
    decision = decide(policy, attempt, outcome, START, START, random.Random(seed))
    if attempt >= policy.max_attempts:
        assert isinstance(decision, DeadLetter)
    elif wait > policy.max_age:
        assert isinstance(decision, DeadLetter) and "past the max age" in decision.reason
    else:
        assert isinstance(decision, RetryAt)
        assert decision.at >= START + wait  # never earlier than the receiver asked
        assert decision.at <= START + max(wait, policy.max_delay)


@given(policies(), attempts, seeds)
def test_same_seed_same_decision(policy: RetryPolicy, attempt: int, seed: int) -> None:
    now = START + timedelta(seconds=1)
    first = decide(policy, attempt, transient, START, now, random.Random(seed))
    assert decide(policy, attempt, transient, START, now, random.Random(seed)) == first


def test_full_jitter_spreads_over_the_whole_window() -> None:
    policy = RetryPolicy(initial_delay=timedelta(seconds=1), multiplier=2, max_delay=timedelta(minutes=5))
    rng = random.Random(20260302)
    delays = [backoff(policy, 6, rng).total_seconds() for _ in range(2000)]  # window [0, 32 s]
    assert min(delays) < 32 * 0.05 and max(delays) > 32 * 0.95
    quartiles = [sum(1 for d in delays if q * 8 <= d < (q + 1) * 8) for q in range(4)]
    assert all(400 <= n <= 600 for n in quartiles), quartiles  # roughly uniform


def test_the_ceiling_grows_exponentially_then_caps() -> None:
    policy = RetryPolicy(
        initial_delay=timedelta(seconds=2), multiplier=3, max_delay=timedelta(minutes=1), jitter="none"
    )
    assert [policy.ceiling(n).total_seconds() for n in range(1, 7)] == [2, 6, 18, 54, 60, 60]
    assert policy.ceiling(10_000) == timedelta(minutes=1)  # no overflow far out


def test_a_late_retry_is_moved_to_the_deadline() -> None:
    policy = RetryPolicy(
        initial_delay=timedelta(minutes=10),
        max_delay=timedelta(minutes=10),
        jitter="none",
        max_age=timedelta(hours=1),
    )
    now = START + timedelta(minutes=55)
    assert decide(policy, 3, transient, START, now, random.Random(1)) == RetryAt(
        START + timedelta(hours=1), "HTTP 503"
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"initial_delay": timedelta(0)}, "initial_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"max_delay": timedelta(milliseconds=1)}, "max_delay"),
        ({"jitter": "some"}, "jitter"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_age": timedelta(seconds=-1)}, "max_age"),
    ],
)
def test_unsound_policies_are_refused(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**changes)  # type: ignore[arg-type]


def test_attempts_are_numbered_from_one() -> None:
    with pytest.raises(ValueError):
        decide(RetryPolicy(), 0, transient, START, START, random.Random(0))
