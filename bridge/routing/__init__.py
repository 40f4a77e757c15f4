"""Routing: who receives a message (pure functions over the settings and what the caller passes in).

``destinations``: MedCom messages carry their receivers in MessageHeader.destination (SOR id / GLN of
each receiver Organization); ``rules``: messages without receivers (municipal records) follow the
configured routing rules, among them "the hospital where the citizen is admitted right now", known
from the HospitalNotifications that passed through the bridge.
"""

from __future__ import annotations

from bridge.routing.destinations import (
    Receiver,
    Unroutable,
    explicit_receivers,
    medcom_receivers,
    sender_party,
)
from bridge.routing.rules import (
    admission_from_change,
    admission_from_event,
    admission_status,
    rule_receivers,
    stay_status,
)

__all__ = [
    "Receiver",
    "Unroutable",
    "admission_from_change",
    "admission_from_event",
    "admission_status",
    "explicit_receivers",
    "medcom_receivers",
    "rule_receivers",
    "sender_party",
    "stay_status",
]
