"""What only the PostgreSQL adapter promises: its migrations, its pool, recovery from dropped connections,
and order under concurrency across connections (as several bridge processes would have)."""

from __future__ import annotations

import itertools
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import yaml

from bridge.clock import FakeClock
from bridge.outbox import open_store
from bridge.outbox.port import (
    AcceptRequest,
    AttemptRecord,
    AuditRecord,
    StoreError,
    StoreUnavailable,
    verify_audit_chain,
)
from bridge.outbox.postgres import PostgresOutboxStore, split_postgres_url
from bridge.outbox.sql import load_migrations, load_queries
from bridge.settings import StoreConfig

from .conftest import (
    ADMISSION,
    LEGACY_DELIVERIES,
    LEGACY_HEADS,
    Messages,
    assert_heads,
    create_schema,
    drop_schema,
    head_rows,
    load_example,
    postgres_server_url,
)

LEASE = timedelta(seconds=60)


@pytest.fixture
def server() -> str:
    return postgres_server_url()


@pytest.fixture
def schema(server: str) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:20]}"
    create_schema(server, name)
    yield name
    drop_schema(server, name)


def url_for(server: str, schema: str, **params: str) -> str:
    from .conftest import schema_url

    return schema_url(server, schema, **params)


@pytest.fixture
def pg_store(server: str, schema: str) -> Iterator[PostgresOutboxStore]:
    store = PostgresOutboxStore.from_url(url_for(server, schema))
    store.migrate()
    yield store
    store.close()


