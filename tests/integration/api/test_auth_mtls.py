"""Mutual TLS on loopback: ``fhir-bridge serve`` as a real process with ``--tls-*`` options and
certificates the test makes (a CA, a server certificate, client certificates); httpx presents them."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from api_bed import ENV, HOSPITAL, HOSPITAL_TOKEN, STIN, auth, config, example_bytes, system_entry
from pki import CertificateAuthority, Issued

from bridge.outbox import open_store

CLI = [sys.executable, "-m", "bridge.cli"]


@dataclass
class Pki:
    ca: CertificateAuthority
    server: Issued
    hospital: Issued  # registered by thumbprint
    operator: Issued  # registered by subject
    stranger: Issued  # signed by the CA, registered nowhere
    foreign: Issued  # signed by another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder)
    other = CertificateAuthority(folder, "Other CA")
    return Pki(
        ca,
        ca.server(),
        ca.client("hospital", "ehr.herlev-gentofte.test"),
        ca.client("operator", "on-call.bridge.test", "Drift"),
        ca.client("stranger", "unknown.test"),
        other.client("foreign", "ehr.herlev-gentofte.test"),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    port: int
    process: subprocess.Popen[bytes]
    store_url: str
    pki: Pki

    def client(self, cert: Issued | None = None) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.pki.ca.cert_file))
        if cert is not None:
            context.load_cert_chain(str(cert.cert_file), str(cert.key_file))
        return httpx.Client(base_url=f"https://127.0.0.1:{self.port}", verify=context, timeout=10)

    def refusals(self) -> list[tuple[str, str]]:
        store = open_store(self.store_url)
        try:
            entries = store.read_audit(0, 1000)
        finally:
            store.close()
        return [
            (e.record.action, orjson.loads(e.record.body)["outcomeDesc"])
            for e in entries
            if e.record.action.startswith("auth.")
        ]


def serve(tmp_path: Path, pki: Pki, *extra: str) -> Iterator[Service]:
    def change(data: dict[str, Any]) -> None:
        system_entry(data, HOSPITAL)["inbound"]["client_certs"] = [{"sha256": pki.hospital.sha256}]
        data["operators"][0]["client_certs"] = [{"subject": pki.operator.subject}]

    settings = config(tmp_path, change)
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    port = free_port()
    tls = ["--tls-cert", str(pki.server.cert_file), "--tls-key", str(pki.server.key_file)]
    tls += ["--tls-client-ca", str(pki.ca.cert_file), *extra]
    process = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--config",
            str(path),
            "--port",
            str(port),
            "--role",
            "api",
            "--log-level",
            "warning",
            *tls,
        ],
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    service = Service(port, process, settings["store"]["url"], pki)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited: {process.communicate()[1].decode()[-2000:]}")
            try:
                with service.client(pki.hospital) as probe:
                    if probe.get("/healthz").status_code == 200:
                        break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("serve did not become ready")
            time.sleep(0.1)
        yield service
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        assert b"Traceback" not in err, err.decode(errors="replace")


@pytest.fixture
def optional(tmp_path: Path, pki: Pki) -> Iterator[Service]:
    yield from serve(tmp_path, pki)


@pytest.fixture
def required(tmp_path: Path, pki: Pki) -> Iterator[Service]:
    yield from serve(tmp_path, pki, "--tls-require-client-cert")


def post(client: httpx.Client, token: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/fhir+json", **(auth(token) if token else {})}
    return client.post("/fhir/$process-message", content=example_bytes(STIN), headers=headers)


def test_a_registered_certificate_is_its_system(optional: Service) -> None:
    with optional.client(optional.pki.hospital) as hospital:
        sent = post(hospital)  # no token at all: the certificate says who is calling
        assert sent.status_code == 200, sent.text
        trace = hospital.get(f"/messages/{sent.json()['id']}")
        assert trace.status_code == 200 and trace.json()["sender"] == HOSPITAL
        # An operator endpoint is not the hospital's.
        assert hospital.get("/deliveries").status_code == 403
    with optional.client(optional.pki.operator) as operator:
        assert operator.get("/deliveries").status_code == 200  # identified by subject
        assert operator.get(f"/messages/{sent.json()['id']}").status_code == 200
    assert [a for a, _ in optional.refusals()] == ["auth.forbidden"]


def test_unknown_and_missing_certificates_are_refused(optional: Service) -> None:
    with optional.client(optional.pki.stranger) as stranger:
        refused = post(stranger)
        assert refused.status_code == 401
        assert refused.json()["issue"][0]["diagnostics"].startswith(
            "The client certificate is not registered"
        )
    with optional.client() as anonymous:
        assert post(anonymous).status_code == 401
        assert post(anonymous, HOSPITAL_TOKEN).status_code == 200  # a certificate is optional here
    with optional.client(optional.pki.operator) as operator:
        # The certificate names the operator, the token the hospital: refused.
        mixed = post(operator, HOSPITAL_TOKEN)
        assert mixed.status_code == 401 and "different callers" in mixed.text
    with pytest.raises(httpx.TransportError), optional.client(optional.pki.foreign) as foreign:
        post(foreign)  # the TLS handshake fails: another CA signed it
    reasons = optional.refusals()
    assert [a for a, _ in reasons] == ["auth.refused"] * 3
    assert "claimed cert:" + optional.pki.stranger.sha256 in reasons[0][1]


def test_a_required_certificate_is_checked_in_the_handshake(required: Service) -> None:
    with pytest.raises(httpx.TransportError), required.client() as anonymous:
        post(anonymous, HOSPITAL_TOKEN)
    with required.client(required.pki.hospital) as hospital:
        assert post(hospital).status_code == 200


def test_serve_refuses_half_a_tls_configuration(tmp_path: Path, pki: Pki) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path)), encoding="utf-8")
    for extra, why in (
        (["--tls-cert", str(pki.server.cert_file)], "--tls-cert and --tls-key go together"),
        (["--tls-cert", str(pki.server.cert_file), "--tls-key", str(tmp_path / "nope.key")], "no such file"),
        (
            [
                "--tls-cert",
                str(pki.server.cert_file),
                "--tls-key",
                str(pki.server.key_file),
                "--tls-require-client-cert",
            ],
            "needs the CA",
        ),
    ):
        done = subprocess.run(
            [*CLI, "serve", "--config", str(path), "--port", "1", *extra],
            env={**os.environ, **ENV},
            capture_output=True,
            timeout=60,
        )
        assert done.returncode != 0 and why in done.stderr.decode(), done.stderr.decode()
