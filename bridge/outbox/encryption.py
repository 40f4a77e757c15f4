"""Optional encryption at rest of stored payloads: AES-256-GCM with keys from the environment.

Payloads (the body as received, the bytes each delivery puts on the wire) hold everything about the
citizen. With ``store.payload_keys`` configured (``payload_keys: ${BRIDGE_PAYLOAD_KEYS}``, the keys
never written in the file), ``EncryptingStore`` seals each payload before it reaches the database and
opens it on the way out; the rest of the bridge sees plain bytes.

Keys: ``id=base64key[,id=base64key...]``, each key 32 random bytes (``openssl rand -base64 32``). The
FIRST key seals new payloads; every listed key opens what it sealed. The key id travels with each
payload, inside its envelope, so no schema change is needed and one store can hold payloads of several
keys at once.

Rotation: put the new key first and keep the old one listed; new payloads use the new key at once.
Old payloads go as retention purges them (``bridge.retention``: delivered payloads after
``retention.payloads``); once that period has passed - and no dead letter older than the new key
remains to be replayed - drop the old key. A payload whose key is no longer listed cannot be read:
``StoreError`` names the key id, never the content.

The envelope: ``b"\\x00FBE1"``, one byte of key-id length, the key id, a 12-byte random nonce, then the
ciphertext with its 16-byte tag. The associated data binds each payload to its row (``message:<id>`` or
``delivery:<id>``), so a sealed payload copied onto another row does not open. Payloads stored before
encryption was switched on (plain JSON or XML, which never start with a NUL byte) are read as they
are, so encryption can be enabled on a running deployment.

What stays plain: ids, states, times, citizen keys and the audit trail (its records must outlive every
key; the audit table's own hash chain protects them).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bridge.outbox.port import (
    AcceptRequest,
    AcceptResult,
    Admission,
    AttemptRecord,
    AuditRecord,
    ClaimedDelivery,
    NewDelivery,
    NewMessage,
    NewReceipt,
    ReceiptCorrelation,
    ReceiptFollowUp,
    ReceiptFollowUps,
    RecordedReceipt,
    StoreError,
)

MAGIC = b"\x00FBE1"
NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class PayloadKeyError(StoreError):
    """A payload cannot be opened: its key is not configured, or it was tampered with."""


@dataclass(frozen=True, slots=True)
class PayloadKeys:
    """The configured keys by id; ``current`` seals new payloads."""

    current: str
    keys: Mapping[str, bytes]

    @classmethod
    def parse(cls, text: str) -> PayloadKeys:
        """Keys from ``id=base64key,...`` (the first seals); ``ValueError`` naming the problem, not a key."""
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for n, item in enumerate(p.strip() for p in text.split(",") if p.strip()):
            kid, eq, encoded = item.partition("=")
            kid = kid.strip()
            # Never echo a malformed item: it may be a key itself (base64 ends in "=").
            if not eq or not _KEY_ID.match(kid) or not encoded.strip():
                raise ValueError(f"payload key {n + 1}: write it as id=base64key (id: letters, digits, ._-)")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"payload key {kid!r} is not base64") from None
            if len(key) != 32:
                raise ValueError(f"payload key {kid!r} must be 32 bytes (AES-256), not {len(key)}")
            if kid in keys:
                raise ValueError(f"payload key id {kid!r} is listed twice")
            keys[kid] = key
            order.append(kid)
        if not order:
            raise ValueError("no payload key given")
        return cls(order[0], keys)


class PayloadCipher:
    """Seals and opens payloads with ``PayloadKeys`` (the pure part of encryption at rest)."""

    def __init__(self, keys: PayloadKeys) -> None:
        self.keys = keys
        self._aead = {kid: AESGCM(key) for kid, key in keys.keys.items()}

    def seal(self, payload: bytes, context: str) -> bytes:
        """``payload`` sealed with the current key, bound to ``context`` (e.g. ``delivery:<id>``)."""
        kid = self.keys.current.encode("ascii")
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self.keys.current].encrypt(nonce, payload, context.encode("utf-8"))
        return MAGIC + bytes([len(kid)]) + kid + nonce + sealed

    def open(self, stored: bytes, context: str) -> bytes:
        """The plain payload; plain input (stored before encryption) passes as it is."""
        if not stored.startswith(MAGIC):
            return stored
        at = len(MAGIC)
        length = stored[at]
        kid = stored[at + 1 : at + 1 + length].decode("ascii", "replace")
        start = at + 1 + length
        aead = self._aead.get(kid)
        if aead is None:
            raise PayloadKeyError(f"a stored payload is sealed with key {kid!r}, which is not configured")
        nonce, sealed = stored[start : start + NONCE_BYTES], stored[start + NONCE_BYTES :]
        try:
            return aead.decrypt(nonce, sealed, context.encode("utf-8"))
        except InvalidTag:
            raise PayloadKeyError(
                f"a stored payload sealed with key {kid!r} does not open: changed or moved"
            ) from None


def key_id_of(stored: bytes) -> str | None:
    """The id of the key that sealed ``stored``; None for a plain payload."""
    if not stored.startswith(MAGIC):
        return None
    length = stored[len(MAGIC)]
    return stored[len(MAGIC) + 1 : len(MAGIC) + 1 + length].decode("ascii", "replace")


class EncryptingStore:
    """An ``OutboxStore`` whose payloads are sealed in the database and plain to its callers.

    Every other call passes through to ``inner`` unchanged.
    """

    def __init__(self, inner: Any, cipher: PayloadCipher) -> None:
        self.inner = inner
        self.cipher = cipher

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _sealed(self, request: AcceptRequest) -> AcceptRequest:
        message = request.message
        return replace(
            request,
            message=replace(message, payload=self.cipher.seal(message.payload, f"message:{message.id}")),
            deliveries=[
                replace(d, payload=self.cipher.seal(d.payload, f"delivery:{d.id}"))
                for d in request.deliveries
            ],
        )

    def accept(
        self,
        message: NewMessage,
        deliveries: Sequence[NewDelivery],
        audit: AuditRecord,
        admission: Admission | None = None,
    ) -> AcceptResult:
        """``OutboxStore.accept`` with the message's and every delivery's payload sealed."""
        sealed = self._sealed(AcceptRequest(message, deliveries, audit, admission))
        result: AcceptResult = self.inner.accept(
            sealed.message, sealed.deliveries, sealed.audit, sealed.admission
        )
        return result

    def accept_many(self, requests: Sequence[AcceptRequest]) -> list[AcceptResult | StoreError]:
        """``OutboxStore.accept_many`` with every payload sealed."""
        results: list[AcceptResult | StoreError] = self.inner.accept_many([self._sealed(r) for r in requests])
        return results

    def record_receipts(
        self, receipts: Sequence[NewReceipt], follow_up: ReceiptFollowUps
    ) -> list[RecordedReceipt]:
        """``OutboxStore.record_receipts`` with the payloads of every forward sealed."""

        results: list[RecordedReceipt] = self.inner.record_receipts(receipts, self._sealing(follow_up))
        return results

    def complete_with_receipts(
        self,
        worker_id: str,
        completed: Sequence[tuple[str, AttemptRecord]],
        now: datetime,
        audit: Mapping[str, AuditRecord],
        receipts: Sequence[NewReceipt],
        follow_up: ReceiptFollowUps,
    ) -> tuple[list[str], list[RecordedReceipt]]:
        """``OutboxStore.complete_with_receipts`` with the payloads of every forward sealed."""
        done: tuple[list[str], list[RecordedReceipt]] = self.inner.complete_with_receipts(
            worker_id, completed, now, audit, receipts, self._sealing(follow_up)
        )
        return done

    def _sealing(self, follow_up: ReceiptFollowUps) -> ReceiptFollowUps:
        """``follow_up`` with the payload of each forward it makes sealed."""

        def sealed(correlation: ReceiptCorrelation) -> ReceiptFollowUp:
            then = follow_up(correlation)
            if then.forward is None:
                return then
            return replace(then, forward=self._sealed(then.forward))

        return sealed

    def claim_due(self, *args: Any, **kwargs: Any) -> list[ClaimedDelivery]:
        """``OutboxStore.claim_due`` with each payload opened."""
        claimed: list[ClaimedDelivery] = self.inner.claim_due(*args, **kwargs)
        return [replace(c, payload=self.cipher.open(c.payload, f"delivery:{c.id}")) for c in claimed]

    def resend(self, delivery_id: str, payload: bytes, now: Any) -> None:
        """``OutboxStore.resend`` with the new envelope sealed."""
        self.inner.resend(delivery_id, self.cipher.seal(payload, f"delivery:{delivery_id}"), now)

    def message_payload(self, message_id: str) -> bytes | None:
        """``OutboxStore.message_payload``, opened."""
        stored: bytes | None = self.inner.message_payload(message_id)
        return None if stored is None else self.cipher.open(stored, f"message:{message_id}")

    def delivery_payload(self, delivery_id: str) -> bytes | None:
        """``OutboxStore.delivery_payload``, opened."""
        stored: bytes | None = self.inner.delivery_payload(delivery_id)
        return None if stored is None else self.cipher.open(stored, f"delivery:{delivery_id}")


def encrypting_store(store: Any, keys: str | None) -> Any:
    """``store`` with payloads sealed by ``keys`` (``id=base64key,...``); ``store`` itself without keys."""
    if not keys:
        return store
    return EncryptingStore(store, PayloadCipher(PayloadKeys.parse(keys)))
