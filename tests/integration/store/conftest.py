"""The ``store`` fixture: every OutboxStore implementation, run through the same conformance suite.

Each engine is a factory in ``STORE_FACTORIES`` (opens a store on the test's own database; called
again, it opens a second store on the same database, as a second process would) and a cleanup in
``STORE_CLEANUPS``. PostgreSQL runs on the server named by ``BRIDGE_TEST_POSTGRES_URL``; every test gets
its own schema there, dropped afterwards. Without the variable the PostgreSQL tests skip - except under
``CI=true``, where a missing server is a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest

from bridge.clock import FakeClock
from bridge.outbox.keys import citizen_key
from bridge.outbox.port import AuditRecord, NewDelivery, NewMessage, OutboxStore
from bridge.outbox.postgres import PostgresOutboxStore
from bridge.outbox.sqlite import SqliteOutboxStore

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
MEDCOM = SHARED / "medcom"
SECRET = b"conformance-suite-citizen-secret"
FHIR_JSON = "application/fhir+json"


POSTGRES_ENV = "BRIDGE_TEST_POSTGRES_URL"


def postgres_server_url() -> str:
    """The test server's URL; skips without one, fails instead under ``CI=true``."""
    url = os.environ.get(POSTGRES_ENV, "")
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{POSTGRES_ENV} is not set; CI runs the PostgreSQL tests, it never skips them")
        pytest.skip(f"{POSTGRES_ENV} is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    return url


def schema_url(server_url: str, schema: str, **params: str) -> str:
    """``server_url`` with its connections confined to ``schema`` (libpq ``options=-csearch_path=...``)."""
    parts = urlsplit(server_url)
    query = [*parse_qsl(parts.query), ("options", f"-csearch_path={schema}"), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def create_schema(server_url: str, schema: str) -> None:
    """Create ``schema`` (empty) on the test server."""
    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}"')


def drop_schema(server_url: str, schema: str) -> None:
    """Drop ``schema`` and everything in it."""
    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _schema_of(tmp_path: Path) -> str:
    # One schema per test: derived from the test's own tmp_path, so every store the test opens shares it.
    return "test_" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:20]


def _sqlite(tmp_path: Path) -> OutboxStore:
    return SqliteOutboxStore(tmp_path / "outbox.db")


def _postgres(tmp_path: Path) -> OutboxStore:
    server = postgres_server_url()
    schema = _schema_of(tmp_path)
    marker = tmp_path / ".postgres-schema"
    if not marker.exists():
        create_schema(server, schema)
        marker.write_text(schema)
    return PostgresOutboxStore.from_url(schema_url(server, schema, pool_max_size="4"))


def _drop_postgres(tmp_path: Path) -> None:
    if (tmp_path / ".postgres-schema").exists():
        drop_schema(postgres_server_url(), _schema_of(tmp_path))


STORE_FACTORIES: dict[str, Callable[[Path], OutboxStore]] = {"sqlite": _sqlite, "postgres": _postgres}
STORE_CLEANUPS: dict[str, Callable[[Path], None]] = {"postgres": _drop_postgres}


@pytest.fixture(params=sorted(STORE_FACTORIES))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], OutboxStore]]:
    """Opens (and migrates) stores of one implementation on one database; closes them all afterwards."""
    opened: list[OutboxStore] = []

    def open_one() -> OutboxStore:
        store = STORE_FACTORIES[request.param](tmp_path)
        opened.append(store)
        store.migrate()
        return store

    yield open_one
    for store in opened:
        store.close()
    cleanup = STORE_CLEANUPS.get(request.param)
    if cleanup is not None:
        cleanup(tmp_path)


@pytest.fixture
def store(store_factory: Callable[[], OutboxStore]) -> OutboxStore:
    """A migrated, empty store."""
    return store_factory()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass(frozen=True)
class Example:
    """An official MedCom example message: its bytes and the ids the store cares about."""

    path: Path
    payload: bytes
    bundle_id: str
    header_id: str
    cpr: str | None
    response: dict[str, Any] | None

    @property
    def citizen_key(self) -> str | None:
        return None if self.cpr is None else citizen_key(self.cpr, SECRET)


def load_example(relative: str) -> Example:
    """Read a MedCom example Bundle from the shared reference data."""
    path = MEDCOM / relative
    payload = path.read_bytes()
    bundle = json.loads(payload)
    header = bundle["entry"][0]["resource"]
    assert header["resourceType"] == "MessageHeader"
    cprs = [
        ident["value"]
        for entry in bundle["entry"]
        if entry["resource"]["resourceType"] == "Patient"
        for ident in entry["resource"].get("identifier", [])
        if ident.get("system") == "urn:oid:1.2.208.176.1.2"
    ]
    return Example(
        path, payload, bundle["id"], header["id"], cprs[0] if cprs else None, header.get("response")
    )


ADMISSION = "hospitalnotification/Bundle-a5e5b880-c087-4055-b9ec-99108695f81d.json"  # STIN
DISCHARGE = "hospitalnotification/Bundle-f4aa42a4-86db-4e68-9b38-9dda0dfd5774.json"  # SLHJ
LEAVE = "hospitalnotification/Bundle-d3128d9b-cede-4c7f-8904-809eab322d7d.json"  # STOR
# Two copies of one CareCommunication: same MessageHeader.id, new Bundle.id (MedCom test fixtures).
_FIXTURES = "carecommunication/testscripts-duplicate-fixtures"
DUPLICATE_A = f"{_FIXTURES}/Bundle-5de12884-eae7-4fd3-ba4a-d8b56be4baff.json"
DUPLICATE_B = f"{_FIXTURES}/Bundle-c289e585-7f30-4d58-88e3-0baedd9ffeee.json"
ACK_OK = "acknowledgement/Bundle-a8c041b8-c65a-4fde-a90f-962076918834.json"
ACK_TRANSIENT = "acknowledgement/Bundle-c9c2b2f6-0807-11ed-861d-0242ac120002.json"


