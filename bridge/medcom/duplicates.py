"""Duplicate messages (dubletter): what to do with a message, given what was received before.

MedCom's reliable messaging table (043_Reliable_Messaging-FHIR), with Bundle.id as the envelope id and
MessageHeader.id as the letter id:

================================================ ===================================================
what was seen before                             what to do
================================================ ===================================================
neither Bundle.id nor MessageHeader.id           new: process it
both, together                                   duplicate: the original receipt was lost - resend it
the MessageHeader.id, with another Bundle.id     resubmission: reprocess it or treat it as duplicate
the Bundle.id, with another MessageHeader.id     error: a Bundle.id is never reused
================================================ ===================================================

A message whose MessageHeader.id was seen before is never delivered to a user again (MR8.R: "A message
is a duplicate if it contains the same MessageHeader.Id"), and a duplicate gets the same receipt content
as the first copy. :func:`decide_duplicate` is a pure function; the store answers the lookup.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from bridge.fhir.outcome import Issue


class ResubmissionPolicy(Enum):
    """What to do with a known MessageHeader.id in a new Bundle (the rules allow both)."""

    #: Answer with the original receipt and do nothing else (the default: a resubmission is unchanged).
    DUPLICATE = "duplicate"
    #: Validate and translate again and answer with a fresh receipt; still never deliver to a user again.
    REPROCESS = "reprocess"


@dataclass(frozen=True, slots=True)
class Seen:
    """What the store knows about the ids of an incoming message.

    ``header_seen``: the MessageHeader.id was received before. ``bundle_header_id``: the MessageHeader.id
    of the message first received with this Bundle.id, or None when the Bundle.id is new.
    """

    header_seen: bool
    bundle_header_id: str | None = None

    @classmethod
    def lookup(cls, received: Iterable[tuple[str, str]], bundle_id: str, header_id: str) -> Seen:
        """Compute what was seen from (Bundle.id, MessageHeader.id) pairs received before."""
        header_seen = False
        bundle_header: str | None = None
        for seen_bundle, seen_header in received:
            header_seen = header_seen or seen_header == header_id
            if seen_bundle == bundle_id and bundle_header is None:
                bundle_header = seen_header
        return cls(header_seen=header_seen, bundle_header_id=bundle_header)


Case = Literal["new", "duplicate", "resubmission", "bundle-id-reused"]
Action = Literal["process", "resend-receipt", "reprocess", "reject"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one incoming message.

    ``action``: ``process`` (new), ``resend-receipt`` (answer with the receipt sent for the first copy),
    ``reprocess`` (validate and answer again) or ``reject`` (answer with an error, see ``issue``).
    ``deliver``: whether the message may reach a user - only a new message does.
    """

    case: Case
    action: Action
    deliver: bool
    issue: Issue | None = None


def decide_duplicate(
    seen: Seen,
    bundle_id: str,
    header_id: str,
    policy: ResubmissionPolicy = ResubmissionPolicy.DUPLICATE,
) -> Decision:
    """Decide how to treat a message with ``bundle_id`` and ``header_id`` (MedCom's table, above)."""
    if seen.bundle_header_id is not None and seen.bundle_header_id != header_id:
        issue = Issue(
            "error",
            "duplicate",
            f"Bundle.id {bundle_id} was already received with MessageHeader.id {seen.bundle_header_id}; "
            "a Bundle.id must never be reused",
            ("Bundle.id",),
            ("http://terminology.hl7.org/CodeSystem/operation-outcome", "MSG_DUPLICATE_ID"),
        )
        return Decision("bundle-id-reused", "reject", deliver=False, issue=issue)
    if seen.bundle_header_id == header_id:
        return Decision("duplicate", "resend-receipt", deliver=False)
    if seen.header_seen:
        action: Action = "reprocess" if policy is ResubmissionPolicy.REPROCESS else "resend-receipt"
        return Decision("resubmission", action, deliver=False)
    return Decision("new", "process", deliver=True)


__all__ = ["Decision", "ResubmissionPolicy", "Seen", "decide_duplicate"]