def admin(server: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(server, autocommit=True, connect_timeout=5)


# -- schema --------------------------------------------------------------------------------------------

_CATALOG = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity
          FROM information_schema.columns WHERE table_schema = %(s)s
         ORDER BY table_name, column_name""",
    "constraints": """
        SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
          FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
         WHERE n.nspname = %(s)s ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %(s)s ORDER BY 1, 2""",
    "triggers": """
        SELECT event_object_table, trigger_name, event_manipulation, action_timing, action_statement
          FROM information_schema.triggers WHERE trigger_schema = %(s)s ORDER BY 1, 2, 3""",
    "functions": """
        SELECT p.proname, pg_get_functiondef(p.oid)
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = %(s)s ORDER BY 1""",
}


def describe(server: str, schema: str) -> dict[str, list[tuple[object, ...]]]:
    """The catalog's account of ``schema`` with the schema's name written as SCHEMA."""
    with admin(server) as conn:
        out: dict[str, list[tuple[object, ...]]] = {}
        for part, query in _CATALOG.items():
            rows = conn.execute(query, {"s": schema}).fetchall()
            out[part] = [
                tuple(v.replace(schema, "SCHEMA") if isinstance(v, str) else v for v in row)
                for row in rows
                if "schema_version" not in str(row[0])
            ]
        return out


def test_schema_is_all_migrations_applied(pg_store: PostgresOutboxStore, server: str, schema: str) -> None:
    migrations = load_migrations("postgres")
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert pg_store.schema_version() == len(migrations)
    assert pg_store.migrate() == 0
    # A fresh schema built from the migration files by hand has exactly the adapter's schema.
    fresh = f"{schema}_fresh"
    create_schema(server, fresh)
    try:
        with admin(server) as conn:
            conn.execute(f'SET search_path TO "{fresh}"')
            for migration in migrations:
                conn.execute(migration.sql.encode())
        ours, theirs = describe(server, schema), describe(server, fresh)
        assert ours == theirs
        assert {row[0] for row in ours["columns"]} == {
            "messages",
            "deliveries",
            "delivery_payloads",
            "attempts",
            "receipts",
            "admissions",
            "audit",
        }
    finally:
        drop_schema(server, fresh)


def test_both_engines_share_the_schema_shape(pg_store: PostgresOutboxStore, server: str, schema: str) -> None:
    lite = sqlite3.connect(":memory:")
    for migration in load_migrations("sqlite"):
        lite.executescript(migration.sql)
    tables = [r[0] for r in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    sqlite_shape = {
        (t, r[1])
        for t in tables
        if not t.startswith("sqlite_")
        for r in lite.execute(f"PRAGMA table_info({t})")
    }
    lite.close()
    postgres_shape = {(t, c) for t, c, *_ in describe(server, schema)["columns"]}
    assert postgres_shape == sqlite_shape
    assert len(load_migrations("postgres")) == len(load_migrations("sqlite"))
    assert set(load_queries("postgres")) >= set(load_queries("sqlite"))


def test_every_query_plans_against_the_schema(
    pg_store: PostgresOutboxStore, server: str, schema: str
) -> None:
    with admin(server) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        for name, sql in load_queries("postgres").items():
            params = dict.fromkeys(re.findall(r"%\((\w+)\)s", sql))
            try:
                conn.execute(f"EXPLAIN {sql}", params)  # plans, resolves every name; runs nothing
            except psycopg.Error as exc:  # pragma: no cover - the message is the point
                pytest.fail(f"query {name}: {exc}")


def test_a_newer_database_is_refused(pg_store: PostgresOutboxStore, server: str, schema: str) -> None:
    with admin(server) as conn:
        conn.execute(f"INSERT INTO \"{schema}\".schema_version VALUES (99, 'future', now())")
    with pytest.raises(StoreError, match="newer than this bridge knows"):
        pg_store.migrate()


def test_nodes_starting_at_once_apply_each_migration_once(server: str, schema: str) -> None:
    stores = [PostgresOutboxStore.from_url(url_for(server, schema)) for _ in range(4)]
    applied: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def start(store: PostgresOutboxStore) -> None:
        barrier.wait()
        try:
            applied.append(store.migrate())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(applied) == [0, 0, 0, len(load_migrations("postgres"))]
        with admin(server) as conn:
            versions = conn.execute(f'SELECT version FROM "{schema}".schema_version').fetchall()
        assert [v[0] for v in versions] == list(range(1, len(load_migrations("postgres")) + 1))
    finally:
        for s in stores:
            s.close()


def test_the_audit_trail_refuses_edits(pg_store: PostgresOutboxStore, server: str, schema: str) -> None:
    pg_store.append_audit(AuditRecord(FakeClock().now(), "message.accepted", "rh", b"{}"))
    with admin(server) as conn:
        for statement in (
            "UPDATE {}.audit SET actor = 'someone-else'",
            "DELETE FROM {}.audit",
            "TRUNCATE {}.audit",
        ):
            with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="append-only"):
                conn.execute(statement.format(f'"{schema}"'))
    assert len(pg_store.read_audit()) == 1


def test_no_cpr_number_outside_the_payloads(
    pg_store: PostgresOutboxStore, server: str, schema: str, clock: FakeClock
) -> None:
    example = load_example(ADMISSION)
    assert example.cpr is not None
    pg_store.accept(*Messages(clock).from_example(ADMISSION, destinations=("kbh", "aarhus")))
    for c in pg_store.claim_due("w1", clock.now(), LEASE, limit=10):
        pg_store.dead_letter(c.id, "w1", None, "refused", clock.now())
    allowed = {("messages", "payload"), ("deliveries", "payload"), ("audit", "body")}
    hits = []
    with admin(server) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s",
            (schema,),
        ).fetchall()
        for table, column in columns:
            if (table, column) in allowed:
                continue
            found = conn.execute(
                f'SELECT COUNT(*) FROM "{schema}"."{table}" WHERE position(%s in "{column}"::text) > 0',
                (example.cpr,),
            ).fetchone()
            if found and found[0]:
                hits.append(f"{table}.{column}")
        in_payload = conn.execute(
            f'SELECT COUNT(*) FROM "{schema}".messages WHERE position(%s::bytea in payload) > 0',
            (example.cpr.encode(),),
        ).fetchone()
    assert hits == []
    assert in_payload == (1,)  # the CPR is there, inside the payload, as it must be


def test_migrations_mark_the_heads_and_move_the_payloads_of_existing_deliveries(
    server: str, schema: str
) -> None:
    when = "2024-01-01T00:00:00Z"
    with admin(server) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute(
            "CREATE TABLE schema_version ("
            "version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)"
        )
        for migration in load_migrations("postgres")[:2]:
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_version VALUES (%s, %s, now())", (migration.version, migration.name)
            )
        for n, (delivery_id, citizen, destination, state) in enumerate(LEGACY_DELIVERIES):
            conn.execute(
                "INSERT INTO messages (id, bundle_id, header_id, sender, kind, citizen_key, content_type, "
                "payload, response, received_at) "
                "VALUES (%s, %s, %s, 'rh', 'x', %s, 'application/json', '', '', %s)",
                (f"m{n}", f"b{n}", f"h{n}", citizen, when),
            )
            leased = state == "leased"
            conn.execute(
                "INSERT INTO deliveries (id, message_id, header_id, destination, citizen_key, content_type, "
                "payload, expect_receipt, state, created_at, next_attempt_at, lease_owner, lease_expires_at) "
                "VALUES (%s, %s, %s, %s, %s, 'application/json', %s, false, %s, %s, %s, %s, %s)",
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
                    "2030-01-01T00:00:00Z" if leased else None,
                ),
            )
    store = PostgresOutboxStore.from_url(url_for(server, schema))
    try:
        assert store.migrate() == len(load_migrations("postgres")) - 2
        assert assert_heads(store) == LEGACY_HEADS
        # Migration 0004 moved each payload to its own table.
        assert {d[0]: store.delivery_payload(d[0]) for d in LEGACY_DELIVERIES} == {
            d[0]: d[0].encode() for d in LEGACY_DELIVERIES
        }
        claimed = store.claim_due("w1", FakeClock().now(), LEASE, limit=10)
        assert {c.id for c in claimed} == {"c1-aarhus-2", "none-1", "c2-kbh-2"}
    finally:
        store.close()


def test_the_claim_plans_on_the_heads_index(pg_store: PostgresOutboxStore, server: str, schema: str) -> None:
    with admin(server) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        params = {"worker_id": "w", "now": FakeClock().now(), "lease_expires_at": FakeClock().now()}
        plan = conn.execute(
            f"EXPLAIN {load_queries('postgres')['claim_pending']}", {**params, "limit": 10, "skip": []}
        ).fetchall()
    assert "deliveries_claimable" in "\n".join(str(row[0]) for row in plan)


@pytest.mark.parametrize(
    ("name", "indexes"),
    [
        # No index on deliveries.header_id: the message's unique header id, then (message, destination).
        ("delivery_for_receipt", ["messages_header_id_key", "deliveries_message", "(message_id = $"]),
        ("recompute_head", ["deliveries_open_pairs"]),
        ("list_deliveries_in_state", ["deliveries_state"]),  # the dead letters, say
    ],
)
def test_receipts_head_moves_and_state_lists_plan_on_indexes(
    pg_store: PostgresOutboxStore, server: str, schema: str, name: str, indexes: list[str]
) -> None:
    sql = load_queries("postgres")[name]
    params = dict.fromkeys(re.findall(r"%\((\w+)\)s", sql), "x")
    params |= {k: 10 for k in ("limit", "offset") if k in params}
    with admin(server) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("SET enable_seqscan = off")  # the tables are empty: ask whether an index can serve
        plan = "\n".join(str(row[0]) for row in conn.execute(f"EXPLAIN {sql}", params).fetchall())
    assert "Seq Scan" not in plan, plan
    for index in indexes:
        assert index in plan, plan


# -- URLs ----------------------------------------------------------------------------------------------


def test_postgres_urls() -> None:
    conninfo, pool = split_postgres_url(
        "postgresql://bridge@db:5432/bridge?sslmode=require&pool_max_size=20&pool_timeout=2.5"
    )
    assert conninfo == "postgresql://bridge@db:5432/bridge?sslmode=require"
    assert pool == {"pool_max_size": 20, "pool_timeout": 2.5}
    assert split_postgres_url("postgres://db/bridge") == ("postgres://db/bridge", {})
    for bad in (
        "sqlite:///x.db",
        "postgresql://db",
        "postgresql://db/",
        "postgresql://db/b?pool_max_size=two",
        "postgresql://db/b?pool_max_size=0",
        "postgresql://db/b?pool_min_size=1.5",
        "postgresql://db/b?pool_min_size=5&pool_max_size=2",
    ):
        with pytest.raises(ValueError):
            split_postgres_url(bad)
    assert StoreConfig(url="postgresql://db/bridge", citizen_key_secret="x" * 40).url.startswith("postgresql")


def test_open_store_by_url(server: str, schema: str) -> None:
    for scheme in ("postgresql", "postgres"):
        url = url_for(server, schema).replace("postgresql://", f"{scheme}://", 1)
        store = open_store(url)
        try:
            assert isinstance(store, PostgresOutboxStore)
            store.ping()
            assert store.schema_version() == len(load_migrations("postgres"))
            assert store.migrate() == 0  # open_store migrated already (the first time round)
        finally:
            store.close()


# -- availability and the pool -------------------------------------------------------------------------


def _backends(server: str, application: str) -> list[int]:
    with admin(server) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application,)
        ).fetchall()
    return [int(r[0]) for r in rows]


def test_an_unreachable_server_is_unavailable_not_a_crash() -> None:
    started = time.monotonic()
    # Port 1 on loopback refuses at once; the pool's timeout bounds how long a caller waits.
    store = PostgresOutboxStore.from_url("postgresql://postgres@127.0.0.1:1/test?pool_timeout=0.5")
    try:
        with pytest.raises(StoreUnavailable, match="no connection"):
            store.ping()
        with pytest.raises(StoreUnavailable):
            store.append_audit(AuditRecord(FakeClock().now(), "x", "y", b"{}"))
    finally:
        store.close()
    assert time.monotonic() - started < 10
    with pytest.raises(StoreUnavailable):
        open_store("postgresql://postgres@127.0.0.1:1/test?pool_timeout=0.3")


def test_the_pool_bounds_the_connections_and_shares_them(server: str, schema: str) -> None:
    application = f"bridge-test-{uuid.uuid4().hex[:8]}"
    store = PostgresOutboxStore.from_url(
        url_for(server, schema, application_name=application, pool_max_size="2")
    )
    try:
        store.migrate()
        clock = FakeClock()
        messages = Messages(clock)
        errors: list[BaseException] = []
        peak = 0

        def work(i: int) -> None:
            try:
                for _ in range(10):
                    store.accept(*messages.build(citizen=f"c{i}"))
                    store.queue_stats(clock.now())
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, len(_backends(server, application)))
            time.sleep(0.01)
        for t in threads:
            t.join()
        assert errors == []
        assert 1 <= peak <= 2
        assert store.queue_stats(clock.now()).by_state["pending"] == 80
        assert verify_audit_chain(store.read_audit(limit=100)) is None
    finally:
        store.close()
    assert _backends(server, application) == []  # close() hands every connection back to the server


def test_a_busy_pool_answers_unavailable_within_its_timeout(server: str, schema: str) -> None:
    store = PostgresOutboxStore.from_url(url_for(server, schema, pool_max_size="1", pool_timeout="0.3"))
    try:
        store.migrate()
        with store.pool.connection():  # the only connection is out
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="no connection within"):
                store.ping()
            assert time.monotonic() - started < 5
        store.ping()  # and back
    finally:
        store.close()


def test_reconnects_after_the_server_drops_every_connection(
    server: str, schema: str, clock: FakeClock
) -> None:
    application = f"bridge-test-{uuid.uuid4().hex[:8]}"
    store = PostgresOutboxStore.from_url(
        url_for(server, schema, application_name=application, pool_min_size="2", pool_max_size="2")
    )
    try:
        store.migrate()
        message, deliveries, audit = Messages(clock).build(citizen="c1")
        store.accept(message, deliveries, audit)
        store.pool.wait(timeout=5)  # both connections are open
        dropped = _backends(server, application)
        assert len(dropped) == 2
        with admin(server) as conn:
            for pid in dropped:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

        # The pool checks a connection before lending it and replaces the dead ones by itself.
        trace = store.message_trace(message.id)
        assert trace is not None and trace.deliveries[0].delivery.state == "pending"
        (claimed,) = store.claim_due("w1", clock.now(), LEASE, limit=1)
        store.complete(
            claimed.id, "w1", AttemptRecord(clock.now(), timedelta(0), "delivered", 200), clock.now()
        )
        assert set(_backends(server, application)).isdisjoint(dropped)
    finally:
        store.close()


def test_a_connection_dropped_mid_transaction_is_unavailable_and_nothing_half_done(
    pg_store: PostgresOutboxStore, server: str, schema: str, clock: FakeClock
) -> None:
    """The server kills the backend while an accept waits inside its transaction (on the audit lock)."""
    messages = Messages(clock)
    first = messages.build(citizen="c1")
    pg_store.accept(*first)
    second = messages.build(citizen="c1")
    outcome: list[BaseException | None] = []
    with admin(server) as holder:
        holder.execute(f'SET search_path TO "{schema}"')
        holder.execute("BEGIN")
        holder.execute(load_queries("postgres")["lock_audit"])  # accept will wait for this lock

        def submit() -> None:
            try:
                pg_store.accept(*second)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=submit)
        thread.start()
        with admin(server) as killer:
            waiting: list[tuple[object, ...]] = []
            for _ in range(500):
                waiting = killer.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                    ("%pg_advisory_xact_lock%",),
                ).fetchall()
                if waiting:
                    break
                time.sleep(0.01)
            assert len(waiting) == 1
            killer.execute("SELECT pg_terminate_backend(%s)", (waiting[0][0],))
        thread.join(timeout=10)
        holder.execute("ROLLBACK")
    (error,) = outcome
    assert isinstance(error, StoreUnavailable)
    # Nothing of the interrupted accept was kept; a retry by the sender is accepted as new.
    assert pg_store.find_by_ids(second[0].bundle_id, second[0].header_id) is None
    assert len(pg_store.list_deliveries()) == 1
    assert pg_store.accept(*second).accepted
    assert verify_audit_chain(pg_store.read_audit()) is None


# -- order under concurrency ---------------------------------------------------------------------------


def test_concurrent_accepts_and_claims_keep_each_citizens_order(server: str, schema: str) -> None:
    """Accepts for the same citizens race with three claimers on separate pools (separate processes)."""
    clock = FakeClock()
    messages = Messages(clock)
    url = url_for(server, schema, pool_max_size="3")
    stores = [PostgresOutboxStore.from_url(url) for _ in range(4)]
    stores[0].migrate()
    citizens = [f"citizen-{i}" for i in range(3)]
    per_thread = 25
    log: list[tuple[str, str]] = []
    log_lock = threading.Lock()
    accepting = threading.Event()
    accepting.set()
    errors: list[BaseException] = []

    def accept(n: int) -> None:
        try:
            for i in range(per_thread):
                stores[0].accept(
                    *messages.build(citizen=citizens[(n + i) % 3], destinations=("kbh", "aarhus"))
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def claim(name: str, store: PostgresOutboxStore) -> None:
        try:
            while True:
                batch = store.claim_due(name, clock.now(), LEASE, limit=4)
                if not batch and not accepting.is_set():
                    return
                for c in batch:
                    with log_lock:
                        # Logged before the commit: the next delivery of the pair can only be claimed
                        # after this one is completed, so its claim is logged after this "done".
                        log.append(("claim", c.id))
                        log.append(("done", c.id))
                    store.complete(
                        c.id, name, AttemptRecord(clock.now(), timedelta(0), "delivered", 200), clock.now()
                    )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    acceptors = [threading.Thread(target=accept, args=(n,)) for n in range(4)]
    claimers = [threading.Thread(target=claim, args=(f"w{i}", stores[i])) for i in (1, 2, 3)]
    try:
        for t in acceptors + claimers:
            t.start()
        for t in acceptors:
            t.join()
        accepting.clear()
        for t in claimers:
            t.join(timeout=60)
        assert errors == []
        total = 4 * per_thread * 2
        claims = [d for kind, d in log if kind == "claim"]
        assert len(claims) == len(set(claims)) == total
        done_at = {d: i for i, (kind, d) in enumerate(log) if kind == "done"}
        claim_at = {d: i for i, (kind, d) in enumerate(log) if kind == "claim"}
        pairs: dict[tuple[str | None, str], list[str]] = {}
        for d in stores[0].list_deliveries(limit=1000):  # acceptance (seq) order
            assert d.state == "delivered"
            pairs.setdefault((d.citizen_key, d.destination), []).append(d.id)
        for ids in pairs.values():
            for earlier, later in itertools.pairwise(ids):
                assert done_at[earlier] < claim_at[later]
    finally:
        for s in stores:
            s.close()


def test_concurrent_accepts_and_completes_leave_every_pair_one_head(server: str, schema: str) -> None:
    """Accepts race with claims, completes, dead letters and replays on the same few pairs.

    Without the pair lock in the transitions that close a delivery, an accept could see the head still
    open and insert no head while the complete could not yet see the new delivery to promote: the pair
    would be left with open deliveries and no head, and stall.
    """
    clock = FakeClock()
    messages = Messages(clock)
    url = url_for(server, schema, pool_max_size="2")
    stores = [PostgresOutboxStore.from_url(url) for _ in range(5)]
    stores[0].migrate()
    citizens = ["c1", "c2"]
    accepting = threading.Event()
    accepting.set()
    errors: list[BaseException] = []
    attempt = AttemptRecord(clock.now(), timedelta(0), "delivered", 200)

    def accept(store: PostgresOutboxStore, n: int) -> None:
        try:
            for i in range(60):
                batch = [
                    AcceptRequest(
                        *messages.build(citizen=citizens[(n + i + k) % 2], destinations=("kbh", "aarhus"))
                    )
                    for k in range(1 + i % 3)
                ]
                store.accept_many(batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def work(store: PostgresOutboxStore, name: str) -> None:
        try:
            turn = 0
            while accepting.is_set():
                turn += 1
                batch = store.claim_due(name, clock.now(), LEASE, limit=3)
                if turn % 7 == 0 and batch:
                    store.dead_letter(batch[0].id, name, None, "refused", clock.now())
                    store.retry_dead(batch[0].id, clock.now())
                    batch = batch[1:]
                if turn % 2:
                    store.complete_many(name, [(c.id, attempt) for c in batch], clock.now())
                else:
                    for c in batch:
                        store.complete(c.id, name, attempt, clock.now())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    acceptors = [threading.Thread(target=accept, args=(stores[n], n)) for n in (0, 1, 2)]
    workers = [threading.Thread(target=work, args=(stores[n], f"w{n}")) for n in (3, 4)]
    try:
        for t in acceptors + workers:
            t.start()
        for t in acceptors:
            t.join()
        accepting.clear()
        for t in workers:
            t.join(timeout=60)
        assert errors == []
        rows = head_rows(stores[0])
        open_pairs = {(r.citizen_key, r.destination) for r in rows if r.state in ("pending", "leased")}
        assert open_pairs  # the workers stopped with work left, so the check below has pairs to check
        for pair in open_pairs:
            of_pair = [r for r in rows if (r.citizen_key, r.destination) == pair]
            oldest_open = min(r.seq for r in of_pair if r.state in ("pending", "leased"))
            assert [r.seq for r in of_pair if r.head] == [oldest_open], pair
        assert [r for r in rows if r.head != r.expected] == []
        # Nothing stalls: the rest drains to the last delivery.
        while batch := stores[0].claim_due("w0", clock.now(), LEASE, limit=10):
            stores[0].complete_many("w0", [(c.id, attempt) for c in batch], clock.now())
        assert stores[0].queue_stats(clock.now()).by_state["pending"] == 0
    finally:
        for s in stores:
            s.close()


def test_two_appenders_keep_one_audit_chain(server: str, schema: str) -> None:
    stores = [PostgresOutboxStore.from_url(url_for(server, schema)) for _ in range(3)]
    stores[0].migrate()
    clock = FakeClock()
    errors: list[BaseException] = []

    def append(store: PostgresOutboxStore, n: int) -> None:
        try:
            for i in range(40):
                store.append_audit(AuditRecord(clock.now(), "delivery.attempted", f"w{n}", b'{"i":%d}' % i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(s, n)) for n, s in enumerate(stores)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        entries = stores[0].read_audit(limit=1000)
        assert len(entries) == 120
        assert verify_audit_chain(entries) is None
    finally:
        for s in stores:
            s.close()


# -- fhir-bridge db upgrade ----------------------------------------------------------------------------

PROJECT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent / "fhir-bridge"
COMMAND = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "bridge.cli"]
ENV = {
    "BRIDGE_CITIZEN_KEY_SECRET": "db-upgrade-test-secret-0123456789abcdef",
    "HERLEV_OUTBOUND_TOKEN": "db-upgrade-test-token",
}


def fhir_bridge(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **ENV}
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_db_upgrade_by_url_and_by_config(server: str, schema: str, tmp_path: Path) -> None:
    url = url_for(server, schema)
    first = fhir_bridge("db", "upgrade", "--url", url)
    assert first.returncode == 0, first.stderr
    assert f"{len(load_migrations('postgres'))} migration(s) applied" in first.stdout
    with admin(server) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    assert {"messages", "deliveries", "audit", "schema_version"} <= {t[0] for t in tables}

    config = yaml.safe_load((PROJECT / "examples" / "bridge.yaml").read_text(encoding="utf-8"))
    config["store"]["url"] = url
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    again = fhir_bridge("db", "upgrade", "--config", str(path))
    assert again.returncode == 0, again.stderr
    assert "0 migration(s) applied" in again.stdout

    lite = fhir_bridge("db", "upgrade", "--url", f"sqlite:///{tmp_path}/x.db")
    assert lite.returncode == 0 and f"{len(load_migrations('sqlite'))} migration(s) applied" in lite.stdout


def test_db_upgrade_refusals(tmp_path: Path) -> None:
    neither = fhir_bridge("db", "upgrade")
    assert neither.returncode == 2 and "exactly one of" in neither.stderr
    both = fhir_bridge("db", "upgrade", "--url", "sqlite:///x.db", "--config", "bridge.yaml")
    assert both.returncode == 2
    bad_url = fhir_bridge("db", "upgrade", "--url", "mysql://db/bridge")
    assert bad_url.returncode == 1 and "unsupported store URL" in bad_url.stderr
    down = fhir_bridge(
        "db", "upgrade", "--url", "postgresql://bridge:s3cret@127.0.0.1:1/bridge?pool_timeout=0.3"
    )
    assert down.returncode == 2 and "no connection" in down.stderr
    assert "s3cret" not in down.stderr + down.stdout  # the password never reaches the terminal
    bad_config = tmp_path / "bridge.yaml"
    bad_config.write_text("version: 1\nstore: {url: 'mysql://db/x'}\n", encoding="utf-8")
    invalid = fhir_bridge("db", "upgrade", "--config", str(bad_config))
    assert invalid.returncode == 1 and "store.url" in invalid.stdout
