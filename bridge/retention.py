"""Retention: delivered payloads are dropped after a configured period (data minimisation).

What goes: the body of a delivery once it was delivered longer than ``retention.payloads`` ago, and a
message's own body once every one of its deliveries is delivered and it was received before that.
What stays: the message and delivery rows with their ids, states and times, every attempt and receipt
(the trace keeps its metadata), dead letters' payloads (an operator may still replay them), and the
whole audit trail (its hash chain must stay whole; it records each purge).

The worker half of the service runs ``RetentionWorker`` beside the dispatcher: one purge at start-up,
then one every ``retention.interval``. ``purge`` is the one pass, for tests and for an operator's cron.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

import orjson

from bridge.audit import DICOM, SOURCE, SUBTYPE_SYSTEM, audit_event
from bridge.clock import Clock
from bridge.outbox.port import AuditRecord, OutboxStore, PurgeResult, StoreError

log = logging.getLogger("bridge.retention")


def purged_record(recorded: datetime, actor: str, older_than: datetime, result: PurgeResult) -> AuditRecord:
    """The audit record of one purge (DICOM ``110105`` DICOM Study Deleted is the nearest; action D)."""
    body = audit_event(
        recorded=recorded,
        event="application",
        action="D",
        outcome="0",
        actor=actor,
        actor_kind="bridge",
        subtype="retention.purge",
        description=(
            f"payloads delivered before {older_than.isoformat()} dropped: "
            f"{result.deliveries} deliveries, {result.messages} messages"
        ),
    )
    body["type"] = {"system": DICOM, "code": "110105", "display": "DICOM Study Deleted"}
    body["subtype"] = [{"system": SUBTYPE_SYSTEM, "code": "retention.purge"}]
    body["source"] = {"observer": {"display": SOURCE}}
    return AuditRecord(recorded, "payload.purged", actor, orjson.dumps(body))


def purge(store: OutboxStore, now: datetime, keep: timedelta, actor: str = "retention") -> PurgeResult:
    """Drop payloads delivered more than ``keep`` before ``now``; audit the purge when it dropped any."""
    older_than = now - keep
    result = store.purge_payloads(older_than)
    if result.deliveries or result.messages:
        store.append_audit(purged_record(now, actor, older_than, result))
        from bridge.observability import metrics

        metrics.payloads_purged(result.deliveries, result.messages)
    return result


class RetentionWorker:
    """Runs ``purge`` every ``interval`` in a daemon thread until ``stop``."""

    def __init__(
        self, store: OutboxStore, clock: Clock, keep: timedelta, interval: timedelta, actor: str
    ) -> None:
        self._store = store
        self._clock = clock
        self._keep = keep
        self._interval = interval
        self._actor = actor
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> PurgeResult | None:
        """One purge; None when the store could not be reached (the next round tries again)."""
        try:
            result = purge(self._store, self._clock.now(), self._keep, self._actor)
        except StoreError as exc:
            log.warning("retention: purge not done (%s)", type(exc).__name__)
            return None
        if result.deliveries or result.messages:
            log.info(
                "retention: dropped %d delivery and %d message payloads", result.deliveries, result.messages
            )
        return result

    def start(self) -> None:
        """Start the purge thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread (a purge in progress finishes first)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self.run_once()
            self._stopping.wait(self._interval.total_seconds())
