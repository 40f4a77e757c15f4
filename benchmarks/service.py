"""The bridge service under load, on loopback, with SQLite; prints one JSON document.

    python benchmarks/service.py [--duration 10] [--concurrency 32] [--messages 3000] [--queued 100000]
    python benchmarks/service.py --only floors          # the HTTP and validation floors alone

What one run measures, all with the same HospitalNotification-sized message (an admission built by the
bridge's own builder, ~5 KB, a fresh Bundle.id and MessageHeader.id per request):

- ``validation_floor``: parsing and MedCom validation of the message alone, in this process: CPU time
  per message;
- ``http_floor``: a bare ASGI app under uvicorn that reads the body and answers 202, driven by the
  same load generator - what HTTP and the generator cost before the bridge does anything;
- ``stack_floor``: uvicorn, with as many processes as the bridge, serving an app that parses and
  validates each body with the bridge's validator and answers 200 - nothing else - under the same
  load: its CPU time per request is the least any accept path on this stack (Python, uvicorn, this
  validator) costs; ``stack_floor_vs_validation_floor`` and ``accept_cost_vs_stack_floor`` compare;
- ``receiver_floor``: the simulated municipality alone (dedupe + Acknowledgement per message), driven
  the same way - the ceiling of end-to-end deliveries to it;
- ``accept``: ``fhir-bridge serve --role api`` (no dispatcher): durable accepts per second (each one a
  committed, fsync'd transaction of message, delivery and audit record), the CPU time the bridge's
  processes spent per accept (``server_cpu_ms_per_accept``; over the validation floor it gives
  ``accept_cost_vs_validation_floor``) and, in a second phase at half that rate, accept latency p50/p99;
- ``deliveries``: the accepted backlog of ``--messages`` drained by ``fhir-bridge serve --role worker``
  (``--workers`` of them, on the one store)
  to a simulated municipality on loopback: end-to-end deliveries per second, the same with the
  receipts forwarded to the hospital meanwhile, and round trips (delivered and receipt back) per second;
- ``queued_rss``: ``--queued`` messages accepted for a receiver that is down, by the full service; the
  bridge's RSS sampled as the queue grows (it should stay flat). ``--queued 0`` skips it.

The load generator runs as a separate process (``--loadgen``): a minimal HTTP/1.1 client on asyncio
streams with a bounded number of keep-alive connections and a bounded duration. Both run on the same
2 cores as the bridge, so the figures are lower bounds of what the bridge does with a machine to itself.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))


BIN = Path(sys.executable).parent


def hash_token(token: str) -> str:
    """The SHA-256 hex digest the configuration stores for a bearer token (as bridge.settings does)."""
    return hashlib.sha256(token.encode()).hexdigest()


HOSPITAL_TOKEN = "benchmark-hospital-token"
SECRET = "benchmark-citizen-key-secret-0123456789abcdef"
CITIZENS = 500


# ------------------------------------------------------------------------------------------- messages
def templates(count: int = CITIZENS) -> list[bytes]:
    """Admissions of ``count`` synthetic citizens; ids are swapped per request by :func:`fresh`."""
    from bridge.simulators import traffic

    return [orjson.dumps(traffic.notification(traffic.admission(n))) for n in range(count)]


def fresh(template: bytes) -> bytes:
    """The template with a new Bundle.id and MessageHeader.id (every occurrence, references included)."""
    bundle = orjson.loads(template)
    old_bundle, old_header = bundle["id"], bundle["entry"][0]["resource"]["id"]
    return template.replace(old_header.encode(), str(uuid.uuid4()).encode()).replace(
        old_bundle.encode(), str(uuid.uuid4()).encode()
    )


# ------------------------------------------------------------------------------------------ processes
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_kib(pid: int) -> int:
    """Resident set size of a process (Linux /proc), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the API processes of ``listen.processes``), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time so far of a process and of the API processes it runs (Linux /proc), in s."""
    total = 0
    for p in [pid, *children(pid)]:
        try:
            # The command name may hold spaces: the fields are counted after its closing parenthesis.
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def service_rss(pid: int) -> dict[str, Any]:
    """RSS of the serve process and of each API process it runs, and their sum, in KiB."""
    each = {str(p): rss_kib(p) for p in [pid, *children(pid)]}
    return {"rss_kib": sum(each.values()), "rss_kib_by_process": each}


def bridge_config(
    directory: Path, port: int, receiver_port: int, hospital_port: int | None = None, processes: int = 1
) -> Path:
    def system(sid: str, kind: str, orgs: list[dict[str, str]], endpoint: str, token: str | None) -> Any:
        tokens = [{"name": "main", "sha256": hash_token(token)}] if token else []
        return {
            "id": sid,
            "kind": kind,
            "organisations": orgs,
            "inbound": {"tokens": tokens},
            "endpoint": endpoint,
            "format": "fhir",
            "timeout": "5s",
            "concurrency": 32,
        }

    config = {
        "version": 1,
        "listen": {"host": "127.0.0.1", "port": port, "processes": processes},
        "store": {"url": "sqlite:///bridge.db", "citizen_key_secret": "${BRIDGE_CITIZEN_KEY_SECRET}"},
        "retry": {"initial_delay": "30s", "max_delay": "10m", "max_attempts": 15, "max_age": "24h"},
        "dispatcher": {"lease": "2m", "poll_interval": "50ms", "batch_size": 64, "shutdown_grace": "10s"},
        "systems": [
            system(
                "herlev-gentofte-hospital",
                "hospital",
                [{"sor": "265161000016000", "gln": "5790000209354"}],
                f"http://127.0.0.1:{hospital_port or free_port()}/fhir/$process-message",
                HOSPITAL_TOKEN,
            ),
            system(
                "herlev-municipality",
                "municipality",
                [{"sor": "953741000016009", "gln": "5790001348120"}],
                f"http://127.0.0.1:{receiver_port}/fhir/$process-message",
                None,
            ),
        ],
    }
    path = directory / "bridge.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_bridge(
    directory: Path, config: Path, port: int, role: str, name: str | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BRIDGE_CITIZEN_KEY_SECRET": SECRET}
    log = (directory / f"bridge-{name or role}.log").open("ab")
    proc = subprocess.Popen(
        [str(BIN / "fhir-bridge"), "serve", "--config", config.name, "--role", role],
        cwd=directory,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    if role != "worker":
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    return proc


# ------------------------------------------------------------------------------------------- load gen
async def _load_async(
    url: str, bodies: list[bytes], concurrency: int, duration: float, rate: float, limit: int
) -> dict[str, Any]:
    """``concurrency`` keep-alive connections posting ``bodies`` in turn, over raw asyncio streams.

    A minimal HTTP/1.1 client (request bytes built once per body, status line and Content-Length read
    back) so the generator costs little of the 2 cores it shares with the server under test; httpx costs
    several times the server's own HTTP work per request. With ``rate`` requests are scheduled at fixed
    times and latency counts from the scheduled time, so a late start counts against the server (no
    coordinated omission).
    """
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/fhir+json\r\n"
        f"Authorization: Bearer {HOSPITAL_TOKEN}\r\nAccept: application/fhir+json\r\n"
    ).encode()
    requests = [head + b"Content-Length: %d\r\n\r\n" % len(b) + b for b in bodies]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    sent = 0
    started = time.perf_counter()
    end = started + duration

    async def exchange(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> tuple[int, bool]:
        writer.write(request)
        header = await reader.readuntil(b"\r\n\r\n")
        lines = header.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await reader.readexactly(length)
        return status, close

    async def connection() -> None:
        nonlocal sent, errors
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while True:
            i = sent
            sent += 1
            if i >= limit:
                break
            scheduled = started + i / rate if rate else time.perf_counter()
            if scheduled >= end:
                break
            if rate:
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            try:
                if streams is None:
                    streams = await asyncio.open_connection(host, port)
                status, close = await asyncio.wait_for(
                    exchange(*streams, requests[i % len(requests)]), timeout=30
                )
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                errors += 1
                if streams is not None:
                    streams[1].close()
                streams = None
                continue
            latencies.append(time.perf_counter() - scheduled)
            statuses[status] = statuses.get(status, 0) + 1
            if close:
                streams[1].close()
                streams = None
        if streams is not None:
            streams[1].close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float | None:
        return (
            round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)
            if latencies
            else None
        )

    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {
        "requests": sum(statuses.values()) + errors,
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
        "seconds": round(elapsed, 3),
        "ok_per_second": round(ok / elapsed, 1),
        "latency_ms": {"p50": pct(0.50), "p99": pct(0.99), "max": pct(1.0)},
    }


def _load(
    url: str, bodies: list[bytes], concurrency: int, duration: float, rate: float, limit: int
) -> dict[str, Any]:
    return asyncio.run(_load_async(url, bodies, concurrency, duration, rate, limit))


def loadgen_main(args: argparse.Namespace) -> None:
    """The load generator process: bodies from a file (length-prefixed), JSON result on stdout."""
    raw = Path(args.bodies).read_bytes()
    bodies, i = [], 0
    while i < len(raw):
        size = int.from_bytes(raw[i : i + 4], "big")
        bodies.append(raw[i + 4 : i + 4 + size])
        i += 4 + size
    result = _load(args.url, bodies, args.concurrency, args.duration, args.rate, args.limit)
    sys.stdout.write(json.dumps(result))


def run_load(
    directory: Path,
    url: str,
    bodies: list[bytes],
    *,
    concurrency: int,
    duration: float,
    rate: float = 0,
    limit: int = 10**9,
) -> dict[str, Any]:
    path = directory / f"bodies-{uuid.uuid4().hex[:8]}.bin"
    path.write_bytes(b"".join(len(b).to_bytes(4, "big") + b for b in bodies))
    argv = [
        sys.executable,
        __file__,
        "--loadgen",
        "--url",
        url,
        "--bodies",
        str(path),
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
        "--rate",
        str(rate),
        "--limit",
        str(limit),
    ]
    done = subprocess.run(argv, capture_output=True, check=True, timeout=duration + 120)
    path.unlink()
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -------------------------------------------------------------------------------------------- phases
def validation_floor(body: bytes, seconds: float = 3.0) -> dict[str, Any]:
    from bridge.medcom.validation import validate_message

    for _ in range(50):  # the profiles and the validator's tables load at first use: not part of the floor
        validate_message(orjson.loads(body))
    # CPU time, as the accept's cost is counted: another process on the machine does not inflate it.
    count, started = 0, time.process_time()
    while time.process_time() - started < seconds:
        outcome = validate_message(orjson.loads(body))
        count += 1
    assert not outcome.errors, outcome.summary()
    per = (time.process_time() - started) / count
    return {"per_message_ms": round(per * 1000, 3), "messages_per_second_per_core": round(1 / per, 1)}


BARE_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
"""


