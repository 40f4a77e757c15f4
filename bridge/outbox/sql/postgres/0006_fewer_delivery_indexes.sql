-- Two indexes on random keys that every accepted message had to grow, each about a page written per
-- delivery, and that no statement needs any more:
-- deliveries_header: a receipt finds its delivery through the message's unique header id and then
-- deliveries_message (delivery_for_receipt); a delivery's header id is always its message's.
-- deliveries_pair_heads: a pair's head, when its head moves, is one of its two oldest open deliveries,
-- which deliveries_open_pairs yields in order (recompute_head).
DROP INDEX deliveries_header;
DROP INDEX deliveries_pair_heads;
