"""A cross-process writer lock on a file that waits in the kernel's queue, with a time limit.

Several processes on one SQLite file (``listen.processes``, ``--role api`` beside ``--role worker``) take
turns at writing. Waiting by polling a non-blocking ``flock`` is unfair: a process that commits batch
after batch takes the lock again within microseconds of releasing it, and a poller that sleeps between
tries rarely catches the gap - under load one process waited 400-600 ms while the other committed
dozens of times. A blocking ``flock`` is woken by the kernel the moment the lock is released, so the
processes alternate; but it cannot be given a time limit. ``FileLock`` gets both: a waiter thread makes
the blocking call and the caller waits for it at most ``timeout``. A caller that gives up leaves the
wait in place, and the lock it brings is handed to the next caller of this process, or released.

With two busy processes nearly every commit finds the lock taken, so the waiter is one long-lived
thread per lock, started at the first contention: it sleeps on a condition until a caller asks for a
wait, makes the blocking call, hands the result over and sleeps again. Starting a thread per wait
instead cost a thread's creation and teardown on every contended commit.

A blocking ``flock`` cannot be cancelled: closing the descriptor does not wake it (the call holds its
own reference to the open file), it returns only when the lock is granted. So ``close`` leaves a wait
in progress to the waiter, which closes the descriptor when the call returns - giving the lock back at
once - and ends; the descriptor number is not freed for reuse while the call may still use it. The
waiter is a daemon thread: a wait the holder never ends does not keep the process alive.

One caller of a process at a time (the store holds its own write lock around ``acquire`` ... ``release``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from typing import Literal

State = Literal["free", "waiting", "held", "abandoned"]


class LockTimeout(Exception):
    """The lock was not free within the time limit."""


class FileLock:
    """An exclusive ``flock`` on an open file descriptor, acquired within a time limit, fairly.

    The lock owns the descriptor from then on: ``close`` closes it (see the module docstring for why).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._state: State = "free"
        self._changed = threading.Condition()
        self._waiter: threading.Thread | None = None
        self._blocked = False  # the waiter is inside the blocking flock
        self._error: OSError | None = None  # why the last wait failed, for the caller waiting for it
        self._closed = False

    @property
    def state(self) -> State:
        """``free``, ``waiting`` (a caller waits), ``held``, or ``abandoned`` (a wait nobody waits for)."""
        with self._changed:
            return self._state

    def acquire(self, timeout: float) -> None:
        """Take the lock, waiting at most ``timeout`` seconds (``LockTimeout`` after that)."""
        with self._changed:
            if self._closed:
                raise OSError(errno.EBADF, "the lock is closed")
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
                if self._waiter is None:
                    self._waiter = threading.Thread(target=self._run, name="writer-lock", daemon=True)
                    self._waiter.start()
            # A wait still in progress (abandoned earlier) serves this caller; otherwise the waiter
            # starts one.
            self._state = "waiting"
            self._error = None
            self._changed.notify_all()
            if not self._changed.wait_for(lambda: self._state != "waiting" or self._closed, timeout):
                self._state = "abandoned"
                raise LockTimeout(f"the lock was not free within {timeout:g} s")
            state: State = self._state  # changed by the waiter meanwhile
            if state == "held":
                return
            if state == "waiting":  # closed while the wait goes on: the waiter ends it
                self._state = "abandoned"
            error, self._error = self._error, None
            raise error or OSError(errno.EBADF, "the lock was closed")

    def release(self) -> None:
        """Give the lock up."""
        with self._changed:
            if self._state != "held":
                raise RuntimeError("the lock is not held")
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._state = "free"

    def close(self) -> None:
        """Close the descriptor (which gives the lock up) and end the waiter thread.

        Returns at once even if the waiter is inside the blocking call: that call cannot be cancelled,
        so the waiter closes the descriptor when it returns (when the other process lets go or ends).
        """
        with self._changed:
            if self._closed:
                return
            self._closed = True
            waiter, blocked = self._waiter, self._blocked
            if not blocked:
                os.close(self._fd)
                self._state = "free"
            self._changed.notify_all()
        if waiter is not None and not blocked:  # it is about to end: no thread outlives the lock
            waiter.join()

    def _run(self) -> None:
        """The waiter thread: when asked, block in the kernel until the lock is ours, then hand it over."""
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closed or self._state in ("waiting", "abandoned"))
                if self._closed:
                    return
                if self._state == "abandoned":  # the caller gave up before the wait began
                    self._state = "free"
                    self._changed.notify_all()
                    continue
                self._blocked = True
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                error = None
            except OSError as exc:  # the descriptor was closed behind the lock's back: nobody gets it
                error = exc
            with self._changed:
                self._blocked = False
                state: State = self._state  # changed by callers meanwhile
                if self._closed:  # closed during the wait: closing gives the lock back
                    try:
                        os.close(self._fd)
                    except OSError:
                        pass
                    self._state = "free"
                    self._changed.notify_all()
                    return
                if error is not None:
                    if state == "waiting":
                        self._error = error
                    self._state = "free"
                elif state == "abandoned":  # the caller gave up and nobody came since
                    try:
                        fcntl.flock(self._fd, fcntl.LOCK_UN)
                    except OSError:  # closed meanwhile: closing gave the lock up
                        pass
                    self._state = "free"
                else:
                    self._state = "held"
                self._changed.notify_all()
