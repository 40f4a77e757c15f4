"""A first look at the bridge.

    python -m bridge.demo [--config examples/bridge.yaml] [--seconds N] [--citizens N]   (make run)
    python -m bridge.demo translate [EXAMPLES_DIR]                                      (make demo)

The default starts the bridge service (``fhir-bridge serve``) with the example configuration and a
simulated peer for every system in it, all on loopback: the hospital admits and discharges synthetic
citizens, each municipality answers an admission with a correspondence, and the FHIR municipality also
sends a care record that the bridge routes to the hospital where the citizen is admitted. Every
process's output is shown with its name. Ctrl-C (or ``--seconds``) stops everything, the senders first
and the bridge gracefully, and prints what each peer received.

``translate`` translates each example record to FHIR R4 and back, and says what happened.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx
import yaml

from bridge.errors import InvalidInput
from bridge.translate import fhir_to_record, parse_record, record_to_fhir

#: The example tokens of ``examples/bridge.yaml`` (documented there next to their hashes); the
#: simulated peers present them. Never use them in a deployment.
EXAMPLE_TOKENS = {
    "herlev-gentofte-hospital": "example-hospital-token-not-for-production",
    "herlev-municipality": "example-herlev-token-not-for-production",
    "rehab-municipality": "example-rehab-token-not-for-production",
}
#: Environment the example configuration reads, with demo values used when they are not set.
DEMO_ENVIRONMENT = {"HERLEV_OUTBOUND_TOKEN": "example-outbound-token-for-herlev"}


# --------------------------------------------------------------------------------------------- translate
def run(directory: Path) -> int:
    """Translate every example record to FHIR and back; print one line per record."""
    records = sorted((directory / "records").glob("*.json"))
    if not records:
        sys.stderr.write(f"fhir-bridge demo: no records under {directory / 'records'}\n")
        return 2
    for path in records:
        try:
            record = parse_record(path.read_bytes())
            bundle = record_to_fhir(record)
            back, outcome = fhir_to_record(bundle)
        except InvalidInput as exc:
            sys.stderr.write(f"{path.name}: {exc.outcome.summary()}\n")
            return 1
        kinds = Counter(e["resource"]["resourceType"] for e in bundle["entry"])
        summary = ", ".join(f"{n} {t}" for t, n in kinds.items())
        same = "the same record" if back == record and not outcome.issues else "a different record"
        sys.stdout.write(f"{path.name}: {len(bundle['entry'])} resources ({summary}); back: {same}\n")
    sys.stdout.write(
        "\nTry it yourself:\n"
        f"  fhir-bridge translate --to fhir {records[0]} | fhir-bridge translate --to municipal\n"
    )
    return 0


# ----------------------------------------------------------------------------------------------- service
class Child:
    """One process of the demo; its output lines are shown prefixed with its name."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], out: IO[str], lock: threading.Lock
    ) -> None:
        self.name = name
        # A session of its own: Ctrl-C reaches only the demo, which stops the children in order.
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._copy, args=(out, lock), daemon=True)
        self._pump.start()

    def _copy(self, out: IO[str], lock: threading.Lock) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.rstrip()
            if text.startswith(("[hospital]", "[municipality]")):
                text = text.split("] ", 1)[1] if "] " in text else text
            with lock:
                out.write(f"{self.name:>20} | {text}\n")
                out.flush()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._pump.join(2)


def _port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _first_org(system: dict[str, Any]) -> str:
    org = system["organisations"][0]
    return f"{org.get('sor') or ''}/{org.get('gln') or ''}"


