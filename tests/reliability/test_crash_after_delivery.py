"""A crash after the receiver's 2xx and before the commit that marks the delivery done.

The worker runs with ``BRIDGE_FAULT_AFTER_DELIVERY=1`` (the dispatcher's fault-injection hook): it posts
the message, gets the receiver's 2xx and Acknowledgement, and ends the process (exit code 137, as after
SIGKILL) before storing that result. The delivery is still leased to the dead worker; when its lease
expires a second worker delivers it again - with the same MessageHeader.id, so the receiver recognises
the duplicate and answers with the same receipt. Exactly one redelivery: two requests, one message.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from harness import HOSPITAL_TOKEN, Proc, header_id, post_fhir, wait_until
from nodes import config, node, open_claims, sims, with_store

from bridge.delivery.dispatcher import FAULT_AFTER_DELIVERY_ENV
from bridge.simulators import traffic

pytestmark = pytest.mark.reliability


def test_crash_between_the_2xx_and_the_commit_costs_exactly_one_redelivery(
    engine_url: str, tmp_path: Path, started: list[Proc]
) -> None:
    hospital, municipality, _ = sims(tmp_path)
    started += [hospital, municipality]
    settings = config(tmp_path, engine_url, hospital=hospital, municipality=municipality, lease="2s")
    api = node(tmp_path, settings, "api", "api").start()
    started.append(api)
    faulty = node(tmp_path, settings, "worker", "worker-faulty", env={FAULT_AFTER_DELIVERY_ENV: "1"}).start()
    started.append(faulty)

    message = traffic.notification(traffic.admission(4242))
    hid = header_id(message)
    with api.client(HOSPITAL_TOKEN) as client:
        assert post_fhir(client, orjson.dumps(message)).status_code == 200

    assert faulty.popen is not None
    assert faulty.popen.wait(30) == 137, faulty.log_tail()
    assert FAULT_AFTER_DELIVERY_ENV in faulty.log_path.read_text()
    first = municipality.state()
    assert [m["header_id"] for m in first["messages"]] == [hid]
    assert first["requests"] == 1 and first["duplicates"] == 0
    # The 2xx was never recorded: the delivery is still leased to the dead worker, with no attempt stored.
    assert open_claims(engine_url) == {"leased": 1, "pending": 0}

    healthy = node(tmp_path, settings, "worker", "worker").start()
    started.append(healthy)
    wait_until(lambda: municipality.state()["duplicates"] >= 1, 30, "the redelivery", healthy)
    wait_until(lambda: not any(open_claims(engine_url).values()), 30, "the delivery to be done", healthy)
    # The receipt of the redelivery reaches the sender; the first one died with the worker.
    wait_until(lambda: len(hospital.receipts()) >= 1, 30, "the receipt at the hospital", healthy)

    after = municipality.state()
    assert after["requests"] == 2  # exactly one redelivery
    assert after["duplicates"] == 1  # recognised by the receiver as a duplicate
    assert [(m["header_id"], m["copies"]) for m in after["messages"]] == [(hid, 2)]
    receipts = hospital.receipts()
    assert [(r["acknowledged_id"], r["code"]) for r in receipts] == [(hid, "ok")]

    store = with_store(engine_url)
    try:
        trace = store.message_trace(hid)
    finally:
        store.close()
    assert trace is not None
    to_municipality = [d for d in trace.deliveries if d.delivery.destination == "herlev-municipality"]
    assert len(to_municipality) == 1
    delivery = to_municipality[0]
    assert delivery.delivery.state == "delivered"
    assert delivery.delivery.receipt_code == "ok"
    assert delivery.delivery.attempts == 2  # claimed twice: by the crashed worker and by the healthy one
    assert [(a.outcome, a.status_code) for a in delivery.attempts] == [("delivered", 200)]
