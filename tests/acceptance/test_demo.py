"""``make run``: the example configuration with simulated peers shows messages flowing both ways.

The demo runs as a real process with a copy of ``examples/bridge.yaml`` moved to free ports, stops by
itself after a few seconds, and must have shown each kind of traffic.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml
from harness import PROJECT, free_port


def _on_free_ports(config: dict[str, object]) -> dict[str, object]:
    config["listen"] = {"host": "127.0.0.1", "port": free_port()}
    for system in config["systems"]:  # type: ignore[attr-defined]
        parts = urlsplit(system["endpoint"])
        system["endpoint"] = urlunsplit(parts._replace(netloc=f"127.0.0.1:{free_port()}"))
    return config


def test_make_run_shows_messages_flowing_both_ways(tmp_path: Path) -> None:
    config = _on_free_ports(yaml.safe_load((PROJECT / "examples" / "bridge.yaml").read_text()))
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        k: v for k, v in os.environ.items() if k not in ("BRIDGE_CITIZEN_KEY_SECRET", "HERLEV_OUTBOUND_TOKEN")
    }
    done = subprocess.run(
        [sys.executable, "-m", "bridge.demo", "--config", str(path), "--seconds", "12", "--interval", "0.4"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    out = done.stdout
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Hospital -> municipality (FHIR and municipal JSON), and back: correspondence and a routed record.
    assert "herlev-municipality | received hospital-notification STIN" in out, out[-3000:]
    assert "rehab-municipality | received hospital-stay-event-v1 STIN" in out, out[-3000:]
    assert "herlev-gentofte-hospital | received care-communication" in out, out[-3000:]
    assert "herlev-gentofte-hospital | received fhir-record" in out, out[-3000:]
    assert "INVALID" not in out
    assert (tmp_path / "var" / "bridge.db").exists()  # the example's store, relative to the working dir
    summary = out.split("What each simulated system received:", 1)[1]
    assert "herlev-gentofte-hospital: received" in summary and "receipts:" in summary
