"""Several API processes on one listening socket (``listen.processes``).

Validation and translation are CPU-bound Python: one process uses one core, whatever its threads do. With
``listen.processes: N`` the ``serve`` command forks N children that each run the whole service on their
own listening socket, all bound to the same address with ``SO_REUSEPORT``: the kernel spreads new
connections over them by their address hash. (One socket shared by all would not spread them: the
first process to wake takes every waiting connection, and keep-alive connections stay where they
landed.) Child 0
runs the configured role (with ``all``: the API and the dispatcher); the others run the API alone, so
there is one dispatcher per ``serve`` and every system's concurrency limit holds as configured. Each
child opens its own store connections after the fork; SQLite in WAL mode takes writers from several
processes in turn, and each process batches its own commits (``bridge.committer``).

The parent holds no store, threads nor event loop: it forwards SIGTERM/SIGINT (graceful stop) and
SIGHUP (reload the mapping sets) to the children and waits. ``POST /admin/mappings/reload`` reloads in
the process that answers it and, when that succeeds, sends the supervisor SIGHUP so that the other
processes reload too. A child that dies while the service is
running is started again after a second, so one crash does not halve the service for good; one that
dies within ``QUICK_DEATH`` seconds of its start ``GIVE_UP_AFTER`` times in a row (it cannot start: the
store is unreachable, say) stops the whole service with its exit status. After a requested stop the
parent exits with 0, or with the status of a child that did not stop cleanly.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("bridge.supervisor")

#: A child's work: given its index (0 runs the configured role), serve until stopped.
ChildMain = Callable[[int], None]

#: Set in each API process: the supervisor's pid (``reload_everywhere`` signals it).
SUPERVISOR_ENV = "BRIDGE_SUPERVISOR_PID"
RESTART_DELAY = 1.0
PR_SET_PDEATHSIG = 1
QUICK_DEATH = 5.0
GIVE_UP_AFTER = 3


@dataclass
class Supervisor:
    """Forks ``processes`` children running ``child_main`` and keeps them running."""

    processes: int
    child_main: ChildMain
    children: dict[int, int] = field(default_factory=dict)  # pid -> index
    started: dict[int, float] = field(default_factory=dict)  # index -> monotonic start time
    quick_deaths: dict[int, int] = field(default_factory=dict)  # index -> deaths in a row soon after start
    stopping: bool = False
    status: int = 0
    _child_sighup: Any = signal.SIG_DFL

    def run(self) -> int:
        """Start the children, wait until they have all stopped; the exit status for the parent."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        if hasattr(signal, "SIGHUP"):
            self._child_sighup = signal.getsignal(signal.SIGHUP)  # the children's: reload the mappings
            signal.signal(signal.SIGHUP, self._forward)
        for index in range(self.processes):
            self._spawn(index)
        while self.children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait itself
                continue
            if pid not in self.children:
                continue
            index = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if self.stopping:
                if code not in (0, -signal.SIGTERM, -signal.SIGINT) and self.status == 0:
                    self.status = code if code > 0 else 1
                continue
            quick = time.monotonic() - self.started.get(index, 0.0) < QUICK_DEATH
            self.quick_deaths[index] = self.quick_deaths.get(index, 0) + 1 if quick else 0
            if self.quick_deaths[index] >= GIVE_UP_AFTER:
                log.critical("API process %d keeps failing (exit %d); stopping the service", index, code)
                self.status = code if code > 0 else 1
                self._stop(signal.SIGTERM, None)
                continue
            log.error("API process %d (pid %d) exited with %d; starting it again", index, pid, code)
            time.sleep(RESTART_DELAY)
            if not self.stopping:
                self._spawn(index)
        return self.status

    def _spawn(self, index: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: default signal handling until its server installs its own
            code = 0
            try:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_DFL)
                if hasattr(signal, "SIGHUP"):
                    signal.signal(signal.SIGHUP, self._child_sighup)
                _stop_with_parent(parent)
                os.environ[SUPERVISOR_ENV] = str(parent)
                self.child_main(index)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # a child must never return into the parent's code
                log.exception("API process %d failed", index)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = index
        self.started[index] = time.monotonic()

    def _stop(self, signum: int, _frame: object) -> None:
        self.stopping = True
        for pid in list(self.children):
            _signal(pid, signal.SIGTERM)

    def _forward(self, signum: int, _frame: object) -> None:
        for pid in list(self.children):
            _signal(pid, signum)


def listening_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``, listening unless ``listen`` is False."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def reload_everywhere() -> bool:
    """Ask every API process of this service to reload its mapping sets (SIGHUP to the supervisor,
    which forwards it); False when this process runs alone."""
    pid = os.environ.get(SUPERVISOR_ENV)
    if not pid or not pid.isdigit() or int(pid) != os.getppid():
        return False
    _signal(int(pid), signal.SIGHUP)
    return True


def _stop_with_parent(parent: int) -> None:
    """Linux: SIGTERM this process when its parent dies (a SIGKILLed supervisor leaves no API process
    behind holding the socket and the store)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl: the child outlives a killed parent
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