VALIDATING_APP = """
import orjson
from bridge.medcom.validation import validate_message

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    status = 200
    if scope["path"] != "/":
        status = 422 if validate_message(orjson.loads(b"".join(chunks))).has_errors else 200
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
"""


def stack_floor(
    directory: Path, bodies: list[bytes], processes: int, concurrency: int, duration: float
) -> dict[str, Any]:
    """uvicorn (as many processes as the bridge) with an app that parses and validates each body with the
    bridge's validator and answers 200, and nothing else: no framework, authentication, routing, storage
    or audit. Its CPU time per request is what any accept path on this stack costs at least."""
    (directory / "validating_asgi.py").write_text(VALIDATING_APP)
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "validating_asgi:app", "--port", str(port)),
            *("--workers", str(processes), "--log-level", "warning", "--no-access-log"),
        ],
        cwd=directory,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
    )
    url = f"http://127.0.0.1:{port}/fhir/$process-message"
    try:
        wait_ready(f"http://127.0.0.1:{port}/", proc)
        # The validator loads its tables at first use in each process: not part of the floor.
        run_load(directory, url, bodies[:1000], concurrency=concurrency, duration=3, limit=1000)
        before = cpu_seconds(proc.pid)
        result = run_load(
            directory, url, bodies[1000:], concurrency=concurrency, duration=duration, limit=len(bodies)
        )
        if result["ok"]:
            result["server_cpu_ms_per_request"] = round(
                (cpu_seconds(proc.pid) - before) * 1000 / result["ok"], 3
            )
        return result
    finally:
        stop(proc)


