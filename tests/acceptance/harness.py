"""Real processes on loopback for the acceptance tests: the bridge and the simulated peers.

Every process gets a free port, writes its output to a log file in the test's directory, is waited for
until it answers, and is always stopped - SIGTERM, then SIGKILL - when the test ends, even when it
fails. A failing wait shows the end of the process's log.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def hash_token(token: str) -> str:
    """The SHA-256 hex digest the configuration stores for a bearer token (as bridge.settings does)."""
    return hashlib.sha256(token.encode()).hexdigest()


HOSPITAL_TOKEN = "acceptance-hospital-token"
MUNICIPALITY_TOKEN = "acceptance-municipality-token"
REHAB_TOKEN = "acceptance-rehab-token"
OPERATOR_TOKEN = "acceptance-operator-token"
#: Enough bytes for the store's minimum; test data only.
CITIZEN_KEY_SECRET = "acceptance-citizen-key-secret-0123456789abcdef"

HOSPITAL = {
    "id": "herlev-gentofte-hospital",
    "orgs": [("265161000016000", "5790000209354"), ("399841000016000", None)],
}
MUNICIPALITY = {"id": "herlev-municipality", "orgs": [("953741000016009", "5790001348120")]}
REHAB = {"id": "rehab-municipality", "orgs": [("1144561000016002", "5790000123117")]}

_live: list[Proc] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """One child process with a log file; ``stop`` and ``kill9`` end it, ``_live`` tracks it."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.cwd = name, argv, cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = cwd / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        _live.append(self)
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        if self in _live:
            _live.remove(self)
        return self.popen.returncode

    def kill9(self) -> None:
        """SIGKILL to the process and everything it started (its session), no goodbye: the crash the
        durability tests need."""
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)  # start_new_session: its group id is its pid
            except ProcessLookupError:
                pass
            self.popen.wait(10)
        if self in _live:
            _live.remove(self)


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        proc.kill9()


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` (and the process's log) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive:
            raise AssertionError(f"{proc.name} exited while waiting for {what}:\n{proc.log_tail()}")
        time.sleep(0.05)
    tail = f"\n--- {proc.name} log ---\n{proc.log_tail()}" if proc is not None else ""
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{tail}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class Sim(Proc):
    """A simulated peer process (``python -m bridge.simulators``) and its control endpoints."""

    def __init__(self, role: str, port: int, cwd: Path, *extra: str, name: str | None = None) -> None:
        argv = [sys.executable, "-m", "bridge.simulators", role, "--port", str(port), *extra]
        super().__init__(name or f"sim-{role}-{port}", argv, cwd)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> Sim:
        super().start()
        wait_until(lambda: _answers(f"{self.url}/healthz"), 20, f"{self.name} to listen", self)
        return self

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/_sim/state", timeout=5).json()
        return result

    def messages(self) -> list[dict[str, Any]]:
        return list(self.state()["messages"])

    def receipts(self) -> list[dict[str, Any]]:
        return list(self.state()["receipts"])

    def body(self, header_id: str) -> Any:
        return httpx.get(f"{self.url}/_sim/messages/{header_id}", timeout=5).json()

    def faults(self, script: list[dict[str, Any]], then: dict[str, Any] | None = None) -> None:
        response = httpx.post(f"{self.url}/_sim/faults", json={"script": script, "then": then}, timeout=5)
        response.raise_for_status()


def _system(spec: dict[str, Any], port: int, fmt: str, token: str, timeout: str) -> dict[str, Any]:
    orgs = []
    for sor, gln in spec["orgs"]:
        org = {"sor": sor}
        if gln:
            org["gln"] = gln
        orgs.append(org)
    kind = "hospital" if "hospital" in spec["id"] else "municipality"
    return {
        "id": spec["id"],
        "kind": kind,
        "organisations": orgs,
        "inbound": {"tokens": [{"name": "main", "sha256": hash_token(token)}]},
        "endpoint": f"http://127.0.0.1:{port}/fhir/$process-message"
        if fmt == "fhir"
        else f"http://127.0.0.1:{port}/records",
        "format": fmt,
        "timeout": timeout,
        "concurrency": 4,
    }


def bridge_config(
    *,
    port: int,
    hospital_port: int,
    municipality_port: int,
    municipality_format: str = "fhir",
    rehab_port: int | None = None,
    timeout: str = "1s",
    retry: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """A bridge configuration for loopback tests: short timeouts and retry delays, SQLite in the cwd."""
    systems = [
        _system(HOSPITAL, hospital_port, "fhir", HOSPITAL_TOKEN, timeout),
        _system(MUNICIPALITY, municipality_port, municipality_format, MUNICIPALITY_TOKEN, timeout),
    ]
    if rehab_port is not None:
        systems.append(_system(REHAB, rehab_port, "municipal-v1", REHAB_TOKEN, timeout))
    config: dict[str, Any] = {
        "version": 1,
        "listen": {"host": "127.0.0.1", "port": port, "processes": processes},
        "store": {"url": "sqlite:///bridge.db", "citizen_key_secret": "${BRIDGE_CITIZEN_KEY_SECRET}"},
        "retry": retry
        or {
            "initial_delay": "100ms",
            "multiplier": 2,
            "max_delay": "500ms",
            "jitter": "full",
            "max_attempts": 12,
            "max_age": "5m",
        },
        "medcom": {"receipt_timeout": "30m", "max_resends": 2},
        "dispatcher": {"lease": "10s", "poll_interval": "50ms", "batch_size": 32, "shutdown_grace": "5s"},
        "limits": {"max_body_bytes": 1_048_576, "max_depth": 64},
        "systems": systems,
        "routing": [
            {
                "name": "municipal records go to the hospital where the citizen is admitted",
                "when": {"kind": "municipal-record"},
                "to": "admitted-hospital",
                "otherwise": [],
            }
        ],
        "operators": [{"name": "acceptance", "sha256": hash_token(OPERATOR_TOKEN)}],
    }
    config.update(extra or {})
    return config


class Bridge(Proc):
    """``fhir-bridge serve`` with a written configuration, in its own working directory."""

    def __init__(self, cwd: Path, config: dict[str, Any], name: str = "bridge") -> None:
        self.config_path = cwd / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = int(config["listen"]["port"])
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [str(BIN / "fhir-bridge"), "serve", "--config", self.config_path.name]
        super().__init__(name, argv, cwd, {"BRIDGE_CITIZEN_KEY_SECRET": CITIZEN_KEY_SECRET})

    def start(self, timeout: float = 30.0) -> Bridge:
        super().start()
        wait_until(lambda: _answers(f"{self.url}/readyz"), timeout, "the bridge to be ready", self)
        return self

    def client(self, token: str | None = HOSPITAL_TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)


def post_fhir(client: httpx.Client, message: dict[str, Any] | bytes) -> httpx.Response:
    """POST a MedCom message to ``$process-message`` as FHIR JSON."""
    body = message if isinstance(message, bytes) else orjson.dumps(message)
    return client.post(
        "/fhir/$process-message", content=body, headers={"Content-Type": "application/fhir+json"}
    )


@contextmanager
def processes() -> Iterator[list[Proc]]:
    """Collect processes to stop when the block ends, however it ends."""
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            proc.stop()


def header_id(message: dict[str, Any]) -> str:
    """The MessageHeader.id of a MedCom message."""
    return str(message["entry"][0]["resource"]["id"])
