-- The outbox schema, version 1.
-- Timestamps are fixed-width UTC text (YYYY-MM-DDTHH:MM:SS.ffffffZ), so text order is time order.

CREATE TABLE messages (
    id           TEXT PRIMARY KEY,
    bundle_id    TEXT NOT NULL UNIQUE,
    header_id    TEXT NOT NULL UNIQUE,
    sender       TEXT NOT NULL,
    kind         TEXT NOT NULL,
    citizen_key  TEXT,
    content_type TEXT NOT NULL,
    payload      BLOB,             -- NULL once purged
    response     BLOB NOT NULL,    -- replayed verbatim to a duplicate
    received_at  TEXT NOT NULL
);
CREATE INDEX messages_received ON messages (received_at, id);

CREATE TABLE deliveries (
    -- Acceptance order; AUTOINCREMENT so a number is never reused after a delete.
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    message_id       TEXT NOT NULL REFERENCES messages (id),
    header_id        TEXT NOT NULL,  -- copied from the message: receipts correlate on it
    destination      TEXT NOT NULL,
    citizen_key      TEXT,
    content_type     TEXT NOT NULL,
    payload          BLOB,           -- what goes on the wire; NULL once purged
    expect_receipt   INTEGER NOT NULL CHECK (expect_receipt IN (0, 1)),
    state            TEXT NOT NULL CHECK (state IN ('pending', 'leased', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    resends          INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    next_attempt_at  TEXT NOT NULL,
    first_attempt_at TEXT,
    lease_owner      TEXT,
    lease_expires_at TEXT,
    delivered_at     TEXT,
    dead_at          TEXT,
    last_error       TEXT,
    receipt_code     TEXT,
    receipt_at       TEXT,
    CHECK ((state = 'leased') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_leases ON deliveries (lease_expires_at) WHERE state = 'leased';
-- The head-of-line check: is there an older open delivery for this citizen and destination?
CREATE INDEX deliveries_open_pairs ON deliveries (citizen_key, destination, seq)
    WHERE state IN ('pending', 'leased');
CREATE UNIQUE INDEX deliveries_message ON deliveries (message_id, destination);
CREATE INDEX deliveries_header ON deliveries (header_id, destination);
CREATE INDEX deliveries_awaiting_receipt ON deliveries (delivered_at)
    WHERE state = 'delivered' AND expect_receipt = 1 AND receipt_code IS NULL;

CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL REFERENCES deliveries (id),
    number      INTEGER NOT NULL,
    worker_id   TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    latency_ms  REAL NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('delivered', 'transient', 'permanent')),
    status_code INTEGER,
    detail      TEXT NOT NULL
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, id);

CREATE TABLE receipts (
    ack_header_id          TEXT PRIMARY KEY,
    acknowledged_header_id TEXT NOT NULL,
    from_system            TEXT NOT NULL,
    code                   TEXT NOT NULL CHECK (code IN ('ok', 'transient-error', 'fatal-error')),
    received_at            TEXT NOT NULL,
    delivery_id            TEXT REFERENCES deliveries (id)
);
CREATE INDEX receipts_delivery ON receipts (delivery_id);

CREATE TABLE admissions (
    citizen_key TEXT PRIMARY KEY,
    hospital    TEXT NOT NULL,
    status      TEXT NOT NULL
        CHECK (status IN ('admitted', 'on-leave', 'discharged', 'deceased', 'cancelled')),
    since       TEXT NOT NULL
);

CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at TEXT NOT NULL,
    action      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    message_id  TEXT,
    body        BLOB NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE
);
-- The audit trail is append-only: the database itself refuses edits and deletions.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;
