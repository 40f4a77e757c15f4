"""Citizen keys: a keyed hash of the CPR number, so the store can group and order by citizen without
holding the CPR number in clear outside the payload (PHI minimisation).

HMAC-SHA256 with a deployment secret: a plain hash of a CPR number would be reversed by hashing all
~4 million valid birth-date-plus-serial combinations; without the secret that table cannot be built.
Changing the secret changes every key, so per-citizen ordering and admission state restart from
scratch; rotate it only on an empty queue.
"""

from __future__ import annotations

import hashlib
import hmac

#: Fewer bytes than this leaves the key guessable.
MIN_SECRET_BYTES = 16


def citizen_key(person_id: str, secret: bytes) -> str:
    """The citizen key (64 hex characters) of a CPR or replacement CPR number under ``secret``."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the citizen key secret must be at least {MIN_SECRET_BYTES} bytes")
    normalised = person_id.strip().replace("-", "").upper()
    if not normalised:
        raise ValueError("a citizen key needs a person identifier")
    return hmac.new(secret, normalised.encode(), hashlib.sha256).hexdigest()
