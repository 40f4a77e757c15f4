"""A cross-process writer lock on a file that waits in the kernel's queue, with a time limit.

Several processes on one SQLite file (``listen.processes``, ``--role api`` beside ``--role worker``) take
turns at writing. Waiting by polling a non-blocking ``flock`` is unfair: a process that commits batch
after batch takes the lock again within microseconds of releasing it, and a poller that sleeps between
tries rarely catches the gap - under load one process waited 400-600 ms while the other committed
dozens of times. A blocking ``flock`` is woken by the kernel the moment the lock is released, so the
processes alternate; but it cannot be given a time limit. ``FileLock`` gets both: a waiter thread makes
the blocking call and the caller waits for it at most ``timeout``. A caller that gives up leaves the
wait in place, and the lock it brings is handed to the next caller of this process, or released.

One caller of a process at a time (the store holds its own write lock around ``acquire`` ... ``release``).
"""

from __future__ import annotations

import fcntl
import threading
from typing import Literal

State = Literal["free", "waiting", "held", "abandoned"]


class LockTimeout(Exception):
    """The lock was not free within the time limit."""


class FileLock:
    """An exclusive ``flock`` on an open file descriptor, acquired within a time limit, fairly."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._state: State = "free"
        self._changed = threading.Condition()

    @property
    def state(self) -> State:
        """``free``, ``waiting`` (a caller waits), ``held``, or ``abandoned`` (a wait nobody waits for)."""
        with self._changed:
            return self._state

    def acquire(self, timeout: float) -> None:
        """Take the lock, waiting at most ``timeout`` seconds (``LockTimeout`` after that)."""
        with self._changed:
            if self._state == "held":
                raise RuntimeError("the lock is already held by this process")
            if self._state == "free":
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass
                else:
                    self._state = "held"
                    return
                threading.Thread(target=self._wait, name="writer-lock", daemon=True).start()
            self._state = "waiting"  # a wait still in progress (abandoned earlier) serves this caller
            if not self._changed.wait_for(lambda: self._state == "held", timeout):
                self._state = "abandoned"
                raise LockTimeout(f"the lock was not free within {timeout:g} s")

    def release(self) -> None:
        """Give the lock up."""
        with self._changed:
            if self._state != "held":
                raise RuntimeError("the lock is not held")
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._state = "free"

    def _wait(self) -> None:
        """The waiter thread: block in the kernel until the lock is ours, then hand it over."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError:  # the descriptor was closed (the store is closing): nobody gets the lock
            with self._changed:
                self._state = "free"
                self._changed.notify_all()
            return
        with self._changed:
            if self._state == "abandoned":  # the caller gave up and nobody came since
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                except OSError:  # closed meanwhile: closing gave the lock up
                    pass
                self._state = "free"
            else:
                self._state = "held"
            self._changed.notify_all()
