"""The bridge's one error tree.

    BridgeError
    ├── InvalidInput          bad input from a caller; carries an Outcome naming each problem
    │   ├── InvalidMessage    a FHIR message or resource that fails parsing or validation
    │   └── UnmappableRecord  a record or Bundle the mapping cannot translate
    ├── MappingSpecError      a broken mapping spec or ConceptMap (a deployment problem, not a caller's)
    └── DeliveryError         one delivery attempt failed
        ├── TransientDeliveryError   worth retrying (timeouts, 408, 429, 5xx)
        └── PermanentDeliveryError   not worth retrying (other 4xx)

Library errors are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from bridge.fhir.outcome import Issue, Outcome


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class InvalidInput(BridgeError):
    """Input rejected; ``outcome`` names each problem with its path."""

    def __init__(self, outcome: Outcome | list[Issue], message: str | None = None) -> None:
        self.outcome = outcome if isinstance(outcome, Outcome) else Outcome(list(outcome))
        super().__init__(message or self.outcome.summary())


class InvalidMessage(InvalidInput):
    """A FHIR message or resource that cannot be parsed or fails validation."""


class UnmappableRecord(InvalidInput):
    """A record or Bundle the mappings cannot translate."""


class MappingSpecError(BridgeError):
    """A mapping spec or ConceptMap is broken: names the file, the key or line, and what is wrong."""

    def __init__(self, file: str, where: str, problem: str) -> None:
        self.file, self.where, self.problem = file, where, problem
        super().__init__(f"{file}: {where}: {problem}")


class DeliveryError(BridgeError):
    """One delivery attempt failed."""


class TransientDeliveryError(DeliveryError):
    """Worth retrying: the receiver may accept later."""


class PermanentDeliveryError(DeliveryError):
    """Not worth retrying: the receiver refused the message itself."""
