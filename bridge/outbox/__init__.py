"""The outbox: durable storage of accepted messages and their deliveries (port + adapters).

``open_store(url)`` picks the adapter from the store URL; ``sqlite:///path.db`` is the embedded default.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from bridge.outbox.port import (
    AcceptResult,
    Admission,
    AttemptRecord,
    AuditEntry,
    AuditRecord,
    ClaimedDelivery,
    DeliveryRecord,
    Duplicate,
    InvalidTransition,
    LeaseLost,
    MessageFilter,
    MessageRecord,
    MessageTrace,
    NewDelivery,
    NewMessage,
    NewReceipt,
    NotFound,
    OutboxStore,
    QueueStats,
    ReceiptMatch,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "AcceptResult",
    "Admission",
    "AttemptRecord",
    "AuditEntry",
    "AuditRecord",
    "ClaimedDelivery",
    "DeliveryRecord",
    "Duplicate",
    "InvalidTransition",
    "LeaseLost",
    "MessageFilter",
    "MessageRecord",
    "MessageTrace",
    "NewDelivery",
    "NewMessage",
    "NewReceipt",
    "NotFound",
    "OutboxStore",
    "QueueStats",
    "ReceiptMatch",
    "StoreError",
    "StoreUnavailable",
    "open_store",
]


def open_store(url: str, *, migrate: bool = True) -> OutboxStore:
    """Open the store named by ``url`` and (by default) bring its schema up to date."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from bridge.outbox.sqlite import SqliteOutboxStore

        store: OutboxStore = SqliteOutboxStore.from_url(url)
    else:
        raise ValueError(f"unsupported store URL scheme {scheme or '(none)'!r}; this bridge knows: sqlite")
    if migrate:
        store.migrate()
    return store
