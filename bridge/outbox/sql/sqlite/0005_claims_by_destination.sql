-- The claim scan of one destination: its due pending heads in (next_attempt_at, seq) order. The
-- dispatcher claims destination by destination, each its share (claim_pending_to), so one
-- destination's backlog - however old - never holds back new work for the others.
CREATE INDEX deliveries_claimable_to ON deliveries (destination, next_attempt_at, seq)
    WHERE state = 'pending' AND head = 1;
