-- A delivery's payload in a table of its own, as in the SQLite schema (the two engines share one
-- shape). SQLite writes a whole row again on every UPDATE, and a delivery's row changes several
-- times; PostgreSQL keeps large values out of line already, but one shape keeps one set of queries.
-- A delivery without a row here had its payload purged (retention).
CREATE TABLE delivery_payloads (
    seq     bigint PRIMARY KEY REFERENCES deliveries (seq),
    payload bytea NOT NULL
);
INSERT INTO delivery_payloads (seq, payload) SELECT seq, payload FROM deliveries WHERE payload IS NOT NULL;
ALTER TABLE deliveries DROP COLUMN payload;
