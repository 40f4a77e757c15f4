"""The overview's numbers come from the store: the backlog per destination and the audit trail's last hour."""

from __future__ import annotations

import re
from contextlib import closing
from datetime import timedelta

import httpx
from api_bed import HOSPITAL_TOKEN, OPERATOR_TOKEN, SLHJ, auth, example_bytes
from console_bed import Console

from bridge import audit
from bridge.console.stats import last_seq, overview
from bridge.outbox.port import NewMessage

HERLEV = "herlev-municipality"


def _outcome(console: Console, ago: timedelta, outcome: audit.DeliveryOutcome, destination: str) -> None:
    console.store.append_audit(
        audit.delivery_outcome(
            recorded=console.clock.now() - ago,
            actor="worker-1",
            destination=destination,
            message_id="m-1",
            header_id="h-1",
            outcome=outcome,
        )
    )


def _row(html: str, destination: str) -> list[str]:
    table = html.split('id="destinations"', 1)[1].split("</table>", 1)[0]
    for row in re.findall(r"<tr>(.*?)</tr>", table):
        cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", row)]
        if cells and cells[0] == destination:
            return cells
    raise AssertionError(f"no row for {destination}")


def test_the_overview_shows_backlog_age_and_the_last_hour_per_destination(console: Console) -> None:
    console.dead_letter()  # one dead delivery to Herlev
    console.clock.advance(timedelta(minutes=3))
    for minutes in (0, 10, 12):  # one at this very moment
        _outcome(console, timedelta(minutes=minutes), "delivered", HERLEV)
    _outcome(console, timedelta(minutes=40), "retry", HERLEV)
    _outcome(console, timedelta(minutes=50), "dead-lettered", HERLEV)
    _outcome(console, timedelta(hours=2), "delivered", HERLEV)  # outside the hour
    _outcome(console, timedelta(minutes=1), "replayed", HERLEV)  # not a delivery outcome
    _outcome(console, timedelta(minutes=2), "delivered", "rehab-municipality")

    with closing(console.sign_in(OPERATOR_TOKEN)) as client:
        page = client.get("/console/overview")
    assert page.status_code == 200
    herlev = _row(page.text, HERLEV)
    assert herlev[1:] == ["0", "-", "3", "2", "1"]  # depth, oldest, delivered, failed, dead
    rehab = _row(page.text, "rehab-municipality")
    assert rehab[3:5] == ["1", "0"]
    assert page.text.count("<svg") == len(console.settings.systems)
    # Nothing is loaded from anywhere: no URL but the SVG namespace, no script.
    assert "last hour" in page.text and "<script" not in page.text
    assert "http://" not in page.text.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_queue_depth_and_oldest_age_count_open_deliveries(console: Console) -> None:
    console.dead_letter()
    # A second message, left pending: the backlog of one, waiting since it was accepted.
    with httpx.Client(base_url=console.url) as system:
        answer = system.post(
            "/fhir/$process-message",
            content=example_bytes(SLHJ),
            headers={"Content-Type": "application/fhir+json", **auth(HOSPITAL_TOKEN)},
        )
    assert answer.status_code == 200, answer.text
    console.clock.advance(timedelta(minutes=7, seconds=5))
    view = overview(console.store, [s.id for s in console.settings.systems], console.clock.now())
    herlev = next(d for d in view.destinations if d.destination == HERLEV)
    assert (herlev.depth, herlev.dead) == (1, 1)
    assert herlev.oldest_age == timedelta(minutes=7, seconds=5)
    with closing(console.sign_in(OPERATOR_TOKEN)) as client:
        assert _row(client.get("/console/overview").text, HERLEV)[1:3] == ["1", "7 min 5 s"]


def test_the_end_of_the_audit_trail_is_found_at_any_length(console: Console) -> None:
    store = console.store
    start = last_seq(store)
    for n in range(1, 70):
        store.append_audit(audit.console_action(recorded=console.clock.now(), actor="t", action="view"))
        assert last_seq(store) == start + n


def test_a_busy_hour_is_read_from_its_newest_records_and_says_so(console: Console) -> None:
    for _ in range(30):
        _outcome(console, timedelta(minutes=1), "delivered", HERLEV)
    view = overview(console.store, [HERLEV], console.clock.now(), max_records=10)
    assert not view.complete
    full = overview(console.store, [HERLEV], console.clock.now())
    assert full.complete and full.destinations[0].delivered == 30


def test_text_from_the_store_is_escaped(console: Console) -> None:
    hostile = '<script>alert("x")</script>'
    console.store.accept(
        NewMessage(
            bundle_id="b-hostile",
            header_id=hostile,
            sender=hostile,
            kind="care-communication",
            citizen_key=None,
            payload=b"{}",
            content_type="application/fhir+json",
            received_at=console.clock.now(),
        ),
        [],
        audit.console_action(recorded=console.clock.now(), actor="t", action="view"),
    )
    with closing(console.sign_in(OPERATOR_TOKEN)) as client:
        page = client.get("/console/messages")
    assert "<script>" not in page.text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page.text