def http_floor(directory: Path, bodies: list[bytes], concurrency: int, duration: float) -> dict[str, Any]:
    (directory / "bare_asgi.py").write_text(BARE_APP)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_asgi:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=directory,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/", proc)
        return run_load(
            directory,
            f"http://127.0.0.1:{port}/fhir/$process-message",
            bodies,
            concurrency=concurrency,
            duration=duration,
        )
    finally:
        stop(proc)


def receiver(directory: Path, port: int) -> subprocess.Popen[bytes]:
    log = (directory / "receiver.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.simulators", "municipality", "--port", str(port), "--no-validate"],
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
    return proc


def receiver_floor(directory: Path, bodies: list[bytes], concurrency: int, duration: float) -> dict[str, Any]:
    """The simulated receiver alone, driven by the load generator: what it can take per second."""
    port = free_port()
    sim = receiver(directory, port)
    try:
        return run_load(
            directory,
            f"http://127.0.0.1:{port}/fhir/$process-message",
            bodies,
            concurrency=concurrency,
            duration=duration,
        )
    finally:
        stop(sim)


def received_count(port: int) -> int:
    return int(httpx.get(f"http://127.0.0.1:{port}/_sim/counts", timeout=10).json()["messages"])


def received_receipts(port: int) -> int:
    return int(httpx.get(f"http://127.0.0.1:{port}/_sim/counts", timeout=10).json()["receipts"])


