"""Group commit: concurrent accepts share one transaction and one fsync.

A durable accept is a committed transaction, and on SQLite with ``synchronous=FULL`` each commit waits
for the disk. Senders post concurrently, so while one commit waits for its fsync, others are ready.
``Committer`` queues every accept of the process; one committer thread takes whatever is queued (up to
``max_batch``) and hands it to ``OutboxStore.accept_many``: ONE transaction for the batch, each message
still stored, deduplicated and audited exactly as a lone ``accept`` would, and each caller answered only
after that transaction committed. There is no waiting to fill a batch: a request that finds the thread
idle is committed at once, alone, so light traffic pays no latency for it; under load the batches grow
by themselves with the number of requests waiting.

A request that fails on its own (the store reports a ``StoreError`` in its slot) fails alone; a failed
transaction (database unavailable) fails every request of the batch, and none of them is answered 2xx.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from bridge.outbox.port import AcceptRequest, AcceptResult, OutboxStore, StoreError, check_accept_requests

log = logging.getLogger("bridge.committer")

#: What ``accept_many`` gives a batch: a result or a ``StoreError`` per request, or the exception that
#: failed the whole transaction.
Outcomes = list[AcceptResult | StoreError] | BaseException
_Item = tuple[Sequence[AcceptRequest], Callable[[Outcomes], None]]


class Committer:
    """Batches the accepts of concurrent callers into ``store.accept_many`` transactions."""

    def __init__(self, store: OutboxStore, *, max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def accept(self, request: AcceptRequest) -> AcceptResult:
        """Commit ``request`` (in a batch with whatever else is waiting); blocks until it is committed."""
        return self.submit(request).result()

    def submit(self, request: AcceptRequest) -> Future[AcceptResult]:
        """Queue ``request`` for the next batch; the future completes once that batch is committed.

        A malformed request (``ValueError``, e.g. two deliveries to one destination) is refused here,
        before it could spoil a batch of other callers' messages."""
        future: Future[AcceptResult] = Future()

        def settle(outcomes: Outcomes) -> None:
            if isinstance(outcomes, BaseException):
                future.set_exception(outcomes)
            elif isinstance(outcomes[0], StoreError):
                future.set_exception(outcomes[0])
            else:
                future.set_result(outcomes[0])

        self.submit_many([request], settle)
        return future

    def submit_many(self, requests: Sequence[AcceptRequest], done: Callable[[Outcomes], None]) -> None:
        """Queue ``requests`` (committed in one transaction, with whatever else is waiting); ``done``
        gets their outcomes, in order, on the committer's thread once that transaction ended.

        The event loop hands over all it prepared in one turn this way: one hand-over per batch, and
        the loop goes on preparing while the disk syncs."""
        check_accept_requests(requests)
        if not requests:
            raise ValueError("nothing to commit")
        with self._lock:
            if self._closed:
                raise StoreError("the service is stopping; no more messages are accepted")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bridge-committer", daemon=True)
                self._thread.start()
            self._queue.put((requests, done))

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop the thread; later accepts are refused."""
        with self._lock:
            self._closed = True
            thread = self._thread
            self._queue.put(None)
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            size = len(item[0])
            stop = False
            while size < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
                size += len(more[0])
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: Sequence[_Item]) -> None:
        outcomes: Outcomes
        try:
            outcomes = self.store.accept_many([request for requests, _ in batch for request in requests])
        except BaseException as exc:  # the transaction failed: nobody in it was accepted
            for _, done in batch:
                _tell(done, exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for requests, done in batch:
            _tell(done, outcomes[start : start + len(requests)])
            start += len(requests)


def _tell(done: Callable[[Outcomes], None], outcomes: Outcomes) -> None:
    try:
        done(outcomes)
    except Exception:  # one caller's callback must not keep the others from their answers
        log.exception("a committed batch's callback failed")
