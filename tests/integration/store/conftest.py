"""The ``store`` fixture: every OutboxStore implementation, run through the same conformance suite.

A PostgreSQL adapter joins by adding its factory to ``STORE_FACTORIES``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.clock import FakeClock
from bridge.outbox.keys import citizen_key
from bridge.outbox.port import AuditRecord, NewDelivery, NewMessage, OutboxStore
from bridge.outbox.sqlite import SqliteOutboxStore

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
MEDCOM = SHARED / "medcom"
SECRET = b"conformance-suite-citizen-secret"
FHIR_JSON = "application/fhir+json"


def _sqlite(tmp_path: Path) -> OutboxStore:
    return SqliteOutboxStore(tmp_path / "outbox.db")


STORE_FACTORIES: dict[str, Callable[[Path], OutboxStore]] = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(STORE_FACTORIES))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], OutboxStore]]:
    """Opens (and migrates) stores of one implementation on one database; closes them all afterwards."""
    opened: list[OutboxStore] = []

    def open_one() -> OutboxStore:
        store = STORE_FACTORIES[request.param](tmp_path)
        store.migrate()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory: Callable[[], OutboxStore]) -> OutboxStore:
    """A migrated, empty store."""
    return store_factory()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass(frozen=True)
class Example:
    """An official MedCom example message: its bytes and the ids the store cares about."""

    path: Path
    payload: bytes
    bundle_id: str
    header_id: str
    cpr: str | None
    response: dict[str, Any] | None

    @property
    def citizen_key(self) -> str | None:
        return None if self.cpr is None else citizen_key(self.cpr, SECRET)


def load_example(relative: str) -> Example:
    """Read a MedCom example Bundle from the shared reference data."""
    path = MEDCOM / relative
    payload = path.read_bytes()
    bundle = json.loads(payload)
    header = bundle["entry"][0]["resource"]
    assert header["resourceType"] == "MessageHeader"
    cprs = [
        ident["value"]
        for entry in bundle["entry"]
        if entry["resource"]["resourceType"] == "Patient"
        for ident in entry["resource"].get("identifier", [])
        if ident.get("system") == "urn:oid:1.2.208.176.1.2"
    ]
    return Example(
        path, payload, bundle["id"], header["id"], cprs[0] if cprs else None, header.get("response")
    )


ADMISSION = "hospitalnotification/Bundle-a5e5b880-c087-4055-b9ec-99108695f81d.json"  # STIN
DISCHARGE = "hospitalnotification/Bundle-f4aa42a4-86db-4e68-9b38-9dda0dfd5774.json"  # SLHJ
LEAVE = "hospitalnotification/Bundle-d3128d9b-cede-4c7f-8904-809eab322d7d.json"  # STOR
# Two copies of one CareCommunication: same MessageHeader.id, new Bundle.id (MedCom test fixtures).
_FIXTURES = "carecommunication/testscripts-duplicate-fixtures"
DUPLICATE_A = f"{_FIXTURES}/Bundle-5de12884-eae7-4fd3-ba4a-d8b56be4baff.json"
DUPLICATE_B = f"{_FIXTURES}/Bundle-c289e585-7f30-4d58-88e3-0baedd9ffeee.json"
ACK_OK = "acknowledgement/Bundle-a8c041b8-c65a-4fde-a90f-962076918834.json"
ACK_TRANSIENT = "acknowledgement/Bundle-c9c2b2f6-0807-11ed-861d-0242ac120002.json"


class Messages:
    """Builds accept() arguments from MedCom examples or from scratch, with the test clock's time."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def from_example(
        self,
        relative: str,
        destinations: tuple[str, ...] = ("kbh",),
        sender: str = "rh",
        expect_receipt: bool = False,
    ) -> tuple[NewMessage, list[NewDelivery], AuditRecord]:
        ex = load_example(relative)
        return self.build(
            ex.bundle_id,
            ex.header_id,
            ex.citizen_key,
            ex.payload,
            destinations=destinations,
            sender=sender,
            expect_receipt=expect_receipt,
        )

    def build(
        self,
        bundle_id: str | None = None,
        header_id: str | None = None,
        citizen: str | None = None,
        payload: bytes = b'{"resourceType":"Bundle"}',
        destinations: tuple[str, ...] = ("kbh",),
        sender: str = "rh",
        kind: str = "hospital-notification",
        expect_receipt: bool = False,
        not_before_in: timedelta | None = None,
    ) -> tuple[NewMessage, list[NewDelivery], AuditRecord]:
        now = self.clock.now()
        message = NewMessage(
            bundle_id=bundle_id or str(uuid.uuid4()),
            header_id=header_id or str(uuid.uuid4()),
            sender=sender,
            kind=kind,
            citizen_key=citizen,
            payload=payload,
            content_type=FHIR_JSON,
            received_at=now,
            response=b'{"resourceType":"OperationOutcome"}',
        )
        deliveries = [
            NewDelivery(
                destination=d,
                payload=payload + d.encode(),
                content_type=FHIR_JSON,
                expect_receipt=expect_receipt,
                not_before=None if not_before_in is None else now + not_before_in,
            )
            for d in destinations
        ]
        audit = AuditRecord(now, "message.accepted", sender, b'{"resourceType":"AuditEvent"}', message.id)
        return message, deliveries, audit


@pytest.fixture
def messages(clock: FakeClock) -> Messages:
    return Messages(clock)