def accept_and_deliver(directory: Path, pool: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    port, receiver_port, hospital_port = free_port(), free_port(), free_port()
    config = bridge_config(directory, port, receiver_port, hospital_port, args.processes)
    url = f"http://127.0.0.1:{port}/fhir/$process-message"
    api = start_bridge(directory, config, port, "api")
    try:
        bodies = [fresh(pool[i % len(pool)]) for i in range(args.messages)]
        cpu_before = cpu_seconds(api.pid)
        peak = run_load(
            directory, url, bodies, concurrency=args.concurrency, duration=args.duration, limit=len(bodies)
        )
        if peak["ok"]:
            peak["server_cpu_ms_per_accept"] = round(
                (cpu_seconds(api.pid) - cpu_before) * 1000 / peak["ok"], 3
            )
        half_rate = max(1.0, peak["ok_per_second"] / 2)
        bodies2 = [fresh(pool[i % len(pool)]) for i in range(int(half_rate * args.duration) + 1)]
        half = run_load(
            directory, url, bodies2, concurrency=args.concurrency, duration=args.duration, rate=half_rate
        )
    finally:
        stop(api)
    backlog = peak["ok"] + half["ok"]
    sim = receiver(directory, receiver_port)
    hospital = receiver(directory, hospital_port)  # receives the municipality's receipts, forwarded
    # ``--workers`` dispatcher processes on the one store, as several bridge processes share a database.
    workers = [
        start_bridge(directory, config, port, "worker", name=f"worker-{n}") for n in range(args.workers)
    ]

    def workers_cpu() -> float:
        return sum(cpu_seconds(w.pid) for w in workers)

    try:
        started = time.perf_counter()
        deadline = started + max(120.0, backlog / 50)
        count = 0
        first: tuple[int, float] | None = None  # (delivered, worker CPU s) when the first arrived
        while time.perf_counter() < deadline:
            count = received_count(receiver_port)
            if first is None and count:
                first = (count, workers_cpu())
            if count >= backlog:
                break
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        cpu = workers_cpu()
        receipts = received_receipts(hospital_port)
        # Then until every receipt has reached the sender too: all the work one message makes.
        settle_deadline = time.perf_counter() + 60
        receipts_end = receipts
        while receipts_end < count and time.perf_counter() < settle_deadline:
            time.sleep(0.2)
            receipts_end = received_receipts(hospital_port)
        all_elapsed = time.perf_counter() - started
        all_cpu = workers_cpu()
    finally:
        for worker in workers:
            stop(worker)
        stop(sim)
        stop(hospital)
    return {
        "accept": {"peak": peak, "half_rate": {"target_per_second": round(half_rate, 1), **half}},
        "deliveries": {
            "worker_processes": args.workers,
            "backlog": backlog,
            "delivered": count,
            "seconds": round(elapsed, 3),
            "per_second": round(count / elapsed, 1) if elapsed else None,
            # The worker shares its capacity fairly between destinations: while it delivers to the
            # municipality it also forwards the municipality's receipts to the hospital.
            "with_receipt_forwards_per_second": round((count + receipts) / elapsed, 1) if elapsed else None,
            # Messages whose whole round is done (delivered, and the receipt back at the sender).
            "round_trips_per_second": (
                round(count / all_elapsed, 1) if all_elapsed and receipts_end >= count else None
            ),
            "receipts_forwarded_to_sender_by_then": receipts,
            "receipts_forwarded_by_the_end": receipts_end,
            "seconds_until_every_receipt_forwarded": round(all_elapsed, 3),
            "worker_cpu_s": round(cpu, 2),
            "worker_cpu_ms_per_delivery": round(1000 * cpu / count, 2) if count else None,
            # Without the worker's start-up (imports, migrations): from the first delivery on.
            "worker_cpu_ms_per_delivery_after_first": (
                round(1000 * (cpu - first[1]) / (count - first[0]), 2)
                if first is not None and count > first[0]
                else None
            ),
            # All the worker's CPU for one message: its delivery and the forwarding of its receipt.
            "worker_cpu_ms_per_message_and_receipt": (
                round(1000 * all_cpu / count, 2) if count and receipts_end >= count else None
            ),
            "note": "time from worker start (process start-up included) until the receiver has them all; "
            "each delivery also forwards the receiver's Acknowledgement to the sender, in the same run "
            "(claims are fair between destinations); worker CPU is utime + stime of the worker "
            "processes, per message delivered to the receiver",
        },
    }


def queued_rss(directory: Path, pool: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    # Nothing listens at the receiver's port: it is down.
    config = bridge_config(directory, port, free_port(), processes=args.processes)
    proc = start_bridge(directory, config, port, "all")
    url = f"http://127.0.0.1:{port}/fhir/$process-message"
    samples = [{"queued": 0, **service_rss(proc.pid)}]
    try:
        step = max(1, args.queued // 4)
        done = 0
        while done < args.queued:
            n = min(step, args.queued - done)
            bodies = [fresh(pool[i % len(pool)]) for i in range(n)]
            result = run_load(directory, url, bodies, concurrency=args.concurrency, duration=3600, limit=n)
            done += n
            samples.append(
                {
                    "queued": done,
                    "accepted": result["ok"],
                    "accepts_per_second": result["ok_per_second"],
                    **service_rss(proc.pid),
                }
            )
    finally:
        stop(proc)
    return {"samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description="bridge service benchmark (JSON on stdout)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load phase")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="keep-alive connections of the load generator (the kernel spreads them over the API processes)",
    )
    parser.add_argument("--messages", type=int, default=20000, help="at most this many in the peak phase")
    parser.add_argument("--queued", type=int, default=100_000, help="messages queued for a down receiver")
    parser.add_argument(
        "--processes", type=int, default=os.cpu_count() or 1, help="listen.processes of the bridge"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="dispatcher processes (--role worker) draining the backlog"
    )
    parser.add_argument("--only", choices=("floors", "service", "queued"), help="run one part")
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--bodies", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=10**9, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        loadgen_main(args)
        return
    pool = templates()
    report: dict[str, Any] = {
        "benchmark": "service",
        "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "message_bytes": len(pool[0]),
        "settings": {
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "api_processes": args.processes,
            "worker_processes": args.workers,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        if args.only in (None, "floors"):
            report["validation_floor"] = validation_floor(pool[0])
            report["http_floor"] = http_floor(
                directory, [fresh(pool[0]) for _ in range(500)], args.concurrency, args.duration
            )
            report["stack_floor"] = stack_floor(
                directory,
                [fresh(pool[i % len(pool)]) for i in range(args.messages + 1000)],
                args.processes,
                args.concurrency,
                args.duration,
            )
            report["receiver_floor"] = receiver_floor(
                directory, [fresh(pool[i % len(pool)]) for i in range(20000)], args.concurrency, args.duration
            )
            floor, stack = (
                report["validation_floor"]["per_message_ms"],
                report["stack_floor"].get("server_cpu_ms_per_request"),
            )
            if stack:
                # The same for uvicorn with nothing but the validator (``stack_floor``): the least any
                # accept path on this stack costs against validation alone.
                report["stack_floor_vs_validation_floor"] = round(stack / floor, 2)
        if args.only in (None, "service"):
            report |= accept_and_deliver(directory, pool, args)
            floor = report.get("validation_floor", {}).get("per_message_ms")
            cost = report["accept"]["peak"].get("server_cpu_ms_per_accept")
            if floor and cost:
                # What one accept costs against validation alone: the CPU time all bridge processes
                # spent per accepted message (HTTP, validation, routing, storage, audit) over the CPU
                # time of validating the message alone.
                report["accept_cost_vs_validation_floor"] = round(cost / floor, 2)
            stack = report.get("stack_floor", {}).get("server_cpu_ms_per_request")
            if stack and cost:
                # What the bridge adds to that least - authentication, routing, the durable
                # transaction and its audit record - as a factor.
                report["accept_cost_vs_stack_floor"] = round(cost / stack, 2)
        if args.only in (None, "queued") and args.queued:
            report["queued_rss"] = queued_rss(directory, pool, args)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
