"""The embedded outbox store on SQLite (stdlib ``sqlite3``): the default for a single bridge process.

Durability: WAL journal with ``synchronous=FULL``, so a committed ``accept`` survives ``kill -9`` and
power loss before the sender hears 2xx. Concurrency: one writer connection behind a lock (SQLite has
one writer at a time anyway; queuing in Python is cheaper than spinning on ``SQLITE_BUSY``), every
write transaction opened with ``BEGIN IMMEDIATE`` so the read-then-write of a claim or a duplicate
check cannot interleave with another process's. Write transactions of concurrent threads share one
commit (group commit, ``_write``): one fsync for all of them, each caller answered after it. Several
processes on the same file (``listen.processes``, ``--role api`` beside ``--role worker``) take turns
through a file lock beside the database (``<database>-writer.lock``), which wakes the next writer as
soon as the lock is free; SQLite's own busy handler sleeps up to 100 ms between tries, and
``busy_timeout`` stays the bound of any wait. Reads run on per-thread read-only connections and see the
last committed state without waiting for the writer.

Schema and queries live as SQL files in ``bridge/outbox/sql/sqlite/``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from bridge.outbox.filelock import FileLock, LockTimeout
from bridge.outbox.port import (
    AUDIT_GENESIS,
    AcceptRequest,
    AcceptResult,
    Admission,
    AdmissionStatus,
    Attempt,
    AttemptOutcome,
    AttemptRecord,
    AuditEntry,
    AuditRecord,
    ClaimedDelivery,
    DeliveryRecord,
    DeliveryState,
    DeliveryTrace,
    DestinationQueue,
    Duplicate,
    InvalidTransition,
    LeaseLost,
    MessageFilter,
    MessageRecord,
    MessageState,
    MessageTrace,
    NewDelivery,
    NewMessage,
    NewReceipt,
    NotFound,
    PurgeResult,
    QueueStats,
    Receipt,
    ReceiptCode,
    ReceiptCorrelation,
    ReceiptFollowUps,
    ReceiptMatch,
    RecordedReceipt,
    StoreError,
    StoreUnavailable,
    audit_hash,
    check_accept_requests,
    check_receipt_forward,
    claim_by_destination,
    classify_duplicate,
    format_timestamp,
    only_result,
)
from bridge.outbox.sql import load_migrations, load_queries

_Q = load_queries("sqlite")
_STATES: tuple[DeliveryState, ...] = ("pending", "leased", "delivered", "dead")


def sqlite_path_from_url(url: str) -> Path:
    """The file of a ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` URL."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ValueError(f"not a sqlite URL: {parts.scheme or 'no scheme'}")
    if parts.netloc:
        raise ValueError("a sqlite URL has no host: write sqlite:///relative.db or sqlite:////absolute.db")
    path = unquote(parts.path)
    # sqlite:///var/bridge.db -> path "/var/bridge.db" -> relative "var/bridge.db"; four slashes -> absolute.
    relative = path[1:] if path.startswith("/") else path
    if not relative or relative.endswith("/"):
        raise ValueError("a sqlite URL must name a database file")
    return Path(relative)


def split_statements(script: str) -> list[str]:
    """Split a SQL script into complete statements (trigger bodies stay whole)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    rest = "\n".join(
        line for line in buffer.splitlines() if line.strip() and not line.strip().startswith("--")
    )
    if rest:
        raise ValueError(f"incomplete SQL statement at the end of the script: {rest[:60]!r}")
    return statements


def _ts(when: datetime) -> str:
    return format_timestamp(when)


def _ts_opt(when: datetime | None) -> str | None:
    return None if when is None else format_timestamp(when)


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _dt_opt(text: str | None) -> datetime | None:
    return None if text is None else _dt(text)


def _message(row: sqlite3.Row) -> MessageRecord:
    return MessageRecord(
        id=row["id"],
        bundle_id=row["bundle_id"],
        header_id=row["header_id"],
        sender=row["sender"],
        kind=row["kind"],
        citizen_key=row["citizen_key"],
        content_type=row["content_type"],
        received_at=_dt(row["received_at"]),
        response=bytes(row["response"]),
        state=cast(MessageState, row["state"]),
        payload_purged=bool(row["payload_purged"]),
        mapping_version=row["mapping_version"],
    )


def _delivery(row: sqlite3.Row) -> DeliveryRecord:
    return DeliveryRecord(
        id=row["id"],
        message_id=row["message_id"],
        destination=row["destination"],
        citizen_key=row["citizen_key"],
        state=cast(DeliveryState, row["state"]),
        attempts=row["attempts"],
        resends=row["resends"],
        created_at=_dt(row["created_at"]),
        next_attempt_at=_dt(row["next_attempt_at"]),
        first_attempt_at=_dt_opt(row["first_attempt_at"]),
        lease_owner=row["lease_owner"],
        lease_expires_at=_dt_opt(row["lease_expires_at"]),
        delivered_at=_dt_opt(row["delivered_at"]),
        dead_at=_dt_opt(row["dead_at"]),
        last_error=row["last_error"],
        expect_receipt=bool(row["expect_receipt"]),
        receipt_code=cast(ReceiptCode | None, row["receipt_code"]),
        receipt_at=_dt_opt(row["receipt_at"]),
        payload_purged=bool(row["payload_purged"]),
    )


def _attempt_params(delivery_id: str, worker_id: str, attempt: AttemptRecord) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id,
        "worker_id": worker_id,
        "started_at": _ts(attempt.started_at),
        "latency_ms": attempt.latency / timedelta(milliseconds=1),
        "outcome": attempt.outcome,
        "status_code": attempt.status_code,
        "detail": attempt.detail,
    }


def _admission_params(admission: Admission) -> dict[str, Any]:
    return {
        "citizen_key": admission.citizen_key,
        "hospital": admission.hospital,
        "status": admission.status,
        "since": _ts(admission.since),
    }


def _recompute_heads(conn: sqlite3.Connection, pairs: Collection[tuple[str | None, str]]) -> None:
    """Move the head of each (citizen key, destination) pair to its oldest open delivery.

    Called after a delivery of the pair opened or closed; deliveries without a citizen key are heads of
    their own and set by the transition itself.
    """
    for citizen, destination in sorted((c, d) for c, d in pairs if c is not None):
        conn.execute(_Q["recompute_head"], {"citizen_key": citizen, "destination": destination})


#: At most this many write transactions share one commit (``SqliteOutboxStore._write``).
MAX_GROUP = 64


class _Group:
    """Write transactions sharing one physical transaction and its commit."""

    __slots__ = ("done", "error", "members")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: StoreUnavailable | None = None
        self.members = 0


class SqliteOutboxStore:
    """``OutboxStore`` on one SQLite database file."""

    def __init__(self, path: str | Path, *, busy_timeout: timedelta = timedelta(seconds=5)) -> None:
        self._path = Path(path)
        self._busy_ms = int(busy_timeout / timedelta(milliseconds=1))
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._waiting_lock = threading.Lock()
        self._waiting = 0  # threads waiting for the write lock (they may join the open group)
        self._group: _Group | None = None
        self._readers_lock = threading.Lock()
        self._readers: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._closed = False
        try:
            lock_fd = os.open(f"{self._path}-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreUnavailable(f"cannot open the SQLite store's lock file: {exc}") from exc
        self._file_lock: FileLock | None = FileLock(lock_fd)
        try:
            self._writer = self._connect(readonly=False)
            # WAL is a property of the file; setting it once on the writer is enough.
            mode = self._writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.Error as exc:
            self._file_lock.close()
            raise StoreUnavailable(f"cannot open the SQLite store: {exc}") from exc
        if str(mode).lower() != "wal":
            raise StoreUnavailable(f"the SQLite store could not switch to WAL (journal_mode={mode})")

    @classmethod
    def from_url(cls, url: str) -> SqliteOutboxStore:
        """Open the store named by a ``sqlite:///...`` URL."""
        return cls(sqlite_path_from_url(url))

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    # -- connections ---------------------------------------------------------------------------------

    def _connect(self, *, readonly: bool) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every write transaction is an explicit
        # BEGIN IMMEDIATE ... COMMIT. check_same_thread=False because the writer is shared behind a lock
        # and close() closes readers from whichever thread calls it.
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=self._busy_ms / 1000
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        # Savepoint journals (every write runs under one) in memory: in a temporary file, each
        # transaction created, wrote and deleted a file - about a third of a batch's CPU time.
        conn.execute("PRAGMA temp_store=MEMORY")
        if readonly:
            conn.execute("PRAGMA query_only=ON")
        return conn

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs."""
        try:
            conn = self._reader()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            raise StoreError(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite store: {exc}") from exc

    def _select(self, sql: str, params: dict[str, Any]) -> list[sqlite3.Row]:
        """The rows of ONE statement: a single statement reads one snapshot by itself, so it needs no
        BEGIN and COMMIT around it (two statements fewer on every accept's duplicate lookup)."""
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite store: {exc}") from exc

    def _lock_file(self) -> None:
        """Take the cross-process writer lock (``<database>-writer.lock``), waiting at most busy_timeout.

        Several processes on one database (``listen.processes``, ``--role api`` beside ``--role
        worker``) queue here rather than in SQLite's busy handler, which sleeps 1, 2, 5, 10 ... 100 ms
        between tries: a writer that missed two windows would wait longer than a whole commit takes.
        ``FileLock`` waits in the kernel's queue, so the writers of several processes take turns.
        """
        if self._file_lock is None:
            return
        try:
            self._file_lock.acquire(self._busy_ms / 1000)
        except LockTimeout:
            raise StoreUnavailable("SQLite store: another process holds the write lock") from None

    def _unlock_file(self) -> None:
        if self._file_lock is not None:
            self._file_lock.release()

    def _end_group(self, group: _Group, error: StoreUnavailable | None = None) -> None:
        """Commit the open transaction of ``group`` (or, given ``error``, roll it back and fail every
        member with it), release the file lock and wake the members; the write lock is held."""
        conn = self._writer
        try:
            if error is None:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    error = StoreUnavailable(f"SQLite store: commit failed: {exc}")
            if error is not None:
                group.error = error
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:  # the connection itself is broken
            group.error = group.error or StoreUnavailable(f"SQLite store: {exc}")
        finally:
            self._group = None
            self._unlock_file()
            group.done.set()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; it takes effect with the group commit that includes it.

        Group commit: each ``_write`` runs under a SAVEPOINT inside the writer's open transaction
        (``BEGIN IMMEDIATE``, so no other process interleaves). When the block ends and other threads
        are waiting to write, the transaction stays open for them; the last writer of the group (or
        the ``MAX_GROUP``-th) commits it - one fsync for all - and each member returns only after that
        commit. A block that raises rolls back to its savepoint alone (an integrity error becomes
        ``StoreError``); a failed commit fails every member with ``StoreUnavailable``. One thread alone
        commits at once, exactly as without grouping.
        """
        if self._closed:
            raise StoreUnavailable("the store is closed")
        with self._waiting_lock:
            self._waiting += 1
        self._write_lock.acquire()
        with self._waiting_lock:
            self._waiting -= 1
        committed_here = False
        failure: BaseException | None = None
        try:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            conn = self._writer
            group = self._group
            if group is None:
                self._lock_file()
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    self._unlock_file()
                    raise StoreUnavailable(f"SQLite store: {exc}") from exc
                group = self._group = _Group()
            try:
                conn.execute("SAVEPOINT write")
            except sqlite3.Error as exc:
                unavailable = StoreUnavailable(f"SQLite store: {exc}")
                self._end_group(group, unavailable)
                raise unavailable from exc
            try:
                yield conn
            except BaseException as exc:
                failure = exc
                try:
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                except sqlite3.Error as broken:
                    self._end_group(group, StoreUnavailable(f"SQLite store: {broken}"))
            else:
                try:
                    conn.execute("RELEASE write")
                    group.members += 1
                except sqlite3.Error as exc:
                    self._end_group(group, StoreUnavailable(f"SQLite store: {exc}"))
            if self._group is group:
                with self._waiting_lock:
                    others = self._waiting
                if not others or group.members >= MAX_GROUP:
                    self._end_group(group)
                    committed_here = True
        finally:
            self._write_lock.release()
        if failure is not None:
            if isinstance(failure, sqlite3.IntegrityError):
                raise StoreError(str(failure)) from failure
            if isinstance(failure, sqlite3.Error):
                raise StoreUnavailable(f"SQLite store: {failure}") from failure
            raise failure
        if not committed_here:
            group.done.wait()
        if group.error is not None:
            raise group.error

    def close(self) -> None:
        """Close the writer and every reader connection."""
        if self._closed:
            return
        self._closed = True
        with self._write_lock:
            if self._group is not None:  # members are waiting for this group's commit
                self._end_group(self._group)
            self._writer.close()
            if self._file_lock is not None:  # it closes the descriptor, and ends its waiter thread
                self._file_lock.close()
                self._file_lock = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    # -- schema ----------------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction; return how many were applied."""
        migrations = load_migrations("sqlite")
        applied = 0
        for migration in migrations:
            with self._write() as conn:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
                # Checked inside the write transaction: two processes migrating at once apply each once.
                done = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
                if done and max(done) > len(migrations):
                    raise StoreError(
                        f"the database has schema version {max(done)}, newer than this bridge knows "
                        f"({len(migrations)}); upgrade the bridge"
                    )
                if migration.version in done:
                    continue
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, _ts(datetime.now(UTC))),
                )
                applied += 1
        return applied

    def schema_version(self) -> int:
        """The highest applied migration (0 for an empty database)."""
        with self._read() as conn:
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchone()
            if exists is None:
                return 0
            return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the database answers."""
        with self._read() as conn:
            conn.execute(_Q["ping"]).fetchone()

    # -- ingress ---------------------------------------------------------------------------------------

    def accept(
        self,
        message: NewMessage,
        deliveries: Sequence[NewDelivery],
        audit: AuditRecord,
        admission: Admission | None = None,
    ) -> AcceptResult:
        """Store message, deliveries and audit record in ONE transaction, or report the earlier duplicate."""
        return only_result(self.accept_many([AcceptRequest(message, deliveries, audit, admission)]))

    def accept_many(self, requests: Sequence[AcceptRequest]) -> list[AcceptResult | StoreError]:
        """``accept`` for several messages in ONE transaction, each behind its own savepoint."""
        check_accept_requests(requests)
        if not requests:
            return []
        with self._write() as conn:
            # Optimistically the whole batch at once, without a savepoint per request: two statements
            # fewer per message. A request that breaks a constraint (rare: a defect, not a duplicate,
            # which _accept_one answers) undoes the batch, which is then stored request by request, so
            # that it fails alone.
            conn.execute("SAVEPOINT accept_batch")
            try:
                results = self._accept_all(conn, requests, isolated=False)
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK TO accept_batch")
                results = self._accept_all(conn, requests, isolated=True)
            conn.execute("RELEASE accept_batch")
        return results

    def _accept_all(
        self, conn: sqlite3.Connection, requests: Sequence[AcceptRequest], *, isolated: bool
    ) -> list[AcceptResult | StoreError]:
        """Store ``requests`` in order; ``isolated``: each behind its own savepoint, a request that breaks
        a constraint reported in its slot (else the IntegrityError ends the batch)."""
        results: list[AcceptResult | StoreError] = []
        # The audit chain's head, read once per batch: each accepted request moves it on.
        head: str | None = None
        for request in requests:
            if isolated:
                result, head = self._accept_alone(conn, request, head)
            else:
                result, head = self._accept_one(conn, request, head)
            results.append(result)
        return results

    def _accept_alone(
        self, conn: sqlite3.Connection, request: AcceptRequest, audit_head: str | None
    ) -> tuple[AcceptResult | StoreError, str | None]:
        """``_accept_one`` behind a savepoint of its own: a request that breaks a constraint is rolled
        back alone and reported as a ``StoreError`` (the audit chain's head stays where it was)."""
        conn.execute("SAVEPOINT accept_request")
        outcome: AcceptResult | StoreError
        try:
            outcome, audit_head = self._accept_one(conn, request, audit_head)
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK TO accept_request")
            outcome = StoreError(str(exc))
            outcome.__cause__ = exc
        conn.execute("RELEASE accept_request")
        return outcome, audit_head

    def _accept_one(
        self, conn: sqlite3.Connection, request: AcceptRequest, audit_head: str | None
    ) -> tuple[AcceptResult, str | None]:
        """Store one request; returns its result and the audit chain's head after it (``audit_head``:
        the head before it, None when not known yet)."""
        message, deliveries = request.message, request.deliveries
        ids = {"bundle_id": message.bundle_id, "header_id": message.header_id}
        existing = classify_duplicate(
            [_message(r) for r in conn.execute(_Q["message_by_ids"], ids)],
            message.bundle_id,
            message.header_id,
        )
        if existing is not None:
            found = conn.execute(
                "SELECT id FROM deliveries WHERE message_id = ? ORDER BY seq", (existing.message.id,)
            ).fetchall()
            return AcceptResult(existing.message, tuple(r[0] for r in found), existing.kind), audit_head
        received = _ts(message.received_at)
        conn.execute(
            _Q["insert_message"],
            {
                "id": message.id,
                **ids,
                "sender": message.sender,
                "kind": message.kind,
                "citizen_key": message.citizen_key,
                "content_type": message.content_type,
                "payload": message.payload,
                "response": message.response,
                "received_at": received,
                "mapping_version": message.mapping_version,
            },
        )
        for delivery in deliveries:
            conn.execute(
                _Q["insert_delivery"],
                {
                    "id": delivery.id,
                    "message_id": message.id,
                    "header_id": message.header_id,
                    "destination": delivery.destination,
                    "citizen_key": message.citizen_key,
                    "content_type": delivery.content_type,
                    "expect_receipt": int(delivery.expect_receipt),
                    "created_at": received,
                    "next_attempt_at": _ts(delivery.not_before or message.received_at),
                },
            )
            conn.execute(_Q["store_delivery_payload"], {"id": delivery.id, "payload": delivery.payload})
        entry = self._append_audit(conn, request.audit, audit_head)
        if request.admission is not None:
            conn.execute(_Q["set_admission"], _admission_params(request.admission))
        record = MessageRecord(
            id=message.id,
            bundle_id=message.bundle_id,
            header_id=message.header_id,
            sender=message.sender,
            kind=message.kind,
            citizen_key=message.citizen_key,
            content_type=message.content_type,
            received_at=_dt(received),
            response=message.response,
            state="in-flight" if deliveries else "delivered",
            payload_purged=False,
            mapping_version=message.mapping_version,
        )
        return AcceptResult(record, tuple(d.id for d in deliveries), None), entry.hash

    def find_by_ids(self, bundle_id: str, header_id: str) -> Duplicate | None:
        """The stored message matching either id, and how it matches; None when both are new."""
        rows = self._select(_Q["message_by_ids"], {"bundle_id": bundle_id, "header_id": header_id})
        return classify_duplicate([_message(r) for r in rows], bundle_id, header_id)

    # -- dispatcher ------------------------------------------------------------------------------------

    def claim_due(
        self,
        worker_id: str,
        now: datetime,
        lease: timedelta,
        limit: int,
        *,
        skip_destinations: Collection[str] = (),
        per_destination: Mapping[str, int] | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due deliveries (oldest due first, or fairly between destinations with
        ``per_destination``), honouring per-citizen order."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if lease <= timedelta(0):
            raise ValueError("a lease must be longer than zero")
        params = {
            "worker_id": worker_id,
            "now": _ts(now),
            "lease_expires_at": _ts(now + lease),
            "limit": limit,
            "skip": json.dumps(sorted(skip_destinations)),
        }
        with self._write() as conn:
            rows = conn.execute(_Q["claim_expired"], params).fetchall()
            if len(rows) < limit:
                # Without per_destination no destination is named: the rest is the whole claim.
                taken = Counter(r["destination"] for r in rows)
                rows += claim_by_destination(
                    limit - len(rows),
                    {d: n - taken[d] for d, n in (per_destination or {}).items()},
                    skip_destinations,
                    lambda destination, n: conn.execute(
                        _Q["claim_pending_to"], {**params, "destination": destination, "limit": n}
                    ).fetchall(),
                    lambda n, skipped: conn.execute(
                        _Q["claim_pending"], {**params, "limit": n, "skip": json.dumps(sorted(skipped))}
                    ).fetchall(),
                )
        # RETURNING yields rows in no promised order; hand them out oldest first.
        rows.sort(key=lambda r: (r["next_attempt_at"], r["seq"]))
        return [
            ClaimedDelivery(
                id=r["id"],
                message_id=r["message_id"],
                header_id=r["header_id"],
                destination=r["destination"],
                citizen_key=r["citizen_key"],
                payload=bytes(r["payload"]) if r["payload"] is not None else b"",
                content_type=r["content_type"],
                attempt=r["attempts"],
                accepted_at=_dt(r["created_at"]),
                first_attempt_at=_dt(r["first_attempt_at"]),
                lease_expires_at=_dt(r["lease_expires_at"]),
                resends=r["resends"],
                expect_receipt=bool(r["expect_receipt"]),
            )
            for r in rows
        ]

    def _leased_update(
        self,
        conn: sqlite3.Connection,
        query: str,
        params: Mapping[str, Any],
        delivery_id: str,
        worker_id: str,
    ) -> tuple[str | None, str]:
        """Run a transition of a leased delivery; its (citizen key, destination), or ``LeaseLost``."""
        changed = conn.execute(_Q[query], params).fetchall()
        if changed:
            return changed[0]["citizen_key"], changed[0]["destination"]
        row = conn.execute(_Q["lease_holder"], {"id": delivery_id}).fetchone()
        if row is None:
            raise NotFound(f"no delivery {delivery_id}")
        holder = row["lease_owner"] or "nobody"
        raise LeaseLost(
            f"delivery {delivery_id} is {row['state']} with its lease held by {holder}, not by {worker_id}"
        )

    def complete(self, delivery_id: str, worker_id: str, attempt: AttemptRecord, now: datetime) -> None:
        """Mark a leased delivery delivered and record the attempt; ``LeaseLost`` if no longer ours."""
        with self._write() as conn:
            params = {"id": delivery_id, "worker_id": worker_id, "now": _ts(now)}
            pair = self._leased_update(conn, "complete", params, delivery_id, worker_id)
            conn.execute(_Q["insert_attempt"], _attempt_params(delivery_id, worker_id, attempt))
            _recompute_heads(conn, [pair])

    def complete_many(
        self,
        worker_id: str,
        completed: Sequence[tuple[str, AttemptRecord]],
        now: datetime,
        audit: Mapping[str, AuditRecord] | None = None,
    ) -> list[str]:
        """``complete`` for several deliveries in one transaction, with the audit records of those it
        completes; returns the ids whose lease was lost."""
        if not completed:
            return []
        with self._write() as conn:
            return self._complete_many(conn, worker_id, completed, now, audit)[0]

    def complete_with_receipts(
        self,
        worker_id: str,
        completed: Sequence[tuple[str, AttemptRecord]],
        now: datetime,
        audit: Mapping[str, AuditRecord],
        receipts: Sequence[NewReceipt],
        follow_up: ReceiptFollowUps,
    ) -> tuple[list[str], list[RecordedReceipt]]:
        """``complete_many`` and then ``record_receipts`` in ONE transaction."""
        if not completed and not receipts:
            return [], []
        with self._write() as conn:
            lost, head = (
                self._complete_many(conn, worker_id, completed, now, audit) if completed else ([], None)
            )
            return lost, self._record_receipts(conn, receipts, follow_up, head)

    def _complete_many(
        self,
        conn: sqlite3.Connection,
        worker_id: str,
        completed: Sequence[tuple[str, AttemptRecord]],
        now: datetime,
        audit: Mapping[str, AuditRecord] | None,
    ) -> tuple[list[str], str | None]:
        """The ids whose lease was lost, and the audit chain's head after the records appended (None
        when none was)."""
        lost: list[str] = []
        pairs: set[tuple[str | None, str]] = set()
        stamp = _ts(now)
        for delivery_id, attempt in completed:
            params = {"id": delivery_id, "worker_id": worker_id, "now": stamp}
            changed = conn.execute(_Q["complete"], params).fetchall()
            if changed:
                pairs.add((changed[0]["citizen_key"], changed[0]["destination"]))
                conn.execute(_Q["insert_attempt"], _attempt_params(delivery_id, worker_id, attempt))
            else:
                lost.append(delivery_id)
        _recompute_heads(conn, pairs)
        head: str | None = None  # read at the first record, then carried: this transaction holds the writer
        if audit:
            gone = set(lost)
            for delivery_id, _ in completed:
                record = audit.get(delivery_id)
                if record is not None and delivery_id not in gone:
                    head = self._append_audit(conn, record, head).hash
        return lost, head

    def schedule_retry(
        self, delivery_id: str, worker_id: str, attempt: AttemptRecord, retry_at: datetime, now: datetime
    ) -> None:
        """Record a failed attempt and make the delivery due again at ``retry_at``."""
        with self._write() as conn:
            params = {
                "id": delivery_id,
                "worker_id": worker_id,
                "retry_at": _ts(max(retry_at, now)),
                "last_error": attempt.detail or attempt.outcome,
            }
            self._leased_update(conn, "schedule_retry", params, delivery_id, worker_id)
            conn.execute(_Q["insert_attempt"], _attempt_params(delivery_id, worker_id, attempt))

    def dead_letter(
        self, delivery_id: str, worker_id: str, attempt: AttemptRecord | None, reason: str, now: datetime
    ) -> None:
        """Give up on a leased delivery: record the last attempt (if any) and park it as dead."""
        with self._write() as conn:
            params = {"id": delivery_id, "worker_id": worker_id, "now": _ts(now), "reason": reason}
            pair = self._leased_update(conn, "dead_letter", params, delivery_id, worker_id)
            if attempt is not None:
                conn.execute(_Q["insert_attempt"], _attempt_params(delivery_id, worker_id, attempt))
            _recompute_heads(conn, [pair])

    def release(self, delivery_id: str, worker_id: str, now: datetime) -> None:
        """Hand a leased delivery back unattempted (graceful shutdown); it is due at once."""
        with self._write() as conn:
            params = {"id": delivery_id, "worker_id": worker_id, "now": _ts(now)}
            self._leased_update(conn, "release", params, delivery_id, worker_id)

    def retry_dead(self, delivery_id: str, now: datetime) -> None:
        """Operator replay: a dead delivery becomes due now with a fresh retry budget, at its old place."""
        with self._write() as conn:
            changed = conn.execute(_Q["retry_dead"], {"id": delivery_id, "now": _ts(now)}).fetchall()
            if changed:
                _recompute_heads(conn, [(changed[0]["citizen_key"], changed[0]["destination"])])
                return
            row = conn.execute(_Q["lease_holder"], {"id": delivery_id}).fetchone()
            if row is None:
                raise NotFound(f"no delivery {delivery_id}")
            raise InvalidTransition(f"delivery {delivery_id} is {row['state']}, not dead; nothing to replay")

    def give_up_receipt(self, delivery_id: str, reason: str, now: datetime) -> None:
        """Park a delivered delivery whose receipt never came (resends exhausted) as dead."""
        with self._write() as conn:
            params = {"id": delivery_id, "reason": reason, "now": _ts(now)}
            if conn.execute(_Q["give_up_receipt"], params).rowcount == 1:
                return
            row = conn.execute(_Q["lease_holder"], {"id": delivery_id}).fetchone()
            if row is None:
                raise NotFound(f"no delivery {delivery_id}")
            raise InvalidTransition(
                f"delivery {delivery_id} is {row['state']}; only a delivered one still awaiting its "
                "receipt can be given up"
            )

    def record_attempt(self, delivery_id: str, worker_id: str, attempt: AttemptRecord) -> None:
        """Add an attempt to the trace without changing the delivery's state."""
        with self._write() as conn:
            params = _attempt_params(delivery_id, worker_id, attempt)
            if conn.execute(_Q["insert_attempt"], params).rowcount == 0:
                raise NotFound(f"no delivery {delivery_id}")

    # -- receipts --------------------------------------------------------------------------------------

    def record_receipt(self, receipt: NewReceipt) -> ReceiptMatch | None:
        """Store a receipt and attach it to the delivery it acknowledges; None when none matches.

        The receipt may arrive before the dispatcher has recorded the delivery as delivered (the
        receiver answers asynchronously), so it attaches whatever the delivery's state.
        """
        with self._write() as conn:
            return self._record_receipt(conn, receipt, details=False).match

    def record_receipts(
        self, receipts: Sequence[NewReceipt], follow_up: ReceiptFollowUps
    ) -> list[RecordedReceipt]:
        """Record several receipts with their audit records and forwards in ONE transaction.

        Each forward sits behind its own savepoint, so an integrity error rolls back that forward alone.
        """
        if not receipts:
            return []
        with self._write() as conn:
            return self._record_receipts(conn, receipts, follow_up)

    def _record_receipts(
        self,
        conn: sqlite3.Connection,
        receipts: Sequence[NewReceipt],
        follow_up: ReceiptFollowUps,
        head: str | None = None,
    ) -> list[RecordedReceipt]:
        """Record ``receipts`` in the open transaction; ``head``: the audit chain's head when the caller
        knows it (else read at the first record), carried along from there - nothing else appends while
        this transaction holds the writer."""
        results: list[RecordedReceipt] = []
        for receipt in receipts:
            correlation = self._record_receipt(conn, receipt, details=True)
            then = follow_up(correlation)
            check_receipt_forward(then)
            if then.audit is not None:
                head = self._append_audit(conn, then.audit, head).hash
            forwarded: AcceptResult | StoreError | None = None
            if then.forward is not None and correlation.new:
                forwarded, head = self._accept_alone(conn, then.forward, head)
            results.append(RecordedReceipt(correlation, forwarded))
        return results

    def _record_receipt(
        self, conn: sqlite3.Connection, receipt: NewReceipt, *, details: bool
    ) -> ReceiptCorrelation:
        """Store one receipt inside the open write transaction; with ``details``, read the message a new
        match acknowledges and when its delivery was delivered."""
        seen = conn.execute(_Q["receipt_by_ack"], {"ack_header_id": receipt.ack_header_id}).fetchone()
        if seen is not None:
            if seen["delivery_id"] is None:
                return ReceiptCorrelation(receipt, None)
            return ReceiptCorrelation(
                receipt, ReceiptMatch(seen["delivery_id"], seen["message_id"], duplicate=True)
            )
        target = conn.execute(
            _Q["delivery_for_receipt"],
            {
                "acknowledged_header_id": receipt.acknowledged_header_id,
                "from_system": receipt.from_system,
            },
        ).fetchone()
        received_at = _ts(receipt.received_at)
        conn.execute(
            _Q["insert_receipt"],
            {
                "ack_header_id": receipt.ack_header_id,
                "acknowledged_header_id": receipt.acknowledged_header_id,
                "from_system": receipt.from_system,
                "code": receipt.code,
                "received_at": received_at,
                "delivery_id": None if target is None else target["id"],
            },
        )
        if target is None:
            return ReceiptCorrelation(receipt, None)
        params = {"id": target["id"], "code": receipt.code, "received_at": received_at}
        conn.execute(_Q["set_receipt"], params)
        match = ReceiptMatch(target["id"], target["message_id"], duplicate=False)
        if not details:
            return ReceiptCorrelation(receipt, match)
        row = conn.execute(_Q["message_by_id_or_header"], {"id": target["message_id"]}).fetchone()
        return ReceiptCorrelation(
            receipt, match, None if row is None else _message(row), _dt_opt(target["delivered_at"])
        )

    def receipt_overdue(
        self, now: datetime, wait: timedelta, max_resends: int, limit: int
    ) -> list[DeliveryRecord]:
        """Delivered deliveries that expect a receipt, got none within ``wait``, and may still be resent."""
        params = {"cutoff": _ts(now - wait), "max_resends": max_resends, "limit": limit}
        with self._read() as conn:
            return [_delivery(r) for r in conn.execute(_Q["receipt_overdue"], params)]

    def resend(self, delivery_id: str, payload: bytes, now: datetime) -> None:
        """Queue a delivered delivery again with a new envelope (``payload``), counting one resend."""
        with self._write() as conn:
            params = {"id": delivery_id, "now": _ts(now)}
            changed = conn.execute(_Q["resend"], params).fetchall()
            if changed:
                conn.execute(_Q["store_delivery_payload"], {"id": delivery_id, "payload": payload})
                _recompute_heads(conn, [(changed[0]["citizen_key"], changed[0]["destination"])])
                return
            row = conn.execute(_Q["lease_holder"], {"id": delivery_id}).fetchone()
            if row is None:
                raise NotFound(f"no delivery {delivery_id}")
            raise InvalidTransition(
                f"delivery {delivery_id} is {row['state']}; only a delivered one is resent"
            )

    # -- operators -------------------------------------------------------------------------------------

    def message_trace(self, message_id: str) -> MessageTrace | None:
        """The trace of a message by its id or its MessageHeader.id."""
        with self._read() as conn:
            row = conn.execute(_Q["message_by_id_or_header"], {"id": message_id}).fetchone()
            if row is None:
                return None
            message = _message(row)
            traces: list[DeliveryTrace] = []
            for d in conn.execute(_Q["deliveries_of_message"], {"message_id": message.id}).fetchall():
                attempts = tuple(
                    Attempt(
                        number=a["number"],
                        worker_id=a["worker_id"],
                        started_at=_dt(a["started_at"]),
                        latency=timedelta(milliseconds=a["latency_ms"]),
                        outcome=cast(AttemptOutcome, a["outcome"]),
                        status_code=a["status_code"],
                        detail=a["detail"],
                    )
                    for a in conn.execute(_Q["attempts_of_delivery"], {"delivery_id": d["id"]})
                )
                receipts = tuple(
                    Receipt(
                        ack_header_id=r["ack_header_id"],
                        acknowledged_header_id=r["acknowledged_header_id"],
                        from_system=r["from_system"],
                        code=cast(ReceiptCode, r["code"]),
                        received_at=_dt(r["received_at"]),
                        delivery_id=r["delivery_id"],
                    )
                    for r in conn.execute(_Q["receipts_of_delivery"], {"delivery_id": d["id"]})
                )
                traces.append(DeliveryTrace(_delivery(d), attempts, receipts))
            return MessageTrace(message, tuple(traces))

    def message_record(self, message_id: str) -> MessageRecord | None:
        """A message by its id or its MessageHeader.id, without the trace of its deliveries."""
        with self._read() as conn:
            row = conn.execute(_Q["message_by_id_or_header"], {"id": message_id}).fetchone()
        return None if row is None else _message(row)

    def message_payload(self, message_id: str) -> bytes | None:
        """The body of a message as received; None when unknown or purged."""
        with self._read() as conn:
            row = conn.execute(_Q["message_payload"], {"id": message_id}).fetchone()
        return None if row is None or row["payload"] is None else bytes(row["payload"])

    def delivery_payload(self, delivery_id: str) -> bytes | None:
        """The bytes a delivery puts on the wire; None when unknown or purged."""
        with self._read() as conn:
            row = conn.execute(_Q["delivery_payload"], {"id": delivery_id}).fetchone()
        return None if row is None or row["payload"] is None else bytes(row["payload"])

    def list_messages(self, filters: MessageFilter) -> list[MessageRecord]:
        """Messages matching ``filters``, newest first."""
        params = {
            "sender": filters.sender,
            "destination": filters.destination,
            "kind": filters.kind,
            "state": filters.state,
            "received_from": _ts_opt(filters.received_from),
            "received_to": _ts_opt(filters.received_to),
            "limit": filters.limit,
            "offset": filters.offset,
        }
        with self._read() as conn:
            return [_message(r) for r in conn.execute(_Q["list_messages"], params)]

    def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100, offset: int = 0
    ) -> list[DeliveryRecord]:
        """Deliveries in ``state`` (all when None), oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                _Q["list_deliveries" if state is None else "list_deliveries_in_state"],
                {"state": state, "limit": limit, "offset": offset},
            )
            return [_delivery(r) for r in rows]

    # -- audit -----------------------------------------------------------------------------------------

    def _append_audit(
        self, conn: sqlite3.Connection, record: AuditRecord, prev_hash: str | None = None
    ) -> AuditEntry:
        """Append ``record`` after ``prev_hash`` (the chain's head, when the caller knows it)."""
        if prev_hash is None:
            last = conn.execute(_Q["last_audit_hash"]).fetchone()
            prev_hash = AUDIT_GENESIS if last is None else last["hash"]
        digest = audit_hash(prev_hash, record)
        seq = conn.execute(
            _Q["insert_audit"],
            {
                "recorded_at": _ts(record.recorded_at),
                "action": record.action,
                "actor": record.actor,
                "message_id": record.message_id,
                "body": record.body,
                "prev_hash": prev_hash,
                "hash": digest,
            },
        ).fetchone()[0]
        return AuditEntry(int(seq), record, prev_hash, digest)

    def append_audit(self, record: AuditRecord) -> AuditEntry:
        """Append one record to the hash-chained audit trail."""
        with self._write() as conn:
            return self._append_audit(conn, record)

    def append_audit_many(self, records: Sequence[AuditRecord]) -> list[AuditEntry]:
        """Append several records to the audit trail in one transaction, in order."""
        if not records:
            return []
        with self._write() as conn:
            return [self._append_audit(conn, record) for record in records]

    def read_audit(self, after_seq: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries with ``seq > after_seq``, in order."""
        with self._read() as conn:
            rows = conn.execute(_Q["read_audit"], {"after_seq": after_seq, "limit": limit}).fetchall()
        return [
            AuditEntry(
                seq=r["seq"],
                record=AuditRecord(
                    recorded_at=_dt(r["recorded_at"]),
                    action=r["action"],
                    actor=r["actor"],
                    body=bytes(r["body"]),
                    message_id=r["message_id"],
                ),
                prev_hash=r["prev_hash"],
                hash=r["hash"],
            )
            for r in rows
        ]

    # -- retention -------------------------------------------------------------------------------------

    def purge_payloads(self, older_than: datetime) -> PurgeResult:
        """Drop payloads of deliveries delivered before ``older_than`` (dead ones are kept for replay).

        A message's own body goes once it was received before ``older_than`` and every one of its
        deliveries is delivered. Rows, attempts, receipts and the audit trail stay.
        """
        cutoff = {"cutoff": _ts(older_than)}
        with self._write() as conn:
            deliveries = conn.execute(_Q["purge_deliveries"], cutoff).rowcount
            messages = conn.execute(_Q["purge_messages"], cutoff).rowcount
        return PurgeResult(deliveries=deliveries, messages=messages)

    # -- routing state ---------------------------------------------------------------------------------

    def set_admission(self, admission: Admission) -> bool:
        """Record a citizen's admission state; False when a newer state is already known."""
        with self._write() as conn:
            return conn.execute(_Q["set_admission"], _admission_params(admission)).rowcount == 1

    def current_admission(self, citizen_key: str) -> Admission | None:
        """The latest known admission state of a citizen."""
        rows = self._select(_Q["current_admission"], {"citizen_key": citizen_key})
        if not rows:
            return None
        row = rows[0]
        return Admission(
            citizen_key=row["citizen_key"],
            hospital=row["hospital"],
            status=cast(AdmissionStatus, row["status"]),
            since=_dt(row["since"]),
        )

    # -- metrics ---------------------------------------------------------------------------------------

    def queue_stats(self, now: datetime) -> QueueStats:
        """Delivery counts for metrics and health."""
        with self._read() as conn:
            by_state: dict[str, int] = dict.fromkeys(_STATES, 0)
            for row in conn.execute(_Q["count_by_state"]):
                by_state[row["state"]] = row["n"]
            due = conn.execute(_Q["due_stats"], {"now": _ts(now)}).fetchone()
        return QueueStats(
            by_state=by_state,
            due=int(due["due"]),
            expired_leases=int(due["expired_leases"]),
            oldest_due_at=_dt_opt(due["oldest_due_at"]),
        )

    def destination_queues(self) -> list[DestinationQueue]:
        """The backlog of every destination that has open or dead deliveries, by destination id."""
        with self._read() as conn:
            rows = conn.execute(_Q["destination_queues"]).fetchall()
        return [
            DestinationQueue(
                destination=r["destination"],
                pending=int(r["pending"]),
                leased=int(r["leased"]),
                dead=int(r["dead"]),
                oldest_open_at=_dt_opt(r["oldest_open_at"]),
            )
            for r in rows
        ]
