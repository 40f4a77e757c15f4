"""The dispatcher with an in-process transport (httpx.MockTransport) and a real SQLite store."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from delivery_bed import ADMISSION, HOSPITAL, KOMMUNE, Bed, message_variant, settings_for

from bridge.outbox.port import AuditRecord, NewDelivery, NewMessage

URL = "http://127.0.0.1:9/fhir"


@pytest.fixture
def make_bed(tmp_path: Path) -> Iterator[Callable[..., Bed]]:
    beds: list[Bed] = []

    def make(**overrides: object) -> Bed:
        bed = Bed(tmp_path, settings_for(URL, URL, URL, **overrides))  # type: ignore[arg-type]
        beds.append(bed)
        return bed

    yield make
    for bed in beds:
        bed.close()


def mock(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


def test_connection_errors_are_transient(make_bed: Callable[..., Bed]) -> None:
    bed = make_bed()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    message = bed.accept(ADMISSION.read_bytes())
    bed.dispatcher(transport=mock(refuse)).run_once()

    trace = bed.delivery(message)
    assert trace.delivery.state == "pending" and trace.delivery.last_error == "ConnectError"
    assert [(a.outcome, a.status_code) for a in trace.attempts] == [("transient", None)]


def test_full_jitter_draws_from_the_injected_random_within_the_ceiling(make_bed: Callable[..., Bed]) -> None:
    bed = make_bed(retry={"jitter": "full", "initial_delay": "10s"})
    messages = [bed.accept(message_variant(ADMISSION), cpr=None) for _ in range(8)]
    failing = mock(lambda _: httpx.Response(503))

    bed.dispatcher(transport=failing, rng=random.Random(7)).run_once()

    start = bed.clock.now()
    delays = [bed.delivery(m).delivery.next_attempt_at - start for m in messages]
    assert all(timedelta(0) <= d <= timedelta(seconds=10) for d in delays)
    assert len(set(delays)) == len(delays)  # spread, not one instant for all


def test_a_redirect_is_not_followed_and_is_permanent(make_bed: Callable[..., Bed]) -> None:
    bed = make_bed()
    seen: list[str] = []

    def redirect(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(307, headers={"Location": "http://127.0.0.1:10/elsewhere"})

    message = bed.accept(ADMISSION.read_bytes())
    bed.dispatcher(transport=mock(redirect)).run_once()

    assert seen == [URL]
    assert bed.delivery(message).delivery.state == "dead"
    assert bed.delivery(message).delivery.last_error == "refused: HTTP 307"


def test_a_delivery_to_an_unconfigured_system_is_dead_and_can_be_replayed(
    make_bed: Callable[..., Bed],
) -> None:
    bed = make_bed()
    now = bed.clock.now()
    message = NewMessage("b-ghost", "h-ghost", HOSPITAL, "hospital-notification", None, b"{}", "x", now)
    delivery = NewDelivery("ghost", b"{}", "application/fhir+json")
    bed.store.accept(message, [delivery], AuditRecord(now, "message.accepted", HOSPITAL, b"{}", message.id))

    assert bed.dispatcher(transport=mock(lambda _: httpx.Response(200))).run_once() == 1

    (dead,) = bed.store.list_deliveries("dead")
    assert dead.last_error == "refused: destination ghost is not configured"


def test_a_response_body_that_is_no_receipt_is_ignored(make_bed: Callable[..., Bed]) -> None:
    bed = make_bed()
    bodies = iter([b'{"resourceType": "OperationOutcome", "issue": []}', b"<<not fhir", b"{}"])
    transport = mock(lambda _: httpx.Response(200, content=next(bodies)))
    messages = [bed.accept(message_variant(ADMISSION), cpr=None) for _ in range(3)]

    bed.dispatcher(transport=transport).run_once()

    for m in messages:
        trace = bed.delivery(m)
        assert (trace.delivery.state, trace.delivery.receipt_code) == ("delivered", None)
    assert [d.destination for d in bed.store.list_deliveries()] == [KOMMUNE] * 3


def test_the_background_loop_delivers_and_wakes_on_notify(make_bed: Callable[..., Bed]) -> None:
    bed = make_bed(dispatcher={"poll_interval": "10s"})
    got: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        got.append(json.loads(request.content)["id"])
        return httpx.Response(200)

    transport = mock(record)
    dispatcher = bed.dispatcher(transport=transport)
    dispatcher.start()
    try:
        message = bed.accept(message_variant(ADMISSION))
        dispatcher.notify()  # without it the loop would sleep for the 10 s poll interval
        deadline = time.monotonic() + 5
        while bed.delivery(message).delivery.state != "delivered" and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        dispatcher.stop(timeout=1)
    assert got == [message.bundle_id]
    with pytest.raises(RuntimeError):
        dispatcher.run_once()


def test_the_loop_survives_an_unavailable_store_and_stops(make_bed: Callable[..., Bed]) -> None:
    bed = make_bed(dispatcher={"poll_interval": "20ms"})
    dispatcher = bed.dispatcher(transport=mock(lambda _: httpx.Response(200)))
    bed.store.close()
    dispatcher.start()
    time.sleep(0.1)
    stopped = threading.Event()

    def stop() -> None:
        dispatcher.stop(timeout=1)
        stopped.set()

    threading.Thread(target=stop, daemon=True).start()
    assert stopped.wait(5)
