"""Throttling repeated authentication failures: a sliding window per client address and per identity.

Each failed authentication counts against the client's address (``ip:...``) and, when the request
named one, the identity it claimed (``id:...``: a JWT's client id, a certificate thumbprint, a
digest of an unknown static token). A key with ``max_failures`` failures inside ``window`` is
refused with 429 until the oldest of them leaves the window; ``retry_after`` says when.

Memory is bounded: each key keeps at most ``max_failures`` timestamps, and at most ``max_clients``
keys are held; past that the key touched longest ago is dropped (an attacker spraying addresses
forgets old entries rather than growing the process). In memory, per process: several API nodes
each throttle on their own.

The identity window also throttles the real owner of that identity while someone fails in its name
(the price of stopping guessing against one account); the window is short, and the failures are
in the audit trail.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from datetime import datetime, timedelta


class RateLimiter:
    """A sliding-window failure counter per key; thread-safe."""

    def __init__(self, max_failures: int, window: timedelta, max_clients: int = 10_000) -> None:
        if max_failures < 1 or window <= timedelta(0) or max_clients < 1:
            raise ValueError("max_failures, window and max_clients must be positive")
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: datetime) -> deque[datetime] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, keys: Iterable[str], now: datetime) -> int | None:
        """Whole seconds until every blocked key among ``keys`` may try again; None when none is blocked."""
        wait = timedelta(0)
        with self._lock:
            for key in keys:
                times = self._recent(key, now)
                if times is not None and len(times) >= self.max_failures:
                    wait = max(wait, times[0] + self.window - now)
        if wait <= timedelta(0):
            return None
        return max(1, math.ceil(wait.total_seconds()))

    def failure(self, keys: Iterable[str], now: datetime) -> bool:
        """Count one failure against each key; True when this failure blocked one of them."""
        blocked = False
        with self._lock:
            for key in keys:
                times = self._recent(key, now)
                if times is None:
                    times = self._failures[key] = deque(maxlen=self.max_failures)
                times.append(now)
                self._failures.move_to_end(key)
                blocked = blocked or len(times) == self.max_failures
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        return blocked

    def __len__(self) -> int:
        """The number of keys held."""
        with self._lock:
            return len(self._failures)
