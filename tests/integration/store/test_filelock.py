"""``bridge.outbox.filelock``: the cross-process writer lock, on a real file.

Two descriptors of one file conflict under ``flock`` exactly as two processes do, so two ``FileLock``
objects in one test stand for two processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.outbox.filelock import FileLock, LockTimeout


@pytest.fixture
def locks(tmp_path: Path) -> Iterator[tuple[FileLock, FileLock]]:
    path = tmp_path / "bridge.db-writer.lock"
    fds = [os.open(path, os.O_RDWR | os.O_CREAT, 0o600) for _ in range(2)]
    yield FileLock(fds[0]), FileLock(fds[1])
    for fd in fds:
        os.close(fd)


def test_one_holder_at_a_time_and_a_bounded_wait(locks: tuple[FileLock, FileLock]) -> None:
    a, b = locks
    a.acquire(1)
    started = time.monotonic()
    with pytest.raises(LockTimeout):
        b.acquire(0.2)
    assert 0.15 < time.monotonic() - started < 2
    a.release()
    with pytest.raises(RuntimeError):
        a.release()


WAITER = """
import os, sys, time
from bridge.outbox.filelock import FileLock
fd = os.open(sys.argv[1], os.O_RDWR)
lock = FileLock(fd)
print("waiting", flush=True)
lock.acquire(30)
open(sys.argv[2], "w").close()
time.sleep(0.05)
lock.release()
"""


def test_a_waiting_process_gets_a_turn_while_the_holder_commits_again_and_again(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db-writer.lock"
    got = tmp_path / "got"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    holder = FileLock(fd)
    holder.acquire(1)
    other = subprocess.Popen(
        [sys.executable, "-c", WAITER, str(path), str(got)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "waiting"
        time.sleep(0.2)  # the other process sits in the kernel's queue
        turns = 0
        while not got.exists() and turns < 1000:  # commit after commit, as a busy process does
            holder.release()
            time.sleep(0.0005)  # what a committer does between two transactions
            holder.acquire(10)
            time.sleep(0.002)  # a transaction and its fsync
            turns += 1
        # Woken the moment the lock is free, it gets a turn within a few commits (a loaded machine may
        # schedule it late); a poller that sleeps between tries could miss the gaps for hundreds.
        assert got.exists() and turns <= 50, turns
    finally:
        holder.release()
        other.communicate(timeout=10)
        os.close(fd)


def test_an_abandoned_wait_serves_the_next_caller_or_lets_go(locks: tuple[FileLock, FileLock]) -> None:
    a, b = locks
    a.acquire(1)
    with pytest.raises(LockTimeout):
        b.acquire(0.05)
    assert b.state == "abandoned"
    a.release()
    deadline = time.monotonic() + 5
    while b.state != "free" and time.monotonic() < deadline:
        time.sleep(0.001)
    assert b.state == "free"  # nobody came: the lock it brought was given back
    a.acquire(1)  # ... so the other side can take it at once
    with pytest.raises(LockTimeout):
        b.acquire(0.05)
    got = threading.Event()
    taker = threading.Thread(target=lambda: (b.acquire(10), got.set()))
    taker.start()
    time.sleep(0.05)
    a.release()
    assert got.wait(5)  # the wait left in place served the next caller
    taker.join(5)
    b.release()
