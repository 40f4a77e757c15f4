-- The outbox schema, version 1 (PostgreSQL). Same tables and columns as the SQLite schema; the types
-- are PostgreSQL's own (timestamptz, bytea, boolean) and the append-only audit rule is a trigger.

CREATE TABLE messages (
    id           text PRIMARY KEY,
    bundle_id    text NOT NULL UNIQUE,
    header_id    text NOT NULL UNIQUE,
    sender       text NOT NULL,
    kind         text NOT NULL,
    citizen_key  text,
    content_type text NOT NULL,
    payload      bytea,            -- NULL once purged
    response     bytea NOT NULL,   -- replayed verbatim to a duplicate
    received_at  timestamptz NOT NULL
);
CREATE INDEX messages_received ON messages (received_at, id);

CREATE TABLE deliveries (
    -- Acceptance order. Within one (citizen_key, destination) pair, accept takes the pair's advisory
    -- lock before drawing a number, so seq order is commit order there.
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               text NOT NULL UNIQUE,
    message_id       text NOT NULL REFERENCES messages (id),
    header_id        text NOT NULL,  -- copied from the message: receipts correlate on it
    destination      text NOT NULL,
    citizen_key      text,
    content_type     text NOT NULL,
    payload          bytea,          -- what goes on the wire; NULL once purged
    expect_receipt   boolean NOT NULL,
    state            text NOT NULL CHECK (state IN ('pending', 'leased', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    resends          integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    next_attempt_at  timestamptz NOT NULL,
    first_attempt_at timestamptz,
    lease_owner      text,
    lease_expires_at timestamptz,
    delivered_at     timestamptz,
    dead_at          timestamptz,
    last_error       text,
    receipt_code     text,
    receipt_at       timestamptz,
    CHECK ((state = 'leased') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
);
-- The claim scan: due pending work in (next_attempt_at, seq) order, so a claim stops at its limit.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, seq) WHERE state = 'pending';
CREATE INDEX deliveries_state ON deliveries (state, seq);
CREATE INDEX deliveries_leases ON deliveries (lease_expires_at) WHERE state = 'leased';
-- The head-of-line check: is there an older open delivery for this citizen and destination?
CREATE INDEX deliveries_open_pairs ON deliveries (citizen_key, destination, seq)
    WHERE state IN ('pending', 'leased');
CREATE UNIQUE INDEX deliveries_message ON deliveries (message_id, destination);
CREATE INDEX deliveries_header ON deliveries (header_id, destination);
CREATE INDEX deliveries_awaiting_receipt ON deliveries (delivered_at)
    WHERE state = 'delivered' AND expect_receipt AND receipt_code IS NULL;

CREATE TABLE attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id text NOT NULL REFERENCES deliveries (id),
    number      integer NOT NULL,
    worker_id   text NOT NULL,
    started_at  timestamptz NOT NULL,
    latency_ms  double precision NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('delivered', 'transient', 'permanent')),
    status_code integer,
    detail      text NOT NULL
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, id);

CREATE TABLE receipts (
    ack_header_id          text PRIMARY KEY,
    acknowledged_header_id text NOT NULL,
    from_system            text NOT NULL,
    code                   text NOT NULL CHECK (code IN ('ok', 'transient-error', 'fatal-error')),
    received_at            timestamptz NOT NULL,
    delivery_id            text REFERENCES deliveries (id)
);
CREATE INDEX receipts_delivery ON receipts (delivery_id);

CREATE TABLE admissions (
    citizen_key text PRIMARY KEY,
    hospital    text NOT NULL,
    status      text NOT NULL
        CHECK (status IN ('admitted', 'on-leave', 'discharged', 'deceased', 'cancelled')),
    since       timestamptz NOT NULL
);

CREATE TABLE audit (
    -- Appends are serialised by an advisory lock, so seq order is chain order.
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at timestamptz NOT NULL,
    action      text NOT NULL,
    actor       text NOT NULL,
    message_id  text,
    body        bytea NOT NULL,
    prev_hash   text NOT NULL,
    hash        text NOT NULL UNIQUE
);
-- The audit trail is append-only: the database itself refuses edits, deletions and truncation.
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only' USING ERRCODE = 'integrity_constraint_violation';
END;
$$;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
