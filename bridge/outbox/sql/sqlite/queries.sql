-- Named queries of the SQLite outbox adapter. Each starts with "-- name: <name>"; parameters are :named.

-- name: message_by_ids
SELECT m.id, m.bundle_id, m.header_id, m.sender, m.kind, m.citizen_key, m.content_type, m.received_at,
       m.response, m.payload IS NULL AS payload_purged, m.mapping_version,
       (SELECT CASE
                   WHEN COALESCE(SUM(d.state = 'dead'), 0) > 0 THEN 'dead'
                   WHEN COALESCE(SUM(d.state <> 'delivered'), 0) > 0 THEN 'in-flight'
                   ELSE 'delivered' END
          FROM deliveries d WHERE d.message_id = m.id) AS state
  FROM messages m
 WHERE m.bundle_id = :bundle_id OR m.header_id = :header_id;

-- name: message_by_id_or_header
SELECT m.id, m.bundle_id, m.header_id, m.sender, m.kind, m.citizen_key, m.content_type, m.received_at,
       m.response, m.payload IS NULL AS payload_purged, m.mapping_version,
       (SELECT CASE
                   WHEN COALESCE(SUM(d.state = 'dead'), 0) > 0 THEN 'dead'
                   WHEN COALESCE(SUM(d.state <> 'delivered'), 0) > 0 THEN 'in-flight'
                   ELSE 'delivered' END
          FROM deliveries d WHERE d.message_id = m.id) AS state
  FROM messages m
 WHERE m.id = :id OR m.header_id = :id
 ORDER BY m.id = :id DESC
 LIMIT 1;

-- name: insert_message
INSERT INTO messages (id, bundle_id, header_id, sender, kind, citizen_key, content_type, payload, response,
                      received_at, mapping_version)
VALUES (:id, :bundle_id, :header_id, :sender, :kind, :citizen_key, :content_type, :payload, :response,
        :received_at, :mapping_version);

-- name: insert_delivery
-- A new delivery is the newest of its pair, so it is the head when nothing else of the pair is open.
INSERT INTO deliveries (id, message_id, header_id, destination, citizen_key, content_type,
                        expect_receipt, state, created_at, next_attempt_at, head)
VALUES (:id, :message_id, :header_id, :destination, :citizen_key, :content_type,
        :expect_receipt, 'pending', :created_at, :next_attempt_at,
        :citizen_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM deliveries o
             WHERE o.citizen_key = :citizen_key
               AND o.destination = :destination
               AND o.state IN ('pending', 'leased')));

-- name: store_delivery_payload
-- A delivery's payload, kept apart from its row (see 0004_delivery_payloads.sql); a resend replaces it.
INSERT INTO delivery_payloads (seq, payload)
SELECT seq, :payload FROM deliveries WHERE id = :id
    ON CONFLICT (seq) DO UPDATE SET payload = excluded.payload;

-- name: last_audit_hash
SELECT hash FROM audit ORDER BY seq DESC LIMIT 1;

-- name: insert_audit
INSERT INTO audit (recorded_at, action, actor, message_id, body, prev_hash, hash)
VALUES (:recorded_at, :action, :actor, :message_id, :body, :prev_hash, :hash)
RETURNING seq;

-- name: read_audit
SELECT seq, recorded_at, action, actor, message_id, body, prev_hash, hash
  FROM audit WHERE seq > :after_seq ORDER BY seq LIMIT :limit;

-- name: claim_expired
-- Leases whose holder went quiet (crashed, partitioned) are taken over first: their work is the oldest.
-- INDEXED BY: without it SQLite picks deliveries_state (state=?) and sorts every lease, expired or not.
UPDATE deliveries
   SET lease_owner = :worker_id,
       lease_expires_at = :lease_expires_at,
       attempts = attempts + 1
 WHERE seq IN (
        SELECT d.seq FROM deliveries d INDEXED BY deliveries_leases
         WHERE d.state = 'leased' AND d.lease_expires_at <= :now
           AND d.destination NOT IN (SELECT value FROM json_each(:skip))
         ORDER BY d.lease_expires_at
         LIMIT :limit)
RETURNING seq, id, message_id, header_id, destination, citizen_key, content_type, attempts,
          created_at, first_attempt_at, lease_expires_at, resends, expect_receipt, next_attempt_at,
          (SELECT p.payload FROM delivery_payloads p WHERE p.seq = deliveries.seq) AS payload;

