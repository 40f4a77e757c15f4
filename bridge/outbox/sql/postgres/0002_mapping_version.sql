-- Which mapping sets (name@version+digest) translated a message, for the trace.
ALTER TABLE messages ADD COLUMN mapping_version TEXT;
