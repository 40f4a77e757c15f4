"""``bridge.api.lane`` answers ``$process-message`` exactly as the endpoint does.

The lane takes a small body with a Content-Length from a static token; a chunked body of the same
bytes goes to the endpoint. Posting the same requests both ways must give the same status, media type
and body, and leave the same things stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from api_bed import (
    HOSPITAL_TOKEN,
    REHAB_TOKEN,
    STIN,
    Bed,
    auth,
    example,
    example_bytes,
    to_unknown_receiver,
)

from bridge.api.lane import PATH, ProcessMessageLane


@pytest.fixture(autouse=True)
def taken(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the lane took each request, in order (the test server runs in this process)."""
    seen: list[bool] = []
    original = ProcessMessageLane._caller

    async def spy(self: ProcessMessageLane, request: Any) -> Any:
        caller = await original(self, request)
        seen.append(caller is not None)
        return caller

    monkeypatch.setattr(ProcessMessageLane, "_caller", spy)
    return seen


def post(bed: Bed, body: bytes, *, chunked: bool, token: str = HOSPITAL_TOKEN, **headers: str) -> Any:
    """POST ``body`` with a Content-Length (the lane) or chunked, without one (the endpoint)."""

    def chunks() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        yield body[len(body) // 2 :]

    return bed.client.post(
        PATH,
        content=chunks() if chunked else body,
        headers={"Content-Type": "application/fhir+json", **auth(token), **headers},
    )


def _invalid() -> bytes:
    message = example(STIN)
    del message["entry"][0]["resource"]["eventCoding"]
    message["timestamp"] = "yesterday"
    return orjson.dumps(message)


REFUSED: list[tuple[str, bytes, dict[str, str], int]] = [
    ("invalid", _invalid(), {}, 400),
    ("unknown receiver", orjson.dumps(to_unknown_receiver()), {}, 422),
    ("not medcom", b'{"resourceType": "Patient", "id": "x"}', {}, 400),
    ("truncated", b'{"resourceType": "Bundle", ', {}, 400),
    ("xml answer", b"[1, 2, 3]", {"Accept": "application/fhir+xml"}, 400),
    ("media type", example_bytes(STIN), {"Content-Type": "text/plain"}, 415),
]


@pytest.mark.parametrize(("case", "body", "headers", "status"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_refusal_is_the_same_by_the_lane_and_by_the_endpoint(
    bed: Bed, taken: list[bool], case: str, body: bytes, headers: dict[str, str], status: int
) -> None:
    by_lane = post(bed, body, chunked=False, **headers)
    by_endpoint = post(bed, body, chunked=True, **headers)
    assert taken == [True, False]
    assert by_lane.status_code == by_endpoint.status_code == status, by_lane.text
    assert by_lane.headers["content-type"] == by_endpoint.headers["content-type"]
    assert by_lane.content == by_endpoint.content
    assert bed.count("messages") == 0
    assert [e.record.action for e in bed.store.read_audit()] == ["message.rejected"] * 2


def test_a_sender_not_owned_is_403_both_ways(bed: Bed, taken: list[bool]) -> None:
    by_lane = post(bed, example_bytes(STIN), chunked=False, token=REHAB_TOKEN)
    by_endpoint = post(bed, example_bytes(STIN), chunked=True, token=REHAB_TOKEN)
    assert taken == [True, False]
    assert by_lane.status_code == by_endpoint.status_code == 403
    assert by_lane.content == by_endpoint.content


def test_a_message_accepted_by_one_is_a_duplicate_for_the_other(bed: Bed, taken: list[bool]) -> None:
    first = post(bed, example_bytes(STIN), chunked=False)
    again = post(bed, example_bytes(STIN), chunked=True)
    assert taken == [True, False]
    assert first.status_code == again.status_code == 200, first.text
    assert first.content == again.content
    assert bed.count("messages") == 1 and bed.count("deliveries") == 1


def test_requests_the_lane_takes_are_counted_under_their_route(bed: Bed, taken: list[bool]) -> None:
    assert post(bed, example_bytes(STIN), chunked=False).status_code == 200
    assert taken == [True]
    metrics = bed.client.get("/metrics").text
    line = next(
        (
            x
            for x in metrics.splitlines()
            if x.startswith("bridge_request_duration_seconds_count")
            and f'route="{PATH}"' in x
            and 'status="200"' in x
        ),
        None,
    )
    assert line is not None and float(line.rsplit(" ", 1)[1]) >= 1, metrics[:2000]


def test_what_the_lane_leaves_to_the_endpoint(bed: Bed, taken: list[bool]) -> None:
    assert post(bed, example_bytes(STIN), chunked=False, token="not-a-token").status_code == 401
    assert bed.client.post(PATH, content=example_bytes(STIN)).status_code == 401  # no token at all
    big = example_bytes(STIN) + b" " * (64 * 1024)  # JSON allows trailing white space
    assert post(bed, big, chunked=False).status_code == 200
    assert taken == [False, False, False]