-- name: claim_pending
-- A pending delivery is claimable when it is due and the head of its citizen and destination (no
-- older delivery of the pair is open). The scan walks deliveries_claimable, which holds pending heads
-- only, so a backlog queued behind heads waiting for a retry costs it nothing; INDEXED BY makes a
-- schema change that would lose this plan an error instead of a slow claim. :skip is a JSON array of
-- destinations the caller has no capacity for right now.
UPDATE deliveries
   SET state = 'leased',
       lease_owner = :worker_id,
       lease_expires_at = :lease_expires_at,
       attempts = attempts + 1,
       first_attempt_at = COALESCE(first_attempt_at, :now)
 WHERE seq IN (
        SELECT d.seq FROM deliveries d INDEXED BY deliveries_claimable
         WHERE d.state = 'pending' AND d.head = 1 AND d.next_attempt_at <= :now
           AND d.destination NOT IN (SELECT value FROM json_each(:skip))
         ORDER BY d.next_attempt_at, d.seq
         LIMIT :limit)
RETURNING seq, id, message_id, header_id, destination, citizen_key, content_type, attempts,
          created_at, first_attempt_at, lease_expires_at, resends, expect_receipt, next_attempt_at,
          (SELECT p.payload FROM delivery_payloads p WHERE p.seq = deliveries.seq) AS payload;

-- name: claim_pending_to
-- claim_pending for one destination, on its own scan (deliveries_claimable_to).
UPDATE deliveries
   SET state = 'leased',
       lease_owner = :worker_id,
       lease_expires_at = :lease_expires_at,
       attempts = attempts + 1,
       first_attempt_at = COALESCE(first_attempt_at, :now)
 WHERE seq IN (
        SELECT d.seq FROM deliveries d INDEXED BY deliveries_claimable_to
         WHERE d.destination = :destination AND d.state = 'pending' AND d.head = 1
           AND d.next_attempt_at <= :now
         ORDER BY d.next_attempt_at, d.seq
         LIMIT :limit)
RETURNING seq, id, message_id, header_id, destination, citizen_key, content_type, attempts,
          created_at, first_attempt_at, lease_expires_at, resends, expect_receipt, next_attempt_at,
          (SELECT p.payload FROM delivery_payloads p WHERE p.seq = deliveries.seq) AS payload;

-- name: lease_holder
SELECT state, lease_owner FROM deliveries WHERE id = :id;

-- name: complete
-- Closes the delivery: it stops being a head; the caller then moves its pair's head (recompute_head).
UPDATE deliveries
   SET state = 'delivered', delivered_at = :now, lease_owner = NULL, lease_expires_at = NULL,
       last_error = NULL, head = 0
 WHERE id = :id AND state = 'leased' AND lease_owner = :worker_id
RETURNING citizen_key, destination;

-- name: schedule_retry
UPDATE deliveries
   SET state = 'pending', next_attempt_at = :retry_at, lease_owner = NULL, lease_expires_at = NULL,
       last_error = :last_error
 WHERE id = :id AND state = 'leased' AND lease_owner = :worker_id
RETURNING citizen_key, destination;

-- name: dead_letter
-- A dead letter no longer holds its pair: it stops being a head, and the caller moves the head on.
UPDATE deliveries
   SET state = 'dead', dead_at = :now, lease_owner = NULL, lease_expires_at = NULL, last_error = :reason,
       head = 0
 WHERE id = :id AND state = 'leased' AND lease_owner = :worker_id
RETURNING citizen_key, destination;

-- name: release
-- The claim did not turn into an attempt, so it gives back the attempt it counted.
UPDATE deliveries
   SET state = 'pending', next_attempt_at = :now, lease_owner = NULL, lease_expires_at = NULL,
       first_attempt_at = CASE WHEN attempts <= 1 THEN NULL ELSE first_attempt_at END,
       attempts = MAX(attempts - 1, 0)
 WHERE id = :id AND state = 'leased' AND lease_owner = :worker_id
RETURNING citizen_key, destination;

-- name: retry_dead
-- Open again at its original place (its seq): the caller recomputes the pair, which may hand it the
-- head back from a newer delivery. Without a citizen key it is a head of its own.
UPDATE deliveries
   SET state = 'pending', next_attempt_at = :now, attempts = 0, first_attempt_at = NULL, dead_at = NULL,
       head = citizen_key IS NULL
 WHERE id = :id AND state = 'dead'
RETURNING citizen_key, destination;

-- name: give_up_receipt
UPDATE deliveries
   SET state = 'dead', dead_at = :now, last_error = :reason
 WHERE id = :id AND state = 'delivered' AND expect_receipt = 1 AND receipt_code IS NULL;

