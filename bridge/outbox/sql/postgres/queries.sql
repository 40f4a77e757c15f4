-- Named queries of the PostgreSQL outbox adapter. Each starts with "-- name: <name>"; parameters are
-- psycopg's %(named)s placeholders, cast where PostgreSQL cannot infer the type of a NULL.

-- name: message_by_ids
SELECT m.id, m.bundle_id, m.header_id, m.sender, m.kind, m.citizen_key, m.content_type, m.received_at,
       m.response, m.payload IS NULL AS payload_purged, m.mapping_version,
       (SELECT CASE
                   WHEN bool_or(d.state = 'dead') THEN 'dead'
                   WHEN bool_or(d.state <> 'delivered') THEN 'in-flight'
                   ELSE 'delivered' END
          FROM deliveries d WHERE d.message_id = m.id) AS state
  FROM messages m
 WHERE m.bundle_id = %(bundle_id)s OR m.header_id = %(header_id)s;

-- name: message_by_id_or_header
SELECT m.id, m.bundle_id, m.header_id, m.sender, m.kind, m.citizen_key, m.content_type, m.received_at,
       m.response, m.payload IS NULL AS payload_purged, m.mapping_version,
       (SELECT CASE
                   WHEN bool_or(d.state = 'dead') THEN 'dead'
                   WHEN bool_or(d.state <> 'delivered') THEN 'in-flight'
                   ELSE 'delivered' END
          FROM deliveries d WHERE d.message_id = m.id) AS state
  FROM messages m
 WHERE m.id = %(id)s OR m.header_id = %(id)s
 ORDER BY m.id = %(id)s DESC
 LIMIT 1;

-- name: insert_message
-- DO NOTHING on any unique conflict: a concurrent accept of the same ids waits here for the other
-- transaction and then finds its message, instead of failing.
INSERT INTO messages (id, bundle_id, header_id, sender, kind, citizen_key, content_type, payload, response,
                      received_at, mapping_version)
VALUES (%(id)s, %(bundle_id)s, %(header_id)s, %(sender)s, %(kind)s, %(citizen_key)s, %(content_type)s,
        %(payload)s, %(response)s, %(received_at)s, %(mapping_version)s)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: lock_pairs
-- One transaction-scoped advisory lock per (citizen, destination) pair ("<citizen_key>:<destination>"),
-- taken in the caller's sorted order so two transactions never wait on each other in a cycle. Every
-- transition that moves a pair's head holds its pair's lock.
SELECT pg_advisory_xact_lock(hashtextextended('fhir-bridge.pair:' || current_schema() || ':' || k, 0))
  FROM unnest(%(keys)s::text[]) WITH ORDINALITY AS t (k, n)
 ORDER BY n;

