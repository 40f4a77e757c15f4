"""The dispatcher: claim due deliveries, post them, and report each outcome back to the outbox.

One round (``run_once``, or each turn of the background loop that ``start`` runs):

1. **Receipts**: deliveries whose MedCom Acknowledgement is overdue (``medcom.receipt_timeout``) are
   resent in a new envelope with the same MessageHeader.id, at most ``medcom.max_resends`` times;
   after the last resend without a receipt the delivery is dead ("no receipt").
2. **Claim** due deliveries under a lease (``dispatcher.lease``), at most as many as there are free
   delivery threads, fairly between destinations (each an equal share, oldest first within it) and
   skipping destinations that already hold twice their concurrency limit - so neither a slow
   receiver's backlog nor a long one to a healthy receiver crowds out the others. Each destination's
   posts run at most ``concurrency`` at a time; the second half waits its turn in this process, so
   the next posts are ready when one finishes, and the store is asked again (one claim for many
   deliveries) only when a destination's waiting work is used up.
3. **Deliver** each on a small thread pool (the work is waiting on sockets; a store call is short):
   POST, classify (``outcome.classify``), decide (``policy.decide`` with the destination's policy),
   and ``complete`` / ``schedule_retry`` / ``dead_letter``, each recording the attempt (time, status,
   latency; never a body). Delivered results are stored by a group commit, together with the
   receivers' synchronous Acknowledgements of that batch, recorded, audited and forwarded as a posted
   one would be (``complete_with_receipts``: one transaction, one commit); receipts a receiver does
   not send itself are produced on its behalf (``receipts.queue_receipt``). A delivery's place (its
   thread and its share of the destination's claims) is given back only once its receipt is
   handled, so receipt work can never fall behind the posts without bound.

At-least-once: a worker that dies holding a lease loses it when the lease expires and another
claims the delivery again; a result that arrives after the lease was lost is dropped (``LeaseLost``),
the new holder's result counts. The payload, and so the MessageHeader.id, is never changed by a retry.

Shutdown (``stop``): stop claiming, give leased deliveries that have not started back at once, wait
up to ``dispatcher.shutdown_grace`` for posts in flight, and release whatever is still running then;
its late result is ignored and the delivery goes out again (the receiver dedupes on the
MessageHeader.id).

Fault injection (``BRIDGE_FAULT_AFTER_DELIVERY=N``, read when the dispatcher is created; unset in
normal operation): the process ends with ``os._exit(137)`` - as if SIGKILLed - when it is about to
store the N-th delivered result, i.e. after the receiver's 2xx and before the commit that marks the
delivery done. The reliability tests use it to prove that such a crash costs exactly one redelivery.

Logs name message, delivery and system ids and status codes - never a payload, a name or a CPR number.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Literal

import httpx

from bridge import audit
from bridge.clock import Clock
from bridge.delivery.outcome import Delivered, DeliveryOutcome, Permanent, Transient, classify
from bridge.delivery.policy import DeadLetter, RetryAt, decide
from bridge.delivery.receipts import (
    AcknowledgementBatch,
    ReceivedAcknowledgement,
    queue_receipt,
    read_acknowledgement,
    resend_envelope,
)
from bridge.delivery.transport import PostResult, Transport
from bridge.errors import InvalidInput
from bridge.fhir.parse import parse_fhir, sniff_format
from bridge.medcom.acknowledgement import EVENT as ACKNOWLEDGEMENT_EVENT
from bridge.medcom.acknowledgement import AckCode
from bridge.medcom.common import event_code
from bridge.observability import metrics
from bridge.outbox.port import (
    AttemptRecord,
    AuditRecord,
    ClaimedDelivery,
    InvalidTransition,
    LeaseLost,
    NotFound,
    OutboxStore,
    RecordedReceipt,
    StoreError,
)
from bridge.settings import Settings, System

log = logging.getLogger("bridge.delivery")

#: The reason a delivery is dead when its MedCom receipt never came after every resend.
NO_RECEIPT = "no receipt"
#: Upper bound on delivery threads; deliveries wait on sockets, not on the CPU.
MAX_THREADS = 64
#: Threads that produce the receipts of stored batches of deliveries on their receivers' behalf (one store
#: transaction per receipt). Several batches' writes run side by side, so the store commits them together.
RECEIPT_THREADS = 8
#: Claimed deliveries a destination may hold per unit of its concurrency limit (posting + waiting).
CLAIM_AHEAD = 2
#: How long a delivery waiting for its destination's slot sleeps between looks at a shutdown.
_SLOT_POLL = 0.05
#: Fault injection for the reliability tests: crash before storing the N-th delivered result.
FAULT_AFTER_DELIVERY_ENV = "BRIDGE_FAULT_AFTER_DELIVERY"

JobState = Literal["queued", "posting", "reporting", "released", "abandoned"]


@dataclass(slots=True)
class _Job:
    claimed: ClaimedDelivery
    state: JobState = "queued"


@dataclass(frozen=True, slots=True)
class _Completed:
    job: _Job
    attempt: AttemptRecord
    post: PostResult | None
    system: System | None


@dataclass(frozen=True, slots=True)
class ReceiptCheck:
    """What one look at overdue receipts did."""

    resent: int = 0
    given_up: int = 0


class Dispatcher:
    """Delivers the outbox: claims due deliveries under a lease and posts them with retries."""

    def __init__(
        self,
        settings: Settings,
        store: OutboxStore,
        clock: Clock,
        *,
        worker_id: str,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
        threads: int | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self.worker_id = worker_id
        self._config = settings.dispatcher
        self._transport = Transport(settings, transport)
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._threads = threads or min(
            MAX_THREADS, sum(CLAIM_AHEAD * s.concurrency for s in settings.systems)
        )
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix=f"deliver-{worker_id}")
        self._settle_pool = ThreadPoolExecutor(RECEIPT_THREADS, thread_name_prefix=f"receipts-{worker_id}")
        self._slots = {s.id: threading.BoundedSemaphore(s.concurrency) for s in settings.systems}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a job finished
        self._commit_lock = threading.Lock()
        self._to_commit: list[_Completed] = []
        self._committing = False
        self._jobs: dict[str, _Job] = {}
        self._futures: dict[str, Future[None]] = {}
        self._per_destination: Counter[str] = Counter()
        self._starved = False  # the last claim was limited by capacity: a finished job should wake the loop
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._next_receipt_check: datetime | None = None
        self._crash_at = _fault_after_delivery()
        self._delivered_results = 0

    # -- public ----------------------------------------------------------------------------------------

    def run_once(self) -> int:
        """One round: resend or give up overdue receipts, claim what is due, deliver it, wait for it.

        Returns how many deliveries were claimed and handled. Tests and tools drive the dispatcher
        with this; the service uses ``start``.
        """
        if self._stopping.is_set():
            raise RuntimeError("the dispatcher is stopped")
        self.check_receipts()
        claimed = self._claim()
        for c in claimed:
            self._submit(c)
        ids = {c.id for c in claimed}
        with self._changed:
            self._changed.wait_for(lambda: ids.isdisjoint(self._jobs))
        return len(claimed)

    def start(self) -> None:
        """Deliver in the background: poll the store every ``dispatcher.poll_interval``."""
        if self._stopping.is_set():
            raise RuntimeError("the dispatcher is stopped")
        if self._loop_thread is not None:
            return
        self._loop_thread = threading.Thread(
            target=self._loop, name=f"dispatcher-{self.worker_id}", daemon=True
        )
        self._loop_thread.start()

    def notify(self) -> None:
        """Say that new work may be due (e.g. a message was just accepted): the loop looks at once."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; wait up to ``timeout`` (default ``dispatcher.shutdown_grace``) for posts in
        flight; release the leases of everything not finished by then. Idempotent."""
        grace = self._config.shutdown_grace.total_seconds() if timeout is None else timeout
        first = not self._stopping.is_set()
        self._stopping.set()
        self._wake.set()
        if self._loop_thread is not None:
            self._loop_thread.join()
        if not first:
            return
        with self._lock:
            waiting = [job for job in self._jobs.values() if job.state == "queued"]
            for job in waiting:
                job.state = "released"
        for job in waiting:
            self._release(job.claimed)
            self._finish(job)
        with self._changed:
            self._changed.wait_for(
                lambda: not any(j.state in ("posting", "reporting") for j in self._jobs.values()),
                timeout=max(grace, 0.0),
            )
            late = [job for job in self._jobs.values() if job.state == "posting"]
            for job in late:
                job.state = "abandoned"
        for job in late:
            log.info("delivery %s still in flight at shutdown; lease released", job.claimed.id)
            self._release(job.claimed)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._settle_pool.shutdown(wait=False, cancel_futures=True)
        # Closing the clients makes an abandoned post fail fast instead of holding its thread.
        self._transport.close()

    def in_flight(self) -> int:
        """How many claimed deliveries this dispatcher holds right now."""
        with self._lock:
            return len(self._jobs)

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def check_receipts(self, now: datetime | None = None) -> ReceiptCheck:
        """Resend deliveries whose receipt is overdue; give up on those resent ``max_resends`` times."""
        now = now or self._clock.now()
        medcom = self._settings.medcom
        # One more than max_resends: the deliveries that used every resend show up too, to be given up.
        overdue = self._store.receipt_overdue(
            now, medcom.receipt_timeout, medcom.max_resends + 1, self._config.batch_size * 4
        )
        resent = given_up = 0
        for record in overdue:
            try:
                if record.resends < medcom.max_resends:
                    payload = self._store.delivery_payload(record.id)
                    if payload is None:
                        continue
                    self._store.resend(record.id, resend_envelope(payload, "", now), now)
                    resent += 1
                    log.info(
                        "delivery %s of message %s to %s resent (%d of %d): no receipt",
                        record.id,
                        record.message_id,
                        record.destination,
                        record.resends + 1,
                        medcom.max_resends,
                    )
                else:
                    self._store.give_up_receipt(record.id, NO_RECEIPT, now)
                    given_up += 1
                    log.warning(
                        "delivery %s of message %s to %s dead: no receipt after %d resends",
                        record.id,
                        record.message_id,
                        record.destination,
                        record.resends,
                    )
                    self._after_dead(
                        record.message_id,
                        record.destination,
                        record.citizen_key,
                        NO_RECEIPT,
                        "transient-error",
                    )
            except (InvalidTransition, NotFound):
                continue  # another worker got there first, or the receipt just came
            except InvalidInput:
                log.warning("delivery %s cannot be resent: its payload is no MedCom message", record.id)
        return ReceiptCheck(resent, given_up)

    # -- claiming --------------------------------------------------------------------------------------

    def _capacity(self) -> tuple[int, dict[str, int]]:
        """Free delivery threads, and how many more deliveries each destination may hold now (a claim
        skips the destinations with none)."""
        with self._lock:
            free = self._threads - len(self._jobs)
            systems = self._settings.systems
            room = {s.id: CLAIM_AHEAD * s.concurrency - self._per_destination[s.id] for s in systems}
        return free, room

    def _claim(self) -> list[ClaimedDelivery]:
        free, room = self._capacity()
        full = {destination for destination, n in room.items() if n <= 0}
        if free <= 0 or len(full) == len(self._settings.systems):
            self._starved = True
            return []
        limit = min(self._config.batch_size, free)
        # Fair between destinations: each that is not full takes an equal share of the free threads
        # (and what another cannot use), so a destination with a long backlog never holds back new
        # work for the others.
        claimed = self._store.claim_due(
            self.worker_id,
            self._clock.now(),
            self._config.lease,
            limit,
            skip_destinations=full,
            per_destination=dict.fromkeys(room.keys() - full, limit),
        )
        self._starved = len(claimed) == limit or bool(full)
        return claimed

    def _submit(self, claimed: ClaimedDelivery) -> Future[None]:
        job = _Job(claimed)
        with self._lock:
            self._jobs[claimed.id] = job
            self._per_destination[claimed.destination] += 1
            future = self._pool.submit(self._run_job, job)
            self._futures[claimed.id] = future
        return future

    def _loop(self) -> None:
        poll = self._config.poll_interval.total_seconds()
        while not self._stopping.is_set():
            try:
                now = self._clock.now()
                if self._next_receipt_check is None or now >= self._next_receipt_check:
                    self._next_receipt_check = now + self._config.poll_interval
                    self.check_receipts(now)
                claimed = self._claim()
                for c in claimed:
                    self._submit(c)
            except StoreError as exc:
                log.warning("dispatcher %s: store unavailable (%s)", self.worker_id, type(exc).__name__)
                claimed = []
            except Exception as exc:  # the loop must outlive any one bad round
                log.error("dispatcher %s: round failed (%s)", self.worker_id, type(exc).__name__)
                claimed = []
            if claimed and not self._starved:
                continue  # a full batch: more is probably due
            self._wake.wait(poll)
            self._wake.clear()

    # -- delivering ------------------------------------------------------------------------------------

    def _run_job(self, job: _Job) -> None:
        handed_off = False
        try:
            posted = self._post(job)
            if posted is not None:
                handed_off = self._report(job, *posted)
        except Exception as exc:  # a delivery thread never dies silently; the lease will expire
            log.error("delivery %s failed in the dispatcher (%s)", job.claimed.id, type(exc).__name__)
        finally:
            if not handed_off:
                self._finish(job)

    def _post(self, job: _Job) -> tuple[PostResult | None, DeliveryOutcome, datetime, System | None] | None:
        """Wait for a slot at the destination, then post; None when the job was given back instead."""
        claimed = job.claimed
        slot = self._slots.get(claimed.destination)
        if slot is not None:
            while not slot.acquire(timeout=_SLOT_POLL):
                if job.state == "released":
                    return None
        try:
            with self._lock:
                if job.state != "queued":
                    return None
                job.state = "posting"
            system = self._settings.system(claimed.destination)
            started = self._clock.now()
            if system is None:
                return None, Permanent(f"destination {claimed.destination} is not configured"), started, None
            if claimed.lease_expires_at - started <= system.timeout:
                # Waited too long for a slot: the lease could run out mid-post and a second worker
                # would send the same delivery. Hand it back; the next claim starts a fresh lease.
                self._release(claimed)
                return None
            post = self._transport.post(system, claimed.payload, claimed.content_type)
            return post, classify(post.result, self._clock.now()), started, system
        finally:
            # The slot limits posts to the receiver; storing the result needs none.
            if slot is not None:
                slot.release()

    def _finish(self, job: _Job) -> None:
        claimed = job.claimed
        with self._lock:
            if self._jobs.pop(claimed.id, None) is None:
                return
            self._futures.pop(claimed.id, None)
            self._per_destination[claimed.destination] -= 1
            # Ask the store again once this destination's waiting work is used up, not after
            # every single delivery: one claim then fetches a batch.
            system = self._settings.system(claimed.destination)
            limit = system.concurrency if system is not None else 1
            wake = self._starved and self._per_destination[claimed.destination] <= limit
            self._changed.notify_all()
        if wake:
            self._wake.set()

    def _report(
        self,
        job: _Job,
        post: PostResult | None,
        outcome: DeliveryOutcome,
        started: datetime,
        system: System | None,
    ) -> bool:
        """Store the outcome; True when it was handed to the group commit (which finishes the job)."""
        claimed = job.claimed
        with self._lock:
            if job.state == "abandoned":
                log.info("delivery %s finished after shutdown released it; result dropped", claimed.id)
                return False
        now = self._clock.now()
        attempt = _attempt_record(outcome, started, post)
        policy = self._settings.retry_policy(claimed.destination)
        with self._rng_lock:
            decision = decide(policy, claimed.attempt, outcome, claimed.first_attempt_at, now, self._rng)
        if isinstance(decision, Delivered):
            with self._lock:
                job.state = "reporting"
            self._complete(_Completed(job, attempt, post, system))
            return True
        try:
            if isinstance(decision, RetryAt):
                self._store.schedule_retry(claimed.id, self.worker_id, attempt, decision.at, now)
                metrics.delivery(claimed.destination, attempt.outcome)
                metrics.retry(claimed.destination)
                self._store.append_audit(self._outcome_record(claimed, "retry", attempt, now))
                log.info(
                    "delivery %s of message %s to %s: attempt %d failed (%s), next at %s",
                    claimed.id,
                    claimed.message_id,
                    claimed.destination,
                    claimed.attempt,
                    attempt.detail,
                    decision.at.isoformat(),
                )
            else:
                self._dead_letter(claimed, attempt, decision, outcome, now)
        except LeaseLost:
            log.info("delivery %s: lease lost to another worker; this result is dropped", claimed.id)
        except StoreError as exc:
            # The lease runs out and the delivery is claimed again: at-least-once holds.
            log.warning("delivery %s: result not stored (%s)", claimed.id, type(exc).__name__)
        return False

    def _complete(self, item: _Completed) -> None:
        """Group commit: the first thread to arrive stores everything that queues up meanwhile.

        A commit (an fsync) costs more than a loopback post, so one transaction per delivered
        delivery would cap throughput; batching keeps the store off the critical path.
        """
        with self._commit_lock:
            self._to_commit.append(item)
            if self._committing:
                return
            self._committing = True
        while True:
            with self._commit_lock:
                batch, self._to_commit = self._to_commit, []
                if not batch:
                    self._committing = False
                    return
            self._commit(batch)

    def _commit(self, batch: list[_Completed]) -> None:
        if self._crash_at:
            self._delivered_results += len(batch)
            if self._delivered_results >= self._crash_at:
                log.critical("%s: crashing before the delivered result is stored", FAULT_AFTER_DELIVERY_ENV)
                logging.shutdown()
                os._exit(137)
        now = self._clock.now()
        # The receivers' synchronous Acknowledgements are read here, before the transaction, and stored
        # in it with the results: one commit for the batch and its receipts, and each delivery's place
        # given back as soon as that commit is made.
        received = [ack for ack in (self._synchronous_ack(i) for i in batch) if ack is not None]
        acks = AcknowledgementBatch.of(self._settings, now, received) if received else None
        completed = [(i.job.claimed.id, i.attempt) for i in batch]
        records = {
            i.job.claimed.id: self._outcome_record(i.job.claimed, "delivered", i.attempt, now) for i in batch
        }
        on_behalf: list[_Completed] = []
        try:
            lost, recorded, acks = self._store_results(completed, now, records, acks)
        except StoreError as exc:
            log.warning("%d delivered results not stored (%s)", len(batch), type(exc).__name__)
            for item in batch:
                self._finish(item.job)
            return
        try:
            gone = set(lost)
            for item in batch:
                claimed = item.job.claimed
                if claimed.id in gone:
                    log.info("delivery %s: lease lost to another worker; this result is dropped", claimed.id)
                    continue
                metrics.delivery(claimed.destination, "delivered")
                log.info(
                    "delivery %s of message %s to %s delivered (%s, attempt %d)",
                    claimed.id,
                    claimed.message_id,
                    claimed.destination,
                    item.attempt.detail,
                    claimed.attempt,
                )
                if item.system is not None and item.system.format != "fhir":
                    on_behalf.append(item)
            if acks is not None:
                handled = acks.handled(recorded)
                if any(not isinstance(h, StoreError) and h.status == "forwarded" for h in handled):
                    self._wake.set()  # the forwards are due at once; do not wait for the next poll
            if on_behalf:
                # A receiver that sends no MedCom receipt has one made on its behalf, in a thread of its
                # own: this one goes on storing the next batch. Those jobs finish once it is queued.
                self._settle_pool.submit(self._settle, on_behalf)
        except BaseException:
            on_behalf = []
            raise
        finally:
            handed = {i.job.claimed.id for i in on_behalf}
            for item in batch:
                if item.job.claimed.id not in handed:
                    self._finish(item.job)

    def _store_results(
        self,
        completed: list[tuple[str, AttemptRecord]],
        now: datetime,
        records: dict[str, AuditRecord],
        acks: AcknowledgementBatch | None,
    ) -> tuple[list[str], list[RecordedReceipt], AcknowledgementBatch | None]:
        """Store delivered results with their receipts; the lost leases, the recorded receipts and the
        receipts that were stored (None when there were none, or their handling failed: the results
        are then stored without them). A ``StoreError`` is raised: nothing was stored."""
        if acks is not None:
            try:
                lost, recorded = self._store.complete_with_receipts(
                    self.worker_id, completed, now, records, acks.receipts, acks.follow_up
                )
                return lost, recorded, acks
            except StoreError:
                raise
            except Exception as exc:  # a defect in receipt handling must not cost the results
                log.error(
                    "%d synchronous receipts: handling failed (%s)", len(acks.receipts), type(exc).__name__
                )
        return self._store.complete_many(self.worker_id, completed, now, records), [], None

    def _settle(self, batch: list[_Completed]) -> None:
        """After delivered deliveries to receivers that send no MedCom receipt are stored: queue the
        ``ok`` receipt the bridge sends on each receiver's behalf."""
        try:
            for item in batch:
                claimed = item.job.claimed
                try:
                    if item.system is not None:
                        self._queue_receipt(claimed.message_id, item.system.id, "ok")
                except Exception as exc:  # the delivery stands; only the receipt work failed
                    log.error("delivery %s: receipt handling failed (%s)", claimed.id, type(exc).__name__)
        finally:
            for item in batch:
                self._finish(item.job)

    def _outcome_record(
        self, claimed: ClaimedDelivery, outcome: audit.DeliveryOutcome, attempt: AttemptRecord, now: datetime
    ) -> AuditRecord:
        """The audit record of an attempt's outcome (``delivered``: stored with the result, in the same
        transaction)."""
        return audit.delivery_outcome(
            recorded=now,
            actor=self.worker_id,
            destination=claimed.destination,
            message_id=claimed.message_id,
            header_id=claimed.header_id,
            outcome=outcome,
            citizen_key=claimed.citizen_key,
            reason=attempt.detail or None,
        )

    def _dead_letter(
        self,
        claimed: ClaimedDelivery,
        attempt: AttemptRecord,
        decision: DeadLetter,
        outcome: DeliveryOutcome,
        now: datetime,
    ) -> None:
        self._store.dead_letter(claimed.id, self.worker_id, attempt, decision.reason, now)
        metrics.delivery(claimed.destination, attempt.outcome)
        log.warning(
            "delivery %s of message %s to %s dead after attempt %d: %s",
            claimed.id,
            claimed.message_id,
            claimed.destination,
            claimed.attempt,
            attempt.detail,
        )
        code: AckCode = "fatal-error" if isinstance(outcome, Permanent) else "transient-error"
        self._after_dead(claimed.message_id, claimed.destination, claimed.citizen_key, decision.reason, code)

    def _after_dead(
        self, message_id: str, destination: str, citizen_key: str | None, reason: str, code: AckCode
    ) -> None:
        now = self._clock.now()
        metrics.dead_letter(destination)
        original = self._store.message_record(message_id)
        header_id = original.header_id if original is not None else message_id
        self._store.append_audit(
            audit.delivery_outcome(
                recorded=now,
                actor=self.worker_id,
                destination=destination,
                message_id=message_id,
                header_id=header_id,
                outcome="dead-lettered",
                citizen_key=citizen_key,
                reason=reason,
            )
        )
        self._queue_receipt(message_id, destination, code, reason)

    def _queue_receipt(self, message_id: str, receiver: str, code: AckCode, reason: str = "") -> None:
        try:
            queued = queue_receipt(
                self._settings,
                self._store,
                self._clock,
                message_id=message_id,
                receiver=receiver,
                code=code,
                reason=reason,
            )
            if queued is not None and queued.accepted:
                self._wake.set()  # the receipt is due at once; do not wait for the next poll
        except StoreError as exc:
            log.warning("message %s: %s receipt not queued (%s)", message_id, code, type(exc).__name__)

    def _synchronous_ack(self, item: _Completed) -> ReceivedAcknowledgement | None:
        """The MedCom Acknowledgement a FHIR receiver answered the post with, if it sent one."""
        claimed, system, post = item.job.claimed, item.system, item.post
        if system is None or system.format != "fhir":
            return None
        if post is None or not post.body or not isinstance(post.result, httpx.Response):
            return None
        try:
            content_type = post.result.headers.get("content-type")
            answer = parse_fhir(post.body, sniff_format(post.body, content_type))
            if event_code(answer) != ACKNOWLEDGEMENT_EVENT:
                return None  # e.g. an OperationOutcome; the receipt may still come by a POST of its own
            return read_acknowledgement(answer, from_system=system.id)
        except InvalidInput:
            log.warning("delivery %s: the response body is no readable receipt; ignored", claimed.id)
        except Exception as exc:  # the delivery stands; only the receipt work failed
            log.error("delivery %s: receipt handling failed (%s)", claimed.id, type(exc).__name__)
        return None

    def _release(self, claimed: ClaimedDelivery) -> None:
        try:
            self._store.release(claimed.id, self.worker_id, self._clock.now())
        except (LeaseLost, NotFound):
            log.info("delivery %s: lease already gone at release", claimed.id)
        except StoreError as exc:
            log.warning(
                "delivery %s: release not stored (%s); the lease will expire", claimed.id, type(exc).__name__
            )


def _fault_after_delivery() -> int:
    """The N of ``BRIDGE_FAULT_AFTER_DELIVERY`` (0: no fault injected)."""
    value = os.environ.get(FAULT_AFTER_DELIVERY_ENV, "").strip()
    if not value:
        return 0
    if not value.isdigit():
        raise ValueError(f"{FAULT_AFTER_DELIVERY_ENV} must be a whole number, got {value!r}")
    return int(value)


def _attempt_record(outcome: DeliveryOutcome, started: datetime, post: PostResult | None) -> AttemptRecord:
    latency = post.latency if post is not None else timedelta(0)
    if isinstance(outcome, Delivered):
        return AttemptRecord(
            started, latency, "delivered", outcome.status_code, f"HTTP {outcome.status_code}"
        )
    if isinstance(outcome, Transient):
        return AttemptRecord(started, latency, "transient", outcome.status_code, outcome.reason)
    return AttemptRecord(started, latency, "permanent", outcome.status_code, outcome.reason)