class Messages:
    """Builds accept() arguments from MedCom examples or from scratch, with the test clock's time."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def from_example(
        self,
        relative: str,
        destinations: tuple[str, ...] = ("kbh",),
        sender: str = "rh",
        expect_receipt: bool = False,
    ) -> tuple[NewMessage, list[NewDelivery], AuditRecord]:
        ex = load_example(relative)
        return self.build(
            ex.bundle_id,
            ex.header_id,
            ex.citizen_key,
            ex.payload,
            destinations=destinations,
            sender=sender,
            expect_receipt=expect_receipt,
        )

    def build(
        self,
        bundle_id: str | None = None,
        header_id: str | None = None,
        citizen: str | None = None,
        payload: bytes = b'{"resourceType":"Bundle"}',
        destinations: tuple[str, ...] = ("kbh",),
        sender: str = "rh",
        kind: str = "hospital-notification",
        expect_receipt: bool = False,
        not_before_in: timedelta | None = None,
    ) -> tuple[NewMessage, list[NewDelivery], AuditRecord]:
        now = self.clock.now()
        message = NewMessage(
            bundle_id=bundle_id or str(uuid.uuid4()),
            header_id=header_id or str(uuid.uuid4()),
            sender=sender,
            kind=kind,
            citizen_key=citizen,
            payload=payload,
            content_type=FHIR_JSON,
            received_at=now,
            response=b'{"resourceType":"OperationOutcome"}',
        )
        deliveries = [
            NewDelivery(
                destination=d,
                payload=payload + d.encode(),
                content_type=FHIR_JSON,
                expect_receipt=expect_receipt,
                not_before=None if not_before_in is None else now + not_before_in,
            )
            for d in destinations
        ]
        audit = AuditRecord(now, "message.accepted", sender, b'{"resourceType":"AuditEvent"}', message.id)
        return message, deliveries, audit


@pytest.fixture
def messages(clock: FakeClock) -> Messages:
    return Messages(clock)


# The head marker as the database holds it, against what it must be: the oldest open (pending or
# leased) delivery of each (citizen_key, destination) pair, and every open delivery without a citizen.
_HEAD_CHECK = """
    SELECT d.id, d.citizen_key, d.destination, d.state, d.seq, {head} AS head,
           CASE WHEN d.state IN ('pending', 'leased')
                 AND (d.citizen_key IS NULL
                      OR d.seq = (SELECT MIN(o.seq) FROM deliveries o
                                   WHERE o.citizen_key = d.citizen_key
                                     AND o.destination = d.destination
                                     AND o.state IN ('pending', 'leased')))
                THEN 1 ELSE 0 END AS expected
      FROM deliveries d
     ORDER BY d.seq"""


@dataclass(frozen=True)
class HeadRow:
    id: str
    citizen_key: str | None
    destination: str
    state: str
    seq: int
    head: bool
    expected: bool


def head_rows(store: OutboxStore) -> list[HeadRow]:
    """Every delivery's head marker and the value the invariant demands, read by SQL from the database."""
    if isinstance(store, SqliteOutboxStore):
        conn = sqlite3.connect(store.path)
        try:
            rows = conn.execute(_HEAD_CHECK.format(head="d.head")).fetchall()
        finally:
            conn.close()
    elif isinstance(store, PostgresOutboxStore):
        with store.pool.connection() as pg:
            rows = pg.execute(_HEAD_CHECK.format(head="d.head::int")).fetchall()
    else:  # pragma: no cover - a new engine must say how to read its rows
        raise TypeError(f"no head check for {type(store).__name__}")
    return [HeadRow(r[0], r[1], r[2], r[3], int(r[4]), bool(r[5]), bool(r[6])) for r in rows]


def assert_heads(store: OutboxStore) -> set[str]:
    """Fail unless the head marker holds the invariant on every row; the ids of the heads."""
    rows = head_rows(store)
    wrong = [r for r in rows if r.head != r.expected]
    assert wrong == [], f"head marker out of step with the invariant: {wrong}"
    return {r.id for r in rows if r.head}


# Deliveries as a database at schema version 2 (before the head marker) may hold them, in seq order:
# (id, citizen_key, destination, state). Migration 0003 must mark LEGACY_HEADS and nothing else.
LEGACY_DELIVERIES = [
    ("c1-kbh-1", "c1", "kbh", "delivered"),
    ("c1-kbh-2", "c1", "kbh", "dead"),
    ("c1-kbh-3", "c1", "kbh", "leased"),
    ("c1-kbh-4", "c1", "kbh", "pending"),
    ("c1-aarhus-1", "c1", "aarhus", "dead"),
    ("c1-aarhus-2", "c1", "aarhus", "pending"),
    ("c1-aarhus-3", "c1", "aarhus", "pending"),
    ("c2-kbh-1", "c2", "kbh", "delivered"),
    ("none-1", None, "kbh", "pending"),
    ("none-2", None, "kbh", "leased"),
    ("none-3", None, "kbh", "dead"),
    ("c2-kbh-2", "c2", "kbh", "pending"),
]
LEGACY_HEADS = {"c1-kbh-3", "c1-aarhus-2", "none-1", "none-2", "c2-kbh-2"}
