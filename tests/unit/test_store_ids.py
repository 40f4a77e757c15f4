"""The ids the store gives new rows: UUIDs of version 7, so that later ids sort later."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from bridge.outbox.port import NewDelivery, NewMessage, new_id


def test_an_id_is_a_version_7_uuid_carrying_the_time_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    made = uuid.UUID(new_id())
    after = time.time_ns() // 1_000_000
    assert (made.version, made.variant) == (7, uuid.RFC_4122)
    assert before <= made.int >> 80 <= after


def test_later_ids_sort_later_and_none_repeats() -> None:
    ids: list[str] = []
    for _ in range(5):
        ids += [new_id() for _ in range(2000)]
        time.sleep(0.002)
    assert len(set(ids)) == len(ids)
    # Across milliseconds, text order is the order of making (within one, the random bits decide).
    stamps = [uuid.UUID(i).int >> 80 for i in ids]
    assert stamps == sorted(stamps)
    assert [uuid.UUID(i).int >> 80 for i in sorted(ids)] == stamps


def test_new_rows_get_such_ids_by_default() -> None:
    message = NewMessage("b", "h", "rh", "x", None, b"{}", "application/json", datetime.now(UTC))
    delivery = NewDelivery("kbh", b"{}", "application/json")
    assert uuid.UUID(message.id).version == uuid.UUID(delivery.id).version == 7
    assert message.id != delivery.id
