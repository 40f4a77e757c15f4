"""The audit trail on both engines: batch appends keep the chain, and ``fhir-bridge audit verify`` walks
it in the real database and names the first record a database owner changed or deleted (the tables
refuse UPDATE and DELETE through triggers, so the tampering here drops the trigger first, as an owner
could)."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from bridge import audit
from bridge.cli import app
from bridge.clock import FakeClock
from bridge.outbox.port import AUDIT_GENESIS, AuditRecord, OutboxStore, audit_hash, verify_audit_chain
from bridge.outbox.postgres import PostgresOutboxStore
from bridge.outbox.sqlite import SqliteOutboxStore

from .conftest import _schema_of, postgres_server_url, schema_url


def _records(clock: FakeClock, n: int) -> list[AuditRecord]:
    out = []
    for i in range(n):
        clock.advance(1)
        out.append(
            audit.delivery_outcome(
                recorded=clock.now(),
                actor="worker-1",
                destination="kbh",
                message_id=f"m-{i}",
                header_id=f"h-{i}",
                outcome="delivered",
                citizen_key="k" * 64,
            )
        )
    return out


@pytest.fixture
def trail(store: OutboxStore, clock: FakeClock) -> OutboxStore:
    """A store with six audit records: two single appends, then a batch of four."""
    records = _records(clock, 6)
    for record in records[:2]:
        store.append_audit(record)
    entries = store.append_audit_many(records[2:])
    assert [e.record for e in entries] == records[2:]
    return store


def _url(store: OutboxStore, tmp_path: Path) -> str:
    if isinstance(store, SqliteOutboxStore):
        return f"sqlite:///{store.path}"
    assert isinstance(store, PostgresOutboxStore)
    return schema_url(postgres_server_url(), _schema_of(tmp_path))


@pytest.fixture
def owner_sql(trail: OutboxStore, tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """Runs SQL with the database owner's rights, outside the bridge."""

    def run(sql: str) -> None:
        if isinstance(trail, SqliteOutboxStore):
            raw = sqlite3.connect(trail.path)
            try:
                raw.executescript(sql)
            finally:
                raw.close()
        else:
            with psycopg.connect(_url(trail, tmp_path), autocommit=True) as conn:
                conn.execute(sql.encode())

    yield run


def _drop_triggers(store: OutboxStore) -> str:
    if isinstance(store, SqliteOutboxStore):
        return "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;"
    return "DROP TRIGGER audit_no_update ON audit;"


def verify(store: OutboxStore, tmp_path: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["audit", "verify", "--url", _url(store, tmp_path), *extra])
    return result.exit_code, result.output


def test_batch_appends_extend_one_chain(trail: OutboxStore) -> None:
    entries = trail.read_audit(limit=100)
    assert [e.seq for e in entries] == sorted(e.seq for e in entries) and len(entries) == 6
    assert entries[0].prev_hash == AUDIT_GENESIS
    assert verify_audit_chain(entries) is None
    assert trail.append_audit_many([]) == []


def test_verify_passes_an_intact_trail_and_prints_its_head(trail: OutboxStore, tmp_path: Path) -> None:
    code, output = verify(trail, tmp_path)
    head = trail.read_audit(limit=100)[-1]
    assert code == 0, output
    assert f"ok: 6 audit records, chain intact; head {head.seq}:{head.hash}" in output


def test_verify_names_a_changed_record(
    trail: OutboxStore, tmp_path: Path, owner_sql: Callable[[str], None]
) -> None:
    third = trail.read_audit(limit=100)[2]
    owner_sql(_drop_triggers(trail) + f" UPDATE audit SET actor = 'someone-else' WHERE seq = {third.seq};")
    code, output = verify(trail, tmp_path)
    assert code == 1
    assert f"audit trail broken at record {third.seq}: audit record {third.seq} was changed" in output


def test_verify_names_a_changed_body_even_with_its_hash_recomputed(
    trail: OutboxStore, tmp_path: Path, owner_sql: Callable[[str], None]
) -> None:
    # A careful forger recomputes the changed record's own hash; the next record still points at the
    # old one.
    entries = trail.read_audit(limit=100)
    second, third = entries[1], entries[2]
    forged = dataclasses.replace(second.record, actor="forger")
    digest = audit_hash(second.prev_hash, forged)
    owner_sql(
        _drop_triggers(trail)
        + f" UPDATE audit SET actor = 'forger', hash = '{digest}' WHERE seq = {second.seq};"
    )
    code, output = verify(trail, tmp_path)
    assert code == 1
    assert f"broken at record {third.seq}: audit record(s) missing before record {third.seq}" in output


def test_verify_names_a_deleted_record(
    trail: OutboxStore, tmp_path: Path, owner_sql: Callable[[str], None]
) -> None:
    entries = trail.read_audit(limit=100)
    owner_sql(_drop_triggers(trail) + f" DELETE FROM audit WHERE seq = {entries[3].seq};")
    code, output = verify(trail, tmp_path)
    assert code == 1
    assert (
        f"audit record(s) missing before record {entries[4].seq}: it does not follow record {entries[2].seq}"
        in output
    )


def test_verify_catches_the_first_record_deleted(
    trail: OutboxStore, tmp_path: Path, owner_sql: Callable[[str], None]
) -> None:
    entries = trail.read_audit(limit=100)
    owner_sql(_drop_triggers(trail) + f" DELETE FROM audit WHERE seq = {entries[0].seq};")
    code, output = verify(trail, tmp_path)
    assert code == 1
    assert f"missing before record {entries[1].seq}: it does not follow the start of the trail" in output


def test_an_anchor_catches_the_newest_records_cut_off(
    trail: OutboxStore, tmp_path: Path, owner_sql: Callable[[str], None]
) -> None:
    entries = trail.read_audit(limit=100)
    head = entries[-1]
    assert verify(trail, tmp_path, "--anchor", f"{head.seq}:{head.hash}")[0] == 0
    owner_sql(_drop_triggers(trail) + f" DELETE FROM audit WHERE seq >= {entries[4].seq};")
    assert verify(trail, tmp_path)[0] == 0  # the chain alone cannot see a cut tail
    code, output = verify(trail, tmp_path, "--anchor", f"{head.seq}:{head.hash}")
    assert code == 1
    assert f"audit record {head.seq} is missing: the trail was cut back to record {entries[3].seq}" in output


def test_verify_refuses_bad_arguments(trail: OutboxStore, tmp_path: Path) -> None:
    code, output = verify(trail, tmp_path, "--anchor", "nonsense")
    assert code == 2 and "--anchor must be SEQ:HASH" in output
    result = CliRunner().invoke(app, ["audit", "verify"])
    assert result.exit_code == 2 and "exactly one of --config FILE or --url URL" in result.output
