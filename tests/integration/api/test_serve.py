"""``fhir-bridge serve`` and ``fhir-bridge config check`` as real processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from api_bed import ENV, HOSPITAL_TOKEN, STIN, auth, config, example_bytes, system_entry

CLI = [sys.executable, "-m", "bridge.cli"]


class Receiver(ThreadingHTTPServer):
    """A municipality's FHIR endpoint that takes every POST with 200 and remembers the bodies."""

    daemon_threads = True

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                outer.bodies.append(self.rfile.read(length))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, receiver_port: int) -> Path:
    def change(data: dict[str, Any]) -> None:
        system_entry(data, "herlev-municipality")["endpoint"] = (
            f"http://127.0.0.1:{receiver_port}/fhir/$process-message"
        )
        data["dispatcher"]["poll_interval"] = "100ms"
        data["dispatcher"]["shutdown_grace"] = "5s"

    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, change)), encoding="utf-8")
    return path


def start(config_path: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "serve", "--config", str(config_path), "--port", str(port), "--log-level", "warning", *extra],
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_ready(port: int, process: subprocess.Popen[bytes], path: str = "/readyz") -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited: {process.communicate()[1].decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    process.communicate()
    raise AssertionError("serve did not become ready")


def stop(process: subprocess.Popen[bytes]) -> tuple[int, str]:
    """SIGTERM, then the exit code and stderr (the pipes are closed)."""
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return process.returncode, err.decode(errors="replace")


def test_serve_accepts_delivers_and_stops_on_sigterm(tmp_path: Path, receiver: Receiver) -> None:
    port = free_port()
    process = start(write_config(tmp_path, receiver.server_address[1]), port)
    try:
        wait_ready(port, process)
        body = example_bytes(STIN)
        response = httpx.post(
            f"http://127.0.0.1:{port}/fhir/$process-message",
            content=body,
            headers={"Content-Type": "application/fhir+json", **auth(HOSPITAL_TOKEN)},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 20
        while not receiver.bodies and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.bodies == [body]
    finally:
        code, err = stop(process)
    assert code == 0, err
    assert "Traceback" not in err


def test_worker_role_serves_health_only(tmp_path: Path, receiver: Receiver) -> None:
    port = free_port()
    process = start(write_config(tmp_path, receiver.server_address[1]), port, "--role", "worker")
    try:
        wait_ready(port, process, "/healthz")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok", "role": "worker"}
        assert httpx.post(f"http://127.0.0.1:{port}/fhir/$process-message", content=b"{}").status_code == 404
    finally:
        code, err = stop(process)
    assert code == 0, err


def test_serve_refuses_an_invalid_configuration(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nsystems: []\n", encoding="utf-8")
    result = subprocess.run(
        [*CLI, "serve", "--config", str(path)], capture_output=True, env={**os.environ, **ENV}, timeout=60
    )
    assert result.returncode == 1
    assert b"Traceback" not in result.stderr
    assert b"store" in result.stdout


def test_config_check_names_each_problem(tmp_path: Path) -> None:
    good = write_config(tmp_path, 9)
    ok = subprocess.run([*CLI, "config", "check", str(good)], capture_output=True, env={**os.environ, **ENV})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(b"ok:")
    data = yaml.safe_load(good.read_text(encoding="utf-8"))
    data["systems"][1]["endpoint"] = "ftp://example"
    data["routing"][0]["to"] = ["nobody"]
    data["retry"]["jitter"] = "some"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = subprocess.run(
        [*CLI, "config", "check", str(bad)], capture_output=True, env={**os.environ, **ENV}
    )
    assert result.returncode == 1
    lines = result.stdout.decode().splitlines()
    assert any(line.startswith("error: systems[1].endpoint:") for line in lines), lines
    assert any(line.startswith("error: retry.jitter:") for line in lines), lines
    no_env = subprocess.run(
        [*CLI, "config", "check", str(bad)],
        capture_output=True,
        env={k: v for k, v in os.environ.items() if k not in ENV},
    )
    assert no_env.returncode == 1