def _wait_ready(url: str, child: Child, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.proc.poll() is None:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _summary(name: str, port: int) -> str:
    try:
        state = httpx.get(f"http://127.0.0.1:{port}/_sim/state", timeout=2).json()
    except httpx.HTTPError:
        return f"{name}: not reachable"
    kinds = Counter(m["code"] or m["kind"] for m in state["messages"])
    receipts = Counter(r["code"] for r in state["receipts"])
    got = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "nothing"
    acks = ", ".join(f"{n} {c}" for c, n in sorted(receipts.items())) or "none"
    return f"{name}: received {got}; receipts: {acks}; duplicates: {state['duplicates']}"


def run_service(config: Path, *, seconds: float, citizens: int, interval: float) -> int:
    """Run the bridge and a simulated peer per configured system until Ctrl-C or ``seconds``."""
    data = yaml.safe_load(config.read_text())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("BRIDGE_CITIZEN_KEY_SECRET", secrets.token_hex(32))
    for name, value in DEMO_ENVIRONMENT.items():
        env.setdefault(name, value)
    listen = data.get("listen") or {}
    base = f"http://{listen.get('host', '127.0.0.1')}:{listen.get('port', 8080)}"
    systems = list(data.get("systems") or [])
    hospitals = [s for s in systems if s["kind"] == "hospital"]
    municipalities = [s for s in systems if s["kind"] == "municipality"]
    if not hospitals or not municipalities:
        sys.stderr.write("fhir-bridge demo: the configuration needs a hospital and a municipality\n")
        return 2

    lock = threading.Lock()
    out = sys.stdout
    stopping = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    sim = [sys.executable, "-m", "bridge.simulators"]
    peers: list[tuple[str, int, Child]] = []
    senders: list[Child] = []
    bridge: Child | None = None
    try:
        for system in municipalities:
            port = _port(system["endpoint"])
            argv = [*sim, "municipality", "--port", str(port), "--speaks", system.get("format", "fhir")]
            org = system["organisations"][0]
            argv += ["--to", _first_org(hospitals[0])]
            argv += ["--sor", org["sor"]] if org.get("sor") else []
            argv += ["--gln", org["gln"]] if org.get("gln") else []
            token = EXAMPLE_TOKENS.get(system["id"])
            if token:
                argv += ["--bridge", base, "--token", token, "--reply"]
                if system.get("format", "fhir") == "fhir":
                    argv.append("--records")
            child = Child(system["id"], argv, env, out, lock)
            peers.append((system["id"], port, child))
        hospital = hospitals[0]
        hospital_port = _port(hospital["endpoint"])
        bridge = Child("bridge", [_fhir_bridge(), "serve", "--config", str(config)], env, out, lock)
        if not _wait_ready(f"{base}/readyz", bridge):
            sys.stderr.write("fhir-bridge demo: the bridge did not become ready; see its output above\n")
            return 1
        argv = [*sim, "hospital", "--port", str(hospital_port), "--bridge", base]
        argv += ["--token", EXAMPLE_TOKENS.get(hospital["id"], ""), "--send", str(citizens)]
        argv += ["--interval", str(interval), "--start-delay", "1"]
        for system in municipalities:
            argv += ["--to", _first_org(system)]
        child = Child(hospital["id"], argv, env, out, lock)
        peers.append((hospital["id"], hospital_port, child))
        senders.append(child)
        with lock:
            out.write(f"\nThe bridge listens on {base} (API docs: {base}/docs). Messages flow below.\n\n")
        deadline = time.monotonic() + seconds if seconds > 0 else None
        while not stopping.wait(0.2):
            if deadline is not None and time.monotonic() > deadline:
                break
            if bridge.proc.poll() is not None:
                sys.stderr.write("fhir-bridge demo: the bridge stopped\n")
                break
        summaries = [_summary(name, port) for name, port, _ in peers]
    finally:
        for child in senders:
            child.stop()
        if bridge is not None:
            bridge.stop()
        for _, _, child in peers:
            child.stop()
    out.write("\nWhat each simulated system received:\n")
    for line in summaries:
        out.write(f"  {line}\n")
    return 0


def _fhir_bridge() -> str:
    script = Path(sys.executable).parent / "fhir-bridge"
    return str(script) if script.exists() else "fhir-bridge"


def main(argv: list[str] | None = None) -> None:
    """``python -m bridge.demo``: the service demo, or ``translate`` for the translation demo."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "translate":
        raise SystemExit(run(Path(args[1]) if len(args) > 1 else Path("examples")))
    parser = argparse.ArgumentParser(prog="python -m bridge.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("examples/bridge.yaml"))
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: at Ctrl-C)")
    parser.add_argument("--citizens", type=int, default=1000, help="how many citizens the hospital admits")
    parser.add_argument("--interval", type=float, default=1.5, help="seconds between hospital messages")
    parsed = parser.parse_args(args)
    raise SystemExit(
        run_service(parsed.config, seconds=parsed.seconds, citizens=parsed.citizens, interval=parsed.interval)
    )


if __name__ == "__main__":
    main()
