-- A delivery's payload in a table of its own. SQLite writes a whole row again, overflow pages
-- included, on every UPDATE, and a delivery's row changes several times (claimed, delivered, its
-- receipt noted, the head of its pair moved): with the ~5 KB message inside, each change wrote
-- the message again. Apart, those changes write a row of a few hundred bytes.
-- A delivery without a row here had its payload purged (retention).
CREATE TABLE delivery_payloads (
    seq     INTEGER PRIMARY KEY REFERENCES deliveries (seq),
    payload BLOB NOT NULL
);
INSERT INTO delivery_payloads (seq, payload) SELECT seq, payload FROM deliveries WHERE payload IS NOT NULL;
ALTER TABLE deliveries DROP COLUMN payload;
