"""The retry decision: a pure function from (policy, attempt, outcome, times, rng) to what happens next.

Delays come from tenacity's wait strategies. ``wait_exponential`` gives the capped exponential
ceiling ``min(initial_delay * multiplier ** (attempt - 1), max_delay)``; with ``jitter="full"`` the
delay is drawn uniformly from ``[0, ceiling]`` - the "full jitter" of ``wait_random_exponential`` -
but from the caller's ``random.Random``, because tenacity's own draw uses the global ``random``
module and would make the decision impossible to reproduce in a test.

Choices worth knowing:
- ``max_attempts`` counts every attempt, the first included.
- ``max_age`` runs from the first attempt. No attempt starts after ``first_attempt_at + max_age``:
  a computed retry that would land later is moved to that deadline, for one last try.
- ``Retry-After`` is honoured in full, also beyond ``max_delay``: ``max_delay`` bounds our own
  backoff, not the receiver's explicit request, and trying earlier only earns another 429 and burns
  an attempt. When the receiver's moment lies past the deadline the delivery is dead-lettered now.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from tenacity import RetryCallState, Retrying
from tenacity.wait import wait_exponential

from bridge.delivery.outcome import Delivered, DeliveryOutcome, Permanent

Jitter = Literal["full", "none"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long and how often a transient failure is retried."""

    initial_delay: timedelta = timedelta(seconds=2)
    multiplier: float = 2.0
    max_delay: timedelta = timedelta(minutes=10)
    jitter: Jitter = "full"
    max_attempts: int = 15
    max_age: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        problems = policy_problems(
            initial_delay=self.initial_delay,
            multiplier=self.multiplier,
            max_delay=self.max_delay,
            jitter=self.jitter,
            max_attempts=self.max_attempts,
            max_age=self.max_age,
        )
        if problems:
            raise ValueError("; ".join(f"{field}: {why}" for field, why in problems))

    def ceiling(self, attempt: int) -> timedelta:
        """The un-jittered delay after failed attempt number ``attempt`` (1-based), capped at max_delay."""
        wait = wait_exponential(
            multiplier=self.initial_delay.total_seconds(),
            max=self.max_delay.total_seconds(),
            exp_base=self.multiplier,
        )
        state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        return timedelta(seconds=wait(state))


def policy_problems(
    *,
    initial_delay: timedelta,
    multiplier: float,
    max_delay: timedelta,
    jitter: str,
    max_attempts: int,
    max_age: timedelta,
) -> list[tuple[str, str]]:
    """Each (field, reason) that makes a policy with these values unusable; empty when it is sound."""
    problems: list[tuple[str, str]] = []
    if initial_delay <= timedelta(0):
        problems.append(("initial_delay", "must be longer than zero"))
    if multiplier < 1:
        problems.append(("multiplier", "must be at least 1 (delays must not shrink)"))
    if max_delay < initial_delay:
        problems.append(("max_delay", "must be at least initial_delay"))
    if jitter not in ("full", "none"):
        problems.append(("jitter", "must be 'full' or 'none'"))
    if max_attempts < 1:
        problems.append(("max_attempts", "must be at least 1"))
    if max_age <= timedelta(0):
        problems.append(("max_age", "must be longer than zero"))
    return problems


@dataclass(frozen=True, slots=True)
class RetryAt:
    """Try again at ``at``."""

    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Stop trying; ``reason`` says why, for the operator."""

    reason: str


Decision = RetryAt | DeadLetter | Delivered


def backoff(policy: RetryPolicy, attempt: int, rng: random.Random) -> timedelta:
    """The delay after failed attempt ``attempt``: the ceiling, or a uniform draw below it (full jitter)."""
    ceiling = policy.ceiling(attempt)
    if policy.jitter == "none":
        return ceiling
    return timedelta(seconds=rng.uniform(0.0, ceiling.total_seconds()))


def decide(
    policy: RetryPolicy,
    attempt: int,
    outcome: DeliveryOutcome,
    first_attempt_at: datetime,
    now: datetime,
    rng: random.Random,
) -> Decision:
    """What to do after attempt number ``attempt`` (1-based) ended with ``outcome`` at ``now``."""
    if attempt < 1:
        raise ValueError("attempts are numbered from 1")
    if isinstance(outcome, Delivered):
        return outcome
    if isinstance(outcome, Permanent):
        return DeadLetter(f"refused: {outcome.reason}")
    if attempt >= policy.max_attempts:
        return DeadLetter(f"gave up after {attempt} attempts: {outcome.reason}")
    deadline = first_attempt_at + policy.max_age
    if now >= deadline:
        return DeadLetter(f"gave up after {_age(policy.max_age)} (max age): {outcome.reason}")
    delay = backoff(policy, attempt, rng)
    reason = outcome.reason
    if outcome.retry_after is not None:
        if now + outcome.retry_after > deadline:
            return DeadLetter(
                f"receiver asked to wait {_age(outcome.retry_after)}, past the max age: {outcome.reason}"
            )
        if outcome.retry_after >= delay:
            delay, reason = outcome.retry_after, f"{outcome.reason}, Retry-After honoured"
    # The deadline is never before the receiver's Retry-After moment (checked above).
    return RetryAt(min(now + delay, deadline), reason)


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60}m"
    return f"{delta.total_seconds():g}s"
