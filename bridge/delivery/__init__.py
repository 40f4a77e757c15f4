"""Delivery: claim, send, classify the outcome, decide on a retry, acknowledge."""

from bridge.delivery.dispatcher import NO_RECEIPT, Dispatcher, ReceiptCheck
from bridge.delivery.receipts import (
    ReceiptHandling,
    handle_acknowledgement,
    queue_receipt,
    receipt_ids,
    resend_envelope,
)
from bridge.delivery.transport import PostResult, Transport

__all__ = [
    "NO_RECEIPT",
    "Dispatcher",
    "PostResult",
    "ReceiptCheck",
    "ReceiptHandling",
    "Transport",
    "handle_acknowledgement",
    "queue_receipt",
    "receipt_ids",
    "resend_envelope",
]
