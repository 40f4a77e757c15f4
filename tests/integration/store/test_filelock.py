"""``bridge.outbox.filelock``: the cross-process writer lock, on a real file.

Two descriptors of one file conflict under ``flock`` exactly as two processes do, so two ``FileLock``
objects in one test stand for two processes.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.outbox import filelock
from bridge.outbox.filelock import FileLock, LockTimeout


@pytest.fixture
def locks(tmp_path: Path) -> Iterator[tuple[FileLock, FileLock]]:
    path = tmp_path / "bridge.db-writer.lock"
    fds = [os.open(path, os.O_RDWR | os.O_CREAT, 0o600) for _ in range(2)]
    pair = FileLock(fds[0]), FileLock(fds[1])
    yield pair
    for lock in pair:
        lock.close()


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
        holder.close()


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


def wait_until(condition: Callable[[], bool], seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)
    return condition()


def waiter_threads() -> set[threading.Thread]:
    """The waiter threads alive (other tests' locks may leave theirs: compare with a snapshot)."""
    return {t for t in threading.enumerate() if t.name == "writer-lock"}


def test_contended_acquisitions_reuse_one_waiter_thread(
    locks: tuple[FileLock, FileLock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two busy processes contend on nearly every commit; a thread per wait cost its creation each time."""
    a, b = locks
    before = waiter_threads()
    waits: list[int] = []  # the native id of the thread of every blocking flock
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX:
            waits.append(threading.get_native_id())  # never reused while the process lives
        real_flock(fd, operation)

    monkeypatch.setattr(filelock.fcntl, "flock", flock)
    held, done = threading.Semaphore(0), threading.Semaphore(0)

    def other_process() -> None:  # takes the lock, lets b queue behind it, lets go, waits for b's turn
        for _ in range(200):
            a.acquire(5)
            held.release()
            assert wait_until(lambda: b.state == "waiting")
            a.release()
            done.acquire()

    other = threading.Thread(target=other_process)
    other.start()
    for _ in range(200):
        held.acquire()
        b.acquire(5)  # a holds it: the non-blocking try fails, the waiter waits
        b.release()
        done.release()
    other.join(5)
    assert len(waits) == 200  # every acquisition was contended
    assert len(set(waits)) == 1  # ... and one thread made every wait
    assert len(waiter_threads() - before) == 1
    b.close()
    assert waiter_threads() - before == set()  # closing ends it


def test_an_abandoned_wait_hands_the_lock_to_the_next_caller_or_gives_it_back(
    locks: tuple[FileLock, FileLock],
) -> None:
    a, b = locks
    for _ in range(3):  # the same waiter serves one abandoned wait after another
        a.acquire(1)
        with pytest.raises(LockTimeout):
            b.acquire(0.02)
        assert b.state == "abandoned"
        a.release()
        assert wait_until(lambda: b.state == "free")  # nobody came: given back ...
        a.acquire(0)  # ... at once, so the other side takes it without waiting
        a.release()
    a.acquire(1)
    with pytest.raises(LockTimeout):
        b.acquire(0.02)
    got = threading.Event()
    taker = threading.Thread(target=lambda: (b.acquire(5), got.set()))
    taker.start()
    assert wait_until(lambda: b.state == "waiting")
    a.release()
    assert got.wait(5)  # the wait left in place served the next caller ...
    taker.join(5)
    assert b.state == "held"
    with pytest.raises(LockTimeout):  # ... and b really holds it
        a.acquire(0.05)
    b.release()


def test_closing_while_the_waiter_blocks_returns_at_once_and_gives_the_lock_back(tmp_path: Path) -> None:
    """A blocking flock cannot be cancelled: the waiter closes the descriptor when it returns."""
    path = tmp_path / "bridge.db-writer.lock"
    a, b, c = (FileLock(os.open(path, os.O_RDWR | os.O_CREAT, 0o600)) for _ in range(3))
    before = waiter_threads()
    a.acquire(1)
    with pytest.raises(LockTimeout):
        b.acquire(0.05)
    assert b.state == "abandoned"  # its waiter sits in the kernel's queue behind a
    closing = threading.Thread(target=b.close)
    closing.start()
    closing.join(1)
    assert not closing.is_alive()  # not held up by the wait
    with pytest.raises(OSError):
        b.acquire(1)
    a.release()  # the wait returns, and the waiter closes b's descriptor, which gives the lock back
    assert wait_until(lambda: waiter_threads() - before == set())
    assert b.state == "free"
    c.acquire(0)
    c.release()
    a.close()
    c.close()


def test_closing_under_a_waiting_caller_fails_it_at_once(locks: tuple[FileLock, FileLock]) -> None:
    a, b = locks
    before = waiter_threads()
    a.acquire(1)
    failed: list[BaseException] = []

    def caller() -> None:
        try:
            b.acquire(30)
        except BaseException as exc:  # whatever it is, the test reports it
            failed.append(exc)

    taker = threading.Thread(target=caller)
    taker.start()
    assert wait_until(lambda: b.state == "waiting")
    b.close()
    taker.join(5)
    assert not taker.is_alive() and len(failed) == 1 and isinstance(failed[0], OSError), failed
    a.release()
    assert wait_until(lambda: waiter_threads() - before == set())