-- name: insert_delivery
-- A new delivery is the newest of its pair (the pair's lock is held), so it is the head when nothing
-- else of the pair is open.
INSERT INTO deliveries (id, message_id, header_id, destination, citizen_key, content_type,
                        expect_receipt, state, created_at, next_attempt_at, head)
VALUES (%(id)s, %(message_id)s, %(header_id)s, %(destination)s, %(citizen_key)s, %(content_type)s,
        %(expect_receipt)s, 'pending', %(created_at)s, %(next_attempt_at)s,
        %(citizen_key)s::text IS NULL OR NOT EXISTS (
            SELECT 1 FROM deliveries o
             WHERE o.citizen_key = %(citizen_key)s::text
               AND o.destination = %(destination)s::text
               AND o.state IN ('pending', 'leased')));

-- name: store_delivery_payload
-- A delivery's payload, kept apart from its row (see 0004_delivery_payloads.sql); a resend replaces it.
INSERT INTO delivery_payloads (seq, payload)
SELECT seq, %(payload)s FROM deliveries WHERE id = %(id)s
    ON CONFLICT (seq) DO UPDATE SET payload = excluded.payload;

-- name: pairs_of_deliveries
-- The (citizen, destination) pairs of some deliveries, to lock before a transition moves their heads.
SELECT DISTINCT citizen_key, destination FROM deliveries
 WHERE id = ANY (%(ids)s::text[]) AND citizen_key IS NOT NULL;

-- name: delivery_ids_of_message
SELECT id FROM deliveries WHERE message_id = %(message_id)s ORDER BY seq;

-- name: lock_audit
-- The audit trail is one hash chain: appends take turns, so each one reads the real previous hash.
SELECT pg_advisory_xact_lock(hashtextextended('fhir-bridge.audit:' || current_schema(), 0));

-- name: last_audit_hash
SELECT hash FROM audit ORDER BY seq DESC LIMIT 1;

-- name: insert_audit
INSERT INTO audit (recorded_at, action, actor, message_id, body, prev_hash, hash)
VALUES (%(recorded_at)s, %(action)s, %(actor)s, %(message_id)s, %(body)s, %(prev_hash)s, %(hash)s)
RETURNING seq;

-- name: read_audit
SELECT seq, recorded_at, action, actor, message_id, body, prev_hash, hash
  FROM audit WHERE seq > %(after_seq)s ORDER BY seq LIMIT %(limit)s;

-- name: claim_expired
-- Leases whose holder went quiet (crashed, partitioned) are taken over first: their work is the oldest.
-- SKIP LOCKED: a row another claimer is taking right now is left to it; a row it took and committed
-- is re-checked against the WHERE clause by PostgreSQL and no longer qualifies.
WITH picked AS (
    SELECT d.seq FROM deliveries d
     WHERE d.state = 'leased' AND d.lease_expires_at <= %(now)s
       AND d.destination <> ALL (%(skip)s::text[])
     ORDER BY d.lease_expires_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED)
UPDATE deliveries d
   SET lease_owner = %(worker_id)s,
       lease_expires_at = %(lease_expires_at)s,
       attempts = d.attempts + 1
  FROM picked
 WHERE d.seq = picked.seq
RETURNING d.seq, d.id, d.message_id, d.header_id, d.destination, d.citizen_key, d.content_type,
          d.attempts, d.created_at, d.first_attempt_at, d.lease_expires_at, d.resends, d.expect_receipt,
          d.next_attempt_at, (SELECT p.payload FROM delivery_payloads p WHERE p.seq = d.seq) AS payload;

-- name: claim_pending
-- A pending delivery is claimable when it is due and the head of its citizen and destination (no
-- older delivery of the pair is open). The scan walks deliveries_claimable, which holds pending heads
-- only, so a backlog queued behind heads waiting for a retry costs it nothing. A head another claimer
-- has locked is skipped; the delivery behind it is no head, so it is not claimable either. A row whose
-- head moved away after this statement's snapshot is re-checked when locked and no longer qualifies.
WITH picked AS (
    SELECT d.seq FROM deliveries d
     WHERE d.state = 'pending' AND d.head AND d.next_attempt_at <= %(now)s
       AND d.destination <> ALL (%(skip)s::text[])
     ORDER BY d.next_attempt_at, d.seq
     LIMIT %(limit)s
       FOR UPDATE OF d SKIP LOCKED)
UPDATE deliveries d
   SET state = 'leased',
       lease_owner = %(worker_id)s,
       lease_expires_at = %(lease_expires_at)s,
       attempts = d.attempts + 1,
       first_attempt_at = COALESCE(d.first_attempt_at, %(now)s)
  FROM picked
 WHERE d.seq = picked.seq
RETURNING d.seq, d.id, d.message_id, d.header_id, d.destination, d.citizen_key, d.content_type,
          d.attempts, d.created_at, d.first_attempt_at, d.lease_expires_at, d.resends, d.expect_receipt,
          d.next_attempt_at, (SELECT p.payload FROM delivery_payloads p WHERE p.seq = d.seq) AS payload;

-- name: claim_pending_to
-- claim_pending for one destination, on its own scan (deliveries_claimable_to).
WITH picked AS (
    SELECT d.seq FROM deliveries d
     WHERE d.destination = %(destination)s AND d.state = 'pending' AND d.head
       AND d.next_attempt_at <= %(now)s
     ORDER BY d.next_attempt_at, d.seq
     LIMIT %(limit)s
       FOR UPDATE OF d SKIP LOCKED)
UPDATE deliveries d
   SET state = 'leased',
       lease_owner = %(worker_id)s,
       lease_expires_at = %(lease_expires_at)s,
       attempts = d.attempts + 1,
       first_attempt_at = COALESCE(d.first_attempt_at, %(now)s)
  FROM picked
 WHERE d.seq = picked.seq
RETURNING d.seq, d.id, d.message_id, d.header_id, d.destination, d.citizen_key, d.content_type,
          d.attempts, d.created_at, d.first_attempt_at, d.lease_expires_at, d.resends, d.expect_receipt,
          d.next_attempt_at, (SELECT p.payload FROM delivery_payloads p WHERE p.seq = d.seq) AS payload;

-- name: lease_holder
SELECT state, lease_owner FROM deliveries WHERE id = %(id)s;

-- name: complete
-- Closes the delivery: it stops being a head; the caller then moves its pair's head (recompute_head).
UPDATE deliveries
   SET state = 'delivered', delivered_at = %(now)s, lease_owner = NULL, lease_expires_at = NULL,
       last_error = NULL, head = false
 WHERE id = %(id)s AND state = 'leased' AND lease_owner = %(worker_id)s;

-- name: schedule_retry
UPDATE deliveries
   SET state = 'pending', next_attempt_at = %(retry_at)s, lease_owner = NULL, lease_expires_at = NULL,
       last_error = %(last_error)s
 WHERE id = %(id)s AND state = 'leased' AND lease_owner = %(worker_id)s;

-- name: dead_letter
-- A dead letter no longer holds its pair: it stops being a head, and the caller moves the head on.
UPDATE deliveries
   SET state = 'dead', dead_at = %(now)s, lease_owner = NULL, lease_expires_at = NULL,
       last_error = %(reason)s, head = false
 WHERE id = %(id)s AND state = 'leased' AND lease_owner = %(worker_id)s;

-- name: release
-- The claim did not turn into an attempt, so it gives back the attempt it counted.
UPDATE deliveries
   SET state = 'pending', next_attempt_at = %(now)s, lease_owner = NULL, lease_expires_at = NULL,
       first_attempt_at = CASE WHEN attempts <= 1 THEN NULL ELSE first_attempt_at END,
       attempts = GREATEST(attempts - 1, 0)
 WHERE id = %(id)s AND state = 'leased' AND lease_owner = %(worker_id)s;

-- name: retry_dead
-- Open again at its original place (its seq): the caller recomputes the pair, which may hand it the
-- head back from a newer delivery. Without a citizen key it is a head of its own.
UPDATE deliveries
   SET state = 'pending', next_attempt_at = %(now)s, attempts = 0, first_attempt_at = NULL, dead_at = NULL,
       head = citizen_key IS NULL
 WHERE id = %(id)s AND state = 'dead';

-- name: give_up_receipt
UPDATE deliveries
   SET state = 'dead', dead_at = %(now)s, last_error = %(reason)s
 WHERE id = %(id)s AND state = 'delivered' AND expect_receipt AND receipt_code IS NULL;

-- name: message_payload
SELECT payload FROM messages WHERE id = %(id)s;

-- name: delivery_payload
SELECT p.payload FROM deliveries d JOIN delivery_payloads p ON p.seq = d.seq WHERE d.id = %(id)s;

-- name: insert_attempt
INSERT INTO attempts (delivery_id, number, worker_id, started_at, latency_ms, outcome, status_code, detail)
SELECT %(delivery_id)s, attempts, %(worker_id)s, %(started_at)s, %(latency_ms)s, %(outcome)s,
       %(status_code)s::integer, %(detail)s
  FROM deliveries WHERE id = %(delivery_id)s;

-- name: receipt_by_ack
SELECT r.delivery_id, d.message_id
  FROM receipts r LEFT JOIN deliveries d ON d.id = r.delivery_id
 WHERE r.ack_header_id = %(ack_header_id)s;

-- name: delivery_for_receipt
-- The acknowledged message by its MessageHeader.id (unique), then its delivery to the receipt's sender
-- (deliveries_message): a delivery carries its message's header id, so this finds the same delivery as
-- a look-up on deliveries.header_id would, without an index on it that every accept has to grow.
SELECT id, message_id, delivered_at FROM deliveries
 WHERE message_id = (SELECT id FROM messages WHERE header_id = %(acknowledged_header_id)s)
   AND destination = %(from_system)s;

-- name: insert_receipt
-- DO NOTHING: the same Acknowledgement arriving twice at once is stored once; the caller looks again.
INSERT INTO receipts (ack_header_id, acknowledged_header_id, from_system, code, received_at, delivery_id)
VALUES (%(ack_header_id)s, %(acknowledged_header_id)s, %(from_system)s, %(code)s, %(received_at)s,
        %(delivery_id)s::text)
ON CONFLICT (ack_header_id) DO NOTHING;

-- name: set_receipt
UPDATE deliveries SET receipt_code = %(code)s, receipt_at = %(received_at)s WHERE id = %(id)s;

-- name: receipt_overdue
SELECT id, message_id, destination, citizen_key, state, attempts, resends, created_at, next_attempt_at,
       first_attempt_at, lease_owner, lease_expires_at, delivered_at, dead_at, last_error, expect_receipt,
       receipt_code, receipt_at,
       NOT EXISTS (SELECT 1 FROM delivery_payloads p WHERE p.seq = deliveries.seq) AS payload_purged
  FROM deliveries
 WHERE state = 'delivered' AND expect_receipt AND receipt_code IS NULL
   AND delivered_at <= %(cutoff)s AND resends < %(max_resends)s
 ORDER BY delivered_at, seq
 LIMIT %(limit)s;

-- name: resend
-- Open again at its original place, as retry_dead; the caller then stores the new envelope
-- (store_delivery_payload).
UPDATE deliveries
   SET state = 'pending', resends = resends + 1, attempts = 0,
       first_attempt_at = NULL, next_attempt_at = %(now)s, delivered_at = NULL, head = citizen_key IS NULL
 WHERE id = %(id)s AND state = 'delivered';

-- name: recompute_head
-- Give one (citizen, destination) pair its head back after a delivery of it opened or closed: the
-- oldest open delivery is the head, no other row of the pair is. The pair's only head before the
-- change was its oldest open delivery; a change closes a delivery (clearing its head) or opens one
-- again at its old place (without the head), so afterwards the head, if any, is one of the pair's two
-- oldest open deliveries. Those two are read from deliveries_open_pairs, however long the pair's
-- backlog, and only rows that change are written. A newer leased delivery that loses the head keeps its
-- lease and finishes. The caller holds the pair's lock, so no other transaction opens or closes a
-- delivery of the pair meanwhile.
WITH oldest_two AS (
    SELECT seq FROM deliveries
     WHERE citizen_key = %(citizen_key)s AND destination = %(destination)s
       AND state IN ('pending', 'leased')
     ORDER BY seq
     LIMIT 2)
UPDATE deliveries d
   SET head = NOT d.head
 WHERE d.seq IN (SELECT seq FROM oldest_two)
   AND d.head = (d.seq <> (SELECT MIN(seq) FROM oldest_two));

-- name: deliveries_of_message
SELECT id, message_id, destination, citizen_key, state, attempts, resends, created_at, next_attempt_at,
       first_attempt_at, lease_owner, lease_expires_at, delivered_at, dead_at, last_error, expect_receipt,
       receipt_code, receipt_at,
       NOT EXISTS (SELECT 1 FROM delivery_payloads p WHERE p.seq = deliveries.seq) AS payload_purged
  FROM deliveries WHERE message_id = %(message_id)s ORDER BY seq;

-- name: attempts_of_delivery
SELECT number, worker_id, started_at, latency_ms, outcome, status_code, detail
  FROM attempts WHERE delivery_id = %(delivery_id)s ORDER BY id;

-- name: receipts_of_delivery
SELECT ack_header_id, acknowledged_header_id, from_system, code, received_at, delivery_id
  FROM receipts WHERE delivery_id = %(delivery_id)s ORDER BY received_at, ack_header_id;

-- name: list_messages
SELECT * FROM (
    SELECT m.id, m.bundle_id, m.header_id, m.sender, m.kind, m.citizen_key, m.content_type, m.received_at,
           m.response, m.payload IS NULL AS payload_purged, m.mapping_version,
           (SELECT CASE
                       WHEN bool_or(d.state = 'dead') THEN 'dead'
                       WHEN bool_or(d.state <> 'delivered') THEN 'in-flight'
                       ELSE 'delivered' END
              FROM deliveries d WHERE d.message_id = m.id) AS state
      FROM messages m
     WHERE (%(sender)s::text IS NULL OR m.sender = %(sender)s::text)
       AND (%(kind)s::text IS NULL OR m.kind = %(kind)s::text)
       AND (%(received_from)s::timestamptz IS NULL OR m.received_at >= %(received_from)s::timestamptz)
       AND (%(received_to)s::timestamptz IS NULL OR m.received_at < %(received_to)s::timestamptz)
       AND (%(destination)s::text IS NULL
            OR EXISTS (SELECT 1 FROM deliveries d
                        WHERE d.message_id = m.id AND d.destination = %(destination)s::text))
) AS listed
 WHERE (%(state)s::text IS NULL OR listed.state = %(state)s::text)
 ORDER BY listed.received_at DESC, listed.id DESC
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: list_deliveries
SELECT id, message_id, destination, citizen_key, state, attempts, resends, created_at, next_attempt_at,
       first_attempt_at, lease_owner, lease_expires_at, delivered_at, dead_at, last_error, expect_receipt,
       receipt_code, receipt_at,
       NOT EXISTS (SELECT 1 FROM delivery_payloads p WHERE p.seq = deliveries.seq) AS payload_purged
  FROM deliveries
 ORDER BY seq
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: list_deliveries_in_state
-- One state (the dead letters, say), oldest first, from deliveries_state (state, seq): no sort, and no
-- walk through the deliveries in other states. A separate statement, not "(:state IS NULL OR ...)",
-- which no index serves.
SELECT id, message_id, destination, citizen_key, state, attempts, resends, created_at, next_attempt_at,
       first_attempt_at, lease_owner, lease_expires_at, delivered_at, dead_at, last_error, expect_receipt,
       receipt_code, receipt_at,
       NOT EXISTS (SELECT 1 FROM delivery_payloads p WHERE p.seq = deliveries.seq) AS payload_purged
  FROM deliveries
 WHERE state = %(state)s
 ORDER BY seq
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: purge_deliveries
DELETE FROM delivery_payloads
 WHERE seq IN (SELECT seq FROM deliveries WHERE state = 'delivered' AND delivered_at < %(cutoff)s);

-- name: purge_messages
UPDATE messages SET payload = NULL
 WHERE received_at < %(cutoff)s AND payload IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = messages.id AND d.state <> 'delivered');

