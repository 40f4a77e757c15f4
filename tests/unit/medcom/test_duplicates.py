"""Duplicate decision: every row of MedCom's reliable messaging table, with MedCom's duplicate fixtures."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.medcom.acknowledgement import build_acknowledgement
from bridge.medcom.duplicates import Decision, ResubmissionPolicy, Seen, decide_duplicate

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "medcom"
FIXTURES = SHARED / "carecommunication/testscripts-duplicate-fixtures"


def ids(bundle: dict[str, Any]) -> tuple[str, str]:
    return bundle["id"], bundle["entry"][0]["resource"]["id"]


def fixture(prefix: str) -> dict[str, Any]:
    (path,) = FIXTURES.glob(f"Bundle-{prefix}*.json")
    return json.loads(path.read_text(encoding="utf-8"))


def _pairs() -> list[tuple[str, str]]:
    """The resubmission pairs named in SOURCES.md (first copy, resubmitted copy)."""
    text = (SHARED / "SOURCES.md").read_text(encoding="utf-8")
    line = next(ln for ln in text.splitlines() if "5de12884" in ln and "c289e585" in ln)
    return [(a, b) for a, b in re.findall(r"([0-9a-f]{8})\.\.\./([0-9a-f]{8})\.\.\.", line)]


class Receiver:
    """A receiving system in miniature: remembers what it saw and the receipt it sent for each letter."""

    def __init__(self, policy: ResubmissionPolicy = ResubmissionPolicy.DUPLICATE) -> None:
        self.policy = policy
        self.received: list[tuple[str, str]] = []
        self.receipts: dict[str, dict[str, Any]] = {}
        self.delivered: list[str] = []

    def receive(self, bundle: dict[str, Any]) -> tuple[Decision, dict[str, Any] | None]:
        bundle_id, header_id = ids(bundle)
        decision = decide_duplicate(
            Seen.lookup(self.received, bundle_id, header_id), bundle_id, header_id, self.policy
        )
        receipt: dict[str, Any] | None = None
        if decision.action == "resend-receipt":
            receipt = self.receipts[header_id]
        elif decision.action in ("process", "reprocess"):
            receipt = build_acknowledgement(bundle, "ok")
            self.receipts.setdefault(header_id, receipt)
        elif decision.action == "reject":
            assert decision.issue is not None
            receipt = build_acknowledgement(bundle, "fatal-error", issues=[decision.issue])
        if decision.deliver:
            self.delivered.append(header_id)
        if decision.action != "reject":  # a rejected message is not stored, so it was never "received"
            self.received.append((bundle_id, header_id))
        return decision, receipt


def test_sources_name_both_pairs() -> None:
    assert _pairs() == [("5de12884", "c289e585"), ("260a3cc1", "260f76f2")]


@pytest.mark.parametrize(("first", "second"), _pairs())
def test_fixture_pairs_are_resubmissions(first: str, second: str) -> None:
    a, b = fixture(first), fixture(second)
    assert ids(a)[1] == ids(b)[1] and ids(a)[0] != ids(b)[0]
    for policy, action in (
        (ResubmissionPolicy.DUPLICATE, "resend-receipt"),
        (ResubmissionPolicy.REPROCESS, "reprocess"),
    ):
        seen = Seen.lookup([ids(a)], *ids(b))
        assert seen == Seen(header_seen=True, bundle_header_id=None)
        assert decide_duplicate(seen, *ids(b), policy) == Decision("resubmission", action, deliver=False)


def test_every_row_of_the_table_with_the_fixtures() -> None:
    receiver = Receiver()
    first, resubmitted, other = fixture("5de12884"), fixture("c289e585"), fixture("7283eae8")

    # Row 1: neither id seen -> process, deliver once.
    decision, receipt = receiver.receive(first)
    assert decision == Decision("new", "process", deliver=True)
    original_receipt = receipt

    # Row 2: both ids seen together -> the receipt was lost; resend the same receipt content.
    decision, receipt = receiver.receive(first)
    assert decision == Decision("duplicate", "resend-receipt", deliver=False)
    assert receipt is original_receipt

    # Row 3: same MessageHeader.id in a new Bundle -> resubmission; by default answered like the first.
    decision, receipt = receiver.receive(resubmitted)
    assert decision.case == "resubmission" and decision.action == "resend-receipt" and not decision.deliver
    assert receipt is original_receipt

    # Row 4: a Bundle.id reused for another MessageHeader.id -> error, answered with a fatal receipt.
    reused = json.loads(json.dumps(other))
    reused["id"] = first["id"]
    decision, receipt = receiver.receive(reused)
    assert decision.case == "bundle-id-reused" and decision.action == "reject" and not decision.deliver
    assert decision.issue is not None and decision.issue.expression == ("Bundle.id",)
    assert receipt is not None and receipt["entry"][0]["resource"]["response"]["code"] == "fatal-error"

    # An unrelated new message is processed; the duplicate was delivered to a user exactly once.
    decision, _ = receiver.receive(other)
    assert decision.case == "new"
    assert receiver.delivered == [ids(first)[1], ids(other)[1]]


def test_reprocess_policy_answers_again_but_never_delivers_twice() -> None:
    receiver = Receiver(ResubmissionPolicy.REPROCESS)
    first, resubmitted = fixture("5de12884"), fixture("c289e585")
    receiver.receive(first)
    decision, receipt = receiver.receive(resubmitted)
    assert decision == Decision("resubmission", "reprocess", deliver=False)
    assert receipt is not None and receipt is not receiver.receipts[ids(first)[1]]
    assert receiver.delivered == [ids(first)[1]]


IDS = st.sampled_from(["b1", "b2", "b3"])
HEADERS = st.sampled_from(["h1", "h2", "h3"])


@given(st.lists(st.tuples(IDS, HEADERS), max_size=8), IDS, HEADERS, st.sampled_from(list(ResubmissionPolicy)))
def test_decisions_follow_the_table(
    history: list[tuple[str, str]], bundle_id: str, header_id: str, policy: ResubmissionPolicy
) -> None:
    decision = decide_duplicate(Seen.lookup(history, bundle_id, header_id), bundle_id, header_id, policy)
    bundle_known = [h for b, h in history if b == bundle_id]
    header_known = any(h == header_id for _, h in history)
    if bundle_known and bundle_known[0] != header_id:
        assert decision.case == "bundle-id-reused"
    elif bundle_known:
        assert decision.case == "duplicate"
    elif header_known:
        assert decision.case == "resubmission"
    else:
        assert decision.case == "new"
    # Only a message whose letter id was never seen reaches a user.
    assert decision.deliver == (not header_known and not bundle_known)
