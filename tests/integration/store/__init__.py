"""OutboxStore conformance and adapter tests."""
