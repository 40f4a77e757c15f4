"""fhir-bridge: a cross-sector health data exchange bridge for Denmark.

Translates municipal care records (FSIII) to HL7 FHIR R4 and back, speaks MedCom FHIR messaging, and
delivers messages between hospitals and municipalities until they are acknowledged.
"""

from bridge.errors import (
    BridgeError,
    DeliveryError,
    InvalidInput,
    InvalidMessage,
    MappingSpecError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnmappableRecord,
)

__version__ = "0.1.0"

__all__ = [
    "BridgeError",
    "DeliveryError",
    "InvalidInput",
    "InvalidMessage",
    "MappingSpecError",
    "PermanentDeliveryError",
    "TransientDeliveryError",
    "UnmappableRecord",
    "__version__",
]
