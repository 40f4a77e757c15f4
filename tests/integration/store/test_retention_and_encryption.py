"""Retention and encryption at rest on both engines: delivered payloads purged after the period with the
trace and audit trail kept; payloads sealed with AES-GCM in the database, readable through the store with
the key, unreadable without it, and still readable after a key rotation."""

from __future__ import annotations

import base64
import os
import sqlite3
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from bridge.audit import verify_trail
from bridge.clock import FakeClock
from bridge.outbox.encryption import MAGIC, EncryptingStore, PayloadKeyError, encrypting_store, key_id_of
from bridge.outbox.port import (
    AcceptRequest,
    AttemptRecord,
    AuditRecord,
    NewDelivery,
    NewMessage,
    NewReceipt,
    OutboxStore,
    ReceiptCorrelation,
    ReceiptFollowUp,
)
from bridge.outbox.sqlite import SqliteOutboxStore
from bridge.retention import RetentionWorker, purge

from .conftest import (
    ADMISSION,
    DISCHARGE,
    Messages,
    _schema_of,
    load_example,
    postgres_server_url,
    schema_url,
)

LEASE = timedelta(minutes=1)
CPR = b"2509479989"


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _ok(clock: FakeClock) -> AttemptRecord:
    return AttemptRecord(clock.now(), timedelta(milliseconds=5), "delivered", 200, "HTTP 200")


#: What ``{deliveries}`` in a raw query reads: the deliveries with their payloads (a table of their own).
_WITH_PAYLOADS = (
    "(SELECT d.*, p.payload FROM deliveries d JOIN delivery_payloads p USING (seq)) AS deliveries"
)


