"""What the simulated peers send: hospital stay events, HospitalNotifications, correspondence, records.

Every message is built by the bridge's own builders (``build_hospital_notification``,
``build_care_communication``) from an event, with fresh ids each time, so that the traffic the peers
produce is exactly what a conforming EHR or care system would send. Citizens are synthetic: CPR numbers
whose date and seventh digit place the birth in the 1860s-1890s (CPR-kontoret's century table), a range
no living person has, and a made-up name - no real person is ever named.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from bridge.medcom.care_communication import build_care_communication
from bridge.medcom.common import sor_endpoint
from bridge.medcom.hospital_notification import build_hospital_notification
from bridge.municipal.correspondence import Correspondence
from bridge.municipal.events import HospitalStayEvent, NotificationRecord, Party

#: The organisations of MedCom's public test examples (and of ``examples/bridge.yaml``).
HOSPITAL_UNIT = Party(
    name="Hjerteafdelingen på Herlev og Gentofte hospital", sor="265161000016000", gln="5790000209354"
)
HERLEV_MUNICIPALITY = Party(name="Plejecenter Herlev", sor="953741000016009", gln="5790001348120")
REHAB_MUNICIPALITY = Party(name="Pleje og Rehabilitering", sor="1144561000016002", gln="5790000123117")


def synthetic_cpr(n: int) -> str:
    """A synthetic, valid-looking CPR number for citizen ``n`` (0 <= n < 13,440,000).

    The date lies in 1860-1899 (year digits 60-99 with a seventh digit of 5-8 mean the 1800s), so the
    number passes the format and date checks but can belong to no living person.
    """
    day = 1 + n % 28
    month = 1 + (n // 28) % 12
    year2 = 60 + (n // 336) % 40
    serial = 5000 + (n // 13_440) % 4000
    return f"{day:02d}{month:02d}{year2:02d}{serial:04d}"


def citizen(who: int | str) -> dict[str, Any]:
    """The synthetic citizen number ``who`` (or with the CPR number ``who``) as municipal JSON."""
    cpr = synthetic_cpr(who) if isinstance(who, int) else who
    return {"cpr": cpr, "name": {"given": ["Borger"], "family": "Testesen"}}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def admission(
    n: int,
    *,
    hospital: Party = HOSPITAL_UNIT,
    municipality: Party = HERLEV_MUNICIPALITY,
    at: dt.datetime | None = None,
) -> HospitalStayEvent:
    """Citizen ``n`` is admitted as an inpatient (STIN) and the municipality is told."""
    start = at or _now()
    return HospitalStayEvent.model_validate(
        {
            "kind": "admitted",
            "stay": "inpatient",
            "citizen": citizen(n),
            "hospital_unit": hospital.model_dump(exclude_none=True),
            "receiver": municipality.model_dump(exclude_none=True),
            "episode_of_care": [
                {"system": sor_endpoint(hospital.sor) or "urn:unknown", "value": str(uuid.uuid4())}
            ],
            "stay_start": start,
            "report_of_admission": True,
            "report_of_admission_recipient": hospital.model_dump(exclude_none=True),
        }
    )


def discharge(
    admitted: HospitalStayEvent, admission_header_id: str, *, at: dt.datetime | None = None
) -> HospitalStayEvent:
    """The discharge home (SLHJ) that follows ``admitted``, whose message had ``admission_header_id``."""
    end = at or _now()
    if end < admitted.stay_start:
        end = admitted.stay_start
    data = admitted.model_dump(exclude_none=True)
    for key in ("code", "report_of_admission", "report_of_admission_recipient", "message"):
        data.pop(key, None)
    data |= {
        "kind": "discharged",
        "stay_end": end,
        "previous_message_id": admission_header_id,
        "earlier": [
            NotificationRecord(
                message_id=admission_header_id, activity="admit-inpatient", occurred=admitted.stay_start
            ).model_dump(exclude_none=True)
        ],
    }
    return HospitalStayEvent.model_validate(data)


def notification(event: HospitalStayEvent) -> dict[str, Any]:
    """The HospitalNotification (FHIR JSON) of ``event``, with new Bundle, header and Provenance ids."""
    return build_hospital_notification(event)


def header_id(message: dict[str, Any]) -> str:
    """The MessageHeader.id of a MedCom message (the first entry)."""
    return str(message["entry"][0]["resource"]["id"])


def correspondence(
    n: int | str,
    *,
    sender: Party,
    receiver: Party,
    text: str = "Borgeren modtager hjemmepleje to gange dagligt. Kontakt os ved udskrivelse.",
    at: dt.datetime | None = None,
) -> Correspondence:
    """A new correspondence (korrespondance) about citizen ``n`` (number or CPR) to ``receiver``."""
    when = at or _now()
    return Correspondence.model_validate(
        {
            "kind": "new",
            "thread_id": f"urn:uuid:{uuid.uuid4()}",
            "category": "carecoordination",
            "citizen": citizen(n),
            "sender": sender.model_dump(exclude_none=True),
            "receiver": receiver.model_dump(exclude_none=True),
            "segments": [
                {
                    "type": "text",
                    "id": f"urn:uuid:{uuid.uuid4()}",
                    "time": when,
                    "organization": sender.model_dump(exclude_none=True),
                    "author": {
                        "name": {"given": ["Sygeplejerske"], "family": "Eksempel"},
                        "role": "sygeplejerske",
                    },
                    "contact": "11223344",
                    "text": text,
                }
            ],
        }
    )


def care_communication(corr: Correspondence) -> dict[str, Any]:
    """The CareCommunication (FHIR JSON) of ``corr``, with new message ids."""
    return build_care_communication(corr)


def municipal_record(n: int | str, *, municipality: Party, municipality_code: str = "0163") -> dict[str, Any]:
    """A small municipal care record (``municipal-v1``) about citizen ``n`` kept by ``municipality``."""
    unit: dict[str, Any] = {"name": municipality.name or "Hjemmeplejen", "kind": "home-care-group"}
    if municipality.sor:
        unit["sor"] = municipality.sor
    if municipality.gln:
        unit["gln"] = municipality.gln
    return {
        "format": "municipal-v1",
        "metadata": {
            "source_system": "Simuleret omsorgssystem",
            "record_id": str(uuid.uuid4()),
            "version": "1",
            "last_changed": _now().isoformat(),
        },
        "citizen": citizen(n),
        "organization": {
            "municipality": {"name": municipality.name or "Kommune", "code": municipality_code},
            "unit": unit,
        },
        "conditions": [
            {
                "id": str(uuid.uuid4()),
                "code": "dae40f60-8dab-4bd3-ab72-b07d0f278692",
                "clinical_status": "active",
                "recorded": _now().date().isoformat(),
            }
        ],
    }


__all__ = [
    "HERLEV_MUNICIPALITY",
    "HOSPITAL_UNIT",
    "REHAB_MUNICIPALITY",
    "admission",
    "care_communication",
    "citizen",
    "correspondence",
    "discharge",
    "header_id",
    "municipal_record",
    "notification",
    "synthetic_cpr",
]
