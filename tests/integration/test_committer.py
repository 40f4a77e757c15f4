"""Group commit of accepts (``bridge.committer``) against a real SQLite store."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.committer import Committer
from bridge.outbox.port import (
    AcceptRequest,
    AcceptResult,
    AuditRecord,
    NewDelivery,
    NewMessage,
    StoreError,
    StoreUnavailable,
)
from bridge.outbox.sqlite import SqliteOutboxStore

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class CountingStore:
    """A real store that records the size of every ``accept_many`` batch."""

    def __init__(self, inner: SqliteOutboxStore) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self.fail_next = False

    def accept_many(self, requests: Sequence[AcceptRequest]) -> list[AcceptResult | StoreError]:
        self.batches.append(len(requests))
        if self.fail_next:
            self.fail_next = False
            raise StoreUnavailable("database is locked")
        return self.inner.accept_many(requests)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def request(n: int, *, destinations: Sequence[str] = ("kommune",)) -> AcceptRequest:
    message = NewMessage(
        bundle_id=str(uuid.uuid4()),
        header_id=str(uuid.uuid4()),
        sender="hospital",
        kind="hospital-notification",
        citizen_key=f"citizen-{n}",
        payload=b'{"n": %d}' % n,
        content_type="application/fhir+json",
        received_at=NOW,
    )
    audit = AuditRecord(NOW, "message.accepted", "hospital", b"{}", message.id)
    deliveries = [NewDelivery(d, message.payload, "application/fhir+json") for d in destinations]
    return AcceptRequest(message, deliveries, audit)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    inner = SqliteOutboxStore(tmp_path / "bridge.db")
    inner.migrate()
    yield CountingStore(inner)
    inner.close()


def test_concurrent_accepts_share_transactions_and_all_are_stored(store: CountingStore) -> None:
    committer = Committer(store)  # type: ignore[arg-type]
    requests = [request(n) for n in range(64)]
    results: dict[int, AcceptResult] = {}
    start = threading.Barrier(16)

    def sender(k: int) -> None:
        start.wait()
        for n in range(k, len(requests), 16):
            results[n] = committer.accept(requests[n])

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    committer.close()
    assert sorted(results) == list(range(64))
    assert all(r.accepted for r in results.values())
    assert sum(store.batches) == 64
    assert len(store.batches) < 64 and max(store.batches) > 1  # some accepts shared a commit
    stored = {m.header_id for m in store.inner.list_messages(_all())}
    assert stored == {r.message.header_id for r in requests}


def test_a_request_that_fails_alone_fails_alone(store: CountingStore) -> None:
    committer = Committer(store)  # type: ignore[arg-type]
    good = request(1)
    with pytest.raises(ValueError):
        committer.accept(request(2, destinations=("kommune", "kommune")))  # a caller's mistake
    assert committer.accept(good).accepted
    again = committer.accept(AcceptRequest(good.message, good.deliveries, good.audit))
    assert again.duplicate == "same"
    committer.close()


def test_a_failed_transaction_fails_its_callers_and_stores_nothing(store: CountingStore) -> None:
    committer = Committer(store)  # type: ignore[arg-type]
    store.fail_next = True
    with pytest.raises(StoreUnavailable):
        committer.accept(request(1))
    assert store.inner.list_messages(_all()) == []
    assert committer.accept(request(2)).accepted  # the committer goes on after a failed batch
    committer.close()


def test_a_closed_committer_refuses_new_accepts(store: CountingStore) -> None:
    committer = Committer(store)  # type: ignore[arg-type]
    assert committer.accept(request(1)).accepted
    committer.close()
    with pytest.raises(StoreError):
        committer.accept(request(2))


def _all() -> Any:
    from bridge.outbox.port import MessageFilter

    return MessageFilter(limit=1000)


class OneRefused(CountingStore):
    """Answers a StoreError in the slot of the request with payload ``b"refused"``, stores the rest."""

    def accept_many(self, requests: Sequence[AcceptRequest]) -> list[AcceptResult | StoreError]:
        keep = [r for r in requests if r.message.payload != b"refused"]
        stored = iter(self.inner.accept_many(keep))
        return [StoreError("refused") if r.message.payload == b"refused" else next(stored) for r in requests]


def test_an_error_in_its_slot_reaches_only_its_caller(tmp_path: Path) -> None:
    inner = SqliteOutboxStore(tmp_path / "bridge.db")
    inner.migrate()
    committer = Committer(OneRefused(inner))  # type: ignore[arg-type]
    plain = [request(n) for n in range(8)]
    refused = request(99)
    refused = AcceptRequest(replace(refused.message, payload=b"refused"), refused.deliveries, refused.audit)
    outcomes: dict[str, object] = {}
    start = threading.Barrier(9)

    def send(r: AcceptRequest) -> None:
        start.wait()
        try:
            outcomes[r.message.id] = committer.accept(r)
        except StoreError as exc:
            outcomes[r.message.id] = exc

    threads = [threading.Thread(target=send, args=(r,)) for r in [*plain, refused]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    committer.close()
    assert isinstance(outcomes[refused.message.id], StoreError)
    assert all(isinstance(outcomes[r.message.id], AcceptResult) for r in plain)
    assert len(inner.list_messages(_all())) == len(plain)
    inner.close()


def test_batches_handed_over_whole_are_answered_each_with_its_own_slice(store: CountingStore) -> None:
    committer = Committer(store, max_batch=8)  # type: ignore[arg-type]
    answered: dict[int, Any] = {}
    done, entered = threading.Event(), threading.Event()
    hold = threading.Lock()
    hold.acquire()  # the first batch's callback holds the thread: the next ones queue up meanwhile
    groups = [[request(10 * g + n) for n in range(size)] for g, size in enumerate((1, 3, 5, 2))]

    def callback(g: int) -> Any:
        def told(outcomes: Any) -> None:
            if g == 0:
                entered.set()
                with hold:
                    pass
            answered[g] = outcomes
            if g == 2:
                raise RuntimeError("a caller's callback fails")  # the others are still answered
            if len(answered) == len(groups):
                done.set()

        return told

    committer.submit_many(groups[0], callback(0))
    assert entered.wait(30)
    for g, group in enumerate(groups[1:], start=1):
        committer.submit_many(group, callback(g))
    hold.release()
    assert done.wait(30)
    committer.close()
    for g, group in enumerate(groups):
        outcomes = answered[g]
        assert [o.message.header_id for o in outcomes] == [r.message.header_id for r in group]
    # The three groups queued behind the first went into ONE transaction, up to max_batch requests.
    assert store.batches == [1, 3 + 5, 2]
    with pytest.raises(ValueError):
        committer.submit_many([], callback(9))


def test_a_failed_transaction_reaches_every_batch_in_it(store: CountingStore) -> None:
    committer = Committer(store)  # type: ignore[arg-type]
    store.fail_next = True
    told = threading.Event()
    seen: list[Any] = []

    def callback(outcomes: Any) -> None:
        seen.append(outcomes)
        told.set()

    committer.submit_many([request(1), request(2)], callback)
    assert told.wait(30)
    assert isinstance(seen[0], StoreUnavailable)
    assert store.inner.list_messages(_all()) == []
    committer.close()