-- name: message_payload
SELECT payload FROM messages WHERE id = :id;

-- name: delivery_payload
SELECT p.payload FROM deliveries d JOIN delivery_payloads p ON p.seq = d.seq WHERE d.id = :id;

-- name: insert_attempt
INSERT INTO attempts (delivery_id, number, worker_id, started_at, latency_ms, outcome, status_code, detail)
SELECT :delivery_id, attempts, :worker_id, :started_at, :latency_ms, :outcome, :status_code, :detail
  FROM deliveries WHERE id = :delivery_id;

-- name: receipt_by_ack
SELECT r.delivery_id, d.message_id
  FROM receipts r LEFT JOIN deliveries d ON d.id = r.delivery_id
 WHERE r.ack_header_id = :ack_header_id;

-- name: delivery_for_receipt
-- The acknowledged message by its MessageHeader.id (unique), then its delivery to the receipt's sender
-- (deliveries_message): a delivery carries its message's header id, so this finds the same delivery as
-- a look-up on deliveries.header_id would, without an index on it that every accept has to grow.
SELECT id, message_id, delivered_at FROM deliveries
 WHERE message_id = (SELECT id FROM messages WHERE header_id = :acknowledged_header_id)
   AND destination = :from_system;

-- name: insert_receipt
INSERT INTO receipts (ack_header_id, acknowledged_header_id, from_system, code, received_at, delivery_id)
VALUES (:ack_header_id, :acknowledged_header_id, :from_system, :code, :received_at, :delivery_id);

-- name: set_receipt
UPDATE deliveries SET receipt_code = :code, receipt_at = :received_at WHERE id = :id;

-- name: receipt_overdue
-- INDEXED BY: without it SQLite picks deliveries_state (state=?) and walks every delivered delivery there
-- ever was; deliveries_awaiting_receipt holds only those still waiting, in delivered_at order.
SELECT id, message_id, destination, citizen_key, state, attempts, resends, created_at, next_attempt_at,
       first_attempt_at, lease_owner, lease_expires_at, delivered_at, dead_at, last_error, expect_receipt,
       receipt_code, receipt_at,
       NOT EXISTS (SELECT 1 FROM delivery_payloads p WHERE p.seq = deliveries.seq) AS payload_purged
  FROM deliveries INDEXED BY deliveries_awaiting_receipt
 WHERE state = 'delivered' AND expect_receipt = 1 AND receipt_code IS NULL
   AND delivered_at <= :cutoff AND resends < :max_resends
 ORDER BY delivered_at, seq
 LIMIT :limit;

-- name: resend
-- Open again at its original place, as retry_dead; the caller then stores the new envelope
-- (store_delivery_payload).
UPDATE deliveries
   SET state = 'pending', resends = resends + 1, attempts = 0, first_attempt_at = NULL,
       next_attempt_at = :now, delivered_at = NULL, head = citizen_key IS NULL
 WHERE id = :id AND state = 'delivered'
RETURNING citizen_key, destination;

-- name: recompute_head
-- Give one (citizen, destination) pair its head back after a delivery of it opened or closed: the
-- oldest open delivery is the head, no other row of the pair is. The pair's only head before the
-- change was its oldest open delivery; a change closes a delivery (clearing its head) or opens one
-- again at its old place (without the head), so afterwards the head, if any, is one of the pair's two
-- oldest open deliveries. Those two are read from deliveries_open_pairs, however long the pair's
-- backlog, and only rows that change are written. A newer leased delivery that loses the head keeps its
-- lease and finishes.
WITH oldest_two (seq) AS (
    SELECT seq FROM deliveries
     WHERE citizen_key = :citizen_key AND destination = :destination AND state IN ('pending', 'leased')
     ORDER BY seq
     LIMIT 2)
UPDATE deliveries
   SET head = 1 - head
 WHERE seq IN (SELECT seq FROM oldest_two)
   AND head = (seq <> (SELECT MIN(seq) FROM oldest_two));

-- name: deliveries_of_message
SELECT id, message_id, destination, citizen_key, state, attempts, resends, created_at, next_attempt_at,
       first_attempt_at, lease_owner, lease_expires_at, delivered_at, dead_at, last_error, expect_receipt,
       receipt_code, receipt_at,
       NOT EXISTS (SELECT 1 FROM delivery_payloads p WHERE p.seq = deliveries.seq) AS payload_purged
  FROM deliveries WHERE message_id = :message_id ORDER BY seq;

