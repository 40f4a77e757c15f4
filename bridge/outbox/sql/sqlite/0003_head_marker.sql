-- The head marker: head = 1 exactly on the deliveries a claim may take next - an open (pending or
-- leased) delivery that is the oldest open one (lowest seq) of its (citizen_key, destination) pair, and
-- every open delivery without a citizen key. Every transition that opens or closes a delivery keeps it
-- so (see the adapter), and the claim looks at pending heads only: its cost follows the number of heads,
-- not the backlog queued behind them.
ALTER TABLE deliveries ADD COLUMN head INTEGER NOT NULL DEFAULT 0 CHECK (head IN (0, 1));
UPDATE deliveries SET head = 1
 WHERE state IN ('pending', 'leased')
   AND (citizen_key IS NULL
        OR seq = (SELECT MIN(o.seq) FROM deliveries o
                   WHERE o.citizen_key = deliveries.citizen_key
                     AND o.destination = deliveries.destination
                     AND o.state IN ('pending', 'leased')));
-- The claim scan: due pending heads in (next_attempt_at, seq) order.
CREATE INDEX deliveries_claimable ON deliveries (next_attempt_at, seq) WHERE state = 'pending' AND head = 1;
-- The heads of one pair, found without walking the pair's backlog when its head moves.
CREATE INDEX deliveries_pair_heads ON deliveries (citizen_key, destination) WHERE head = 1;
