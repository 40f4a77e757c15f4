"""What only the SQLite adapter promises: its file settings, its migrations, its URL, its durability."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.clock import FakeClock
from bridge.outbox import open_store
from bridge.outbox.keys import citizen_key
from bridge.outbox.port import AuditRecord, StoreError
from bridge.outbox.sql import load_migrations, load_queries
from bridge.outbox.sqlite import SqliteOutboxStore, split_statements, sqlite_path_from_url

from .conftest import ADMISSION, LEGACY_DELIVERIES, LEGACY_HEADS, SECRET, Messages, assert_heads, load_example

PROJECT = Path(__file__).resolve().parents[3]


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteOutboxStore]:
    store = SqliteOutboxStore(tmp_path / "outbox.db")
    store.migrate()
    yield store
    store.close()


def test_durability_settings(sqlite_store: SqliteOutboxStore) -> None:
    raw = sqlite3.connect(sqlite_store.path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()
    conn = sqlite_store._writer  # the adapter's own connection: synchronous is per connection
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_schema_is_all_migrations_applied(sqlite_store: SqliteOutboxStore) -> None:
    migrations = load_migrations("sqlite")
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert sqlite_store.schema_version() == len(migrations)
    assert sqlite_store.migrate() == 0
    # A fresh database built from the migration files by hand has exactly the adapter's schema.
    fresh = sqlite3.connect(":memory:")
    for migration in migrations:
        fresh.executescript(migration.sql)
    raw = sqlite3.connect(sqlite_store.path)
    query = "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    try:
        ours = [r for r in raw.execute(query) if r[1] != "schema_version"]
        assert ours == fresh.execute(query).fetchall()
    finally:
        raw.close()
        fresh.close()


def test_every_query_prepares_against_the_schema(sqlite_store: SqliteOutboxStore) -> None:
    conn = sqlite_store._writer
    for name, sql in load_queries("sqlite").items():
        try:
            conn.execute(f"EXPLAIN {sql}", {})
        except sqlite3.ProgrammingError:
            pass  # missing bindings: the statement parsed and resolved
        except sqlite3.Error as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"query {name}: {exc}")


def _plan(conn: sqlite3.Connection, name: str) -> list[str]:
    """The EXPLAIN QUERY PLAN lines of a named query (every parameter a string)."""
    sql = load_queries("sqlite")[name]
    params = dict.fromkeys(re.findall(r":(\w+)", sql), "x")
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", {**params, "skip": "[]"})]


# The statements of the delivery path that run once per delivery, receipt or head move: each looks its
# rows up by an index, none walks the deliveries or messages table (json_each and a query's own
# materialised CTE are scanned, and they are small).
_INDEXED = [
    "insert_delivery",
    "store_delivery_payload",
    "claim_expired",
    "claim_pending",
    "claim_pending_to",
    "complete",
    "dead_letter",
    "retry_dead",
    "resend",
    "recompute_head",
    "receipt_by_ack",
    "delivery_for_receipt",
    "set_receipt",
    "receipt_overdue",
]


@pytest.mark.parametrize("name", _INDEXED)
def test_the_delivery_path_looks_rows_up_by_index(sqlite_store: SqliteOutboxStore, name: str) -> None:
    plan = _plan(sqlite_store._writer, name)
    scans = [line for line in plan if re.match(r"SCAN (deliveries|d|o|messages|m|receipts|r)\b", line)]
    assert scans == [], plan


def test_a_receipt_finds_its_delivery_through_the_message_header(sqlite_store: SqliteOutboxStore) -> None:
    # No index on deliveries.header_id: the message's unique header id, then (message, destination).
    plan = _plan(sqlite_store._writer, "delivery_for_receipt")
    assert "SEARCH messages USING INDEX sqlite_autoindex_messages_3 (header_id=?)" in plan
    assert "SEARCH deliveries USING INDEX deliveries_message (message_id=? AND destination=?)" in plan


@pytest.mark.parametrize(
    ("name", "search"),
    [
        ("claim_expired", "SEARCH d USING INDEX deliveries_leases (lease_expires_at<?)"),
        ("receipt_overdue", "SEARCH deliveries USING INDEX deliveries_awaiting_receipt (delivered_at<?)"),
    ],
)
def test_expired_leases_and_overdue_receipts_are_read_in_order_from_their_own_index(
    sqlite_store: SqliteOutboxStore, name: str, search: str
) -> None:
    # Not from deliveries_state by state, which holds every lease or every delivered delivery.
    plan = _plan(sqlite_store._writer, name)
    assert search in plan
    assert not any("TEMP B-TREE" in line for line in plan)


def test_a_list_of_one_state_reads_that_state_alone_in_order(sqlite_store: SqliteOutboxStore) -> None:
    # The dead-letter list: not a walk of every delivery ever stored, and no sort.
    plan = _plan(sqlite_store._writer, "list_deliveries_in_state")
    assert "SEARCH deliveries USING INDEX deliveries_state (state=?)" in plan
    assert not any("TEMP B-TREE" in line for line in plan)


def test_a_head_move_reads_the_pairs_oldest_open_deliveries(sqlite_store: SqliteOutboxStore) -> None:
    plan = _plan(sqlite_store._writer, "recompute_head")
    assert "SEARCH deliveries USING INDEX deliveries_open_pairs (citizen_key=? AND destination=?)" in plan
    assert not any("TEMP B-TREE" in line for line in plan)  # the index yields them in seq order


def test_a_newer_database_is_refused(sqlite_store: SqliteOutboxStore) -> None:
    raw = sqlite3.connect(sqlite_store.path)
    raw.execute("INSERT INTO schema_version VALUES (99, 'future', '2030-01-01T00:00:00.000000Z')")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="newer than this bridge knows"):
        sqlite_store.migrate()


def test_the_audit_trail_refuses_edits(sqlite_store: SqliteOutboxStore) -> None:
    sqlite_store.append_audit(AuditRecord(FakeClock().now(), "message.accepted", "rh", b"{}"))
    raw = sqlite3.connect(sqlite_store.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("UPDATE audit SET actor = 'someone-else'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("DELETE FROM audit")
    finally:
        raw.close()


def test_no_cpr_number_outside_the_payloads(sqlite_store: SqliteOutboxStore, clock: FakeClock) -> None:
    example = load_example(ADMISSION)
    assert example.cpr is not None
    args = Messages(clock).from_example(ADMISSION, destinations=("kbh", "aarhus"))
    sqlite_store.accept(*args)
    for c in sqlite_store.claim_due("w1", clock.now(), timedelta(minutes=1), limit=10):
        sqlite_store.dead_letter(c.id, "w1", None, "refused", clock.now())

    raw = sqlite3.connect(sqlite_store.path)
    try:
        tables = [r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        hits = []
        for table in tables:
            columns = [r[1] for r in raw.execute(f"PRAGMA table_info({table})")]
            for column in columns:
                if (table, column) in {
                    ("messages", "payload"),
                    ("delivery_payloads", "payload"),
                    ("audit", "body"),
                }:
                    continue
                rows = raw.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE CAST({column} AS TEXT) LIKE ?", (f"%{example.cpr}%",)
                )
                if rows.fetchone()[0]:
                    hits.append(f"{table}.{column}")
        assert hits == []
        payloads = raw.execute(
            "SELECT COUNT(*) FROM messages WHERE CAST(payload AS TEXT) LIKE ?", (f"%{example.cpr}%",)
        )
        assert payloads.fetchone()[0] == 1  # the CPR is there, inside the payload, as it must be
    finally:
        raw.close()


def test_citizen_keys() -> None:
    cpr = load_example(ADMISSION).cpr
    assert cpr is not None
    key = citizen_key(cpr, SECRET)
    assert len(key) == 64 and cpr not in key
    assert citizen_key(f"{cpr[:6]}-{cpr[6:]}", SECRET) == key  # the written form does not matter
    assert citizen_key(cpr, SECRET + b"!") != key
    with pytest.raises(ValueError, match="at least"):
        citizen_key(cpr, b"short")
    with pytest.raises(ValueError):
        citizen_key("  ", SECRET)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///var/bridge.db", Path("var/bridge.db")),
        ("sqlite:////var/lib/bridge/outbox.db", Path("/var/lib/bridge/outbox.db")),
        ("sqlite:///my%20dir/x.db", Path("my dir/x.db")),
    ],
)
def test_sqlite_urls(url: str, path: Path) -> None:
    assert sqlite_path_from_url(url) == path


@pytest.mark.parametrize(
    "url", ["postgresql://db/bridge", "sqlite://host/x.db", "sqlite:///", "sqlite:///dir/"]
)
def test_bad_sqlite_urls(url: str) -> None:
    with pytest.raises(ValueError):
        sqlite_path_from_url(url)


def test_open_store_by_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # sqlite:/// URLs are relative to the working directory
    store = open_store("sqlite:///var/bridge.db")
    try:
        store.ping()
        assert (tmp_path / "var" / "bridge.db").exists()
        assert store.migrate() == 0  # open_store migrated already
    finally:
        store.close()
    with pytest.raises(ValueError, match="unsupported store URL"):
        open_store("mysql://db/bridge")


def test_split_statements_keeps_trigger_bodies_whole() -> None:
    script = textwrap.dedent(
        """
        -- a comment
        CREATE TABLE t (x INTEGER);
        CREATE TRIGGER t_no_delete BEFORE DELETE ON t
        BEGIN
            SELECT RAISE(ABORT, 'no; really');
        END;
        INSERT INTO t VALUES (1);
        """
    )
    statements = split_statements(script)
    assert len(statements) == 3 and statements[1].endswith("END;")
    with pytest.raises(ValueError, match="incomplete"):
        split_statements("CREATE TABLE t (x INTEGER)")


_ACCEPT_THEN_DIE = textwrap.dedent(
    """
    import json, os, signal, sys
    from datetime import UTC, datetime
    from bridge.outbox.port import AuditRecord, NewDelivery, NewMessage
    from bridge.outbox.sqlite import SqliteOutboxStore

    store = SqliteOutboxStore(sys.argv[1])
    store.migrate()
    now = datetime.now(UTC)
    accepted = []
    for i in range(int(sys.argv[2])):
        ct = "application/fhir+json"
        m = NewMessage(f"b-{i}", f"h-{i}", "rh", "hospital-notification", None, b"{}", ct, now)
        store.accept(m, [NewDelivery("kbh", b"{}", ct)], AuditRecord(now, "accepted", "rh", b"{}"))
        accepted.append(m.id)
    # Report what was acknowledged, then die without closing anything (no atexit, no flush of ours).
    print(json.dumps(accepted), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.reliability
def test_accepted_messages_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    proc = subprocess.run(
        [sys.executable, "-c", _ACCEPT_THEN_DIE, str(db), "25"],
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    acknowledged = json.loads(proc.stdout)
    store = SqliteOutboxStore(db)
    try:
        for message_id in acknowledged:
            assert store.message_trace(message_id) is not None
        assert len(store.list_deliveries(limit=100)) == 25
        assert len(store.read_audit(limit=100)) == 25
    finally:
        store.close()
    assert uuid.UUID(acknowledged[0])


def test_migrations_mark_the_heads_and_move_the_payloads_of_existing_deliveries(
    tmp_path: Path, clock: FakeClock
) -> None:
    db = tmp_path / "version-2.db"
    raw = sqlite3.connect(db)
    try:
        raw.execute(
            "CREATE TABLE schema_version ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        for migration in load_migrations("sqlite")[:2]:
            raw.executescript(migration.sql)
            raw.execute(
                "INSERT INTO schema_version VALUES (?, ?, '2024-01-01T00:00:00.000000Z')",
                (migration.version, migration.name),
            )
        when = "2024-01-01T00:00:00.000000Z"
        for n, (delivery_id, citizen, destination, state) in enumerate(LEGACY_DELIVERIES):
            raw.execute(
                "INSERT INTO messages (id, bundle_id, header_id, sender, kind, citizen_key, content_type, "
                "payload, response, received_at) "
                "VALUES (?, ?, ?, 'rh', 'x', ?, 'application/json', x'', x'', ?)",
                (f"m{n}", f"b{n}", f"h{n}", citizen, when),
            )
            leased = state == "leased"
            raw.execute(
                "INSERT INTO deliveries (id, message_id, header_id, destination, citizen_key, content_type, "
                "payload, expect_receipt, state, created_at, next_attempt_at, lease_owner, lease_expires_at) "
                "VALUES (?, ?, ?, ?, ?, 'application/json', CAST(? AS BLOB), 0, ?, ?, ?, ?, ?)",
                (
                    delivery_id,
                    f"m{n}",
                    f"h{n}",
                    destination,
                    citizen,
                    delivery_id.encode(),
                    state,
                    when,
                    when,
                    "w0" if leased else None,
                    "2030-01-01T00:00:00.000000Z" if leased else None,
                ),
            )
        raw.commit()
    finally:
        raw.close()

    store = SqliteOutboxStore(db)
    try:
        assert store.migrate() == len(load_migrations("sqlite")) - 2
        assert assert_heads(store) == LEGACY_HEADS
        # Migration 0004 moved each payload to its own table.
        assert {d[0]: store.delivery_payload(d[0]) for d in LEGACY_DELIVERIES} == {
            d[0]: d[0].encode() for d in LEGACY_DELIVERIES
        }
        claimed = store.claim_due("w1", clock.now(), timedelta(minutes=1), limit=10)
        assert {c.id for c in claimed} == {"c1-aarhus-2", "none-1", "c2-kbh-2"}
    finally:
        store.close()


# ------------------------------------------------------------------------------------------ group commit
def _audit(n: int) -> AuditRecord:
    from datetime import UTC, datetime

    return AuditRecord(datetime(2026, 11, 26, tzinfo=UTC), "test.write", f"writer-{n}", b"{}")


def _side_by_side(count: int, work: Callable[[int], None]) -> dict[int, BaseException]:
    """Run ``work(0..count-1)`` on ``count`` threads started together; the exceptions by index."""
    import threading

    failures: dict[int, BaseException] = {}
    start = threading.Barrier(count)

    def run(n: int) -> None:
        start.wait()
        try:
            work(n)
        except BaseException as exc:  # collected for the assertions
            failures[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return failures


def test_concurrent_writes_share_commits_and_all_of_them_last(
    sqlite_store: SqliteOutboxStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[int] = []
    end_group = sqlite_store._end_group

    def counted(group: Any, error: Any = None) -> None:
        commits.append(group.members)
        end_group(group, error)

    monkeypatch.setattr(sqlite_store, "_end_group", counted)
    assert _side_by_side(48, lambda n: [sqlite_store.append_audit(_audit(n)) for _ in range(4)]) == {}
    entries = sqlite_store.read_audit(limit=1000)
    assert len(entries) == 48 * 4 and sum(commits) == 48 * 4
    assert len(commits) < 48 * 4  # some writes shared a commit (and its fsync)
    from bridge.outbox.port import verify_audit_chain

    assert verify_audit_chain(entries) is None
    reopened = SqliteOutboxStore(sqlite_store.path)  # what was answered is on disk
    assert len(reopened.read_audit(limit=1000)) == 48 * 4
    reopened.close()


def test_a_write_that_fails_fails_alone_in_its_group(sqlite_store: SqliteOutboxStore) -> None:
    def work(n: int) -> None:
        with sqlite_store._write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS probe (n INTEGER PRIMARY KEY)")
            conn.execute("INSERT INTO probe (n) VALUES (?)", (n % 20,))  # 20..39 repeat 0..19

    failures = _side_by_side(40, work)
    assert len(failures) == 20 and all(isinstance(f, StoreError) for f in failures.values())
    raw = sqlite3.connect(sqlite_store.path)
    try:
        assert sorted(n for (n,) in raw.execute("SELECT n FROM probe")) == list(range(20))
    finally:
        raw.close()


def test_two_stores_on_one_file_take_turns_without_busy_errors(tmp_path: Path) -> None:
    # Two adapters on one file stand for two processes: each has its own file-lock descriptor.
    first = SqliteOutboxStore(tmp_path / "outbox.db")
    first.migrate()
    second = SqliteOutboxStore(tmp_path / "outbox.db")
    try:
        stores = (first, second)
        assert _side_by_side(16, lambda n: [stores[n % 2].append_audit(_audit(n)) for _ in range(25)]) == {}
        assert len(first.read_audit(limit=1000)) == 16 * 25
    finally:
        second.close()
        first.close()


def test_a_writer_waits_for_the_file_lock_at_most_its_busy_timeout(tmp_path: Path) -> None:
    import fcntl
    import time

    from bridge.outbox.port import StoreUnavailable

    store = SqliteOutboxStore(tmp_path / "outbox.db", busy_timeout=timedelta(milliseconds=300))
    store.migrate()
    holder = os.open(f"{store.path}-writer.lock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another process in the middle of a long transaction
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.append_audit(_audit(1))
        assert 0.25 <= time.monotonic() - started < 5
        fcntl.flock(holder, fcntl.LOCK_UN)
        store.append_audit(_audit(2))  # free again: the write goes through
        assert len(store.read_audit()) == 1
    finally:
        os.close(holder)
        store.close()
