"""Every bridge process on a host names its dispatcher differently, also where memory addresses repeat.

A lease names its holder by worker id. Two processes with one id could each pass for the other: a
result that arrives after its lease expired and was claimed again would still be stored. The id was the
host name and the store object's address; without address-space randomisation (``setarch -R``, some
sandboxes and debuggers) and with a fixed ``PYTHONHASHSEED``, two processes started alike get the same
addresses, hence the same id.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.reliability

SUPPORT = Path(__file__).resolve().parents[1] / "support"
WORKER_ID = """
import sys
from bridge.app import _new_dispatcher
from bridge.clock import SystemClock
from bridge.outbox.sqlite import SqliteOutboxStore
from delivery_bed import settings_for

store = SqliteOutboxStore(sys.argv[1])
unused = "http://127.0.0.1:9/unused"
print(_new_dispatcher(settings_for(unused, unused, unused), store, SystemClock(), None, None).worker_id)
"""


def test_two_processes_alike_get_different_worker_ids_even_without_address_randomisation(
    tmp_path: Path,
) -> None:
    setarch = shutil.which("setarch")
    if setarch is None:
        pytest.skip("setarch (util-linux) is needed to switch address randomisation off")
    # A fixed hash seed and no address randomisation: two processes allocate exactly alike.
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]),
    }
    ids = [
        subprocess.run(
            [setarch, platform.machine(), "-R", sys.executable, "-c", WORKER_ID, str(tmp_path / f"{i}.db")],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            timeout=60,
        ).stdout.strip()
        for i in range(2)
    ]
    assert all(ids), ids
    assert ids[0] != ids[1]
