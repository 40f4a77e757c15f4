"""CareCommunication: MedCom's examples both ways, threads of replies and forwards, errors with paths."""

from __future__ import annotations

import copy
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from bridge.errors import InvalidMessage
from bridge.medcom.care_communication import build_care_communication, forward, reply, to_correspondence
from bridge.medcom.validation import validate_message
from bridge.municipal.correspondence import Attachment, Author, Correspondence, Paragraph
from bridge.municipal.events import MessageMeta, Party
from bridge.municipal.model import Citizen, PersonName

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "medcom"


def assert_profile_valid(bundle: dict[str, Any]) -> None:
    """The bridge's own MedCom profile validation finds no error."""
    outcome = validate_message(bundle)
    assert not outcome.has_errors, outcome.to_fhir()


EXAMPLES = sorted((SHARED / "carecommunication").glob("Bundle-*.json"))


def load(name: str) -> dict[str, Any]:
    return json.loads((SHARED / "carecommunication" / f"Bundle-{name}.json").read_text(encoding="utf-8"))


def _payloads(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    comm = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Communication")
    return list(comm["payload"])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name[7:15])
def test_example_to_correspondence_and_back_keeps_everything(path: Path) -> None:
    original = json.loads(path.read_text(encoding="utf-8"))
    corr = to_correspondence(original)
    message = build_care_communication(corr)
    Bundle.model_validate(message)
    assert_profile_valid(message)
    assert to_correspondence(message) == corr
    # Payload content and extension values survive unchanged; only resource ids are the bridge's own.
    for got, want in zip(_payloads(message), _payloads(original), strict=True):
        assert got.get("contentString") == want.get("contentString")
        assert got.get("contentAttachment") == want.get("contentAttachment")
        values = {e["url"]: e.get("valueDateTime") or e.get("valueContactPoint") for e in got["extension"]}
        wanted = {e["url"]: e.get("valueDateTime") or e.get("valueContactPoint") for e in want["extension"]}
        assert values == wanted
    provenances = [e["resource"] for e in original["entry"] if e["resource"]["resourceType"] == "Provenance"]
    assert len(corr.earlier) == len(provenances) - 1


def test_reply_example_reads_authors_attachments_and_chain() -> None:
    corr = to_correspondence(load("b56549f7-ed10-422d-8088-f7222b686e46"))
    assert corr.kind == "reply" and corr.category == "examination-results"
    assert corr.thread_id == "urn:uuid:b2eb3d0e-5de5-4de9-b2a3-0ff321ad1c3a"
    assert corr.topic == "Forspørgsel på seneste resultater"
    assert corr.previous_message_id == "42cb9200-f421-4d08-8391-7d51a2503cb4"
    assert corr.sender == Party(name="Plejecenter Herlev", sor="953741000016009", gln="5790001348120")
    first, answer = corr.paragraphs
    assert first.author is not None and first.author.name == PersonName(given=["Michael"], family="Burns")
    assert first.author.role == "sygeplejerske" and first.contact == "38683868"
    assert first.organization.sor == "265161000016000"
    assert answer.author is not None and answer.author.name.family == "Waters"
    (pdf,) = corr.attachments
    assert pdf.content_type == "application/pdf" and pdf.title == "Blodprøveresultater"
    assert pdf.data is not None and pdf.data.startswith("JVBERi0")
    assert corr.new_segment_ids == [
        "urn:uuid:cd422e42-5bad-11ed-9b6a-0242ac120002",
        "urn:uuid:a9becf76-fc4c-49aa-8a68-6a0584871fcd",
    ]
    (earlier,) = corr.earlier
    assert earlier.activity == "new-message" and earlier.message_id == "42cb9200-f421-4d08-8391-7d51a2503cb4"
    assert earlier.segment_ids == ["urn:uuid:24d01288-ad36-4af2-96a8-fd1432dadee1"]
    assert earlier.sender.sor == "265161000016000"


def test_forward_and_oioxml_reply_examples() -> None:
    fwd = to_correspondence(load("c0426e3e-978f-46e8-a366-a30f27854b0a"))
    assert fwd.kind == "forward" and len(fwd.segments) == 5
    assert [m.activity for m in fwd.earlier] == ["reply-message", "new-message", "reply-message"]
    assert fwd.previous_message_id == "4dff3695-218d-4878-838a-5f23cbba6f82"
    assert fwd.receiver.name is None and fwd.receiver.sor == "1042981000016003"
    oio = to_correspondence(load("k7bfbc0c-553d-11ed-bdc3-0242ac120002"))
    assert oio.previous_by_identifier and oio.previous_message_id == "B300720181623#5790000121526"
    assert oio.hospital_contact is not None and oio.hospital_contact.stay == "IMP"
    replacement = to_correspondence(load("0d5b3c18-fab6-4d93-9d88-c9c8abf1f18c"))
    assert replacement.citizen.cpr_kind == "replacement"


# --------------------------------------------------------------------------------------------- threads
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
MUNICIPALITY = Party(name="Plejecenter Herlev", sor="953741000016009", gln="5790001348120")
HOSPITAL = Party(name="Hjerteafdelingen", sor="265161000016000", gln="5790000209354")
PRACTICE = Party(name="Lægehuset", sor="1042981000016003", gln="5790001348120")
NURSE = Author(name=PersonName(given=["Michael"], family="Burns"), role="sygeplejerske")
DOCTOR = Author(name=PersonName(given=["Emma"], family="Waters"), role="Læge", role_system=None)


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _meta(at: dt.datetime) -> MessageMeta:
    return MessageMeta(
        bundle_id=str(uuid.uuid4()),
        header_id=str(uuid.uuid4()),
        timestamp=at,
        sent=at,
        provenance_id=str(uuid.uuid4()),
    )


