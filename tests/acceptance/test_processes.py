"""``listen.processes``: several API processes on one socket, supervised by the ``serve`` process."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import orjson
from harness import HOSPITAL_TOKEN, OPERATOR_TOKEN, header_id, post_fhir, wait_until

from bridge.simulators import traffic


def children(pid: int) -> set[int]:
    """The pids of the live child processes of ``pid`` (Linux /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its closing parenthesis.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def _post_many(url: str, bodies: list[bytes], statuses: list[int]) -> None:
    import httpx

    lock = threading.Lock()
    queue = list(bodies)

    def sender() -> None:
        headers = {"Authorization": f"Bearer {HOSPITAL_TOKEN}", "Content-Type": "application/fhir+json"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                status = client.post("/fhir/$process-message", content=body).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=sender) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def test_two_api_processes_accept_deliver_survive_a_crash_and_stop_together(start_stack: Any) -> None:
    stack = start_stack("fhir", processes=2)
    bridge = stack.bridge
    assert bridge.popen is not None
    parent = bridge.popen.pid
    wait_until(lambda: len(children(parent)) == 2, 30, "two API processes", bridge)
    first = children(parent)

    messages = [traffic.notification(traffic.admission(2000 + i)) for i in range(60)]
    statuses: list[int] = []
    _post_many(bridge.url, [orjson.dumps(m) for m in messages], statuses)
    assert statuses == [200] * len(messages)
    sent = {header_id(m) for m in messages}
    wait_until(
        lambda: sent <= {m["header_id"] for m in stack.municipality.messages()},
        60,
        "every message at the municipality",
        bridge,
    )

    # One API process dies: the supervisor starts another, and the service answers meanwhile.
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        now = children(parent)  # read once: the victim may die between two reads
        return len(now) == 2 and victim not in now

    wait_until(replaced, 30, "a new API process", bridge)
    (replacement,) = children(parent) - first
    # Serving, with its signal handlers installed: the reload below must reach it, not precede it.
    wait_until(
        lambda: f"Started server process [{replacement}]" in bridge.log_path.read_text(errors="replace"),
        30,
        "the new API process to serve",
        bridge,
    )
    more = [traffic.notification(traffic.admission(3000 + i)) for i in range(10)]
    with bridge.client() as client:
        assert [post_fhir(client, m).status_code for m in more] == [200] * len(more)

    # A mapping reload through the admin API reaches every API process, not only the one that answered.
    with bridge.client(OPERATOR_TOKEN) as ops:
        assert ops.post("/admin/mappings/reload").status_code == 200
    wait_until(
        lambda: bridge.log_path.read_text(errors="replace").count("mappings reloaded") >= 2,
        90,  # each process compiles and tests every mapping set again; CI runs other tests beside it
        "both API processes to reload their mappings",
        bridge,
    )

    # SIGTERM to the serve process stops every API process gracefully, with exit code 0.
    running = children(parent)
    assert bridge.stop() == 0
    wait_until(lambda: not any(_alive(pid) for pid in running), 10, "the API processes to end")


def _alive(pid: int) -> bool:
    try:
        state = (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
