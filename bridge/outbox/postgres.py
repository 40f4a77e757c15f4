"""The outbox store on PostgreSQL (psycopg 3 with a connection pool): several bridge processes, one database.

Selected by a ``postgresql://`` (or ``postgres://``) store URL. The port's semantics are the SQLite
adapter's, proven by the same conformance suite; what differs is how they hold when several processes
on several machines share the database.

Claims. A worker leases due deliveries with ``SELECT ... FOR UPDATE SKIP LOCKED`` inside an
``UPDATE``: rows another worker is taking right now are skipped rather than waited for, and a row
another worker took and committed is re-checked by PostgreSQL and no longer qualifies, so no delivery
is leased twice. An expired lease is taken over by any node the same way.

Per-(citizen, destination) order. Only the head of a pair - its oldest open (pending or leased)
delivery - is claimable; the ``head`` column marks it, and a claim reads pending heads only
(``deliveries_claimable``), whatever waits behind them. Two workers racing for the same citizen cannot
both win: the delivery behind a head is no head, and a row whose head moved after the claim's snapshot
is re-checked when ``FOR UPDATE`` locks it and no longer qualifies. What snapshots cannot order is two
transitions of one pair running at once: an accept that inserts while a ``complete`` of the pair's head
is uncommitted sees the head open and inserts no head, and the ``complete``, not seeing the new row,
finds nothing to promote - the pair would stall for good. So every transition that opens or closes a
delivery (accept, complete, complete_many, dead_letter, retry_dead, resend) first takes a
transaction-scoped advisory lock per (citizen, destination) pair it touches and recomputes the pair's
head under it (``recompute_head``): within a pair these run one at a time, and sequence number order
is commit order, so a later delivery is never claimed before an earlier one appears. Claims, retries
and releases leave a delivery open and take no pair lock. This costs one lock per pair touched and
nothing per claim; a partial unique index "one leased delivery per pair" would refuse a second lease
but not stop a later delivery from overtaking an earlier one that is merely pending, and a pair lock
taken at claim time would have to be held for the whole delivery (a session lock across HTTP calls) to
mean anything. A transaction takes all its pair locks in sorted order before it changes a row and
before the audit lock, so no two transactions wait on each other in a cycle.

Audit chain. Appends take a transaction-scoped advisory lock first, so each reads the real previous
hash and sequence order is chain order; the lock is held only to the end of the appending transaction.

Availability. Connection failures, a terminated backend and a pool that cannot hand out a connection
within its timeout raise ``StoreUnavailable`` (the API answers 503 and ``/readyz`` fails). The pool
checks a connection before lending it and replaces broken ones, so the store recovers by itself once
the server is back. Migrations run under an advisory lock: two nodes starting at once apply each
migration once.

Pool settings ride on the URL and are removed before the rest reaches libpq:
``postgresql://bridge@db/bridge?pool_min_size=1&pool_max_size=10&pool_timeout=5``.
Schema and queries live as SQL files in ``bridge/outbox/sql/postgres/``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

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
    only_result,
)
from bridge.outbox.sql import load_migrations, load_queries

_Q = load_queries("postgres")
_STATES: tuple[DeliveryState, ...] = ("pending", "leased", "delivered", "dead")
_SCHEMES = ("postgresql", "postgres")
_POOL_PARAMS = ("pool_min_size", "pool_max_size", "pool_timeout")
_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('fhir-bridge.migrate:' || %s, 0))"
_SCHEMA_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)"
)

Cursor = psycopg.Cursor[DictRow]


def _dt(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _dt_opt(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("timestamps in the store must be timezone-aware")
    return when


def _message(row: DictRow) -> MessageRecord:
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


def _delivery(row: DictRow) -> DeliveryRecord:
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
        "started_at": _aware(attempt.started_at),
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
        "since": _aware(admission.since),
    }


def split_postgres_url(url: str) -> tuple[str, dict[str, float]]:
    """The libpq URL and the pool settings (``pool_min_size``, ``pool_max_size``, ``pool_timeout``).

    Raises ``ValueError`` for another scheme, a URL without a database name or a bad pool setting.
    """
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"not a postgresql URL: {parts.scheme or 'no scheme'}")
    if not parts.path.strip("/"):
        raise ValueError("a postgresql URL must name a database: postgresql://user@host:5432/bridge")
    pool: dict[str, float] = {}
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _POOL_PARAMS:
            rest.append((key, value))
            continue
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{key} must be a number, not {value!r}") from None
        if number <= 0 or (key != "pool_timeout" and number != int(number)):
            raise ValueError(f"{key} must be a positive {'number' if key == 'pool_timeout' else 'integer'}")
        pool[key] = number
    if pool.get("pool_min_size", 1) > pool.get("pool_max_size", max(10, pool.get("pool_min_size", 1))):
        raise ValueError("pool_min_size must not exceed pool_max_size")
    return urlunsplit(parts._replace(query=urlencode(rest))), pool


class PostgresOutboxStore:
    """``OutboxStore`` on one PostgreSQL database (the schema named by the connection's search_path)."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: timedelta = timedelta(seconds=5),
        connect_timeout: int = 5,
    ) -> None:
        self._timeout = timeout.total_seconds()
        self._closed = False
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in conninfo:
            kwargs["connect_timeout"] = connect_timeout
        if "application_name" not in conninfo:
            kwargs["application_name"] = "fhir-bridge"
        # open(wait=False): the pool connects in the background, so a bridge started while the
        # database is down comes up not-ready instead of failing, and becomes ready when it can connect.
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            conninfo,
            kwargs=kwargs,
            min_size=min_size,
            max_size=max_size,
            timeout=self._timeout,
            check=ConnectionPool.check_connection,
            open=False,
            name="fhir-bridge-outbox",
        )
        try:
            self._pool.open(wait=False)
        except psycopg.Error as exc:  # a malformed conninfo is found here
            raise StoreUnavailable(f"cannot open the PostgreSQL store: {exc}") from exc

    @classmethod
    def from_url(cls, url: str) -> PostgresOutboxStore:
        """Open the store named by a ``postgresql://`` URL (pool settings in its query, see the module)."""
        conninfo, pool = split_postgres_url(url)
        min_size = int(pool.get("pool_min_size", 1))
        return cls(
            conninfo,
            min_size=min_size,
            max_size=int(pool.get("pool_max_size", max(10, min_size))),
            timeout=timedelta(seconds=pool.get("pool_timeout", 5.0)),
        )

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        """The connection pool (for its statistics)."""
        return self._pool

    # -- connections ---------------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        try:
            with self._pool.connection(timeout=self._timeout) as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreUnavailable(f"PostgreSQL store: no connection within {self._timeout:g}s") from exc
        except psycopg.IntegrityError as exc:
            raise StoreError(f"PostgreSQL store: {exc.diag.message_primary or exc}") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # Refused, terminated, shut down, deadlock or serialisation failure: try again later.
            raise StoreUnavailable(f"PostgreSQL store: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL store: {exc}") from exc

    @contextmanager
    def _tx(self, *, snapshot: bool = False) -> Iterator[Cursor]:
        """A transaction (READ COMMITTED; ``snapshot``: REPEATABLE READ, read-only), rolled back on error."""
        with self._connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            if snapshot:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield cur

    @contextmanager
    def _auto(self) -> Iterator[Cursor]:
        """A cursor in autocommit mode, for a single statement (no BEGIN/COMMIT round trips)."""
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            yield cur

    def close(self) -> None:
        """Close every pooled connection."""
        if self._closed:
            return
        self._closed = True
        self._pool.close()

    # -- schema ----------------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply pending migrations in one transaction under an advisory lock; return how many."""
        migrations = load_migrations("postgres")
        applied = 0
        with self._tx() as cur:
            schema = cur.execute("SELECT current_schema() AS s").fetchone()
            if schema is None or schema["s"] is None:
                raise StoreError("the connection's search_path names no existing schema to migrate")
            cur.execute(_MIGRATION_LOCK, (schema["s"],))
            cur.execute(_SCHEMA_VERSION_TABLE)
            done = {row["version"] for row in cur.execute("SELECT version FROM schema_version")}
            if done and max(done) > len(migrations):
                raise StoreError(
                    f"the database has schema version {max(done)}, newer than this bridge knows "
                    f"({len(migrations)}); upgrade the bridge"
                )
            for migration in migrations:
                if migration.version in done:
                    continue
                # No parameters: psycopg sends the whole file at once (simple query protocol).
                cur.execute(cast(Any, migration.sql))
                cur.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, datetime.now(UTC)),
                )
                applied += 1
        return applied

    def schema_version(self) -> int:
        """The highest applied migration (0 for an empty schema)."""
        with self._tx(snapshot=True) as cur:
            row = cur.execute("SELECT to_regclass('schema_version') IS NOT NULL AS present").fetchone()
            if row is None or not row["present"]:
                return 0
            found = cur.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version").fetchone()
            return 0 if found is None else int(found["v"])

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the database answers."""
        with self._auto() as cur:
            cur.execute(_Q["ping"]).fetchone()

    # -- ingress ---------------------------------------------------------------------------------------

    @staticmethod
    def _duplicate(cur: Cursor, message: NewMessage) -> Duplicate | None:
        ids = {"bundle_id": message.bundle_id, "header_id": message.header_id}
        rows = cur.execute(_Q["message_by_ids"], ids).fetchall()
        return classify_duplicate([_message(r) for r in rows], message.bundle_id, message.header_id)

    @staticmethod
    def _earlier(cur: Cursor, existing: Duplicate) -> AcceptResult:
        found = cur.execute(_Q["delivery_ids_of_message"], {"message_id": existing.message.id}).fetchall()
        return AcceptResult(existing.message, tuple(r["id"] for r in found), existing.kind)

    @staticmethod
    def _lock_pairs(cur: Cursor, pairs: Collection[tuple[str | None, str]]) -> list[tuple[str, str]]:
        """Take the advisory lock of each pair with a citizen key, in sorted order; the pairs locked."""
        keyed = sorted({(f"{c}:{d}", c, d) for c, d in pairs if c is not None})
        if keyed:
            cur.execute(_Q["lock_pairs"], {"keys": [key for key, _, _ in keyed]})
        return [(c, d) for _, c, d in keyed]

    def _lock_pairs_of(self, cur: Cursor, delivery_ids: Sequence[str]) -> list[tuple[str, str]]:
        """Lock the pairs of some deliveries before a transition that may move their heads."""
        rows = cur.execute(_Q["pairs_of_deliveries"], {"ids": list(delivery_ids)}).fetchall()
        return self._lock_pairs(cur, [(r["citizen_key"], r["destination"]) for r in rows])

    @staticmethod
    def _recompute_heads(cur: Cursor, pairs: Sequence[tuple[str, str]]) -> None:
        """Move the head of each locked pair to its oldest open delivery (after one opened or closed)."""
        if pairs:
            cur.executemany(_Q["recompute_head"], [{"citizen_key": c, "destination": d} for c, d in pairs])

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
        """``accept`` for several messages in ONE transaction, each behind its own savepoint.

        Every pair lock of the batch is taken first, in sorted order, then the audit lock once: both
        outside the savepoints, because rolling back to a savepoint releases the locks taken after it.
        """
        check_accept_requests(requests)
        if not requests:
            return []
        pairs = {(r.message.citizen_key, d.destination) for r in requests for d in r.deliveries}
        results: list[AcceptResult | StoreError] = []
        with self._tx() as cur:
            self._lock_pairs(cur, pairs)
            cur.execute(_Q["lock_audit"])
            for request in requests:
                try:
                    with cur.connection.transaction():
                        results.append(self._accept_one(cur, request))
                except (psycopg.IntegrityError, psycopg.DataError) as exc:
                    error = StoreError(f"PostgreSQL store: {exc.diag.message_primary or exc}")
                    error.__cause__ = exc
                    results.append(error)
                except StoreError as exc:
                    results.append(exc)
        return results

    def _accept_one(self, cur: Cursor, request: AcceptRequest) -> AcceptResult:
        message, deliveries = request.message, request.deliveries
        received = _aware(message.received_at)
        existing = self._duplicate(cur, message)
        if existing is not None:
            return self._earlier(cur, existing)
        cur.execute(
            _Q["insert_message"],
            {
                "id": message.id,
                "bundle_id": message.bundle_id,
                "header_id": message.header_id,
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
        if cur.fetchone() is None:
            # A concurrent accept of the same ids committed first; this statement sees it now.
            existing = self._duplicate(cur, message)
            if existing is None:
                raise StoreError(f"message id {message.id} is already taken")
            return self._earlier(cur, existing)
        cur.executemany(
            _Q["insert_delivery"],
            [
                {
                    "id": d.id,
                    "message_id": message.id,
                    "header_id": message.header_id,
                    "destination": d.destination,
                    "citizen_key": message.citizen_key,
                    "content_type": d.content_type,
                    "expect_receipt": d.expect_receipt,
                    "created_at": received,
                    "next_attempt_at": _aware(d.not_before or received),
                }
                for d in deliveries
            ],
        )
        cur.executemany(
            _Q["store_delivery_payload"], [{"id": d.id, "payload": d.payload} for d in deliveries]
        )
        self._append_audit(cur, request.audit, locked=True)
        if request.admission is not None:
            cur.execute(_Q["set_admission"], _admission_params(request.admission))
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
        return AcceptResult(record, tuple(d.id for d in deliveries), None)

    def find_by_ids(self, bundle_id: str, header_id: str) -> Duplicate | None:
        """The stored message matching either id, and how it matches; None when both are new."""
        with self._auto() as cur:
            rows = cur.execute(_Q["message_by_ids"], {"bundle_id": bundle_id, "header_id": header_id})
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
            "now": _aware(now),
            "lease_expires_at": now + lease,
            "limit": limit,
            "skip": sorted(skip_destinations),
        }
        with self._tx() as cur:
            rows = cur.execute(_Q["claim_expired"], params).fetchall()
            if len(rows) < limit:
                # Without per_destination no destination is named: the rest is the whole claim.
                taken = Counter(r["destination"] for r in rows)
                rows += claim_by_destination(
                    limit - len(rows),
                    {d: n - taken[d] for d, n in (per_destination or {}).items()},
                    skip_destinations,
                    lambda destination, n: cur.execute(
                        _Q["claim_pending_to"], {**params, "destination": destination, "limit": n}
                    ).fetchall(),
                    lambda n, skipped: cur.execute(
                        _Q["claim_pending"], {**params, "limit": n, "skip": sorted(skipped)}
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

    @staticmethod
    def _leased_update(
        cur: Cursor, query: str, params: Mapping[str, Any], delivery_id: str, worker_id: str
    ) -> None:
        if cur.execute(_Q[query], params).rowcount == 1:
            return
        row = cur.execute(_Q["lease_holder"], {"id": delivery_id}).fetchone()
        if row is None:
            raise NotFound(f"no delivery {delivery_id}")
        holder = row["lease_owner"] or "nobody"
        raise LeaseLost(
            f"delivery {delivery_id} is {row['state']} with its lease held by {holder}, not by {worker_id}"
        )

    def complete(self, delivery_id: str, worker_id: str, attempt: AttemptRecord, now: datetime) -> None:
        """Mark a leased delivery delivered and record the attempt; ``LeaseLost`` if no longer ours."""
        with self._tx() as cur:
            pairs = self._lock_pairs_of(cur, [delivery_id])
            params = {"id": delivery_id, "worker_id": worker_id, "now": _aware(now)}
            self._leased_update(cur, "complete", params, delivery_id, worker_id)
            cur.execute(_Q["insert_attempt"], _attempt_params(delivery_id, worker_id, attempt))
            self._recompute_heads(cur, pairs)

    def complete_many(
        self,
        worker_id: str,
        completed: Sequence[tuple[str, AttemptRecord]],
        now: datetime,
        audit: Mapping[str, AuditRecord] | None = None,
    ) -> list[str]:
        """``complete`` for several deliveries in one transaction, with the audit records of those it
        completes; returns the ids whose lease was lost.

        The audit lock is taken after the pair locks and before any row changes, as ``accept_many``
        takes them, so the two never wait on each other in a cycle.
        """
        if not completed:
            return []
        with self._tx() as cur:
            pairs = self._lock_pairs_of(cur, [delivery_id for delivery_id, _ in completed])
            if audit:
                cur.execute(_Q["lock_audit"])
            return self._complete_many(cur, pairs, worker_id, completed, now, audit)

    def complete_with_receipts(
        self,
        worker_id: str,
        completed: Sequence[tuple[str, AttemptRecord]],
        now: datetime,
        audit: Mapping[str, AuditRecord],
        receipts: Sequence[NewReceipt],
        follow_up: ReceiptFollowUps,
    ) -> tuple[list[str], list[RecordedReceipt]]:
        """``complete_many`` and then ``record_receipts`` in ONE transaction.

        The locks are taken as each takes them: the pairs, then the audit lock, before any row changes.
        """
        if not completed and not receipts:
            return [], []
        with self._tx() as cur:
            pairs = self._lock_pairs_of(cur, [delivery_id for delivery_id, _ in completed])
            cur.execute(_Q["lock_audit"])
            lost = self._complete_many(cur, pairs, worker_id, completed, now, audit)
            return lost, self._record_receipts(cur, receipts, follow_up)

    def _complete_many(
        self,
        cur: Cursor,
        pairs: list[tuple[str, str]],
        worker_id: str,
        completed: Sequence[tuple[str, AttemptRecord]],
        now: datetime,
        audit: Mapping[str, AuditRecord] | None,
    ) -> list[str]:
        """The rows of ``complete_many``; the pairs (and, with ``audit``, the audit lock) are locked."""
        lost: list[str] = []
        for delivery_id, attempt in completed:
            params = {"id": delivery_id, "worker_id": worker_id, "now": _aware(now)}
            if cur.execute(_Q["complete"], params).rowcount == 1:
                cur.execute(_Q["insert_attempt"], _attempt_params(delivery_id, worker_id, attempt))
            else:
                lost.append(delivery_id)
        self._recompute_heads(cur, pairs)
        if audit:
            gone = set(lost)
            for delivery_id, _ in completed:
                record = audit.get(delivery_id)
                if record is not None and delivery_id not in gone:
                    self._append_audit(cur, record, locked=True)
        return lost

    def schedule_retry(
        self, delivery_id: str, worker_id: str, attempt: AttemptRecord, retry_at: datetime, now: datetime
    ) -> None:
        """Record a failed attempt and make the delivery due again at ``retry_at``."""
        with self._tx() as cur:
            params = {
                "id": delivery_id,
                "worker_id": worker_id,
                "retry_at": max(_aware(retry_at), _aware(now)),
                "last_error": attempt.detail or attempt.outcome,
            }
            self._leased_update(cur, "schedule_retry", params, delivery_id, worker_id)
            cur.execute(_Q["insert_attempt"], _attempt_params(delivery_id, worker_id, attempt))

    def dead_letter(
        self, delivery_id: str, worker_id: str, attempt: AttemptRecord | None, reason: str, now: datetime
    ) -> None:
        """Give up on a leased delivery: record the last attempt (if any) and park it as dead."""
        with self._tx() as cur:
            pairs = self._lock_pairs_of(cur, [delivery_id])
            params = {"id": delivery_id, "worker_id": worker_id, "now": _aware(now), "reason": reason}
            self._leased_update(cur, "dead_letter", params, delivery_id, worker_id)
            if attempt is not None:
                cur.execute(_Q["insert_attempt"], _attempt_params(delivery_id, worker_id, attempt))
            self._recompute_heads(cur, pairs)

    def release(self, delivery_id: str, worker_id: str, now: datetime) -> None:
        """Hand a leased delivery back unattempted (graceful shutdown); it is due at once."""
        with self._tx() as cur:
            params = {"id": delivery_id, "worker_id": worker_id, "now": _aware(now)}
            self._leased_update(cur, "release", params, delivery_id, worker_id)

    def _transition(
        self,
        query: str,
        params: Mapping[str, Any],
        delivery_id: str,
        refusal: str,
        *,
        reopens: bool = False,
        then: tuple[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Run a state change on one delivery; ``NotFound`` or ``InvalidTransition`` when it matched none.

        ``reopens``: the change opens the delivery again (a replay, a resend), at its original place
        ahead of anything newer of its pair, so the pair is locked first and its head recomputed after.
        ``then``: a query and its parameters run in the same transaction once the change is made.
        """
        with self._tx() as cur:
            pairs = self._lock_pairs_of(cur, [delivery_id]) if reopens else []
            if cur.execute(_Q[query], params).rowcount == 1:
                if then is not None:
                    cur.execute(_Q[then[0]], then[1])
                self._recompute_heads(cur, pairs)
                return
            row = cur.execute(_Q["lease_holder"], {"id": delivery_id}).fetchone()
            if row is None:
                raise NotFound(f"no delivery {delivery_id}")
            raise InvalidTransition(f"delivery {delivery_id} is {row['state']}; {refusal}")

    def retry_dead(self, delivery_id: str, now: datetime) -> None:
        """Operator replay: a dead delivery becomes due now with a fresh retry budget."""
        params = {"id": delivery_id, "now": _aware(now)}
        self._transition("retry_dead", params, delivery_id, "only a dead one can be replayed", reopens=True)

    def give_up_receipt(self, delivery_id: str, reason: str, now: datetime) -> None:
        """Park a delivered delivery whose receipt never came (resends exhausted) as dead."""
        params = {"id": delivery_id, "reason": reason, "now": _aware(now)}
        refusal = "only a delivered one still awaiting its receipt can be given up"
        self._transition("give_up_receipt", params, delivery_id, refusal)

    def record_attempt(self, delivery_id: str, worker_id: str, attempt: AttemptRecord) -> None:
        """Add an attempt to the trace without changing the delivery's state."""
        with self._auto() as cur:
            params = _attempt_params(delivery_id, worker_id, attempt)
            if cur.execute(_Q["insert_attempt"], params).rowcount == 0:
                raise NotFound(f"no delivery {delivery_id}")

    # -- receipts --------------------------------------------------------------------------------------

    @staticmethod
    def _seen_receipt(cur: Cursor, ack_header_id: str) -> DictRow | None:
        return cur.execute(_Q["receipt_by_ack"], {"ack_header_id": ack_header_id}).fetchone()

    def record_receipt(self, receipt: NewReceipt) -> ReceiptMatch | None:
        """Store a receipt and attach it to the delivery it acknowledges; None when none matches.

        The receipt may arrive before the dispatcher has recorded the delivery as delivered (the
        receiver answers asynchronously), so it attaches whatever the delivery's state.
        """
        with self._tx() as cur:
            return self._record_receipt(cur, receipt, details=False).match

    def record_receipts(
        self, receipts: Sequence[NewReceipt], follow_up: ReceiptFollowUps
    ) -> list[RecordedReceipt]:
        """Record several receipts with their audit records and forwards in ONE transaction.

        The audit lock is taken first, before any delivery row is locked (``set_receipt``): every
        receipt appends to the chain, and no transaction waits for the audit lock while it holds a
        delivery row, so no two wait on each other. Forwards are about no citizen and take no pair lock.
        Each forward sits behind its own savepoint, so an integrity error rolls back that forward alone.
        """
        if not receipts:
            return []
        with self._tx() as cur:
            cur.execute(_Q["lock_audit"])
            return self._record_receipts(cur, receipts, follow_up)

    def _record_receipts(
        self, cur: Cursor, receipts: Sequence[NewReceipt], follow_up: ReceiptFollowUps
    ) -> list[RecordedReceipt]:
        """The rows of ``record_receipts``; the audit lock is held."""
        results: list[RecordedReceipt] = []
        for receipt in receipts:
            correlation = self._record_receipt(cur, receipt, details=True)
            then = follow_up(correlation)
            check_receipt_forward(then)
            if then.audit is not None:
                self._append_audit(cur, then.audit, locked=True)
            forwarded: AcceptResult | StoreError | None = None
            if then.forward is not None and correlation.new:
                try:
                    with cur.connection.transaction():
                        forwarded = self._accept_one(cur, then.forward)
                except (psycopg.IntegrityError, psycopg.DataError) as exc:
                    forwarded = StoreError(f"PostgreSQL store: {exc.diag.message_primary or exc}")
                    forwarded.__cause__ = exc
                except StoreError as exc:
                    forwarded = exc
            results.append(RecordedReceipt(correlation, forwarded))
        return results

    def _record_receipt(self, cur: Cursor, receipt: NewReceipt, *, details: bool) -> ReceiptCorrelation:
        """Store one receipt inside the open transaction; with ``details``, read the message a new match
        acknowledges and when its delivery was delivered."""
        seen = self._seen_receipt(cur, receipt.ack_header_id)
        if seen is None:
            target = cur.execute(
                _Q["delivery_for_receipt"],
                {
                    "acknowledged_header_id": receipt.acknowledged_header_id,
                    "from_system": receipt.from_system,
                },
            ).fetchone()
            inserted = cur.execute(
                _Q["insert_receipt"],
                {
                    "ack_header_id": receipt.ack_header_id,
                    "acknowledged_header_id": receipt.acknowledged_header_id,
                    "from_system": receipt.from_system,
                    "code": receipt.code,
                    "received_at": _aware(receipt.received_at),
                    "delivery_id": None if target is None else target["id"],
                },
            ).rowcount
            if inserted == 1:
                if target is None:
                    return ReceiptCorrelation(receipt, None)
                cur.execute(
                    _Q["set_receipt"],
                    {"id": target["id"], "code": receipt.code, "received_at": receipt.received_at},
                )
                match = ReceiptMatch(target["id"], target["message_id"], duplicate=False)
                if not details:
                    return ReceiptCorrelation(receipt, match)
                row = cur.execute(_Q["message_by_id_or_header"], {"id": target["message_id"]}).fetchone()
                return ReceiptCorrelation(
                    receipt, match, None if row is None else _message(row), _dt_opt(target["delivered_at"])
                )
            # The same Acknowledgement was stored concurrently; report it as the duplicate it is.
            seen = self._seen_receipt(cur, receipt.ack_header_id)
        if seen is None or seen["delivery_id"] is None:
            return ReceiptCorrelation(receipt, None)
        return ReceiptCorrelation(
            receipt, ReceiptMatch(seen["delivery_id"], seen["message_id"], duplicate=True)
        )

    def receipt_overdue(
        self, now: datetime, wait: timedelta, max_resends: int, limit: int
    ) -> list[DeliveryRecord]:
        """Delivered deliveries that expect a receipt, got none within ``wait``, and may still be resent."""
        params = {"cutoff": _aware(now) - wait, "max_resends": max_resends, "limit": limit}
        with self._auto() as cur:
            return [_delivery(r) for r in cur.execute(_Q["receipt_overdue"], params)]

    def resend(self, delivery_id: str, payload: bytes, now: datetime) -> None:
        """Queue a delivered delivery again with a new envelope (``payload``), counting one resend."""
        params = {"id": delivery_id, "now": _aware(now)}
        payload_params = {"id": delivery_id, "payload": payload}
        self._transition(
            "resend",
            params,
            delivery_id,
            "only a delivered one is resent",
            reopens=True,
            then=("store_delivery_payload", payload_params),
        )

    # -- operators -------------------------------------------------------------------------------------

    def message_trace(self, message_id: str) -> MessageTrace | None:
        """The trace of a message by its id or its MessageHeader.id."""
        with self._tx(snapshot=True) as cur:
            row = cur.execute(_Q["message_by_id_or_header"], {"id": message_id}).fetchone()
            if row is None:
                return None
            message = _message(row)
            traces: list[DeliveryTrace] = []
            for d in cur.execute(_Q["deliveries_of_message"], {"message_id": message.id}).fetchall():
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
                    for a in cur.execute(_Q["attempts_of_delivery"], {"delivery_id": d["id"]}).fetchall()
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
                    for r in cur.execute(_Q["receipts_of_delivery"], {"delivery_id": d["id"]}).fetchall()
                )
                traces.append(DeliveryTrace(_delivery(d), attempts, receipts))
            return MessageTrace(message, tuple(traces))

    def _payload(self, query: str, row_id: str) -> bytes | None:
        with self._auto() as cur:
            row = cur.execute(_Q[query], {"id": row_id}).fetchone()
        return None if row is None or row["payload"] is None else bytes(row["payload"])

    def message_record(self, message_id: str) -> MessageRecord | None:
        """A message by its id or its MessageHeader.id, without the trace of its deliveries."""
        with self._auto() as cur:
            row = cur.execute(_Q["message_by_id_or_header"], {"id": message_id}).fetchone()
        return None if row is None else _message(row)

    def message_payload(self, message_id: str) -> bytes | None:
        """The body of a message as received; None when unknown or purged."""
        return self._payload("message_payload", message_id)

    def delivery_payload(self, delivery_id: str) -> bytes | None:
        """The bytes a delivery puts on the wire; None when unknown or purged."""
        return self._payload("delivery_payload", delivery_id)

    def list_messages(self, filters: MessageFilter) -> list[MessageRecord]:
        """Messages matching ``filters``, newest first."""
        params = {
            "sender": filters.sender,
            "destination": filters.destination,
            "kind": filters.kind,
            "state": filters.state,
            "received_from": filters.received_from,
            "received_to": filters.received_to,
            "limit": filters.limit,
            "offset": filters.offset,
        }
        with self._auto() as cur:
            return [_message(r) for r in cur.execute(_Q["list_messages"], params)]

    def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100, offset: int = 0
    ) -> list[DeliveryRecord]:
        """Deliveries in ``state`` (all when None), oldest first."""
        with self._auto() as cur:
            rows = cur.execute(
                _Q["list_deliveries" if state is None else "list_deliveries_in_state"],
                {"state": state, "limit": limit, "offset": offset},
            )
            return [_delivery(r) for r in rows]

    # -- audit -----------------------------------------------------------------------------------------

    @staticmethod
    def _append_audit(cur: Cursor, record: AuditRecord, *, locked: bool = False) -> AuditEntry:
        if not locked:
            cur.execute(_Q["lock_audit"])
        last = cur.execute(_Q["last_audit_hash"]).fetchone()
        prev_hash = AUDIT_GENESIS if last is None else last["hash"]
        digest = audit_hash(prev_hash, record)
        row = cur.execute(
            _Q["insert_audit"],
            {
                "recorded_at": record.recorded_at,
                "action": record.action,
                "actor": record.actor,
                "message_id": record.message_id,
                "body": record.body,
                "prev_hash": prev_hash,
                "hash": digest,
            },
        ).fetchone()
        assert row is not None  # INSERT ... RETURNING always yields the new row
        return AuditEntry(int(row["seq"]), record, prev_hash, digest)

    def append_audit(self, record: AuditRecord) -> AuditEntry:
        """Append one record to the hash-chained audit trail."""
        with self._tx() as cur:
            return self._append_audit(cur, record)

    def append_audit_many(self, records: Sequence[AuditRecord]) -> list[AuditEntry]:
        """Append several records to the audit trail in one transaction, in order."""
        if not records:
            return []
        with self._tx() as cur:
            return [self._append_audit(cur, record) for record in records]

    def read_audit(self, after_seq: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries with ``seq > after_seq``, in order."""
        with self._auto() as cur:
            rows = cur.execute(_Q["read_audit"], {"after_seq": after_seq, "limit": limit}).fetchall()
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
        cutoff = {"cutoff": _aware(older_than)}
        with self._tx() as cur:
            deliveries = cur.execute(_Q["purge_deliveries"], cutoff).rowcount
            messages = cur.execute(_Q["purge_messages"], cutoff).rowcount
        return PurgeResult(deliveries=deliveries, messages=messages)

    # -- routing state ---------------------------------------------------------------------------------

    def set_admission(self, admission: Admission) -> bool:
        """Record a citizen's admission state; False when a newer state is already known."""
        with self._auto() as cur:
            return cur.execute(_Q["set_admission"], _admission_params(admission)).rowcount == 1

    def current_admission(self, citizen_key: str) -> Admission | None:
        """The latest known admission state of a citizen."""
        with self._auto() as cur:
            row = cur.execute(_Q["current_admission"], {"citizen_key": citizen_key}).fetchone()
        if row is None:
            return None
        return Admission(
            citizen_key=row["citizen_key"],
            hospital=row["hospital"],
            status=cast(AdmissionStatus, row["status"]),
            since=_dt(row["since"]),
        )

    # -- metrics ---------------------------------------------------------------------------------------

    def queue_stats(self, now: datetime) -> QueueStats:
        """Delivery counts for metrics and health."""
        with self._tx(snapshot=True) as cur:
            by_state: dict[str, int] = dict.fromkeys(_STATES, 0)
            for row in cur.execute(_Q["count_by_state"]).fetchall():
                by_state[row["state"]] = row["n"]
            due = cur.execute(_Q["due_stats"], {"now": _aware(now)}).fetchone()
        assert due is not None  # an aggregate without GROUP BY always yields one row
        return QueueStats(
            by_state=by_state,
            due=int(due["due"]),
            expired_leases=int(due["expired_leases"]),
            oldest_due_at=_dt_opt(due["oldest_due_at"]),
        )

    def destination_queues(self) -> list[DestinationQueue]:
        """The backlog of every destination that has open or dead deliveries, by destination id."""
        with self._tx(snapshot=True) as cur:
            rows = cur.execute(_Q["destination_queues"]).fetchall()
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
