"""The running bridge of the hostile-input tier: a real ``fhir-bridge serve`` process on a loopback port,
with its simulated peers, credentials of every role, and the budgets of the fuzzing runs.

The budgets are small in ``make test`` and large in ``make fuzz``; both come from the environment:

- ``BRIDGE_FUZZ_EXAMPLES``: hypothesis examples per fuzzed target (default 25);
- ``BRIDGE_FUZZ_SECONDS``: wall-clock budget of the OpenAPI run against the service (default 60).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness import (
    HOSPITAL_TOKEN,
    MUNICIPALITY_TOKEN,
    OPERATOR_TOKEN,
    Bridge,
    Proc,
    Sim,
    bridge_config,
    free_port,
    hash_token,
)

AUDITOR_TOKEN = "fuzz-auditor-token"
#: limits.max_body_bytes of the fuzzed bridge (small, so the limit itself is reached by the fuzzer).
BODY_LIMIT = 262_144
#: limits.max_depth of the fuzzed bridge.
DEPTH_LIMIT = 64
#: Seconds the bridge waits for the rest of a request body (``limits.body_timeout``).
BODY_TIMEOUT = 2.0
#: Seconds the bridge waits for a connection's first request headers (``limits.header_timeout``).
HEADER_TIMEOUT = 2.0


def examples() -> int:
    """Hypothesis examples per fuzzed target."""
    return int(os.environ.get("BRIDGE_FUZZ_EXAMPLES", "25"))


def seconds() -> float:
    """Wall-clock budget of the OpenAPI run against the service."""
    return float(os.environ.get("BRIDGE_FUZZ_SECONDS", "60"))


@dataclass(frozen=True)
class Target:
    """The running bridge and the credentials of each role it knows."""

    bridge: Bridge
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.bridge.url


def start_target(directory: Path, procs: list[Proc]) -> Target:
    """A bridge with a simulated hospital and municipality, every role, and a failure rate limit far above
    what the fuzzer causes (so refusals stay 401/403 and never turn into 429); what it starts is added to
    ``procs`` for the caller to stop."""
    hospital = Sim("hospital", free_port(), directory, name="hospital").start()
    procs.append(hospital)
    municipality = Sim("municipality", free_port(), directory, name="municipality").start()
    procs.append(municipality)
    config = bridge_config(
        port=free_port(),
        hospital_port=hospital.port,
        municipality_port=municipality.port,
        extra={
            "auditors": [{"name": "fuzz-auditor", "sha256": hash_token(AUDITOR_TOKEN)}],
            "auth": {"rate_limit": {"max_failures": 10_000, "window": "1s"}},
        },
    )
    config["limits"] = {
        "max_body_bytes": BODY_LIMIT,
        "max_depth": DEPTH_LIMIT,
        "body_timeout": f"{BODY_TIMEOUT:g}s",
        "header_timeout": f"{HEADER_TIMEOUT:g}s",
    }
    bridge = Bridge(directory, config)
    procs.append(bridge)
    bridge.start()
    tokens = {
        "hospital": HOSPITAL_TOKEN,
        "municipality": MUNICIPALITY_TOKEN,
        "operator": OPERATOR_TOKEN,
        "auditor": AUDITOR_TOKEN,
    }
    return Target(bridge, tokens)