def _raw(store: OutboxStore, tmp_path: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows as the database owner sees them, outside the bridge."""
    sql = sql.format(deliveries=_WITH_PAYLOADS)
    inner = store.inner if isinstance(store, EncryptingStore) else store
    if isinstance(inner, SqliteOutboxStore):
        conn = sqlite3.connect(inner.path)
        try:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
        finally:
            conn.close()
    with psycopg.connect(schema_url(postgres_server_url(), _schema_of(tmp_path))) as pg:
        rows = pg.execute(sql.encode()).fetchall()
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows]


def test_delivered_payloads_are_purged_after_the_period(
    store: OutboxStore, clock: FakeClock, messages: Messages
) -> None:
    delivered, _, _ = first = messages.from_example(ADMISSION, destinations=("kbh",))
    store.accept(*first)
    dead, _, _ = second = messages.from_example(DISCHARGE, destinations=("aarhus",))
    store.accept(*second)
    claimed = {c.destination: c for c in store.claim_due("w1", clock.now(), LEASE, 10)}
    store.complete(claimed["kbh"].id, "w1", _ok(clock), clock.now())
    store.dead_letter(claimed["aarhus"].id, "w1", None, "HTTP 400", clock.now())

    clock.advance(timedelta(days=29).total_seconds())
    assert purge(store, clock.now(), timedelta(days=30)).deliveries == 0  # not yet
    assert store.message_payload(delivered.id) is not None
    clock.advance(timedelta(days=2).total_seconds())
    result = purge(store, clock.now(), timedelta(days=30), actor="worker-1")
    assert (result.deliveries, result.messages) == (1, 1)

    assert store.message_payload(delivered.id) is None
    assert store.delivery_payload(claimed["kbh"].id) is None
    # Dead letters keep their payload (an operator may replay them); the trace keeps its metadata.
    assert store.delivery_payload(claimed["aarhus"].id) is not None
    assert store.message_payload(dead.id) is not None
    trace = store.message_trace(delivered.id)
    assert trace is not None and trace.message.payload_purged
    [kbh] = trace.deliveries
    assert kbh.delivery.state == "delivered" and kbh.delivery.payload_purged
    assert [a.status_code for a in kbh.attempts] == [200]
    # The purge is audited, and the chain stays whole.
    entries = store.read_audit(limit=100)
    assert entries[-1].record.action == "payload.purged" and entries[-1].record.actor == "worker-1"
    assert verify_trail(store).intact
    assert purge(store, clock.now(), timedelta(days=30)).deliveries == 0
    assert len(store.read_audit(limit=100)) == len(entries)  # nothing dropped, nothing audited


def test_the_retention_worker_purges_in_the_background(
    store: OutboxStore, clock: FakeClock, messages: Messages
) -> None:
    store.accept(*messages.from_example(ADMISSION))
    [c] = store.claim_due("w1", clock.now(), LEASE, 10)
    store.complete(c.id, "w1", _ok(clock), clock.now())
    clock.advance(timedelta(hours=2).total_seconds())
    worker = RetentionWorker(store, clock, timedelta(hours=1), timedelta(milliseconds=20), "worker-1")
    worker.start()
    try:
        import time

        deadline = time.monotonic() + 10
        while store.delivery_payload(c.id) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop()
    assert store.delivery_payload(c.id) is None


def test_payloads_are_sealed_at_rest_and_plain_through_the_store(
    store: OutboxStore, clock: FakeClock, messages: Messages, tmp_path: Path
) -> None:
    sealed = encrypting_store(store, f"k2026={_key()}")
    ex = load_example(ADMISSION)
    message, deliveries, audit = messages.from_example(ADMISSION, destinations=("kbh", "aarhus"))
    sealed.accept(message, deliveries, audit)

    rows = _raw(sealed, tmp_path, "SELECT payload FROM messages UNION ALL SELECT payload FROM {deliveries}")
    assert len(rows) == 3
    for (payload,) in rows:
        assert isinstance(payload, bytes) and payload.startswith(MAGIC) and CPR not in payload
        assert key_id_of(payload) == "k2026"
    # Through the store, with the key: the bytes as received.
    assert sealed.message_payload(message.id) == ex.payload
    claimed = sealed.claim_due("w1", clock.now(), LEASE, 10)
    assert sorted(c.payload for c in claimed) == sorted(d.payload for d in deliveries)
    assert sealed.delivery_payload(claimed[0].id) == claimed[0].payload
    # A resend's new envelope is sealed as well.
    sealed.complete(claimed[0].id, "w1", _ok(clock), clock.now())
    sealed.resend(claimed[0].id, b'{"resent": "2509479989"}', clock.now())
    assert sealed.delivery_payload(claimed[0].id) == b'{"resent": "2509479989"}'
    assert CPR not in (store.delivery_payload(claimed[0].id) or b"")
    # Without the key, the store hands out only the sealed envelope.
    assert CPR not in (store.message_payload(message.id) or b"CPR")


@pytest.mark.parametrize("with_result", [False, True], ids=["receipts", "result-and-receipts"])
def test_a_forwarded_receipt_is_sealed_at_rest_too(
    store: OutboxStore, clock: FakeClock, messages: Messages, tmp_path: Path, with_result: bool
) -> None:
    sealed = encrypting_store(store, f"k2026={_key()}")
    message, deliveries, audit = messages.from_example(ADMISSION, expect_receipt=True)
    sealed.accept(message, deliveries, audit)
    ack = b'{"resourceType": "Bundle", "about": "2509479989"}'

    def forward(correlation: ReceiptCorrelation) -> ReceiptFollowUp:
        forwarded = NewMessage(
            "b-ack", "h-ack", "kbh", "acknowledgement", None, ack, "application/fhir+json", clock.now()
        )
        record = AuditRecord(clock.now(), "receipt.received", "kbh", b"{}", message.id)
        return ReceiptFollowUp(
            forward=AcceptRequest(forwarded, [NewDelivery("rh", ack, "application/fhir+json")], record)
        )

    receipt = NewReceipt("h-ack", message.header_id, "kbh", "ok", clock.now())
    if with_result:  # as the dispatcher stores a delivered result with its receiver's receipt
        (claimed,) = sealed.claim_due("w1", clock.now(), LEASE, 10)
        _, (recorded,) = sealed.complete_with_receipts(
            "w1", [(claimed.id, _ok(clock))], clock.now(), {}, [receipt], forward
        )
    else:
        (recorded,) = sealed.record_receipts([receipt], forward)

    assert recorded.forwarded is not None and not isinstance(recorded.forwarded, Exception)
    (to_rh,) = [d for d in sealed.list_deliveries() if d.destination == "rh"]
    assert sealed.delivery_payload(to_rh.id) == ack
    assert sealed.message_payload(recorded.forwarded.message.id) == ack
    rows = _raw(sealed, tmp_path, "SELECT payload FROM messages WHERE kind = 'acknowledgement'")
    rows += _raw(sealed, tmp_path, "SELECT payload FROM {deliveries} WHERE destination = 'rh'")
    assert len(rows) == 2
    for (payload,) in rows:
        assert isinstance(payload, bytes) and payload.startswith(MAGIC) and CPR not in payload


def test_a_rotated_key_still_opens_old_payloads_and_a_dropped_one_does_not(
    store: OutboxStore, clock: FakeClock, messages: Messages
) -> None:
    old, new = _key(), _key()
    before = encrypting_store(store, f"old={old}")
    first, fd, fa = messages.from_example(ADMISSION)
    before.accept(first, fd, fa)
    rotated = encrypting_store(store, f"new={new},old={old}")
    second, sd, sa = messages.from_example(DISCHARGE)
    rotated.accept(second, sd, sa)
    assert key_id_of(store.message_payload(second.id) or b"") == "new"
    assert rotated.message_payload(first.id) == load_example(ADMISSION).payload
    assert rotated.message_payload(second.id) == load_example(DISCHARGE).payload
    dropped = encrypting_store(store, f"new={new}")
    with pytest.raises(PayloadKeyError, match="sealed with key 'old', which is not configured") as raised:
        dropped.message_payload(first.id)
    assert "2509479989" not in str(raised.value)
    wrong = encrypting_store(store, f"old={_key()}")
    with pytest.raises(PayloadKeyError, match="does not open"):
        wrong.message_payload(first.id)


def test_payloads_stored_before_encryption_stay_readable(
    store: OutboxStore, clock: FakeClock, messages: Messages
) -> None:
    plain, pd, pa = messages.from_example(ADMISSION)
    store.accept(plain, pd, pa)
    sealed = encrypting_store(store, f"k1={_key()}")
    assert sealed.message_payload(plain.id) == load_example(ADMISSION).payload
    [c] = sealed.claim_due("w1", clock.now(), LEASE, 10)
    assert c.payload == pd[0].payload


def test_a_sealed_payload_moved_to_another_row_does_not_open(
    store: OutboxStore, clock: FakeClock, messages: Messages, tmp_path: Path
) -> None:
    sealed = encrypting_store(store, f"k1={_key()}")
    first, fd, fa = messages.from_example(ADMISSION)
    second, sd, sa = messages.from_example(DISCHARGE)
    sealed.accept(first, fd, fa)
    sealed.accept(second, sd, sa)
    # The database owner copies one message's sealed body onto the other's row.
    stolen = store.message_payload(first.id)
    assert stolen is not None
    inner = sealed.inner
    if isinstance(inner, SqliteOutboxStore):
        conn = sqlite3.connect(inner.path)
        try:
            conn.execute("UPDATE messages SET payload = ? WHERE id = ?", (stolen, second.id))
            conn.commit()
        finally:
            conn.close()
    else:
        with psycopg.connect(schema_url(postgres_server_url(), _schema_of(tmp_path))) as pg:
            pg.execute("UPDATE messages SET payload = %s WHERE id = %s", (stolen, second.id))
    with pytest.raises(PayloadKeyError, match="does not open: changed or moved"):
        sealed.message_payload(second.id)
    assert sealed.message_payload(first.id) == load_example(ADMISSION).payload
