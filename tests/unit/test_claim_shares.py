"""Fair claims between destinations: the pure parts (``fair_shares``, ``claim_by_destination``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection

from hypothesis import given
from hypothesis import strategies as st

from bridge.outbox.port import claim_by_destination, fair_shares

wants_st = st.dictionaries(st.sampled_from("abcdefgh"), st.integers(min_value=-2, max_value=40), max_size=8)


@given(st.integers(min_value=-3, max_value=100), wants_st)
def test_shares_never_exceed_the_total_nor_a_want_and_leave_nothing_usable_unused(
    total: int, wants: dict[str, int]
) -> None:
    shares = fair_shares(total, wants)
    assert sum(shares.values()) <= max(total, 0)
    assert all(0 <= shares[d] <= wants[d] for d in shares)
    assert set(shares) == {d for d, n in wants.items() if n > 0}
    # Nothing left over while someone still wants more.
    unmet = [d for d in shares if shares[d] < wants[d]]
    assert not unmet or sum(shares.values()) == max(total, 0)
    # Equal shares: a destination that got less than it wanted got at least as much as any other.
    for d in unmet:
        assert shares[d] >= max(shares.values()) - 1


def test_an_equal_split_and_what_one_cannot_use_goes_to_the_others() -> None:
    assert fair_shares(12, {"a": 100, "b": 100, "c": 100}) == {"a": 4, "b": 4, "c": 4}
    assert fair_shares(12, {"a": 100, "b": 1, "c": 100}) == {"b": 1, "a": 6, "c": 5}
    assert fair_shares(3, {"a": 0, "b": 5}) == {"b": 3}


ClaimTo = Callable[[str, int], list[str]]
ClaimRest = Callable[[int, Collection[str]], list[str]]


def _queues(due: dict[str, int]) -> tuple[list[tuple[str, int]], ClaimTo, ClaimRest]:
    """Fake claim functions over ``due`` deliveries per destination, and the log of calls."""
    left = Counter(due)
    calls: list[tuple[str, int]] = []

    def claim_to(destination: str, n: int) -> list[str]:
        calls.append((destination, n))
        taken = min(n, left[destination])
        left[destination] -= taken
        return [destination] * taken

    def claim_rest(n: int, skipped: Collection[str]) -> list[str]:
        calls.append(("*", n))
        rows: list[str] = []
        for destination in sorted(left):
            if destination not in skipped:
                taken = min(n - len(rows), left[destination])
                left[destination] -= taken
                rows += [destination] * taken
        return rows

    return calls, claim_to, claim_rest


def test_a_long_backlog_to_one_destination_leaves_the_others_their_share() -> None:
    calls, claim_to, claim_rest = _queues({"kommune": 5000, "hospital": 3})
    rows = claim_by_destination(16, {"kommune": 16, "hospital": 16}, (), claim_to, claim_rest)
    assert Counter(rows) == {"kommune": 13, "hospital": 3}
    # The hospital could use 3 of its 8; the kommune took the rest in a second round.
    assert calls == [("hospital", 8), ("kommune", 8), ("kommune", 5)]


def test_unnamed_destinations_get_what_is_left_and_skipped_ones_nothing() -> None:
    _, claim_to, claim_rest = _queues({"kommune": 2, "old-system": 9, "full": 9})
    rows = claim_by_destination(8, {"kommune": 8, "full": 8}, ("full",), claim_to, claim_rest)
    assert Counter(rows) == {"kommune": 2, "old-system": 6}
