"""The operator console in a real browser: headless Chromium (Debian's chromium and chromium-driver,
installed by ``make test``) against ``fhir-bridge serve`` and simulated peers, all processes on loopback.

A municipality that answers 400 turns a HospitalNotification into a dead letter; the operator signs in,
finds it, fails to replay it without the form's CSRF token, has the receiver fixed, presses Retry and
watches the trace until the message is delivered. Around that: a page without a session goes to
sign-in, a system's token does not sign in, and an auditor reads the replay in the audit trail.

Outside CI the test is skipped when Chromium is not installed; under ``CI=true`` it always runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import (
    HOSPITAL_TOKEN,
    OPERATOR_TOKEN,
    Bridge,
    Sim,
    bridge_config,
    free_port,
    hash_token,
    header_id,
    post_fhir,
    processes,
    wait_until,
)
from webdriver import Driver, browser_available, must_run

from bridge.simulators import traffic

pytestmark = pytest.mark.skipif(
    not browser_available() and not must_run(),
    reason="chromium and chromium-driver are not installed (make test installs them; CI=true never skips)",
)

AUDITOR_TOKEN = "browser-test-auditor-token"
MUNICIPALITY = "herlev-municipality"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Driver]:
    """Headless Chromium with a fresh profile, ended after the test."""
    driver = Driver(free_port(), tmp_path / "profile", tmp_path / "chromedriver.log")
    try:
        yield driver
    finally:
        driver.quit()


def _poll(check: object, timeout: float, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _sign_in(browser: Driver, base: str, token: str) -> None:
    browser.get(f"{base}/console/login")
    browser.type(browser.find("#token"), token)
    browser.click_and_load(browser.find("#sign-in"))


def test_an_operator_finds_a_dead_letter_retries_it_and_sees_it_delivered(
    tmp_path: Path, browser: Driver
) -> None:
    with processes() as procs:
        hospital = Sim("hospital", free_port(), tmp_path, name="hospital")
        municipality = Sim("municipality", free_port(), tmp_path, name="municipality")
        procs += [hospital.start(), municipality.start()]
        municipality.faults([], then={"status": 400})  # the receiver refuses everything for now
        config = bridge_config(
            port=free_port(),
            hospital_port=hospital.port,
            municipality_port=municipality.port,
            extra={"auditors": [{"name": "inspector", "sha256": hash_token(AUDITOR_TOKEN)}]},
        )
        bridge = Bridge(tmp_path, config)
        procs.append(bridge.start())
        base = bridge.url

        message = traffic.notification(traffic.admission(7))
        hid = header_id(message)
        with bridge.client(HOSPITAL_TOKEN) as client:
            assert post_fhir(client, message).status_code == 200
        with bridge.client(OPERATOR_TOKEN) as ops:

            def dead() -> list[dict[str, str]]:
                found: list[dict[str, str]] = ops.get("/deliveries", params={"state": "dead"}).json()[
                    "deliveries"
                ]
                return found

            wait_until(lambda: len(dead()) == 1, 30, "the dead letter", bridge)
            (letter,) = dead()

        # No session: every page sends the browser to sign-in.
        browser.get(f"{base}/console/dead")
        assert browser.url == f"{base}/console/login"

        # A system's token does not sign in.
        _sign_in(browser, base, HOSPITAL_TOKEN)
        assert "this console is for operators and auditors" in browser.page_text()
        assert browser.cookies() == []

        # The operator signs in: the overview shows the destination with its dead letter.
        _sign_in(browser, base, OPERATOR_TOKEN)
        assert browser.url == f"{base}/console/overview"
        (cookie,) = browser.cookies()
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["expiry"] > 0
        row = browser.text(browser.find("#destinations"))
        assert MUNICIPALITY in row
        assert len(browser.find_all("svg")) >= 2
        browser.screenshot(tmp_path / "overview.png")

        # The dead letter is listed; the message list finds it by its state too.
        browser.click_and_load(browser.find('a[href="/console/dead"]'))
        listed = browser.text(browser.find("#dead"))
        assert letter["message_id"] in listed and MUNICIPALITY in listed and "HTTP 400" in listed
        browser.get(f"{base}/console/messages?state=dead")
        assert hid in browser.text(browser.find("#messages"))

        # A retry POST without the CSRF token is refused, and the letter stays dead.
        browser.get(f"{base}/console/dead")
        button = f"#retry-{letter['id']}"
        browser.script(
            "arguments[0].form.querySelector('input[name=csrf]').remove();",
            {"element-6066-11e4-a52e-4f735466cecf": browser.find(button)},
        )
        browser.click_and_load(browser.find(button))
        assert "CSRF token is missing or wrong" in browser.page_text()
        session_cookie = {c["name"]: c["value"] for c in browser.cookies()}
        refused = httpx.post(f"{base}/console/deliveries/{letter['id']}/retry", cookies=session_cookie)
        assert refused.status_code == 403

        # The receiver is fixed; Retry, and the trace page shows the delivery delivered.
        municipality.faults([])
        browser.get(f"{base}/console/dead")
        browser.click_and_load(browser.find(button))
        assert browser.url == f"{base}/console/messages/{letter['message_id']}"

        def delivered() -> bool:
            browser.get(f"{base}/console/messages/{letter['message_id']}")
            return browser.text(browser.find(f"#state-{letter['id']}")) == "delivered"

        _poll(delivered, 30, "the replayed delivery to be delivered")
        assert [m["header_id"] for m in municipality.messages()] == [hid]
        browser.get(f"{base}/console/dead")
        assert browser.find_all("#no-dead")

        # Sign out; the auditor signs in and reads the replay in the audit trail.
        browser.click_and_load(browser.find("#logout"))
        assert browser.url == f"{base}/console/login"
        browser.get(f"{base}/console/overview")
        assert browser.url == f"{base}/console/login"
        _sign_in(browser, base, AUDITOR_TOKEN)
        assert browser.url == f"{base}/console/audit"
        trail = browser.text(browser.find("#audit"))
        assert "console:retry" in trail and "operator:acceptance" in trail
        assert "console:login-refused" in trail