def test_a_thread_of_new_reply_and_forward_keeps_the_chain() -> None:
    first = Correspondence(
        kind="new",
        thread_id=_urn(),
        category="regarding-referral",
        priority="asap",
        citizen=Citizen(cpr="2509479989", name=PersonName(given=["Bruno"], family="Elmer")),
        sender=MUNICIPALITY,
        receiver=HOSPITAL,
        segments=[
            Paragraph(
                id=_urn(),
                time=T0,
                organization=MUNICIPALITY,
                author=NURSE,
                contact="38683868",
                text="Hej.\nMvh",
            ),
            Attachment(
                id=_urn(),
                time=T0,
                organization=MUNICIPALITY,
                title="Notat",
                content_type="application/pdf",
                data="JVBERi0xLjcK",
            ),
        ],
        message=_meta(T0),
    )
    received = to_correspondence(build_care_communication(first))
    assert received == first
    assert received.paragraphs[0].text == "Hej.\nMvh"  # line breaks travel as \n

    answer = Paragraph(
        id=_urn(),
        time=T0 + dt.timedelta(days=1),
        organization=HOSPITAL,
        author=DOCTOR,
        contact="+4544527000",
        text="Svar",
    )
    answered = reply(received, [answer], message=_meta(T0 + dt.timedelta(days=1)))
    message = build_care_communication(answered)
    Bundle.model_validate(message)
    assert_profile_valid(message)
    back = to_correspondence(message)
    assert back == answered
    assert back.thread_id == first.thread_id and back.sender == HOSPITAL and back.receiver == MUNICIPALITY
    assert back.previous_message_id == first.message.header_id  # type: ignore[union-attr]
    assert back.attachments[0].data is None  # a reply repeats no attachment data (medcom-carecommunication-6)
    assert back.new_segment_ids == [answer.id]
    assert [m.message_id for m in back.earlier] == [first.message.header_id]  # type: ignore[union-attr]
    revision = [
        ent
        for e in message["entry"]
        if e["resource"]["resourceType"] == "Provenance"
        and e["resource"]["id"] == answered.message.provenance_id  # type: ignore[union-attr]
        for ent in e["resource"]["entity"]
        if ent["role"] == "revision"
    ]
    assert revision == [
        {"role": "revision", "what": {"reference": f"MessageHeader/{first.message.header_id}"}}
    ]  # type: ignore[union-attr]

    note = Paragraph(
        id=_urn(),
        time=T0 + dt.timedelta(days=2),
        organization=MUNICIPALITY,
        author=NURSE,
        contact="38683868",
        text="Videre",
    )
    forwarded = forward(back, [note], sender=MUNICIPALITY, receiver=PRACTICE, thread_id=_urn())
    ids = iter(str(uuid.UUID(int=i)) for i in range(1, 10))
    message = build_care_communication(
        forwarded, new_id=lambda: next(ids), now=lambda: T0 + dt.timedelta(days=2)
    )
    Bundle.model_validate(message)
    assert_profile_valid(message)
    assert message["id"] == str(uuid.UUID(int=1))
    final = to_correspondence(message)
    assert final.kind == "forward" and final.thread_id != first.thread_id
    assert [m.activity for m in final.earlier] == ["new-message", "reply-message"]
    assert [s.id for s in final.segments] == [*(s.id for s in first.segments), answer.id, note.id]
    provenances = [e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Provenance"]
    assert len(provenances) == 3


# --------------------------------------------------------------------------------------------- errors
def test_payload_without_identifier_is_named_by_path() -> None:
    # The testscript fixture of an invalid message: its payload has no segment identifier.
    bundle = json.loads(
        (
            SHARED
            / "carecommunication/testscripts-duplicate-fixtures"
            / "Bundle-260a3cc1-38eb-454a-a57b-9e32eabb54a3.json"
        ).read_text(encoding="utf-8")
    )
    with pytest.raises(InvalidMessage) as info:
        to_correspondence(bundle)
    assert info.value.outcome.errors[0].expression == ("Bundle.entry[2].resource.payload[0].extension",)


def test_wrong_message_type_and_unknown_activity() -> None:
    with pytest.raises(InvalidMessage, match="hospital-notification-message"):
        to_correspondence(
            json.loads(next((SHARED / "hospitalnotification").glob("*.json")).read_text(encoding="utf-8"))
        )
    bundle = copy.deepcopy(load("add5e7e2-0c0f-4a4a-bfff-f6f984fa7e3c"))
    prov = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance")
    prov["activity"]["coding"][0]["code"] = "admit-inpatient"
    with pytest.raises(InvalidMessage) as info:
        to_correspondence(bundle)
    assert info.value.outcome.errors[0].expression[0].endswith(".activity")


def test_the_model_keeps_medcom_rules() -> None:
    corr = to_correspondence(load("add5e7e2-0c0f-4a4a-bfff-f6f984fa7e3c")).model_dump()
    with pytest.raises(ValidationError, match="priority"):
        Correspondence.model_validate(corr | {"priority": "asap"})
    with pytest.raises(ValidationError, match="topic"):
        Correspondence.model_validate(corr | {"category": "other", "topic": None})
    with pytest.raises(ValidationError, match="previous_message_id"):
        Correspondence.model_validate(corr | {"kind": "reply"})
    with pytest.raises(ValidationError, match="author"):
        Paragraph(id=_urn(), time=T0, organization=HOSPITAL, text="no author")
