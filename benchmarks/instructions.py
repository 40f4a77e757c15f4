"""Instructions per accepted message, counted by valgrind's callgrind; prints one JSON document.

    python benchmarks/instructions.py [--messages 400] [--concurrency 8]

CPU time on a shared 2-core machine varies by a third and more between runs; the number of instructions
a process executes for the same work does not (to within a fraction of a percent). This benchmark counts
user-space instructions (callgrind's ``Ir``) per message of the same HospitalNotification-sized message
as ``benchmarks/service.py``, each path in a process of its own under callgrind, counted only while the
measured messages pass (``callgrind_control -i on/off`` around them, after a warm-up):

- ``validation``: parsing and MedCom validation alone (the validation floor of ``service.py``);
- ``accept_in_process``: ``Ingress.prepare_message`` and ``accept_many`` on SQLite in batches of 20 -
  the accept without HTTP;
- ``accept_http``: ``fhir-bridge serve --role api`` with one API process, posted to over loopback by the
  service benchmark's load generator (``--concurrency`` connections);
- ``stack_floor_http``: uvicorn with an app that parses and validates each body and does nothing else
  (the stack floor of ``service.py``), under the same load.

Instructions are not time: system calls (the kernel's work for sockets, WAL writes and fsync) are not
counted, nor cache misses and thread switches. ``service.py`` measures time; this tells whether a change
made the bridge's own work larger or smaller, run to run, whatever else the machine is doing. Needs
valgrind (``callgrind_control`` comes with it); under it everything runs about 50 times slower, so a run
takes a few minutes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import service  # noqa: E402  (the service benchmark's message, configuration and load generator)

BATCH = 20


def _instrument(pid: int, on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(pid)], check=True, capture_output=True
    )


def _collected(log: str) -> int:
    """The instructions callgrind collected, from its closing summary."""
    lines = [line for line in log.splitlines() if "Collected :" in line]
    if not lines:
        raise SystemExit(f"callgrind printed no summary:\n{log[-2000:]}")
    return int(lines[-1].split()[-1])


def _callgrind(directory: Path, name: str) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={directory / name}.cg",
    ]


# ------------------------------------------------------------------------------------------ in-process
def inner_main(mode: str, count: int, directory: Path) -> None:
    """Runs under callgrind: warm up, then ``count`` messages with instrumentation on."""
    import orjson

    from bridge.clock import SystemClock
    from bridge.ingress import Ingress
    from bridge.medcom.validation import validate_message
    from bridge.outbox import open_store
    from bridge.settings import load_settings

    pool = service.templates()
    bodies = [service.fresh(pool[i % len(pool)]) for i in range(count + 200)]
    if mode == "validation":

        def run(chunk: list[bytes]) -> None:
            for body in chunk:
                outcome = validate_message(orjson.loads(body))
                assert not outcome.errors, outcome.summary()

    else:
        config = service.bridge_config(
            directory, service.free_port(), service.free_port(), service.free_port()
        )
        os.chdir(directory)
        settings = load_settings(config, {"BRIDGE_CITIZEN_KEY_SECRET": service.SECRET})
        store = open_store(settings.store.url)
        ingress = Ingress(settings, store, SystemClock(), group_commit=False)
        caller = next(s for s in settings.systems if s.kind == "hospital")

        def run(chunk: list[bytes]) -> None:
            for start in range(0, len(chunk), BATCH):
                prepared = [
                    ingress.prepare_message(caller, body, "application/fhir+json")
                    for body in chunk[start : start + BATCH]
                ]
                requests = [ingress._prepared_request(p) for p in prepared]  # type: ignore[arg-type]
                assert all(not isinstance(r, Exception) for r in store.accept_many(requests))

    run(bodies[:200])  # tables, caches and a store with rows in it
    gc.freeze()  # as the service does after start-up
    _instrument(os.getpid(), True)
    run(bodies[200:])
    _instrument(os.getpid(), False)


def in_process(directory: Path, mode: str, count: int) -> dict[str, Any]:
    (directory / mode).mkdir()
    done = subprocess.run(
        [
            *_callgrind(directory, mode),
            *(sys.executable, __file__, "--inner", mode),
            *("--messages", str(count), "--directory", str(directory / mode)),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
    )
    return {"messages": count, "instructions_per_message": round(_collected(done.stderr) / count)}


# ------------------------------------------------------------------------------------------------ HTTP
def over_http(
    directory: Path, name: str, argv: list[str], cwd: Path, count: int, concurrency: int
) -> dict[str, Any]:
    """``argv`` (a server on ``port``) under callgrind, posted ``count`` messages after 200 to warm up."""
    port = service.free_port()
    log_path = directory / f"{name}.log"
    env = {**os.environ, "BRIDGE_CITIZEN_KEY_SECRET": service.SECRET, "PYTHONPATH": str(service.PROJECT)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*_callgrind(directory, name), *[a.replace("{port}", str(port)) for a in argv]],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # start-up under callgrind takes a minute or more
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start:\n{log_path.read_text(errors='replace')[-2000:]}")
            try:
                httpx.get(f"{url}/readyz" if name == "accept_http" else url, timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(1)
        pool = service.templates()
        bodies = [service.fresh(pool[i % len(pool)]) for i in range(count + 200)]
        target = f"{url}/fhir/$process-message"
        service.run_load(directory, target, bodies[:200], concurrency=concurrency, duration=3600, limit=200)
        _instrument(proc.pid, True)
        result = service.run_load(
            directory, target, bodies[200:], concurrency=concurrency, duration=3600, limit=count
        )
        _instrument(proc.pid, False)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(600)
    if result["ok"] != count:
        raise SystemExit(f"{name}: {result['ok']} of {count} answered 2xx ({result['statuses']})")
    return {
        "messages": count,
        "concurrency": concurrency,
        "instructions_per_message": round(_collected(log_path.read_text(errors="replace")) / count),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="instructions per accepted message (JSON on stdout)")
    parser.add_argument("--messages", type=int, default=400, help="measured messages per path")
    parser.add_argument("--concurrency", type=int, default=8, help="connections of the load generator")
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    parser.add_argument("--directory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner_main(args.inner, args.messages, Path(args.directory))
        return
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: this benchmark counts instructions with valgrind")
    report: dict[str, Any] = {"benchmark": "instructions", "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        report["validation"] = in_process(directory, "validation", args.messages)
        report["accept_in_process"] = in_process(directory, "accept_in_process", args.messages)
        served = directory / "accept_http"
        served.mkdir()
        config = service.bridge_config(served, service.free_port(), service.free_port(), service.free_port())
        bridge = [str(service.BIN / "fhir-bridge"), "serve", "--config", config.name, "--role", "api"]
        report["accept_http"] = over_http(
            directory, "accept_http", [*bridge, "--port", "{port}"], served, args.messages, args.concurrency
        )
        (directory / "validating_asgi.py").write_text(service.VALIDATING_APP)
        uvicorn = [sys.executable, "-m", "uvicorn", "validating_asgi:app", "--port", "{port}"]
        report["stack_floor_http"] = over_http(
            directory,
            "stack_floor_http",
            [*uvicorn, "--log-level", "warning", "--no-access-log"],
            directory,
            args.messages,
            args.concurrency,
        )
    floor = report["validation"]["instructions_per_message"]
    report["against_validation"] = {
        name: round(report[name]["instructions_per_message"] / floor, 3)
        for name in ("accept_in_process", "accept_http", "stack_floor_http")
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
