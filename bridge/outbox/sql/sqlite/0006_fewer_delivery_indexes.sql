-- Two indexes on random keys that every accepted message had to grow, each about a page written per
-- delivery, and that no statement needs any more:
-- deliveries_header: a receipt finds its delivery through the message's unique header id and then
-- deliveries_message (delivery_for_receipt); a delivery's header id is always its message's.
-- deliveries_pair_heads: a pair's head, when its head moves, is one of its two oldest open deliveries,
-- which deliveries_open_pairs yields in order (recompute_head).
DROP INDEX deliveries_header;
DROP INDEX deliveries_pair_heads;
-- deliveries_due (state, next_attempt_at) becomes deliveries_state (state, seq), as on PostgreSQL: no
-- statement reads deliveries by state in next_attempt_at order (claims have their own partial indexes),
-- while a list of one state - the dead letters - is read in seq order, which this index yields without a
-- sort. Both keys grow in time order within a state: one page per commit, as before.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_state ON deliveries (state, seq);
