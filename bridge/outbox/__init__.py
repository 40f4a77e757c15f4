"""The outbox: durable storage of accepted messages and their deliveries (port + adapters).

``open_store(url)`` picks the adapter from the store URL; ``sqlite:///path.db`` is the embedded default,
``postgresql://user@host:5432/db`` (or ``postgres://``) shares one database between several processes.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from bridge.outbox.port import (
    AcceptRequest,
    AcceptResult,
    Admission,
    AttemptRecord,
    AuditEntry,
    AuditRecord,
    ClaimedDelivery,
    DeliveryRecord,
    DestinationQueue,
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
    "AcceptRequest",
    "AcceptResult",
    "Admission",
    "AttemptRecord",
    "AuditEntry",
    "AuditRecord",
    "ClaimedDelivery",
    "DeliveryRecord",
    "DestinationQueue",
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
    elif scheme in ("postgresql", "postgres"):
        from bridge.outbox.postgres import PostgresOutboxStore

        store = PostgresOutboxStore.from_url(url)
    else:
        raise ValueError(
            f"unsupported store URL scheme {scheme or '(none)'!r}; this bridge knows: sqlite, postgresql"
        )
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()  # a pool left open would keep reconnecting in the background
            raise
    return store
