"""Bad callers and bad input against a running bridge: each gets a 4xx with an OperationOutcome, and
the service goes on answering and delivering afterwards.

One bridge serves every case in this module (they change nothing the others depend on).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from harness import (
    HOSPITAL_TOKEN,
    MUNICIPALITY_TOKEN,
    Bridge,
    Proc,
    Sim,
    bridge_config,
    free_port,
    header_id,
    post_fhir,
    wait_until,
)
from shared_data import SHARED

from bridge.errors import InvalidInput
from bridge.fhir.parse import parse_fhir, to_xml
from bridge.simulators import traffic

STIN = SHARED / "medcom" / "hospitalnotification" / "Bundle-a5e5b880-c087-4055-b9ec-99108695f81d.json"
LIMIT = 1_048_576  # limits.max_body_bytes of the test configuration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Bridge, Sim]]:
    directory = tmp_path_factory.mktemp("hostile")
    procs: list[Proc] = []
    try:
        hospital = Sim("hospital", free_port(), directory, name="hospital").start()
        procs.append(hospital)
        municipality = Sim("municipality", free_port(), directory, name="municipality").start()
        procs.append(municipality)
        config = bridge_config(
            port=free_port(), hospital_port=hospital.port, municipality_port=municipality.port
        )
        bridge = Bridge(directory, config)
        procs.append(bridge)
        bridge.start()
        yield bridge, municipality
    finally:
        for proc in reversed(procs):
            proc.stop()


def _is_outcome(response: httpx.Response) -> bool:
    """An OperationOutcome with issues, in JSON or - answering an XML request - in XML."""
    try:
        fmt = "xml" if "xml" in response.headers.get("content-type", "") else "json"
        body = parse_fhir(response.content, fmt)
    except InvalidInput:
        return False
    return bool(body.get("resourceType") == "OperationOutcome" and body.get("issue"))


def _post(
    bridge: Bridge, body: bytes, content_type: str = "application/fhir+json", token: Any = HOSPITAL_TOKEN
) -> Any:
    with bridge.client(token) as client:
        return client.post("/fhir/$process-message", content=body, headers={"Content-Type": content_type})


def _nested(depth: int) -> bytes:
    return b'{"resourceType":"Bundle","x":' + b"[" * depth + b"]" * depth + b"}"


def test_no_or_unknown_credentials_are_401(stack: tuple[Bridge, Sim]) -> None:
    bridge, _ = stack
    for token in (None, "not-a-known-token"):
        response = _post(bridge, STIN.read_bytes(), token=token)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert _is_outcome(response)


def test_a_sender_organisation_the_caller_does_not_own_is_403(stack: tuple[Bridge, Sim]) -> None:
    bridge, _ = stack
    # The municipality's token, the hospital's message: the municipality may not speak as the hospital.
    response = _post(bridge, STIN.read_bytes(), token=MUNICIPALITY_TOKEN)
    assert response.status_code == 403, response.text
    assert _is_outcome(response)


@pytest.mark.parametrize(
    ("name", "body", "content_type", "status"),
    [
        (
            "oversized",
            b'{"resourceType":"Bundle","pad":"' + b"x" * (LIMIT + 10) + b'"}',
            "application/fhir+json",
            413,
        ),
        ("deeply nested", _nested(5000), "application/fhir+json", 400),
        ("malformed JSON", b'{"resourceType": "Bundle", "entry": [', "application/fhir+json", 400),
        ("not an object", b"[1, 2, 3]", "application/fhir+json", 400),
        ("wrong media type", b"resourceType=Bundle", "text/plain", 415),
        (
            "entity expansion",
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
            b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
            b'<Bundle xmlns="http://hl7.org/fhir"><id value="&lol3;"/></Bundle>',
            "application/fhir+xml",
            400,
        ),
        (
            "external entity",
            b'<?xml version="1.0"?><!DOCTYPE b [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            b'<Bundle xmlns="http://hl7.org/fhir"><id value="&xxe;"/></Bundle>',
            "application/fhir+xml",
            400,
        ),
        ("not a MedCom message", b'{"resourceType":"Patient","id":"p"}', "application/fhir+json", 400),
    ],
)
def test_hostile_input_is_refused_with_an_outcome(
    stack: tuple[Bridge, Sim], name: str, body: bytes, content_type: str, status: int
) -> None:
    bridge, _ = stack
    response = _post(bridge, body, content_type)
    assert response.status_code == status, (name, response.status_code, response.text[:500])
    assert _is_outcome(response), name
    assert "/etc/passwd" not in response.text and "root:" not in response.text
    with httpx.Client(base_url=bridge.url) as client:
        assert client.get("/healthz").status_code == 200


def test_an_invalid_message_names_its_problems_by_path(stack: tuple[Bridge, Sim]) -> None:
    bridge, _ = stack
    message = json.loads(STIN.read_bytes())
    message["entry"][0]["resource"]["eventCoding"]["code"] = "no-such-event"
    response = _post(bridge, orjson.dumps(message))
    assert response.status_code in (400, 422), response.text
    issues = response.json()["issue"]
    assert any(i.get("expression") for i in issues), issues


def test_the_service_still_accepts_and_delivers_afterwards(stack: tuple[Bridge, Sim]) -> None:
    bridge, municipality = stack
    before = len(municipality.messages())
    message = traffic.notification(traffic.admission(400))
    with bridge.client(HOSPITAL_TOKEN) as client:
        assert post_fhir(client, message).status_code == 200
        xml = traffic.notification(traffic.admission(401))
        response = client.post(
            "/fhir/$process-message", content=to_xml(xml), headers={"Content-Type": "application/fhir+xml"}
        )
        assert response.status_code == 200, response.text
    wait_until(lambda: len(municipality.messages()) == before + 2, 30, "both messages", bridge)
    assert {m["header_id"] for m in municipality.messages()[before:]} == {header_id(message), header_id(xml)}
    assert bridge.alive


def test_the_capability_statement_and_openapi_are_published(stack: tuple[Bridge, Sim]) -> None:
    bridge, _ = stack
    with httpx.Client(base_url=bridge.url, timeout=10) as client:
        statement = client.get("/fhir/metadata").json()
        openapi = client.get("/openapi.json").json()
        ready = client.get("/readyz")
    assert statement["resourceType"] == "CapabilityStatement" and statement["fhirVersion"] == "4.0.1"
    (messaging,) = statement["messaging"]
    supported = {m["definition"].rsplit("/", 1)[1] for m in messaging["supportedMessage"]}
    assert supported == {
        "medcom-hospitalNotification-message",
        "medcom-careCommunication-message",
        "medcom-messaging-acknowledgement",
    }
    assert messaging["reliableCache"] > 0
    assert (
        "/fhir/$process-message" in openapi["paths"] and "/deliveries/{delivery_id}/retry" in openapi["paths"]
    )
    assert ready.status_code == 200
