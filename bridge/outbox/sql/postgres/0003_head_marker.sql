-- The head marker: head is true exactly on the deliveries a claim may take next - an open (pending or
-- leased) delivery that is the oldest open one (lowest seq) of its (citizen_key, destination) pair, and
-- every open delivery without a citizen key. Every transition that opens or closes a delivery keeps it
-- so under the pair's advisory lock (see the adapter), and the claim looks at pending heads only: its
-- cost follows the number of heads, not the backlog queued behind them.
ALTER TABLE deliveries ADD COLUMN head boolean NOT NULL DEFAULT false;
UPDATE deliveries d SET head = true
 WHERE d.state IN ('pending', 'leased')
   AND (d.citizen_key IS NULL
        OR d.seq = (SELECT MIN(o.seq) FROM deliveries o
                     WHERE o.citizen_key = d.citizen_key
                       AND o.destination = d.destination
                       AND o.state IN ('pending', 'leased')));
-- The claim scan: due pending heads in (next_attempt_at, seq) order. It replaces deliveries_due, which
-- indexed every pending delivery for a scan that no longer happens.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_claimable ON deliveries (next_attempt_at, seq) WHERE state = 'pending' AND head;
-- The heads of one pair, found without walking the pair's backlog when its head moves.
CREATE INDEX deliveries_pair_heads ON deliveries (citizen_key, destination) WHERE head;
