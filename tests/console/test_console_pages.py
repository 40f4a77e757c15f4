"""The console through real HTTP on loopback: sign-in, sessions, CSRF, pages, replay, audit trail."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest
from api_bed import HOSPITAL_TOKEN, OPERATOR_TOKEN
from console_bed import AUDITOR_TOKEN, Console, body_of

PAGES = ["/console/", "/console/overview", "/console/messages", "/console/dead", "/console/audit"]


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


@pytest.mark.parametrize("path", [*PAGES, "/console/messages/anything"])
def test_a_page_without_a_session_sends_the_browser_to_sign_in(console: Console, path: str) -> None:
    with console.client() as client:
        answer = client.get(path)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login"


def test_sign_in_sets_a_signed_httponly_strict_cookie_with_an_expiry_and_is_audited(console: Console) -> None:
    with console.client() as client:
        form = client.get("/console/login")
        assert form.status_code == 200 and 'name="token"' in form.text
        assert "script-src" not in form.headers["content-security-policy"]  # no scripts at all
        answer = client.post("/console/login", data={"token": OPERATOR_TOKEN})
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "max-age", "path"} <= attributes
        assert "samesite=strict" in cookie.lower()
        # Plain http between loopback addresses: Secure would keep the browser from sending it.
        assert "secure" not in attributes
        assert OPERATOR_TOKEN not in cookie
        assert client.get("/console/overview").status_code == 200
    (login,) = console.audit("console.login")
    assert login.record.actor == "operator:on-call"
    assert body_of(login)["subtype"][0]["code"] == "console:login"


def test_a_wrong_token_and_a_system_token_do_not_sign_in(console: Console) -> None:
    with console.client() as client:
        wrong = client.post("/console/login", data={"token": "not-a-token"})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        assert "set-cookie" not in wrong.headers
        system = client.post("/console/login", data={"token": HOSPITAL_TOKEN})
        assert system.status_code == 403 and "operators and auditors" in system.text
        assert "set-cookie" not in system.headers
        assert client.get("/console/overview").status_code == 303
        for _ in range(12):  # past the failure limit: throttled, and still no session
            last = client.post("/console/login", data={"token": "still-wrong"})
        assert last.status_code == 429 and "retry in" in last.text.lower()
        assert client.post("/console/login", data={"token": OPERATOR_TOKEN}).status_code == 429
    wrong_token, system_token, *throttled = console.audit("console.login-refused")
    assert throttled
    assert wrong_token.record.actor == "unauthenticated"
    assert system_token.record.actor == "herlev-gentofte-hospital"
    assert "not-a-token" not in wrong_token.record.body.decode()  # a typed secret is never recorded
    assert console.audit("auth.refused")  # the wrong token, recorded by the authenticator


def test_a_forged_expired_or_signed_out_session_is_no_session(console: Console) -> None:
    client = console.sign_in(OPERATOR_TOKEN)
    value = client.cookies["bridge_console"]
    body, mac = value.split(".")
    forged = httpx.Client(base_url=console.url, follow_redirects=False)
    # The same payload with the auditor role added cannot be signed without the key.
    forged.cookies.set("bridge_console", body[:-2] + "xx." + mac, path="/console")
    assert forged.get("/console/overview").status_code == 303
    forged.close()

    copy = httpx.Client(base_url=console.url, follow_redirects=False)
    copy.cookies.set("bridge_console", value, path="/console")
    assert copy.get("/console/overview").status_code == 200
    overview = client.get("/console/overview").text
    signed_out = client.post("/console/logout", data={"csrf": _csrf(overview)})
    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/console/login"
    assert copy.get("/console/overview").status_code == 303  # the copied cookie is revoked too
    assert console.audit("console.logout")
    copy.close()
    client.close()

    later = console.sign_in(OPERATOR_TOKEN)
    assert later.get("/console/overview").status_code == 200
    console.clock.advance(timedelta(hours=8, seconds=1))
    assert later.get("/console/overview").status_code == 303
    later.close()


def test_an_operator_replays_a_dead_letter_only_with_the_sessions_csrf_token(console: Console) -> None:
    message_id, delivery_id = console.dead_letter()
    client = console.sign_in(OPERATOR_TOKEN)
    other = console.sign_in(OPERATOR_TOKEN)
    dead = client.get("/console/dead")
    assert dead.status_code == 200
    assert f'id="retry-{delivery_id}"' in dead.text and "HTTP 400" in dead.text
    retry = f"/console/deliveries/{delivery_id}/retry"

    assert client.post(retry, data={}).status_code == 403
    assert client.post(retry, data={"csrf": "x" * 43}).status_code == 403
    # Another session's token is not this session's.
    assert client.post(retry, data={"csrf": _csrf(other.get("/console/dead").text)}).status_code == 403
    # The right token from a page of another site (the browser names it in Origin) is refused too.
    token = _csrf(dead.text)
    hostile = client.post(retry, data={"csrf": token}, headers={"Origin": "https://attacker.example"})
    assert hostile.status_code == 403
    assert [d.id for d in console.store.list_deliveries("dead")] == [delivery_id]
    assert len(console.audit("console.retry-refused")) == 4

    replayed = client.post(retry, data={"csrf": token})
    assert replayed.status_code == 303
    assert replayed.headers["location"] == f"/console/messages/{message_id}"
    assert console.store.list_deliveries("dead") == []
    (pending,) = console.store.list_deliveries("pending")
    assert pending.id == delivery_id
    trace = client.get(replayed.headers["location"])
    assert f'id="state-{delivery_id}">pending<' in trace.text
    assert client.post(retry, data={"csrf": token}).status_code == 409  # no longer dead
    (action,) = console.audit("console.retry")
    assert action.record.message_id == message_id and action.record.actor == "operator:on-call"
    assert console.audit("delivery.replayed")
    assert console.audit("console.view")  # the trace page view
    client.close()
    other.close()


def test_the_message_list_filters_and_links_to_the_trace(console: Console) -> None:
    message_id, _ = console.dead_letter()
    client = console.sign_in(OPERATOR_TOKEN)
    listed = client.get("/console/messages", params={"state": "dead", "sender": "herlev-gentofte-hospital"})
    assert f'href="/console/messages/{message_id}"' in listed.text
    none = client.get("/console/messages", params={"state": "delivered"})
    assert message_id not in none.text and "No messages match" in none.text
    other = client.get("/console/messages", params={"sender": "someone-else"})
    assert message_id not in other.text
    trace = client.get(f"/console/messages/{message_id}")
    assert trace.status_code == 200 and "permanent" in trace.text and "400" in trace.text
    assert client.get("/console/messages/no-such-message").status_code == 404
    client.close()


def test_the_audit_trail_is_for_auditors(console: Console) -> None:
    operator = console.sign_in(OPERATOR_TOKEN)
    assert operator.get("/console/audit").status_code == 403
    assert "Audit trail" not in operator.get("/console/overview").text
    auditor = console.sign_in(AUDITOR_TOKEN)
    assert auditor.get("/console/overview").status_code == 403
    assert auditor.get("/console/").headers["location"] == "/console/audit"
    page = auditor.get("/console/audit", params={"agent": "operator:on-call"})
    assert page.status_code == 200
    assert "console:login" in page.text and "operator:on-call" in page.text
    assert "auditor:inspector" not in page.text.split('id="audit"', 1)[1]  # filtered by agent
    bad = auditor.get("/console/audit", params={"date": "yesterday"})
    assert bad.status_code == 400 and "date must be" in bad.text
    search = console.audit("console.audit-search")[0]
    assert "agent=operator" in body_of(search)["outcomeDesc"]
    operator.close()
    auditor.close()
