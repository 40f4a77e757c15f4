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
from collections.abc import Sequence
from concurrent.futures import Future

from bridge.outbox.port import AcceptRequest, AcceptResult, OutboxStore, StoreError, check_accept_requests

log = logging.getLogger("bridge.committer")

_Item = tuple[AcceptRequest, "Future[AcceptResult]"]


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
        check_accept_requests([request])
        future: Future[AcceptResult] = Future()
        with self._lock:
            if self._closed:
                raise StoreError("the service is stopping; no more messages are accepted")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bridge-committer", daemon=True)
                self._thread.start()
            self._queue.put((request, future))
        return future

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
            stop = False
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: Sequence[_Item]) -> None:
        try:
            results = self.store.accept_many([request for request, _ in batch])
        except BaseException as exc:  # the transaction failed: nobody in it was accepted
            for _, future in batch:
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, StoreError):
                future.set_exception(result)
            else:
                future.set_result(result)
