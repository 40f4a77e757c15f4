"""Several bridge processes on one PostgreSQL: deliveries with 1 and 2 workers, accepts on both engines.

    python benchmarks/scaleout.py [--messages 3000] [--duration 8] [--concurrency 32] [--postgres URL]

One JSON document on stdout, all figures from the same run on the same machine:

- ``accept``: ``fhir-bridge serve --role api`` on SQLite and on PostgreSQL, driven by the service
  benchmark's load generator (a separate process, ``--concurrency`` requests in flight): durable
  accepts per second of a HospitalNotification-sized admission, each a committed transaction;
- ``deliveries``: a backlog of ``--messages`` accepted into a fresh PostgreSQL database, then drained by
  1 and then by 2 ``--role worker`` processes to a simulated municipality (which answers with an
  Acknowledgement the bridge forwards to a simulated hospital). The rate is taken between 10% and 90%
  of the backlog at the receiver, so process start-up and the tail do not count;
- ``cpu_seconds``: CPU time each process used during each drain (from /proc), and the PostgreSQL
  server's, to show where the time goes when 2 workers do not double 1;
- ``scaling``: the 2-worker rate divided by the 1-worker rate.

PostgreSQL: ``--postgres`` or ``$BRIDGE_TEST_POSTGRES_URL`` names a server where this may create and
drop databases (each phase uses its own). The helpers (messages, load generator, simulated receiver)
are the service benchmark's (``benchmarks/service.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import service
from service import BIN, SECRET, free_port, fresh, receiver, run_load, stop, templates, wait_ready

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def postgres_cpu_seconds() -> float:
    """CPU time of every PostgreSQL server process so far (its backends come and go; a lower bound)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "postgres":
                total += cpu_seconds(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


@contextmanager
def database(server: str) -> Iterator[str]:
    """A fresh database on ``server``; dropped afterwards."""
    name = f"scaleout_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server, autocommit=True, connect_timeout=30) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write_config(directory: Path, store_url: str, receiver_port: int, hospital_port: int) -> Path:
    """The service benchmark's configuration, on ``store_url``."""
    path = service.bridge_config(directory, free_port(), receiver_port, hospital_port)
    config = yaml.safe_load(path.read_text())
    config["store"]["url"] = store_url
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start(directory: Path, config: Path, role: str, name: str) -> tuple[subprocess.Popen[bytes], int]:
    """``fhir-bridge serve --role ROLE`` on a port of its own, once it reports ready."""
    port = free_port()
    log = (directory / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        [str(BIN / "fhir-bridge"), "serve", "--config", config.name, "--role", role, "--port", str(port)],
        cwd=directory,
        env={**os.environ, "BRIDGE_CITIZEN_KEY_SECRET": SECRET},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    return proc, port


def accept_rate(
    directory: Path, store_url: str, pool: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """Durable accepts per second of one API node on ``store_url``."""
    config = write_config(directory, store_url, free_port(), free_port())
    api, port = start(directory, config, "api", "api")
    try:
        bodies = [fresh(pool[i % len(pool)]) for i in range(args.messages * 3)]
        result = run_load(
            directory,
            f"http://127.0.0.1:{port}/fhir/$process-message",
            bodies,
            concurrency=args.concurrency,
            duration=args.duration,
        )
    finally:
        stop(api)
    return {k: result[k] for k in ("ok", "ok_per_second", "statuses", "errors", "latency_ms")}


def drain_rate(
    directory: Path, store_url: str, pool: list[bytes], workers: int, args: argparse.Namespace
) -> Any:
    """Accept a backlog, then drain it with ``workers`` worker processes; deliveries per second."""
    receiver_port, hospital_port = free_port(), free_port()
    config = write_config(directory, store_url, receiver_port, hospital_port)
    api, port = start(directory, config, "api", "api")
    try:
        bodies = [fresh(pool[i % len(pool)]) for i in range(args.messages)]
        loaded = run_load(
            directory,
            f"http://127.0.0.1:{port}/fhir/$process-message",
            bodies,
            concurrency=args.concurrency,
            duration=600,
            limit=len(bodies),
        )
    finally:
        stop(api)
    backlog = loaded["ok"]
    sim = receiver(directory, receiver_port)
    hospital = receiver(directory, hospital_port)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        before = {"receiver": cpu_seconds(sim.pid), "hospital": cpu_seconds(hospital.pid)}
        pg_before = postgres_cpu_seconds()
        for i in range(workers):
            procs.append(start(directory, config, "worker", f"worker{workers}-{i}")[0])
        low, high = int(backlog * 0.1), int(backlog * 0.9)
        t_low = t_high = None
        deadline = time.monotonic() + max(300.0, backlog / 20)
        while time.monotonic() < deadline:
            count = len(
                httpx.get(f"http://127.0.0.1:{receiver_port}/_sim/state", timeout=10).json()["messages"]
            )
            now = time.perf_counter()
            if t_low is None and count >= low:
                t_low = now
            if count >= high:
                t_high = now
                break
            time.sleep(0.05)
        cpu = {f"worker{i + 1}": round(cpu_seconds(p.pid), 2) for i, p in enumerate(procs)}
        cpu["receiver"] = round(cpu_seconds(sim.pid) - before["receiver"], 2)
        cpu["hospital"] = round(cpu_seconds(hospital.pid) - before["hospital"], 2)
        cpu["postgres"] = round(postgres_cpu_seconds() - pg_before, 2)
    finally:
        for proc in procs:
            stop(proc)
        stop(sim)
        stop(hospital)
    if t_low is None or t_high is None:
        raise SystemExit(f"the backlog of {backlog} was not delivered in time with {workers} worker(s)")
    seconds = t_high - t_low
    return {
        "workers": workers,
        "backlog": backlog,
        "measured": high - low,
        "seconds": round(seconds, 3),
        "per_second": round((high - low) / seconds, 1),
        "cpu_seconds": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=3000, help="backlog drained per worker count")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of each accept phase")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--postgres", default=os.environ.get("BRIDGE_TEST_POSTGRES_URL", ""))
    args = parser.parse_args()
    if not args.postgres:
        raise SystemExit("name a PostgreSQL server with --postgres or $BRIDGE_TEST_POSTGRES_URL")
    pool = templates()
    result: dict[str, Any] = {
        "benchmark": "scaleout",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "messages": args.messages,
    }
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        root = Path(tmp)
        (root / "sqlite").mkdir()
        sqlite = accept_rate(root / "sqlite", "sqlite:///bridge.db", pool, args)
        with database(args.postgres) as url:
            (root / "pg").mkdir()
            postgres = accept_rate(root / "pg", url, pool, args)
        result["accept"] = {
            "sqlite": sqlite,
            "postgres": postgres,
            "postgres_over_sqlite": round(postgres["ok_per_second"] / sqlite["ok_per_second"], 2),
        }
        drains = []
        for workers in (1, 2):
            with database(args.postgres) as url:
                directory = root / f"drain{workers}"
                directory.mkdir()
                drains.append(drain_rate(directory, url, pool, workers, args))
        result["deliveries"] = {"postgres": drains}
        result["scaling"] = round(drains[1]["per_second"] / drains[0]["per_second"], 2)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