-- name: attempts_of_delivery
SELECT number, worker_id, started_at, latency_ms, outcome, status_code, detail
  FROM attempts WHERE delivery_id = :delivery_id ORDER BY id;

-- name: receipts_of_delivery
SELECT ack_header_id, acknowledged_header_id, from_system, code, received_at, delivery_id
  FROM receipts WHERE delivery_id = :delivery_id ORDER BY received_at, ack_header_id;

-- name: list_messages
SELECT * FROM (
    SELECT m.id, m.bundle_id, m.header_id, m.sender, m.kind, m.citizen_key, m.content_type, m.received_at,
           m.response, m.payload IS NULL AS payload_purged, m.mapping_version,
           (SELECT CASE
                       WHEN COALESCE(SUM(d.state = 'dead'), 0) > 0 THEN 'dead'
                       WHEN COALESCE(SUM(d.state <> 'delivered'), 0) > 0 THEN 'in-flight'
                       ELSE 'delivered' END
              FROM deliveries d WHERE d.message_id = m.id) AS state
      FROM messages m
     WHERE (:sender IS NULL OR m.sender = :sender)
       AND (:kind IS NULL OR m.kind = :kind)
       AND (:received_from IS NULL OR m.received_at >= :received_from)
       AND (:received_to IS NULL OR m.received_at < :received_to)
       AND (:destination IS NULL
            OR EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id AND d.destination = :destination))
) AS listed
 WHERE (:state IS NULL OR listed.state = :state)
 ORDER BY listed.received_at DESC, listed.id DESC
 LIMIT :limit OFFSET :offset;

-- name: list_deliveries
SELECT id, message_id, destination, citizen_key, state, attempts, resends, created_at, next_attempt_at,
       first_attempt_at, lease_owner, lease_expires_at, delivered_at, dead_at, last_error, expect_receipt,
       receipt_code, receipt_at,
       NOT EXISTS (SELECT 1 FROM delivery_payloads p WHERE p.seq = deliveries.seq) AS payload_purged
  FROM deliveries
 ORDER BY seq
 LIMIT :limit OFFSET :offset;

-- name: list_deliveries_in_state
-- One state (the dead letters, say), oldest first, from deliveries_state (state, seq): no sort, and no
-- walk through the deliveries in other states. A separate statement, not "(:state IS NULL OR ...)",
-- which no index serves.
SELECT id, message_id, destination, citizen_key, state, attempts, resends, created_at, next_attempt_at,
       first_attempt_at, lease_owner, lease_expires_at, delivered_at, dead_at, last_error, expect_receipt,
       receipt_code, receipt_at,
       NOT EXISTS (SELECT 1 FROM delivery_payloads p WHERE p.seq = deliveries.seq) AS payload_purged
  FROM deliveries
 WHERE state = :state
 ORDER BY seq
 LIMIT :limit OFFSET :offset;

-- name: purge_deliveries
DELETE FROM delivery_payloads
 WHERE seq IN (SELECT seq FROM deliveries WHERE state = 'delivered' AND delivered_at < :cutoff);

-- name: purge_messages
UPDATE messages SET payload = NULL
 WHERE received_at < :cutoff AND payload IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = messages.id AND d.state <> 'delivered');

-- name: set_admission
INSERT INTO admissions (citizen_key, hospital, status, since)
VALUES (:citizen_key, :hospital, :status, :since)
ON CONFLICT (citizen_key) DO UPDATE
   SET hospital = excluded.hospital, status = excluded.status, since = excluded.since
 WHERE excluded.since >= admissions.since;

-- name: current_admission
SELECT citizen_key, hospital, status, since FROM admissions WHERE citizen_key = :citizen_key;

-- name: count_by_state
SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state;

-- name: due_stats
SELECT COALESCE(SUM(state = 'pending' AND next_attempt_at <= :now), 0) AS due,
       COALESCE(SUM(state = 'leased' AND lease_expires_at <= :now), 0) AS expired_leases,
       MIN(CASE WHEN state = 'pending' AND next_attempt_at <= :now THEN next_attempt_at END) AS oldest_due_at
  FROM deliveries;

-- name: destination_queues
SELECT destination,
       SUM(state = 'pending') AS pending,
       SUM(state = 'leased') AS leased,
       SUM(state = 'dead') AS dead,
       MIN(CASE WHEN state IN ('pending', 'leased') THEN created_at END) AS oldest_open_at
  FROM deliveries WHERE state IN ('pending', 'leased', 'dead')
 GROUP BY destination ORDER BY destination;

-- name: ping
SELECT 1;