-- name: set_admission
INSERT INTO admissions (citizen_key, hospital, status, since)
VALUES (%(citizen_key)s, %(hospital)s, %(status)s, %(since)s)
ON CONFLICT (citizen_key) DO UPDATE
   SET hospital = excluded.hospital, status = excluded.status, since = excluded.since
 WHERE excluded.since >= admissions.since;

-- name: current_admission
SELECT citizen_key, hospital, status, since FROM admissions WHERE citizen_key = %(citizen_key)s;

-- name: count_by_state
SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state;

-- name: due_stats
SELECT COUNT(*) FILTER (WHERE state = 'pending' AND next_attempt_at <= %(now)s) AS due,
       COUNT(*) FILTER (WHERE state = 'leased' AND lease_expires_at <= %(now)s) AS expired_leases,
       MIN(next_attempt_at) FILTER (WHERE state = 'pending' AND next_attempt_at <= %(now)s) AS oldest_due_at
  FROM deliveries;

-- name: destination_queues
SELECT destination,
       COUNT(*) FILTER (WHERE state = 'pending') AS pending,
       COUNT(*) FILTER (WHERE state = 'leased') AS leased,
       COUNT(*) FILTER (WHERE state = 'dead') AS dead,
       MIN(created_at) FILTER (WHERE state IN ('pending', 'leased')) AS oldest_open_at
  FROM deliveries WHERE state IN ('pending', 'leased', 'dead')
 GROUP BY destination ORDER BY destination;

-- name: ping
SELECT 1;
